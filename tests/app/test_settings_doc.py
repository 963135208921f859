"""The README's configuration table is the one app/settings.py makes: a setting added, removed or changed there
without `python -m app.settings --readme` fails here."""

from __future__ import annotations

from pathlib import Path

from app.settings import TABLE_END, TABLE_START, Settings, settings_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_table_is_made_from_the_settings() -> None:
    text = README.read_text()
    table = text[text.index(TABLE_START) + len(TABLE_START) : text.index(TABLE_END)].strip()
    assert table == settings_table(), "run `python -m app.settings --readme` and commit README.md"


def test_every_setting_has_a_row_with_its_default_and_meaning() -> None:
    rows = settings_table().splitlines()[2 : 2 + len(Settings.model_fields)]
    for name, row in zip(Settings.model_fields, rows, strict=True):
        variable, default, meaning = (cell.strip() for cell in row.strip("|").split(" | "))
        assert variable == f"`ALEXNET_{name.upper()}`" and default and len(meaning) > 3, row


def test_every_alexnet_variable_in_the_tree_is_declared_once() -> None:
    """Each ALEXNET_* name that code, scripts, compose.yaml or the docs use is a Settings field or a deployment
    variable (app/settings.py), and each declared name is used somewhere besides its declaration."""
    import re

    from app.settings import DEPLOYMENT_VARIABLES

    root = README.parent
    files = [p for d in ("app", "model", "index", "training", "docker", "bench") for p in (root / d).rglob("*") if p.is_file()]
    files += [root / "compose.yaml", root / "Makefile", README]
    used = {
        m
        for p in files
        if p.suffix not in (".png", ".ico")
        for m in re.findall(r"ALEXNET_[A-Z0-9_]*[A-Z0-9]", p.read_text(errors="replace"))
    }
    fields = {f"ALEXNET_{name.upper()}" for name in Settings.model_fields}
    assert fields.isdisjoint(DEPLOYMENT_VARIABLES)
    assert used - fields - set(DEPLOYMENT_VARIABLES) == set()
    elsewhere = {
        m
        for p in files
        if p.name not in ("settings.py", "README.md")
        for m in re.findall(r"ALEXNET_[A-Z0-9_]*[A-Z0-9]", p.read_text(errors="replace"))
    }
    assert set(DEPLOYMENT_VARIABLES) - elsewhere == set(), "declared but read nowhere"
