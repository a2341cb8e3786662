"""Quota admission at the spawn level: ``orchestrator.spawn`` raced from 4 OS processes.

50 concurrent spawns of one user against ``max_sessions=3`` (and a tenant limit on top)
must admit exactly 3, and the 47 refusals must leave nothing behind: no session record,
no spawn intent, no broker message, no reservation. No worker runs: the admitted spawns
stay enqueued in the broker (the test Redis), where the test counts them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from atlas_tasks import constants as C
from atlas_tasks import sealing
from atlas_tasks.quotas.store import RESERVATIONS_INDEX_KEY, Limits, QuotaStore
from atlas_tasks.specs import GpuType

pytestmark = pytest.mark.integration

PROCESSES = 4
REQUESTS = 50
PRICE = 2.0

# One child: loads atlas_tasks (settings, Redis, broker connection warmed up), says
# "ready", waits for the start line, then fires its spawns from one thread each and prints
# one JSON list of outcomes.
CHILD = """\
import json, os, sys, time
from concurrent.futures import ThreadPoolExecutor
from atlas_tasks import orchestrator, quotas
from atlas_tasks.celery_app import get_app
quotas.usage("user", "warm-up")
with get_app().connection_for_write() as conn:
    conn.ensure_connection(max_retries=3)
go, n = sys.argv[1], int(sys.argv[2])

def one(i):
    try:
        s = orchestrator.spawn(provider="runpod", gpu="h100", gpu_count=2, image="me/i:1",
                               user_id="alice", tenant_id="acme", idle_ttl_ms=60_000)
        return {"admitted": True, "id": s.id}
    except quotas.QuotaExceeded as exc:
        return {"admitted": False, "scope": exc.scope, "limit": exc.limit_name}

print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.002)
with ThreadPoolExecutor(n) as pool:
    print(json.dumps(list(pool.map(one, range(n)))), flush=True)
"""


def _race(redis_url: str, workdir: Path) -> list[dict[str, Any]]:
    go = workdir / "go"
    env = {
        **os.environ,
        "ATLAS_REDIS_URL": redis_url,
        "ATLAS_SECRET_KEY": sealing.generate_key(),
        "ATLAS_MIN_IDLE_TTL_MS": "100",
    }
    env.pop("ATLAS_BROKER_URL", None)
    shares = [
        REQUESTS // PROCESSES + (1 if i < REQUESTS % PROCESSES else 0) for i in range(PROCESSES)
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(go), str(n)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in shares
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.strip() == "ready", proc.stderr.read() if proc.stderr else line
        go.touch()  # the start line: every process fires at once
        results: list[dict[str, Any]] = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            results += json.loads(out.strip().splitlines()[-1])
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()


def _enqueued_spawns(r: redis.Redis) -> list[str]:
    """Session ids of the spawn messages waiting in the broker's compute queue(s)."""
    ids: list[str] = []
    for key in r.scan_iter(f"{C.QUEUE_COMPUTE}*"):
        if r.type(key) != "list":
            continue
        for raw in r.lrange(key, 0, -1):
            message = json.loads(raw)
            headers = message.get("headers") or {}
            if headers.get("task") == C.TASK_SPAWN:
                ids.append(str(headers.get("id", "")).removeprefix("atlas-spawn-"))
    return ids


def test_fifty_concurrent_spawns_from_four_processes_admit_exactly_three(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    quotas = QuotaStore(redis_client)
    quotas.refresh_prices(
        "runpod",
        [
            GpuType(
                id="NVIDIA H100 80GB HBM3",
                provider="runpod",
                canonical="h100",
                lowest_price_per_hour=PRICE,
            )
        ],
    )
    quotas.set_limits("user", "alice", Limits.build(max_sessions=3))
    quotas.set_limits("tenant", "acme", Limits.build(max_sessions=10, max_hourly_usd=100.0))

    results = _race(redis_url, tmp_path)

    admitted = [r["id"] for r in results if r["admitted"]]
    refused = [r for r in results if not r["admitted"]]
    assert len(results) == REQUESTS
    assert len(admitted) == 3, results
    assert all((r["scope"], r["limit"]) == ("user", "max_sessions") for r in refused)
    # usage is exactly the admitted sessions, at the catalog price x gpu_count
    user, tenant = quotas.usage("user", "alice"), quotas.usage("tenant", "acme")
    assert (user.sessions, user.hourly_usd) == (3, 3 * 2 * PRICE)
    assert (tenant.sessions, tenant.hourly_usd) == (3, 3 * 2 * PRICE)
    assert sorted(redis_client.zrange(RESERVATIONS_INDEX_KEY, 0, -1)) == sorted(admitted)
    # the refusals left nothing: only the admitted sessions were recorded and enqueued
    assert sorted(redis_client.smembers(C.SESSIONS_SET_KEY)) == sorted(admitted)
    assert sorted(redis_client.zrange(C.INTENTS_KEY, 0, -1)) == sorted(admitted)
    assert len(list(redis_client.scan_iter(C.SESSION_KEY.format(id="*")))) == 3
    assert sorted(_enqueued_spawns(redis_client)) == sorted(admitted)
    for sid in admitted:
        record = redis_client.hgetall(C.SESSION_KEY.format(id=sid))
        assert record["tenant_id"] == "acme" and record["status"] == "spawning"


def test_a_failed_enqueue_releases_the_reservation(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker is unreachable: spawn fails with TransportError, the session is marked
    failed and its reservation given back in that same step."""
    from atlas_tasks import orchestrator
    from atlas_tasks.config import reset_settings
    from atlas_tasks.errors import TransportError
    from atlas_tasks.redis_conn import reset_redis_clients

    monkeypatch.setenv("ATLAS_REDIS_URL", redis_url)
    monkeypatch.setenv("ATLAS_SECRET_KEY", sealing.generate_key())
    reset_settings()
    reset_redis_clients()

    class NoBroker:
        def send_task(self, *args: Any, **kwargs: Any) -> None:
            raise ConnectionError("broker down")

    monkeypatch.setattr("atlas_tasks.celery_app.get_app", lambda: NoBroker())
    quotas = QuotaStore(redis_client)
    try:
        with pytest.raises(TransportError):
            orchestrator.spawn(
                provider="runpod", gpu="h100", image="me/i:1", user_id=7, tenant_id="acme"
            )
        for scope, ident in (("user", 7), ("tenant", "acme")):
            assert quotas.usage(scope, ident).sessions == 0  # type: ignore[arg-type]
        assert redis_client.zcard(RESERVATIONS_INDEX_KEY) == 0
        (sid,) = [
            k.removeprefix("atlas:session:")
            for k in redis_client.scan_iter(C.SESSION_KEY.format(id="*"))
        ]
        assert redis_client.hget(C.SESSION_KEY.format(id=sid), "status") == "failed"
    finally:
        reset_settings()
        reset_redis_clients()
