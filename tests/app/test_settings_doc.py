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
    rows = settings_table().splitlines()[2:]
    assert len(rows) == len(Settings.model_fields)
    for name, row in zip(Settings.model_fields, rows, strict=True):
        variable, default, meaning = (cell.strip() for cell in row.strip("|").split(" | "))
        assert variable == f"`ALEXNET_{name.upper()}`" and default and len(meaning) > 3, row
