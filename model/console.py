"""The ``alexnet`` command: dispatches each subcommand to its package's ``cli`` module.

It lives in ``model`` because every package depends on ``model`` and ``model`` on none of them:
the other packages are named here only as strings and imported when their command runs, so
``alexnet info`` never loads FastAPI, ``alexnet serve`` never loads training, and multi-node
training starts as ``torchrun ... -m model.console train ...``.

The convention every ``cli`` module follows:
- ``main(argv, settings) -> int``: ``argv`` is the command and its arguments (``["index", "add", "x.jpg"]``),
  ``settings`` the process's settings, read once here from the ``ALEXNET_*`` variables (``app/settings.py``
  declares every one); the return value is the exit status. Nothing below reads the environment itself.
- ``ERRORS``: the exceptions that are the user's to fix (a missing file, a bad value, an unusable
  weights file). This module prints them as ``alexnet COMMAND: error: ...`` and exits with 2; any
  other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from tqdm import tqdm

if TYPE_CHECKING:
    from pathlib import Path

    from pydantic import SecretStr

__all__ = ["COMMANDS", "CommandSettings", "LogProgress", "main", "progress", "read_settings", "version"]


class CommandSettings(Protocol):
    """The settings the commands outside the service read; ``app.settings.Settings`` has them all, with their
    defaults and meanings. Each command receives the one object read at its start, never the environment."""

    @property
    def retain_freed_memory(self) -> bool: ...
    @property
    def download(self) -> bool: ...
    @property
    def fashion_mnist_mirror(self) -> str: ...
    @property
    def store_url(self) -> SecretStr | None: ...
    @property
    def index_dir(self) -> Path: ...
    @property
    def weights(self) -> Path: ...


def read_settings() -> Any:
    """The process's settings (``app.settings.Settings``, named as a string like the commands: ``model`` imports
    no other package); ``ValueError`` names each variable it cannot read."""
    return importlib.import_module("app.settings").read_settings()


# subcommand -> (module with main(argv) and ERRORS, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("model.cli", "print a weights file's metadata"),
    "classify": ("model.cli", "classify image files with a weights file"),
    "import-torchvision": ("model.cli", "convert torchvision's alexnet-owt-*.pth to a weights file"),
    "train": ("training.cli", "train a model with a named recipe"),
    "export": ("training.cli", "write the serving weights file from a checkpoint"),
    "evaluate": ("training.cli", "top-1/top-5 error of a weights file; --familiarity: how well it tells the unfamiliar"),
    "calibrate": ("training.cli", "add int8 calibration to a weights file (ALEXNET_PRECISION=int8)"),
    "familiarity": ("training.cli", "add the familiarity score and the softmax temperature to a weights file"),
    "index": ("index.cli", "build, add to, search and inspect a similarity index"),
    "model": ("index.models_cli", "stage, compare, activate and retire a gallery's weights (no downtime)"),
    "serve": ("app.cli", "start the HTTP service"),
}


def progress(
    iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str, unit: str = "it", initial: int = 0,
    disable: bool = False, every_s: float = 5.0,
) -> Any:  # fmt: skip
    """A progress bar (tqdm) on a terminal; elsewhere (a log file, ``docker compose logs``, CI) a log line with the same
    figures at most every ``every_s`` seconds and at the end, instead of carriage-return updates that pile up into one
    line of hundreds of kilobytes. Both take tqdm's calls: iteration, ``update``, ``set_postfix``, ``close``, ``with``."""
    if disable or sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable, dynamic_ncols=True)
    return LogProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, every_s=every_s)


class LogProgress:
    """tqdm's interface, writing ``desc: n/total unit (rate unit/s, postfix)`` to the log now and then."""

    def __init__(self, iterable: Iterable[Any] | None, *, total: int | None, desc: str, unit: str, initial: int, every_s: float) -> None:
        self.iterable, self.desc, self.unit, self.every_s = iterable, desc, unit, every_s
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)  # type: ignore[arg-type]
        self.n = self._start_n = initial
        self.postfix = ""
        self._start = self._last = time.monotonic()
        self._closed = False
        self.log = logging.getLogger("progress")

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self._last >= self.every_s:
            self._write()

    def set_postfix(self, **values: object) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._write()

    def _write(self) -> None:
        now = time.monotonic()
        self._last = now
        rate = (self.n - self._start_n) / max(now - self._start, 1e-9)
        of = f"/{self.total}" if self.total is not None else ""
        extra = f", {self.postfix}" if self.postfix else ""
        self.log.info("%s: %d%s %s (%.1f %s/s%s)", self.desc, self.n, of, self.unit, rate, self.unit, extra)


# commands that run forward passes in this process; ``serve`` applies the setting in each worker (app/main.py)
MODEL_COMMANDS = frozenset({"classify", "train", "evaluate", "calibrate", "familiarity", "index", "model"})


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        own = dist_version("alexnet-service")
    except PackageNotFoundError:  # run from a source tree that was never installed
        own = "unknown (not installed)"
    import torch

    return f"alexnet-service {own} (torch {torch.__version__}, Python {sys.version.split()[0]})"


def usage() -> str:
    lines = ["usage: alexnet COMMAND [options]", "       alexnet --version", "", "commands:"]
    lines += [f"  {name:<20} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "alexnet COMMAND --help shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(version())
        return 0
    command = argv[0]
    if command not in COMMANDS:
        print(f"alexnet: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # which SIMD build it picked is not news
    module = importlib.import_module(COMMANDS[command][0])
    errors: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, *getattr(module, "ERRORS", ()))
    try:
        settings = read_settings()
        if command in MODEL_COMMANDS and settings.retain_freed_memory:
            from model.runtime import retain_freed_memory

            retain_freed_memory()  # forward passes reuse their memory instead of page-faulting (model/runtime.py)
        return int(module.main(argv, settings))
    except errors as e:
        print(f"alexnet {command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
