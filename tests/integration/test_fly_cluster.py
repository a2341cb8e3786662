"""Fly platform ops on a real cluster: redis-server, two Celery workers, the fake cloud.

* ``atlas.fly.deploy`` runs a fake ``fly`` (on the workers' PATH) and streams its lines to
  a subscriber in this process, in order, ending with ``exit``; timeouts kill the tree.
* The logs streamer runs once per app across both workers, publishes every entry of the
  fake cloud's logs endpoint exactly once, and resumes from its Redis cursor after the
  worker running it is SIGKILLed.
"""

from __future__ import annotations

import os
import stat
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from atlas_tasks import fly
from atlas_tasks.celery_app import get_app
from atlas_tasks.config import reset_settings
from atlas_tasks.constants import TASK_FLY_LOGS_POLL
from atlas_tasks.fly import store
from atlas_tasks.redis_conn import get_redis, reset_redis_clients
from atlas_tasks.testing.localstack import LocalCluster
from tests.support.harness import in_ci, redis_available

pytestmark = pytest.mark.integration

# The fake flyctl runs the ``behaviour.py`` of its working directory (the app dir), so each
# test scripts its own deploy.
FAKE_FLY = """\
import os, subprocess, sys, time
def say(text):
    sys.stdout.write(text + "\\n")
    sys.stdout.flush()
exec(open("behaviour.py").read())
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    if not redis_available():
        if in_ci():
            pytest.fail("redis-server is required in CI")
        pytest.skip("redis-server not installed")
    bin_dir = tmp_path_factory.mktemp("bin")
    script = bin_dir / "fly"
    script.write_text(f"#!{sys.executable}\n{FAKE_FLY}")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    saved_path = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{saved_path}"  # inherited by the workers
    c = LocalCluster(
        beat=False,
        workers=2,
        concurrency=8,
        visibility_timeout_s=6,
        fly_config_file_enabled="false",
        fly_logs_poll_interval_s=0.1,
        fly_logs_lease_s=2,
        fly_logs_slice_s=1,
    )
    try:
        c.cloud.start()
        c.settings["ATLAS_FLY_API_URL"] = f"{c.cloud.url}/fly"
        c.settings["ATLAS_FLY_API_TOKEN"] = c.cloud.api_key
        with c:
            yield c
    finally:
        os.environ["PATH"] = saved_path


@pytest.fixture(autouse=True)
def _point_at_cluster(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key, value in cluster.env.items():
        if key.startswith("ATLAS_"):
            monkeypatch.setenv(key, value)
    reset_settings()
    reset_redis_clients()
    yield
    if any(not w.alive() for w in cluster.workers):
        print(cluster.logs())


def make_app(tmp_path: Path, behaviour: str) -> Path:
    directory = tmp_path / "project" / "api"
    directory.mkdir(parents=True)
    (directory / "fly.toml").write_text('app = "api"\n')
    (directory / "behaviour.py").write_text(textwrap.dedent(behaviour))
    return directory


def gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


# ---------------------------------------------------------------------- deploy


def test_deploy_task_streams_lines_in_order(cluster: LocalCluster, tmp_path: Path) -> None:
    app_dir = make_app(
        tmp_path,
        """
        for i in range(1, 21):
            say(f"==> step {i}")
            time.sleep(0.01)
        say("token=" + os.environ.get("FLY_API_TOKEN", ""))
    """,
    )
    ticket = fly.enqueue_deploy(str(app_dir.parent), "api")
    got = list(fly.subscribe_deploy(ticket, timeout=30))
    assert got, cluster.logs()
    assert got[0].type == "started" and got[-1].type == "exit"
    lines = [e for e in got if e.type == "line"]
    assert [e.data["line"] for e in lines[:20]] == [f"==> step {i}" for i in range(1, 21)]
    assert [e.data["n"] for e in lines] == list(range(1, 22))
    assert lines[-1].data["line"] == f"token={cluster.cloud.api_key}"  # FLY_API_TOKEN passed
    assert got[-1].data == {"ok": True, "code": 0, "error": None}
    # a late subscriber replays the same ticket from the start
    assert [e.type for e in fly.subscribe_deploy(ticket, timeout=5)] == [e.type for e in got]
    # the task result carries no output lines
    result = get_app().AsyncResult(f"atlas-fly-{ticket}").get(timeout=10)
    assert result["ok"] is True and result["lines"] == 21 and "step" not in str(result)


def test_deploy_failures_end_the_ticket_with_an_error(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    make_app(
        tmp_path,
        """
        say("building")
        say("Error: unsuccessful command 'flyctl deploy'")
        sys.exit(4)
    """,
    )
    ticket = fly.enqueue_deploy(str(tmp_path / "project"), "api")
    last = list(fly.subscribe_deploy(ticket, timeout=30))[-1]
    assert last.type == "exit" and last.data["ok"] is False and last.data["code"] == 4
    assert last.data["error"]["kind"] == "provider" and last.data["error"]["status"] == 4
    assert "unsuccessful command" in last.data["error"]["message"]
    # the task result (shown by Flower) keeps the first line only, never flyctl's output
    result = get_app().AsyncResult(f"atlas-fly-{ticket}").get(timeout=10)
    assert result["error"]["message"] == "fly deploy exited with code 4; last output:"

    ticket = fly.enqueue_deploy(str(tmp_path / "project"), "no-such-dir")
    last = list(fly.subscribe_deploy(ticket, timeout=30))[-1]
    assert last.data["error"]["kind"] == "validation"
    assert "app_dir" in last.data["error"]["message"]


def test_deploy_activity_timeout_kills_the_tree_on_the_worker(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    make_app(
        tmp_path,
        """
        child = subprocess.Popen(["sleep", "300"])
        say(f"pid {os.getpid()}")
        say(f"pid {child.pid}")
        time.sleep(300)
    """,
    )
    ticket = fly.enqueue_deploy(str(tmp_path / "project"), "api", activity_timeout_s=0.8)
    got = list(fly.subscribe_deploy(ticket, timeout=30))
    pids = [int(e.data["line"].split()[1]) for e in got if e.type == "line"]
    assert len(pids) == 2
    assert got[-1].data["error"]["kind"] == "timeout"
    assert "activity timeout" in got[-1].data["error"]["message"]
    assert all(gone(pid) for pid in pids), pids


# ---------------------------------------------------------------------- logs


def _append(cluster: LocalCluster, app: str, start: int, count: int) -> None:
    entries = [{"message": f"msg {i}"} for i in range(start, start + count)]
    r = httpx.post(f"{cluster.cloud.url}/_admin/fly/logs/{app}", json={"entries": entries})
    assert r.status_code == 200, r.text


def _stats(cluster: LocalCluster, app: str) -> dict[str, Any]:
    return dict(httpx.get(f"{cluster.cloud.url}/_admin/fly/logs/{app}").json())


class Collector:
    """Runs subscribe_logs(app) in a thread and keeps every message it yields.

    A generator can only be closed by the thread running it, so :meth:`close` sets a flag
    and appends one more log line to wake it up; it then unsubscribes on its own.
    """

    SENTINEL = "__stop__"

    def __init__(self, app: str, cluster: LocalCluster) -> None:
        self.app = app
        self.cluster = cluster
        self.messages: list[str] = []
        self.done = threading.Event()
        self._gen = fly.subscribe_logs(app, timeout=30)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for entry in self._gen:
                if self.done.is_set():
                    break
                self.messages.append(entry.message)
        finally:
            self._gen.close()  # unsubscribes now, not when the registration expires

    def wait_for(self, count: int, timeout: float, cluster: LocalCluster) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.messages) < count:
            time.sleep(0.05)
        assert len(self.messages) >= count, (self.messages[-5:], cluster.logs()[-6000:])

    def close(self) -> None:
        self.done.set()
        httpx.post(
            f"{self.cluster.cloud.url}/_admin/fly/logs/{self.app}",
            json={"entries": [{"message": self.SENTINEL}]},
        )
        self.thread.join(15)
        assert not self.thread.is_alive()


def _node(args: list[str]) -> str:
    """``w1@`` for a worker started with ``-n w1@%h`` (owner tokens start with the node)."""
    return args[args.index("-n") + 1].split("@")[0] + "@"


def _wait_holder(app: str, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        owner = store.holder(get_redis(), app)
        if owner:
            return owner
        time.sleep(0.05)
    raise AssertionError(f"no streamer took the lock of {app}")


def test_logs_streamer_is_single_instance_across_two_workers(cluster: LocalCluster) -> None:
    app = "single"
    httpx.post(f"{cluster.cloud.url}/_admin/fly/logs-auth", json={"latency_s": 0.03})
    try:
        collector = Collector(app, cluster)
        _wait_holder(app)
        # Hammer the cluster with extra starts: every one of them must find the lock taken.
        extra = [get_app().send_task(TASK_FLY_LOGS_POLL, args=[app]) for _ in range(8)]
        holders: set[str] = set()
        total = 0
        for _ in range(10):
            _append(cluster, app, total + 1, 15)
            total += 15
            holders.add(store.holder(get_redis(), app) or "")
            time.sleep(0.25)
        collector.wait_for(total, 20, cluster)
        results = [r.get(timeout=20) for r in extra]
        collector.close()
    finally:
        httpx.post(f"{cluster.cloud.url}/_admin/fly/logs-auth", json={"latency_s": 0})
    assert collector.messages == [f"msg {i}" for i in range(1, total + 1)]  # once, in order
    assert [r["outcome"] for r in results] == ["locked"] * 8
    assert _stats(cluster, app)["max_inflight"] == 1  # never two polls at the same time
    holders.discard("")
    assert holders and all(h.startswith(("w1@", "w2@", "w3@")) for h in holders), holders
    # no subscriber left → the streamer stops and lets go of the app
    deadline = time.monotonic() + 40
    while store.holder(get_redis(), app) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert store.holder(get_redis(), app) is None
    assert get_redis().get(store.cursor_key(app)) is None


def test_logs_streamer_resumes_from_its_cursor_after_a_worker_is_killed(
    cluster: LocalCluster,
) -> None:
    app = "resume"
    collector = Collector(app, cluster)
    try:
        owner = _wait_holder(app)
        _append(cluster, app, 1, 30)
        collector.wait_for(30, 20, cluster)
        owner = _wait_holder(app)
        victim = next(w for w in cluster.workers if owner.startswith(_node(w.args)))
        victim.kill()  # SIGKILL mid-stream: lock held until its lease runs out
        cluster.workers.remove(victim)
        _append(cluster, app, 31, 30)  # arrive while no streamer runs
        collector.wait_for(60, 30, cluster)
        _append(cluster, app, 61, 10)
        collector.wait_for(70, 20, cluster)
        new_owner = _wait_holder(app)
    finally:
        collector.close()
        cluster.add_worker(hostname="w3@%h")  # back to two workers for what runs next
    assert new_owner != owner
    assert collector.messages == [f"msg {i}" for i in range(1, 71)]  # no repeat, no gap
