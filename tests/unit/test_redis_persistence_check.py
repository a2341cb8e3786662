"""The worker-start warning about a Redis that forgets everything on restart."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from atlas_tasks.celery_app import persistence_problem


class _Config:
    """A client stub answering CONFIG GET from a dict, or refusing CONFIG."""

    def __init__(self, values: dict[str, str] | None) -> None:
        self.values = values

    def config_get(self, name: str) -> dict[str, Any]:
        if self.values is None:
            raise redis.ResponseError("unknown command 'CONFIG'")
        return {name: self.values[name]}


def _problem(values: dict[str, str] | None) -> str | None:
    return persistence_problem(_Config(values))  # type: ignore[arg-type]


def test_no_persistence_is_reported() -> None:
    problem = _problem({"appendonly": "no", "save": ""})
    assert problem and "no persistence" in problem


def test_rdb_only_is_reported() -> None:
    problem = _problem({"appendonly": "no", "save": "3600 1 300 100"})
    assert problem and "RDB snapshots only" in problem


@pytest.mark.parametrize("save", ["", "3600 1"])
def test_aof_is_fine(save: str) -> None:
    assert _problem({"appendonly": "yes", "save": save}) is None


def test_config_disabled_is_not_an_alarm() -> None:
    # Managed Redis often renames or disables CONFIG: we cannot tell, so say nothing.
    assert _problem(None) is None
