"""The per-user session index behind ``orchestrator.list_sessions``: newest first, paged,
written with the record, and entries whose record expired pruned on read."""

from __future__ import annotations

from typing import Any

import pytest

from atlas_tasks import orchestrator
from atlas_tasks.redis_conn import get_redis
from atlas_tasks.sessions.store import Keys, user_index_key
from atlas_tasks.testing.localstack import LocalCluster

pytestmark = pytest.mark.integration

SPAWN: dict[str, Any] = {"gpu": "h100", "image": "me/infer:1", "ports": [(8000, "http")]}


def test_list_sessions_pages_newest_first_and_prunes_expired(cluster: LocalCluster) -> None:
    ids = [orchestrator.spawn(**SPAWN, user_id={"team": 3, "user": 9}).id for _ in range(4)]
    other = orchestrator.spawn(**SPAWN, user_id=10).id
    listed = [i.id for i in orchestrator.list_sessions({"user": 9, "team": 3})]
    assert listed == ids[::-1] and other not in listed  # JSON key order does not matter
    assert [
        i.id for i in orchestrator.list_sessions({"team": 3, "user": 9}, offset=1, limit=2)
    ] == ids[2:0:-1]
    r = get_redis()
    r.delete(Keys(ids[0]).record)  # as if the record had expired
    key = user_index_key('{"team": 3, "user": 9}')
    assert r.zcard(key) == 4
    assert [i.id for i in orchestrator.list_sessions({"team": 3, "user": 9})] == ids[:0:-1]
    assert r.zcard(key) == 3  # pruned by the read
    for sid in [*ids[1:], other]:
        orchestrator.stop_tracked(sid)
