"""Hard max lifetime end to end: real redis-server, Celery worker and beat, fake cloud.

A session touched without pause still ends at its hard lifetime: an ``expiring`` event
first (``ATLAS_EXPIRY_WARNING_MS`` before), then ``terminating`` with reason
``max_lifetime``, within the reaper's sweep latency of the deadline; its quota reservation
(corrected to the pod's real price while it ran) is given back when it ends.
"""

from __future__ import annotations

import threading
import time

import pytest

from atlas_tasks import events, orchestrator
from atlas_tasks.config import reset_settings
from atlas_tasks.errors import NotTracked
from atlas_tasks.quotas.store import QuotaStore
from atlas_tasks.redis_conn import get_redis
from atlas_tasks.testing.localstack import LocalCluster

pytestmark = pytest.mark.integration

IMAGE = "ghcr.io/acme/infer:latest"
LIFETIME_MS = 5_000
WARNING_MS = 1_500
#: The sweep runs every ATLAS_REAP_INTERVAL_MS (1 s); the terminate that follows is one
#: provider call. The idle clock's sweep path has the same bound.
SWEEP_LATENCY_S = 2.5


def test_touched_session_ends_at_its_max_lifetime(
    cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATLAS_EXPIRY_WARNING_MS", str(WARNING_MS))
    reset_settings()
    quotas = QuotaStore(get_redis())
    # beat's atlas.quotas.refresh_prices cached the fake cloud's catalog at start
    deadline = time.monotonic() + 20
    while quotas.quote("runpod", "h100").hourly_usd is None:
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.1)
    s = orchestrator.spawn(
        provider="runpod",
        gpu="h100",
        image=IMAGE,
        idle_ttl_ms=1_000,
        user_id="bob",
        tenant_id="acme",
        max_lifetime_ms=LIFETIME_MS,
    )
    compute = s.wait(timeout=30)
    info = orchestrator.info(s.id)
    assert info.tenant_id == "acme" and info.expires_at_ms is not None
    expires_s = info.expires_at_ms / 1000
    reservation = quotas.reservation(s.id)
    assert reservation is not None and reservation.price_known
    # corrected from the catalog estimate to the pod's real price once running
    assert compute.cost_per_hour is not None
    assert reservation.hourly_usd == pytest.approx(compute.cost_per_hour)

    stop = threading.Event()

    def heartbeat() -> None:  # a forgotten browser tab: touches, far inside the idle TTL
        while not stop.is_set():
            try:
                orchestrator.touch(s.id)
            except NotTracked:
                return
            stop.wait(0.1)

    toucher = threading.Thread(target=heartbeat, daemon=True)
    toucher.start()
    try:
        seen = list(events.subscribe(s.id, timeout=LIFETIME_MS / 1000 + 15, until=("terminated",)))
    finally:
        stop.set()
        toucher.join(5)
    ended_at = time.time()
    kinds = [e.type for e in seen]
    assert "terminating" in kinds, (kinds, cluster.logs())
    expiring = [e for e in seen if e.type == "expiring"]
    assert len(expiring) == 1, kinds
    assert kinds.index("expiring") < kinds.index("terminating")
    assert 0 < expiring[0].data["in_ms"] <= WARNING_MS
    # the warning went out about WARNING_MS before the deadline (within one sweep)
    assert (
        expires_s - WARNING_MS / 1000 - 0.05
        <= expiring[0].ts
        <= (expires_s - WARNING_MS / 1000 + SWEEP_LATENCY_S)
    )
    terminating = next(e for e in seen if e.type == "terminating")
    assert terminating.data["reason"] == "max_lifetime"
    assert expires_s - 0.05 <= terminating.ts <= expires_s + SWEEP_LATENCY_S, (
        terminating.ts - expires_s
    )
    assert ended_at <= expires_s + SWEEP_LATENCY_S + 5
    final = orchestrator.info(s.id)
    assert (final.status, final.reason) == ("terminated", "max_lifetime")
    assert [p for p in cluster.cloud.live_pods() if p.get("name") == s.pod_name] == []
    # the reservation went with the session
    assert quotas.reservation(s.id) is None
    for scope, ident in (("user", "bob"), ("tenant", "acme")):
        use = quotas.usage(scope, ident)  # type: ignore[arg-type]
        assert (use.sessions, use.hourly_usd) == (0, 0.0)
