"""The CLI's tables: the terminal's width, and no cut at 80 columns when piped."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from atlas_tasks import ops_cli
from atlas_tasks.cli import cli


def test_piped_console_is_wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr("sys.stdout.isatty", lambda: False)
    assert ops_cli.console().width == ops_cli.PIPED_WIDTH
    monkeypatch.setenv("COLUMNS", "123")
    assert ops_cli.console().width == 123


def test_piped_tables_keep_long_cells_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    result = CliRunner().invoke(cli, ["gpus"])  # CliRunner's stdout is not a terminal
    assert result.exit_code == 0
    widest = max(len(line) for line in result.output.splitlines())
    assert widest > 80, "the table was squeezed into 80 columns"
    assert "…" not in result.output
