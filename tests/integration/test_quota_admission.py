"""Quota admission raced from several OS processes against a real redis-server.

Each race runs in 4 Python processes; each one has loaded atlas_tasks and connected to
the test Redis through ``ATLAS_REDIS_URL`` (the default client of
:mod:`atlas_tasks.quotas`), waits at a start line (a file appearing) and then fires its
share of the 50 requests from as many threads at once. Whatever the interleaving, the
admission script must let exactly as many sessions in as the limit allows, and usage
must match what is reserved.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from atlas_tasks import quotas
from atlas_tasks.config import reset_settings
from atlas_tasks.quotas.store import QuotaStore, usage_key
from atlas_tasks.testing.localstack import RedisServer

pytestmark = pytest.mark.integration

PROCESSES = 4
REQUESTS = 50
SHARDS = "16"

# Reads one JSON command per stdin line ({"go": start-line path, "jobs": [...]}), marks
# itself ready, waits for the start line, runs the jobs from one thread each and prints
# one JSON list of results. The processes live for the whole module (interpreter start-up
# costs seconds on a loaded machine); every race still crosses 4 processes.
CHILD = """\
import json, os, sys, time
from concurrent.futures import ThreadPoolExecutor
from atlas_tasks import quotas
quotas.usage("user", "warm-up")  # settings, connection and scripts loaded before any race

def run(job):
    if job["op"] == "release":
        return {"session": job["session"], "released": quotas.release(job["session"]) is not None}
    try:
        quotas.admit(job["session"], user_id=job.get("user"), tenant_id=job.get("tenant"),
                     hourly_usd=job.get("hourly"))
        return {"session": job["session"], "admitted": True}
    except quotas.QuotaExceeded as exc:
        return {"session": job["session"], "admitted": False, "scope": exc.scope,
                "limit": exc.limit_name}

