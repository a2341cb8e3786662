"""The orphan scan survives any provider exception (not only ``AtlasError``): it reports
it in the sweep report, logs it at WARNING, and still scans the other providers and pods
and runs the other steps. Real redis-server; providers are stand-ins."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from atlas_tasks.config import reset_settings
from atlas_tasks.deps import Dependencies
from atlas_tasks.redis_conn import get_redis, reset_redis_clients
from atlas_tasks.sessions.reaper import SessionReaper
from atlas_tasks.sessions.store import store_for
from atlas_tasks.specs import Compute, ComputeStatus

pytestmark = pytest.mark.integration

OLD = datetime.now(UTC) - timedelta(hours=1)


def _pod(pod_id: str, name: str | None, provider: str = "good") -> Compute:
    return Compute(
        id=pod_id, provider=provider, name=name, status=ComputeStatus.RUNNING, created_at=OLD
    )


class _Good:
    def list_compute(self) -> list[Compute]:
        return [_pod("o1", "atlas-orphan1"), _pod("o2", "atlas-orphan2"), _pod("f1", "not-ours")]


class _Exploding:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def list_compute(self) -> list[Compute]:
        raise self.exc


class _WeirdPods:
    """Lists something that is not a Compute: per-pod handling must survive it."""

    def list_compute(self) -> list[Any]:
        return [object(), _pod("w1", "atlas-weird1", "weird")]


@pytest.fixture
def reaper(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[SessionReaper]:
    monkeypatch.setenv("ATLAS_REDIS_URL", redis_url)
    monkeypatch.setenv("ATLAS_REAP_PROVIDERS", "broken,good,keyerr,weird")
    monkeypatch.setenv("ATLAS_ORPHAN_GRACE_MS", "0")
    reset_settings()
    reset_redis_clients()
    store_for(get_redis()).ensure_epoch()
    table: dict[str, Any] = {
        "broken": _Exploding(ValueError("Expecting value: line 1 column 1 (char 0)")),
        "good": _Good(),
        "keyerr": _Exploding(KeyError("pods")),
        "weird": _WeirdPods(),
    }
    yield SessionReaper(
        Dependencies.from_client(get_redis(), providers=lambda name, **_: table[name])
    )
    reset_redis_clients()


def test_any_provider_exception_is_reported_and_the_sweep_goes_on(
    reaper: SessionReaper, caplog: pytest.LogCaptureFixture
) -> None:
    enqueued: list[tuple[str, str]] = []
    terminates: list[list[str]] = []
    with caplog.at_level(logging.WARNING, logger="atlas_tasks.sessions.reaper"):
        report = reaper.reap(
            enqueue_terminate=lambda ids, _: terminates.append(ids),
            enqueue_orphan=lambda p, pod_id, _n: enqueued.append((p, pod_id)),
            scan_orphans=True,
        )
    assert ("good", "o1") in enqueued and ("good", "o2") in enqueued
    assert ("weird", "w1") in enqueued
    assert report.providers_scanned == ["good", "weird"]
    assert any(e.startswith("broken: list: ValueError") for e in report.errors)
    assert any(e.startswith("keyerr: list: KeyError") for e in report.errors)
    assert any(e.startswith("weird: pod") for e in report.errors)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("broken" in w and "ValueError" in w for w in warnings)
    assert report.summary()["errors"] == report.errors


def test_an_enqueue_failing_for_one_pod_does_not_stop_the_others(reaper: SessionReaper) -> None:
    enqueued: list[str] = []

    def enqueue(_p: str, pod_id: str, _n: str | None) -> None:
        if pod_id == "o1":
            raise ConnectionResetError("broker went away")
        enqueued.append(pod_id)

    report = reaper.reap(
        enqueue_terminate=lambda *_: None, enqueue_orphan=enqueue, scan_orphans=True
    )
    assert "o2" in enqueued and "w1" in enqueued
    assert any("o1" in e and "ConnectionResetError" in e for e in report.errors)
    assert "o1" not in report.orphans and "o2" in report.orphans
