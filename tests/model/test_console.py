"""Progress off a terminal: a log line now and then with tqdm's figures, never carriage-return redraws."""

from __future__ import annotations

import logging

import pytest

from model.console import LogProgress, progress


def test_progress_off_a_terminal_writes_log_lines_with_the_figures(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="progress")
    bar = progress(total=10, desc="fc7", unit="img", every_s=3600)  # pytest's stderr is not a terminal
    assert isinstance(bar, LogProgress)
    with bar:
        for _ in range(10):
            bar.update(1)
        bar.set_postfix(loss="0.123")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("fc7: 10/10 img (") and "loss=0.123" in lines[0]  # once, at the end
    caplog.clear()
    assert list(progress(range(5), desc="evaluate", unit="batch", every_s=0)) == [0, 1, 2, 3, 4]
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [f"evaluate: {i}/5 batch" for i in (1, 2, 3, 4, 5, 5)]


def test_disabled_progress_writes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="progress")
    with progress(total=3, desc="x", disable=True) as bar:
        bar.update(3)
    assert caplog.records == []