print("ready", flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    open(f"{cmd['go']}.ready.{os.getpid()}", "w").close()
    while not os.path.exists(cmd["go"]):
        time.sleep(0.002)
    with ThreadPoolExecutor(len(cmd["jobs"])) as pool:
        print(json.dumps(list(pool.map(run, cmd["jobs"]))), flush=True)
"""


class Racers:
    """PROCESSES long-lived child processes that run jobs released at one start line."""

    def __init__(self, redis_url: str, workdir: Path, layout: str) -> None:
        self.workdir = workdir
        self.layout = layout
        env = {**os.environ, "ATLAS_REDIS_URL": redis_url}
        env.pop("ATLAS_REDIS_SHARDS", None)
        if layout == "tagged":
            env["ATLAS_REDIS_SHARDS"] = SHARDS
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-c", CHILD],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(PROCESSES)
        ]
        for proc in self.procs:  # blocks until each child is connected (or fails the test)
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready", "racer failed to start"

    def race(self, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run ``jobs`` split over the processes, all released at one start line."""
        go = self.workdir / f"go-{time.monotonic_ns()}"
        for i, proc in enumerate(self.procs):
            assert proc.stdin is not None
            share = jobs[i::PROCESSES]
            proc.stdin.write(json.dumps({"go": str(go), "jobs": share}) + "\n")
            proc.stdin.flush()
        deadline = time.monotonic() + 60
        while len(list(self.workdir.glob(f"{go.name}.ready.*"))) < PROCESSES:
            assert all(p.poll() is None for p in self.procs), "a racer died"
            assert time.monotonic() < deadline, "racers did not reach the start line"
            time.sleep(0.005)
        go.touch()
        results: list[dict[str, Any]] = []
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # the pytest timeout bounds a hung child
            assert line, "a racer died during the race"
            results += json.loads(line)
        assert len(results) == len(jobs)
        return results

    def close(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module", params=["untagged", "tagged"])
def racers(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Racers]:
    """The racing processes, in one key layout: one Redis (names as before), or the
    tagged layout of a Redis Cluster (every quota key in the ``{quota}`` slot)."""
    racers = Racers(redis_server.url, tmp_path_factory.mktemp("racers"), str(request.param))
    yield racers
    racers.close()


@pytest.fixture(autouse=True)
def _same_layout(racers: Racers, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process reads and writes in the racers' layout."""
    if racers.layout == "tagged":
        monkeypatch.setenv("ATLAS_REDIS_SHARDS", SHARDS)
        reset_settings()


def admitted(results: list[dict[str, Any]]) -> set[str]:
    return {r["session"] for r in results if r.get("admitted")}


def live_ids(client: redis.Redis) -> set[str]:
    return {r.session_id for r in QuotaStore(client).reservations()}


@pytest.mark.parametrize(
    ("limits", "spent", "limit_name", "usage"),
    [
        ({"max_sessions": 3}, 0.0, "max_sessions", (3, 9.0)),
        ({"max_hourly_usd": 10}, 0.0, "max_hourly_usd", (3, 9.0)),
        # 1 USD spent + one hour of 3 sessions at 3 USD/h = 10 USD: the budget, exactly.
        ({"monthly_usd": 10}, 1.0, "monthly_usd", (3, 9.0)),
    ],
)
def test_fifty_concurrent_admissions_admit_exactly_three(
    racers: Racers,
    redis_client: redis.Redis,
    limits: dict[str, Any],
    spent: float,
    limit_name: str,
    usage: tuple[int, float],
) -> None:
    quotas.set_limits("user", "u1", client=redis_client, **limits)
    if spent:
        quotas.record_spend(spent, user_id="u1", client=redis_client)
    jobs = [
        {"op": "admit", "session": f"s{i}", "user": "u1", "hourly": 3.0} for i in range(REQUESTS)
    ]
    results = racers.race(jobs)
    ok = admitted(results)
    assert len(ok) == 3, results
    assert {(r["scope"], r["limit"]) for r in results if not r["admitted"]} == {
        ("user", limit_name)
    }
    use = quotas.usage("user", "u1", client=redis_client)
    assert (use.sessions, use.hourly_usd) == usage
    assert use.month_to_date_usd == spent
    assert live_ids(redis_client) == ok


def test_a_tenant_limit_holds_across_users_and_refusals_reserve_nothing(
    racers: Racers, redis_client: redis.Redis
) -> None:
    quotas.set_limits("tenant", "acme", max_sessions=3, max_hourly_usd=100, client=redis_client)
    jobs = [
        {"op": "admit", "session": f"s{i}", "user": f"u{i}", "tenant": "acme", "hourly": 2.5}
        for i in range(REQUESTS)
    ]
    results = racers.race(jobs)
    ok = admitted(results)
    assert len(ok) == 3
    use = quotas.usage("tenant", "acme", client=redis_client)
    assert (use.sessions, use.hourly_usd) == (3, 7.5)
    # Users refused by the tenant hold nothing: no usage hash was even created for them.
    keys = [str(key) for key in redis_client.keys(usage_key("user", "*"))]
    prefix, suffix = usage_key("user", "\0").split("\0")
    users_with_usage = {key.removeprefix(prefix).removesuffix(suffix) for key in keys}
    assert keys and all(key.startswith(prefix) for key in keys)
    assert users_with_usage == {f"u{s[1:]}" for s in ok}


def test_releases_make_room_and_double_releases_never_go_negative(
    racers: Racers, redis_client: redis.Redis
) -> None:
    quotas.set_limits("user", "u1", max_sessions=3, client=redis_client)
    quotas.set_limits("tenant", "t1", max_hourly_usd=9, client=redis_client)

    def admit_round(tag: str) -> set[str]:
        jobs = [
            {"op": "admit", "session": f"{tag}{i}", "user": "u1", "tenant": "t1", "hourly": 2.0}
            for i in range(REQUESTS)
        ]
        ok = admitted(racers.race(jobs))
        assert len(ok) == 3
        return ok

    first = admit_round("a")
    # Every session of the round released twice, the copies in different processes.
    releases = [{"op": "release", "session": f"a{i}"} for i in range(REQUESTS)] * 2
    results = racers.race(releases)
    released = [r["session"] for r in results if r["released"]]
    assert sorted(released) == sorted(first)  # each reservation given back exactly once
    for scope, ident in (("user", "u1"), ("tenant", "t1")):
        use = quotas.usage(scope, ident, client=redis_client)  # type: ignore[arg-type]
        assert (use.sessions, use.hourly_usd) == (0, 0.0)
    assert live_ids(redis_client) == set()
    # The room is back, for exactly as many as before.
    second = admit_round("b")
    assert quotas.usage("user", "u1", client=redis_client).sessions == 3
    assert quotas.usage("tenant", "t1", client=redis_client).hourly_usd == 6.0
    assert live_ids(redis_client) == second
