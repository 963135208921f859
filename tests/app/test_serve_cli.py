"""`alexnet serve` builds its settings once, from the variables and its flags, and hands them to the worker
processes as they are (pickled by uvicorn's supervisor), never through the environment."""

from __future__ import annotations

import functools
import os
import pickle
from pathlib import Path
from typing import Any

import pytest

from app import cli


def test_serve_hands_its_flags_to_every_worker_as_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, small_weights: Path) -> None:
    import uvicorn
    import uvicorn.supervisors

    seen: dict[str, Any] = {}

    class Supervisor:  # uvicorn's Multiprocess, minus the processes
        def __init__(self, config: uvicorn.Config, sockets: list[object]) -> None:
            seen["config"] = config

        def run(self) -> None:
            pass

    monkeypatch.setattr(uvicorn.supervisors, "Multiprocess", Supervisor)
    monkeypatch.setattr(uvicorn.Config, "bind_socket", lambda self: None)
    monkeypatch.setenv("ALEXNET_WEIGHTS", str(tmp_path / "not-these.safetensors"))  # the flag wins
    monkeypatch.setenv("ALEXNET_LOG_LEVEL", "info")
    monkeypatch.delenv("ALEXNET_TORCH_THREADS", raising=False)
    argv = ["serve", "--workers", "2", "--weights", str(small_weights), "--index", str(tmp_path / "idx"), "--log-level", "warning"]
    assert cli.main(argv) == 0
    config = seen["config"]
    assert config.workers == 2 and config.factory
    factory = pickle.loads(pickle.dumps(config.app))  # what a spawned worker receives
    assert isinstance(factory, functools.partial)
    settings = factory.args[0]
    assert settings.weights == small_weights and settings.index_dir == tmp_path / "idx" and settings.log_level == "warning"
    assert settings.torch_threads >= 1  # the workers share the cores: each gets its part, decided here
    assert os.environ["ALEXNET_WEIGHTS"] == str(tmp_path / "not-these.safetensors")  # and nothing was written back


def test_a_variable_the_settings_cannot_read_is_named(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from model import console

    monkeypatch.setenv("ALEXNET_MAX_BATCH", "many")
    assert console.main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "alexnet serve: error: ALEXNET_MAX_BATCH:" in err and "'many'" in err
