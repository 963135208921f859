"""The ``alexnet`` console script: dispatches each subcommand to its package's ``cli``.

Each package owns its commands; nothing is imported until a command needs it, so
``alexnet info`` never loads FastAPI and ``alexnet serve`` never loads training.
"""

from __future__ import annotations

import importlib
import os
import sys

__all__ = ["COMMANDS", "main"]

# subcommand -> (module with main(argv), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("model.cli", "print a weights file's metadata"),
    "classify": ("model.cli", "classify image files with a weights file"),
    "import-torchvision": ("model.cli", "convert torchvision's alexnet-owt-*.pth to a weights file"),
    "train": ("training.cli", "train a model with a named recipe"),
    "export": ("training.cli", "write the serving weights file from a checkpoint"),
    "evaluate": ("training.cli", "top-1/top-5 error of a weights file, single and 10-crop"),
    "index": ("index.cli", "build, add to, search and inspect a similarity index"),
    "serve": ("app.cli", "start the HTTP service"),
}


# commands that run forward passes; ``serve`` applies the setting itself (app/main.py)
MODEL_COMMANDS = frozenset({"classify", "train", "evaluate", "index"})


def usage() -> str:
    lines = ["usage: alexnet COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<20} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "alexnet COMMAND --help shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command = argv[0]
    if command not in COMMANDS:
        print(f"alexnet: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    if command in MODEL_COMMANDS:
        from pydantic import TypeAdapter, ValidationError

        from model.runtime import retain_freed_memory

        value = os.environ.get("ALEXNET_RETAIN_FREED_MEMORY", "true")
        try:  # read as the service reads the same setting (app/settings.py)
            retain = TypeAdapter(bool).validate_python(value)
        except ValidationError:
            print(f"alexnet: ALEXNET_RETAIN_FREED_MEMORY must be true or false, got {value!r}", file=sys.stderr)
            return 2
        if retain:
            retain_freed_memory()  # forward passes reuse their memory instead of page-faulting (model/runtime.py)
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(argv))


if __name__ == "__main__":
    sys.exit(main())
