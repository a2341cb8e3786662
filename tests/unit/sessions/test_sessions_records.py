"""The typed session record: its hash codec, and statuses coming from the enum only."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from atlas_tasks.sessions import store
from atlas_tasks.sessions.records import SessionRecord, SessionStatus, lua_with_statuses


def test_a_spawn_record_round_trips_field_for_field() -> None:
    # What client.spawn writes: empty strings stay (the hash is unchanged), None is absent.
    written = {
        "id": "0123456789abcdef",
        "provider": "runpod",
        "status": "spawning",
        "pod_name": "atlas-0123456789abcdef",
        "label": "",
        "user_id": '{"u": 1}',
        "idle_ttl_ms": "60000",
        "auth": "bearer",
        "token_hash": "h" * 64,
        "base_url": "",
        "gpu": "h100",
        "image": "me/infer:1",
        "spawn_sealed": "sealed-payload",
    }
    record = SessionRecord.from_hash(written)
    assert record is not None
    assert record.status is SessionStatus.SPAWNING and record.user_id == {"u": 1}
    assert record.idle_ttl_ms == 60_000 and record.label == "" and record.compute is None
    assert record.to_hash() == written


def test_lua_written_fields_are_typed() -> None:
    record = SessionRecord.from_hash(
        {
            "id": "s1",
            "status": "failed",
            "compute": '{"id": "pod-1", "ports": []}',
            "error": '{"kind": "timeout", "message": "m"}',
            "create_unsettled": "1",
            "cleanup_attempts": "3",
            "created_at_ms": "1700000000000",
            "user_id": "not json{",
        }
    )
    assert record is not None and record.ended and not record.live
    assert record.compute == {"id": "pod-1", "ports": []}
    assert record.error == {"kind": "timeout", "message": "m"}
    assert record.create_unsettled and not record.cleanup_pending
    assert record.cleanup_attempts == 3 and record.created_at_ms == 1_700_000_000_000
    assert record.user_id is None  # unreadable JSON is no crash
    assert SessionRecord.from_hash({}) is None
    assert SessionRecord.from_hash({"id": "s2", "status": "bogus"}).status is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("status", "compute_id", "covers"),
    [
        ("running", "pod-1", True),
        ("spawning", None, True),
        ("terminating", "", True),
        ("running", "pod-2", False),
        ("terminated", "pod-1", False),
        ("failed", None, False),
    ],
)
def test_covers_pod_is_the_orphan_rule(status: str, compute_id: str | None, covers: bool) -> None:
    record = SessionRecord(id="s", status=SessionStatus(status), compute_id=compute_id)
    assert record.covers_pod("pod-1") is covers


def test_statuses_are_substituted_once_and_never_hand_typed_in_lua() -> None:
    assert lua_with_statuses("if st == $RUNNING then") == "if st == 'running' then"
    scripts = {
        name: value
        for name, value in vars(store).items()
        if name.startswith("_") and isinstance(value, str) and "redis.call" in value
    }
    assert len(scripts) > 15
    source = Path(store.__file__).read_text()
    for status in SessionStatus:
        # the source spells statuses as $NAME only; the loaded scripts carry the value
        assert f"'{status.value}'" not in source, status
        assert any(f"'{status.value}'" in lua for lua in scripts.values()), status
    for name, lua in scripts.items():
        assert not re.search(r"\$[A-Z]", lua), f"{name} has an unsubstituted status"
