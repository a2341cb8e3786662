"""``atlas-tasks sessions ...`` and ``atlas-tasks doctor`` against real clusters: the
doctor passes on a healthy one and fails for each broken piece it checks."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result

from atlas_tasks import orchestrator
from atlas_tasks.cli import cli
from atlas_tasks.config import reset_settings
from atlas_tasks.ops_cli import LAST_SWEEP_KEY
from atlas_tasks.providers.registry import clear_provider_cache
from atlas_tasks.redis_conn import get_redis, reset_redis_clients
from atlas_tasks.testing.localstack import LocalCluster, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("COLUMNS", "250")  # rich must not cut ids in the tables
    return CliRunner()


def _invoke(runner: CliRunner, *args: str) -> Result:
    # The command reads settings fresh, like a new process would.
    reset_settings()
    reset_redis_clients()
    clear_provider_cache()
    return runner.invoke(cli, list(args), catch_exceptions=False)


def _doctor(runner: CliRunner) -> tuple[int, dict[str, dict[str, Any]]]:
    result = _invoke(runner, "doctor", "--json", "--queue-timeout", "1")
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    return result.exit_code, checks


def _wait(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def healthy(cluster: LocalCluster) -> Iterator[redis.Redis]:
    """The module cluster with AOF on (the test Redis starts without) and a recent sweep."""
    r = get_redis()
    r.config_set("appendonly", "yes")
    _wait(lambda: r.get(LAST_SWEEP_KEY) is not None, "the first sweep")
    yield r
    r.config_set("appendonly", "yes")


# --------------------------------------------------------------------------- doctor
def test_doctor_passes_on_a_healthy_cluster(healthy: redis.Redis, runner: CliRunner) -> None:
    code, checks = _doctor(runner)
    assert code == 0, checks
    for name in (
        "settings",
        "redis",
        "broker",
        "queue compute",
        "queue maintenance",
        "queue jobs",
        "queue fly",
        "beat lock",
        "last sweep",
        "keyspace events",
        "persistence",
        "provider runpod",
    ):
        assert checks[name]["status"] == "ok", checks[name]
    table = _invoke(runner, "doctor")
    assert table.exit_code == 0
    assert "atlas-tasks doctor" in table.stdout and "0 failed" in table.stdout


def test_doctor_fails_when_keyspace_events_are_off(healthy: redis.Redis, runner: CliRunner) -> None:
    flags = healthy.config_get("notify-keyspace-events")["notify-keyspace-events"]
    assert flags is not None
    healthy.config_set("notify-keyspace-events", "")
    try:
        code, checks = _doctor(runner)
    finally:
        healthy.config_set("notify-keyspace-events", flags)
    assert code == 1
    assert checks["keyspace events"]["status"] == "fail"
    assert checks["redis"]["status"] == "ok"


def test_doctor_fails_when_persistence_is_off(healthy: redis.Redis, runner: CliRunner) -> None:
    healthy.config_set("appendonly", "no")
    healthy.config_set("save", "")
    code, checks = _doctor(runner)
    assert code == 1
    assert checks["persistence"]["status"] == "fail"
    assert "no persistence" in checks["persistence"]["detail"]


def test_doctor_fails_on_a_bad_provider_key(
    healthy: redis.Redis, runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATLAS_RUNPOD_API_KEY", "definitely-not-the-key")
    code, checks = _doctor(runner)
    assert code == 1
    assert checks["provider runpod"]["status"] == "fail"
    assert "unauthorized" in checks["provider runpod"]["detail"]
    assert "definitely-not-the-key" not in json.dumps(checks)


def test_doctor_fails_without_a_secret_key(
    healthy: redis.Redis, runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ATLAS_SECRET_KEY")
    code, checks = _doctor(runner)
    assert code == 1
    assert checks["settings"]["status"] == "fail"
    assert "ATLAS_SECRET_KEY" in checks["settings"]["detail"]


def test_doctor_fails_when_redis_is_down(
    healthy: redis.Redis, runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATLAS_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    code, checks = _doctor(runner)
    assert code == 1
    assert checks["redis"]["status"] == "fail"
    assert checks["broker"]["status"] == "fail"
    assert time.monotonic() - started < 30  # answers, does not hang on retries


def test_doctor_fails_without_worker_or_beat() -> None:
    runner = CliRunner()
    with LocalCluster(workers=0, beat=False, fakecloud={"boot_delay_s": 0.0}) as bare:
        get_redis(bare.redis_url).config_set("appendonly", "yes")
        code, checks = _doctor(runner)
        assert code == 1
        assert checks["queue compute"]["status"] == "fail"
        assert checks["queue maintenance"]["status"] == "fail"
        assert checks["beat lock"]["status"] == "fail"
        assert checks["last sweep"]["status"] == "fail"
        assert "never" in checks["last sweep"]["detail"]
        # A sweep recorded long ago (beat died an hour back) is stale, not "never".
        r = get_redis(bare.redis_url)
        secs, _ = r.time()
        r.set(LAST_SWEEP_KEY, json.dumps({"at_ms": (int(secs) - 3600) * 1000}))
        code, checks = _doctor(runner)
        assert code == 1
        assert checks["last sweep"]["status"] == "fail"
        assert re.match(r"36\d\ds ago", checks["last sweep"]["detail"]), checks["last sweep"]
        # what it does not break, it does not blame
        assert checks["redis"]["status"] == "ok" and checks["settings"]["status"] == "ok"


# --------------------------------------------------------------------------- sessions
def test_sessions_list_info_touch_stop(cluster: LocalCluster, runner: CliRunner) -> None:
    alice = orchestrator.spawn(
        provider="runpod", gpu="h100", image="acme/x:1", user_id=7, idle_ttl_ms=120_000
    )
    bob = orchestrator.spawn(
        provider="runpod", gpu="a100_80g", image="acme/x:1", user_id="bob", idle_ttl_ms=120_000
    )
    alice.wait(timeout=30)
    bob.wait(timeout=30)

    listed = _invoke(runner, "sessions", "list", "--json")
    assert listed.exit_code == 0
    ids = {s["id"]: s for s in json.loads(listed.stdout)}
    assert {alice.id, bob.id} <= set(ids)
    assert ids[alice.id]["status"] == "running" and ids[alice.id]["gpu"] == "h100"
    only_bob = json.loads(_invoke(runner, "sessions", "list", "--user", "bob", "--json").stdout)
    assert [s["id"] for s in only_bob] == [bob.id]
    only_7 = json.loads(_invoke(runner, "sessions", "list", "--user", "7", "--json").stdout)
    assert [s["id"] for s in only_7] == [alice.id]
    assert (
        json.loads(_invoke(runner, "sessions", "list", "--provider", "vast", "--json").stdout) == []
    )
    running = json.loads(
        _invoke(runner, "sessions", "list", "--status", "running", "--json").stdout
    )
    assert {alice.id, bob.id} <= {s["id"] for s in running}

    table = _invoke(runner, "sessions", "list")
    assert table.exit_code == 0
    assert alice.id in table.stdout and bob.id in table.stdout and "a100_80g" in table.stdout
    assert alice.token is None or alice.token not in table.stdout

    info = _invoke(runner, "sessions", "info", alice.id, "--json")
    assert info.exit_code == 0
    assert json.loads(info.stdout)["status"] == "running"
    assert alice.id in _invoke(runner, "sessions", "info", alice.id).stdout

    touched = _invoke(runner, "sessions", "touch", alice.id)
    assert touched.exit_code == 0 and "touched" in touched.stdout

    stopped = _invoke(runner, "sessions", "stop", bob.id)
    assert stopped.exit_code == 0
    _wait(lambda: orchestrator.info(bob.id).status == "terminated", "bob terminated")
    assert bob.id not in {
        s["id"] for s in json.loads(_invoke(runner, "sessions", "list", "--json").stdout)
    }

    for command in ("info", "touch", "stop"):
        missing = _invoke(runner, "sessions", command, "no-such-session")
        assert missing.exit_code == 1, (command, missing.output)
        assert "error:" in missing.output and "Traceback" not in missing.output
    # touching an ended session is refused the same way
    assert _invoke(runner, "sessions", "touch", bob.id).exit_code == 1
    orchestrator.stop_tracked(alice.id)
