"""Stopping training cleanly on a signal: the step finishes, a checkpoint is written, the loop ends."""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["StopOnSignal"]


class StopOnSignal:
    """On Ctrl-C or SIGTERM (docker stop, Kubernetes or Slurm pre-emption), finish the current step, save a
    checkpoint, and stop. A second Ctrl-C stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}

    def __enter__(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            if self.trainer._interrupted and signum == signal.SIGINT:  # second Ctrl-C: stop now
                raise KeyboardInterrupt
            self.trainer._interrupted = True

        for sig in self.SIGNALS:
            try:
                self.previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread
                pass

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self.previous.items():
            signal.signal(sig, previous)
