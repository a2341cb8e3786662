"""``celery_app.attach(host_app)``: a host project's own worker serves both its tasks and
ours; the asyncio client, ``wait(id)`` (and its "no worker consumes compute" hint) and
``list_sessions`` against the real cluster."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from atlas_tasks import celery_app, orchestrator
from atlas_tasks.errors import AtlasTimeoutError, NotTracked
from atlas_tasks.testing.localstack import LocalCluster, ManagedProcess, worker_ready
from tests.support.harness import redis_available

pytestmark = pytest.mark.integration

HOST_APP = """
import os
from celery import Celery
from atlas_tasks.celery_app import attach

app = Celery("hostproj", broker=os.environ["ATLAS_REDIS_URL"],
             backend=os.environ["ATLAS_REDIS_URL"])

@app.task(name="hostproj.add")
def add(a, b):
    return a + b

attach(app)
"""

SPAWN: dict[str, Any] = {
    "gpu": "h100",
    "image": "me/infer:1",
    "ports": [(8000, "http")],
    "auth": "bearer",
}


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, Path]]:
    if not redis_available():
        pytest.fail("redis-server is required")
    folder = tmp_path_factory.mktemp("hostproj")
    (folder / "hostproj.py").write_text(HOST_APP)
    # no atlas worker and no beat: only the host's worker (started by the test)
    with LocalCluster(workers=0, beat=False, fakecloud={"boot_delay_s": 0.0}) as cluster:
        yield cluster, folder


@pytest.fixture
def attached(
    host: tuple[LocalCluster, Path], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[LocalCluster, Path]]:
    host[0].apply_env()
    monkeypatch.syspath_prepend(str(host[1]))
    yield host
    # importing the host module made its app Celery's current app: give both back
    celery_app.detach()
    celery_app.app.set_current()
    sys.modules.pop("hostproj", None)


def test_wait_says_when_no_worker_consumes_compute(attached: tuple[LocalCluster, Path]) -> None:
    s = orchestrator.spawn(**SPAWN, user_id="nobody")
    with pytest.raises(AtlasTimeoutError) as caught:
        orchestrator.wait(s.id, timeout=1.5)
    assert "no worker consumes the 'compute' queue" in (caught.value.message or "")
    orchestrator.stop_tracked(s.id)


def test_host_worker_runs_its_task_and_our_spawn(attached: tuple[LocalCluster, Path]) -> None:
    cluster, folder = attached
    import hostproj  # noqa: PLC0415 - the host project, on sys.path for this test

    assert celery_app.get_app() is hostproj.app
    worker = ManagedProcess(
        "host-worker",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "hostproj",
            "worker",
            "-E",
            "-P",
            "threads",
            "-c",
            "8",
            "-Q",
            "celery,compute,maintenance",
            "-n",
            "host@%h",
            "--loglevel",
            "INFO",
            "--without-mingle",
            "--without-gossip",
        ],
        {**cluster.env, "PYTHONPATH": str(folder)},
    )
    worker_ready(worker)
    try:
        assert hostproj.add.delay(2, 3).get(timeout=30) == 5
        s = orchestrator.spawn(**SPAWN, user_id="carol")
        compute = s.wait(timeout=30)
        assert compute.status == "running" and compute.auth is not None
        assert orchestrator.wait(s.id, timeout=10).id == compute.id  # by id, later
        assert "atlas.compute.spawn" in worker.log()

        async def async_round_trip() -> list[str]:
            a = await orchestrator.aspawn(**SPAWN, user_id="carol")
            running = await orchestrator.await_running(a.id, timeout=30)
            assert running.auth is None  # the token was handed out once, by aspawn
            await orchestrator.atouch(a.id)
            info = await orchestrator.ainfo(a.id)
            assert info.status == "running" and info.user_id == "carol"
            listed = [i.id for i in await orchestrator.alist_sessions("carol")]
            await orchestrator.astop_tracked(a.id)
            with pytest.raises(NotTracked):
                await orchestrator.ainfo("no-such-session")
            return listed

        listed = asyncio.run(async_round_trip())
        assert listed[:2] != [] and listed[1] == s.id  # newest first
        sync_listed = [i.id for i in orchestrator.list_sessions("carol")]
        assert sync_listed == listed
        assert s.id in [i.id for i in orchestrator.list_sessions()]
        assert orchestrator.list_sessions("someone-else") == []
        orchestrator.stop_tracked(s.id)
    finally:
        worker.stop()
