"""The ``alexnet`` command: dispatches each subcommand to its package's ``cli`` module.

It lives in ``model`` because every package depends on ``model`` and ``model`` on none of them:
the other packages are named here only as strings and imported when their command runs, so
``alexnet info`` never loads FastAPI, ``alexnet serve`` never loads training, and multi-node
training starts as ``torchrun ... -m model.console train ...``.

The convention every ``cli`` module follows:
- ``main(argv) -> int``: ``argv`` is the command and its arguments (``["index", "add", "x.jpg"]``);
  the return value is the exit status.
- ``ERRORS``: the exceptions that are the user's to fix (a missing file, a bad value, an unusable
  weights file). This module prints them as ``alexnet COMMAND: error: ...`` and exits with 2; any
  other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import logging
import sys

__all__ = ["COMMANDS", "main", "version"]

# subcommand -> (module with main(argv) and ERRORS, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("model.cli", "print a weights file's metadata"),
    "classify": ("model.cli", "classify image files with a weights file"),
    "import-torchvision": ("model.cli", "convert torchvision's alexnet-owt-*.pth to a weights file"),
    "train": ("training.cli", "train a model with a named recipe"),
    "export": ("training.cli", "write the serving weights file from a checkpoint"),
    "evaluate": ("training.cli", "top-1/top-5 error of a weights file, single and 10-crop"),
    "calibrate": ("training.cli", "add int8 calibration to a weights file (ALEXNET_PRECISION=int8)"),
    "index": ("index.cli", "build, add to, search and inspect a similarity index"),
    "serve": ("app.cli", "start the HTTP service"),
}

# commands that run forward passes in this process; ``serve`` applies the setting in each worker (app/main.py)
MODEL_COMMANDS = frozenset({"classify", "train", "evaluate", "calibrate", "index"})


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
        if command in MODEL_COMMANDS:
            from model.runtime import apply_memory_setting

            apply_memory_setting()  # forward passes reuse their memory instead of page-faulting (model/runtime.py)
        return int(module.main(argv))
    except errors as e:
        print(f"alexnet {command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
