"""Real Flower against the test cluster: atlas tasks appear by name with their non-secret
context (session, user, provider, GPU, reason) and no secret in args, kwargs or result."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from atlas_tasks import orchestrator
from atlas_tasks.testing.localstack import LocalCluster, free_port
from tests.support.harness import flower

pytestmark = pytest.mark.integration


def test_flower_shows_spawn_without_secrets(cluster: LocalCluster) -> None:
    port = free_port()
    proc = flower({**cluster.env, "FLOWER_UNAUTHENTICATED_API": "true"}, port).start()
    try:
        base = f"http://127.0.0.1:{port}"
        proc.wait_until(lambda: _answers(base), 60, "Flower HTTP answer")
        time.sleep(1.0)  # let Flower attach to the event stream before the task runs
        api_key = cluster.cloud.api_key
        s = orchestrator.spawn(
            provider="runpod",
            gpu="h100",
            image="acme/x:1",
            auth="bearer",
            api_key=api_key,
            idle_ttl_ms=60_000,
            user_id="ops-user-7",
        )
        s.wait(timeout=30)
        task_id = f"atlas-spawn-{s.id}"
        task: dict[str, object] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            tasks = httpx.get(f"{base}/api/tasks", timeout=5).json()
            task = tasks.get(task_id, {})
            if task.get("state") == "SUCCESS" and task.get("result"):
                break
            time.sleep(0.3)
        assert task.get("name") == "atlas.compute.spawn", (task, proc.log()[-2000:])
        assert task.get("state") == "SUCCESS"
        blob = json.dumps(task)
        assert s.id in str(task.get("args"))
        assert "<sealed>" in str(task.get("args"))
        kwargs = str(task.get("kwargs"))
        for context in (s.id, "ops-user-7", "runpod", "h100"):
            assert context in kwargs, kwargs
        for secret in (s.token, api_key, cluster.env["ATLAS_SECRET_KEY"]):
            assert secret and secret not in blob
        info = httpx.get(f"{base}/api/task/info/{task_id}", timeout=5).json()
        assert s.token and s.token not in json.dumps(info) and api_key not in json.dumps(info)
        orchestrator.stop_tracked(s.id)
        stop_id = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not stop_id:
            tasks = httpx.get(
                f"{base}/api/tasks", params={"taskname": "atlas.compute.terminate"}, timeout=5
            ).json()
            stop_id = next((tid for tid, t in tasks.items() if s.id in str(t.get("args"))), "")
            time.sleep(0.3)
        assert stop_id, "the terminate never showed up in Flower"
        assert "requested" in str(tasks[stop_id].get("args"))
        assert s.token and s.token not in json.dumps(tasks[stop_id])
    finally:
        proc.stop()


def _answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/api/workers", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
