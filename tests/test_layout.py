"""The package layering the README describes, checked on the source: who may import whom."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("app", "model", "training", "index")
# package -> the project packages it must never import (the dispatcher, model/console.py, names them only as strings)
FORBIDDEN = {"model": {"app", "training", "index"}, "index": {"app", "training"}, "training": {"app"}, "app": {"training"}}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def imported_packages(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported_modules(path)} & set(PACKAGES)


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


@pytest.mark.parametrize(("importer", "imported"), [("bench", "tests"), ("tests", "bench")])
def test_bench_and_tests_never_import_each_other(importer: str, imported: str) -> None:
    """What both need (servers, PostgreSQL, small weights, images) is in app/testing.py, which both import."""
    bad = [
        str(p.relative_to(ROOT))
        for p in sorted((ROOT / importer).rglob("*.py"))
        if any(name.split(".")[0] == imported for name in imported_modules(p))
    ]
    assert bad == []


def test_the_service_never_imports_the_test_helpers() -> None:
    bad = [
        str(p.relative_to(ROOT))
        for pkg in PACKAGES
        for p in sorted((ROOT / pkg).rglob("*.py"))
        if p.name != "testing.py" and "app.testing" in imported_modules(p)
    ]
    assert bad == []
