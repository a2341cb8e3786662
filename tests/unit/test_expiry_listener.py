"""The expiry listener (keyspace-event fast path) degrades where CONFIG SET is refused."""

from __future__ import annotations

from typing import Any

import redis

from atlas_tasks.sessions.expiry_listener import enable_expiry_events


class _RefusingRedis:
    def config_get(self, name: str) -> dict[str, str]:
        raise redis.ResponseError("unknown command 'CONFIG'")

    def config_set(self, name: str, value: str) -> None:  # pragma: no cover - not reached
        raise AssertionError("must not be called")


class _RecordingRedis:
    def __init__(self, current: str) -> None:
        self.current = current
        self.set_to: Any = None

    def config_get(self, name: str) -> dict[str, str]:
        return {name: self.current}

    def config_set(self, name: str, value: str) -> None:
        self.set_to = value


def test_refused_config_returns_false_and_logs(caplog: Any) -> None:
    assert enable_expiry_events(_RefusingRedis()) is False  # type: ignore[arg-type]
    assert "reaped by the beat sweep only" in caplog.text


def test_existing_flags_are_kept() -> None:
    client = _RecordingRedis("Kg")
    assert enable_expiry_events(client) is True  # type: ignore[arg-type]
    assert set(client.set_to) == set("KgEx")


def test_already_enabled_is_left_alone() -> None:
    client = _RecordingRedis("AE")
    assert enable_expiry_events(client) is True  # type: ignore[arg-type]
    assert client.set_to is None
