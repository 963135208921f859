"""Coverage-guided fuzzing of the upload path with atheris (libFuzzer): ``make fuzz``, or
``python -m tests.fuzz.run decode|multipart [libFuzzer options] [corpus dir]``.

New inputs that reach new code are written to the corpus directory (``tests/fuzz/corpus/<target>`` by default);
a failing input is written as ``crash-*`` and the run stops. Check the small ones in: CI replays the corpus
(``tests/fuzz/test_corpus.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> None:
    import atheris

    if len(sys.argv) < 2 or sys.argv[1] not in ("decode", "multipart"):
        sys.exit("usage: python -m tests.fuzz.run decode|multipart [libFuzzer options]")
    target_name = sys.argv[1]
    with atheris.instrument_imports(include=["model", "PIL", "starlette", "multipart", "python_multipart"]):
        from tests.fuzz.targets import TARGETS
    target = TARGETS[target_name]
    args = [sys.argv[0], *sys.argv[2:]]
    if not any(not a.startswith("-") for a in sys.argv[2:]):
        args.append(str(Path(__file__).parent / "corpus" / target_name))
    atheris.Setup(args, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
