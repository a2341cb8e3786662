"""The README's settings table is generated from AtlasSettings and kept in sync."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from atlas_tasks import settings_doc
from atlas_tasks.cli import cli
from atlas_tasks.config import AtlasSettings

README = Path(__file__).resolve().parents[2] / "README.md"
FIX = (
    f"README.md's settings table is out of date: run `{settings_doc.REGENERATE}` "
    "(or `python -m atlas_tasks.settings_doc`) and commit the result"
)


def _readme_rows() -> dict[str, str]:
    """env var → default column of the README table."""
    block = settings_doc.readme_block(README.read_text())
    assert block is not None, f"README.md lost its settings-table markers. {FIX}"
    rows = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`ATLAS_"):
            rows[cells[0].strip("`")] = cells[1]
    return rows


def test_every_setting_has_a_description() -> None:
    missing = [n for n, f in AtlasSettings.model_fields.items() if not f.description]
    assert not missing, (
        f"settings without Field(description=...): {missing}; the README "
        "table is generated from them"
    )


def test_every_setting_is_in_the_readme_with_its_default() -> None:
    rows = _readme_rows()
    for env, default, _ in settings_doc.rows():
        assert env in rows, f"{env} is missing. {FIX}"
        assert rows[env] == default, f"{env}: README says {rows[env]}, code {default}. {FIX}"
    stale = set(rows) - {env for env, _, _ in settings_doc.rows()}
    assert not stale, f"README lists settings that no longer exist: {stale}. {FIX}"


def test_the_readme_table_is_exactly_the_generated_one() -> None:
    assert settings_doc.readme_block(README.read_text()) == settings_doc.generated_block(), FIX


def test_the_cli_prints_and_updates_the_table(tmp_path: Path) -> None:
    runner = CliRunner()
    printed = runner.invoke(cli, ["settings", "--markdown"])
    assert printed.exit_code == 0 and "`ATLAS_FLY_APP`" in printed.output
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{settings_doc.BEGIN}\n| stale |\n{settings_doc.END}\noutro\n")
    result = runner.invoke(cli, ["settings", "--update-readme", "--readme", str(readme)])
    assert result.exit_code == 0, result.output
    text = readme.read_text()
    assert settings_doc.generated_block() in text and "| stale |" not in text
    assert text.startswith("intro\n") and text.endswith("outro\n")


def test_updating_a_readme_without_markers_fails_clearly(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("no table here\n")
    with pytest.raises(ValueError, match="markers"):
        settings_doc.update_readme(readme)
