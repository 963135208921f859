"""The package layering the README describes, checked on the source: who may import whom."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("app", "model", "training", "index")
# package -> the project packages it must never import (the dispatcher, model/console.py, names them only as strings)
FORBIDDEN = {"model": {"app", "training", "index"}, "index": {"app", "training"}, "training": {"app"}, "app": {"training"}}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_downwards(package: str) -> None:
    bad = {
        str(p.relative_to(ROOT)): sorted(imported_packages(p) & FORBIDDEN[package])
        for p in sorted((ROOT / package).rglob("*.py"))
        if imported_packages(p) & FORBIDDEN[package]
    }
    assert bad == {}


def test_no_module_outgrows_one_theme() -> None:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 440} == {}
