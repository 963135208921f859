"""The fuzzer's corpus, replayed: every input it kept (crafted seeds and what it found) still gets a clear refusal
or a usable result within the CPU bound (``tests/fuzz/targets.py``). ``make fuzz`` grows the corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

CORPUS = Path(__file__).parent / "corpus"
CASES = sorted((target, p) for target in TARGETS for p in (CORPUS / target).glob("*") if p.is_file())


def test_the_corpus_has_seeds_for_every_target() -> None:
    for target in TARGETS:
        assert len([p for t, p in CASES if t == target]) >= 10, target


@pytest.mark.parametrize(("target", "path"), CASES, ids=[f"{t}/{p.name}" for t, p in CASES])
def test_corpus_input(target: str, path: Path) -> None:
    TARGETS[target](path.read_bytes())
