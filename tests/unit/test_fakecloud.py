"""Fake cloud pieces without sockets: options, fault decisions, job timelines, RunPod REST
v2 validation, and the ASGI app through Starlette's in-process client."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pydantic
import pytest

from atlas_tasks.testing.fakecloud import FakeCloudConfig, create_app, split_options
from atlas_tasks.testing.fakecloud.app import build_context
from atlas_tasks.testing.fakecloud.config import FaultSettings, ScriptRule
from atlas_tasks.testing.fakecloud.faults import FaultInjector
from atlas_tasks.testing.fakecloud.runpod_rest import Problem, check, validate_pod_create
from atlas_tasks.testing.fakecloud.runpod_runtime import Job

# ---- options --------------------------------------------------------------------------------


def test_split_options_mixes_config_and_faults() -> None:
    config = split_options(run_time_s=0.1, latency_s=2, seed=3, api_key="k")
    assert config.run_time_s == 0.1
    assert config.faults.latency_s == 2 and config.faults.seed == 3
    assert config.api_keys == frozenset({"k"}) and config.api_key == "k"
    assert FakeCloudConfig().api_key == "fake-key"


def test_split_options_rejects_unknown_and_bad_values() -> None:
    with pytest.raises(TypeError, match="bogus"):
        split_options(bogus=1)
    with pytest.raises(pydantic.ValidationError):
        split_options(error_rate=1.5)
    with pytest.raises(pydantic.ValidationError):
        split_options(error_statuses=[404])


def test_script_rule_match_is_checked() -> None:
    assert ScriptRule(match="post /pods").match == "POST /pods"
    with pytest.raises(pydantic.ValidationError):
        ScriptRule(match="/pods")


# ---- fault decisions ------------------------------------------------------------------------


def plan_statuses(injector: FaultInjector, n: int) -> list[int | None]:
    out = []
    for _ in range(n):
        plan = injector.plan("GET", "rest", "/pods", "/runpod/v2/pods", create=False)
        out.append(plan.now.status_code if plan.now is not None else None)
    return out


def test_seeded_draws_repeat() -> None:
    settings = FaultSettings(error_rate=0.3, rate_limit_rate=0.2, seed=7)
    first = plan_statuses(FaultInjector(settings), 200)
    assert first == plan_statuses(FaultInjector(settings), 200)
    assert 429 in first and None in first and {500, 502, 503} & set(first)
    injector = FaultInjector(settings)
    plan_statuses(injector, 50)
    injector.reset()
    assert plan_statuses(injector, 200) == first  # reset also rewinds the RNG


def test_script_rules_match_in_order_and_run_out() -> None:
    injector = FaultInjector(
        FaultSettings(
            script=[
                ScriptRule(match="DELETE /pods/*", status=404, times=2),
                ScriptRule(match="* /*/run", status=503, api="runtime", times=None),
            ]
        )
    )
    for _ in range(2):
        plan = injector.plan("DELETE", "rest", "/pods/abc", "/runpod/v2/pods/abc", create=False)
        assert plan.now is not None and plan.now.status_code == 404
    plan = injector.plan("DELETE", "rest", "/pods/abc", "/runpod/v2/pods/abc", create=False)
    assert plan.now is None
    for _ in range(3):  # times=None: forever
        plan = injector.plan("POST", "runtime", "/ep/run", "/runpod/v2/ep/run", create=False)
        assert plan.now is not None and plan.now.headers["retry-after"] == "1"
    # api filter: the same path on another API does not match.
    assert injector.plan("POST", "rest", "/ep/run", "/x", create=False).now is None
    assert injector.counters_snapshot()["script"] == 5


def test_after_create_and_latency_only_rules() -> None:
    injector = FaultInjector(FaultSettings(latency_s=0.5))
    injector.add_rule(ScriptRule(match="POST /pods", status=500, after_create=True))
    injector.add_rule(ScriptRule(match="GET /pods", latency_s=2.0))
    plan = injector.plan("POST", "rest", "/pods", "/runpod/v2/pods", create=True)
    assert plan.now is None and plan.after is not None and plan.after.status_code == 500
    assert not plan.after_random and plan.delay_s == 0.5
    slow = injector.plan("GET", "rest", "/pods", "/runpod/v2/pods", create=False)
    assert slow.now is None and slow.delay_s == 2.5
    random_after = FaultInjector(FaultSettings(create_500_after_create_rate=1.0))
    plan = random_after.plan("POST", "rest", "/pods", "/runpod/v2/pods", create=True)
    assert plan.after is not None and plan.after_random
    assert random_after.plan("GET", "rest", "/pods", "/p", create=False).after is None


def test_update_is_atomic() -> None:
    injector = FaultInjector(FaultSettings())
    with pytest.raises(pydantic.ValidationError):
        injector.update({"latency_s": 1, "error_rate": 9})
    assert injector.snapshot()["latency_s"] == 0.0
    injector.update({"script": [{"match": "GET /pods", "status": 500, "times": 2}]})
    assert injector.snapshot()["script"][0]["remaining"] == 2


# ---- job timeline ---------------------------------------------------------------------------


def make_job(input: Any = None, policy: dict[str, Any] | None = None, **kw: Any) -> Job:
    fields: dict[str, Any] = {
        "id": "j",
        "endpoint_id": "ep",
        "input": input,
        "policy": policy or {},
        "webhook": None,
        "sync": False,
        "submitted": 100.0,
        "queue_delay": 1.0,
        "run_time": 2.0,
        "result_ttl": 10.0,
        "ttl": 1000.0,
        **kw,
    }
    job = Job(**fields)
    job.plan()
    return job


def test_job_status_follows_the_clock() -> None:
    job = make_job({"a": 1})
    assert [job.status(t) for t in (100.5, 101.5, 103.0)] == [
        "IN_QUEUE",
        "IN_PROGRESS",
        "COMPLETED",
    ]
    done = job.to_status(103.0)
    assert done["output"] == {"echo": {"a": 1}}
    assert done["delayTime"] == 1000 and done["executionTime"] == 2000
    assert not job.gone(112.9) and job.gone(113.1)
    assert set(job.to_status(100.5)) == {"id", "status"}


def test_job_outcomes() -> None:
    assert make_job({"fail": "x"}).to_status(104)["error"] == "x"
    assert make_job({"timeout": True}).status(104) == "TIMED_OUT"
    policed = make_job({}, {"executionTimeout": 500})
    assert policed.status(101.6) == "TIMED_OUT" and policed.end == 101.5
    flaky = make_job({"fail": "x", "fail_attempts": 1})
    assert flaky.status(104) == "FAILED"
    flaky.attempt = 2
    flaky.plan()
    assert flaky.status(104) == "COMPLETED"
    assert make_job({"output": [1]}).output() == [1]
    assert make_job("plain").output() == {"echo": "plain"}


def test_job_chunks_become_available_over_the_run() -> None:
    job = make_job({"chunks": 4}, chunks=["a", "b", "c", "d"])
    assert [job.available_chunks(t) for t in (100.9, 101.0, 101.6, 102.1, 103.0)] == [0, 0, 1, 2, 4]
    assert job.output() == ["a", "b", "c", "d"]


def test_cancelled_job() -> None:
    job = make_job()
    job.cancelled_at = 101.5
    body = job.to_status(102)
    assert body["status"] == "CANCELLED" and body["executionTime"] == 500
    assert "output" not in body


# ---- RunPod REST v2 validation ---------------------------------------------------------------


def test_validation_switches() -> None:
    strict = build_context()
    lenient = build_context(FakeCloudConfig(strict_fields=False, strict_gpu_types=False))
    body = {"name": "n", "image": "i", "gpu": {"id": "NVIDIA A100-SXM4-40GB"}, "extraThing": 1}
    with pytest.raises(Problem) as unknown:
        validate_pod_create(body, strict)
    assert unknown.value.status == 422
    assert unknown.value.errors == ["$: additional properties 'extraThing' not allowed"]
    assert "extraThing" not in validate_pod_create(body, lenient)
    known_fields = {k: v for k, v in body.items() if k != "extraThing"}
    with pytest.raises(Problem) as bad_gpu:
        validate_pod_create(known_fields, strict)
    assert bad_gpu.value.status == 400 and "A100-SXM4-40GB" in bad_gpu.value.detail
    with pytest.raises(Problem) as no_image:
        validate_pod_create({"name": "n", "gpu": {"id": "NVIDIA L4"}}, lenient)
    assert no_image.value.status == 422 and no_image.value.errors == [
        "$.image: required unless templateId is set"
    ]


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"image": "i", "gpu": {"id": "NVIDIA L4"}}, 422, "$.name: required"),
        (
            {"name": "n", "image": "i", "gpu": {"id": "NVIDIA L4"}, "env": {"A": 1}},
            422,
            "$.env: must be an object of strings",
        ),
        (
            {
                "name": "n",
                "image": "i",
                "gpu": {"id": "NVIDIA L4"},
                "ports": ["70000/tcp", "8/ftp"],
            },
            422,
            "$.ports[1]",
        ),
        (
            {"name": "n", "image": "i", "gpu": {"id": "NVIDIA L4", "count": 0}},
            422,
            "$.gpu.count: must be >= 1",
        ),
        (
            {"name": "n", "image": "i", "gpu": {"id": "NVIDIA L4"}, "interruptible": True},
            422,
            "$: additional properties 'interruptible' not allowed",
        ),
        (
            {
                "name": "n",
                "image": "i",
                "gpu": {"id": "NVIDIA L4"},
                "mounts": {"persistent": {"size": 5, "path": "/w"}},
            },
            422,
            "$.mounts.persistent.size",
        ),
        ({"name": "n", "image": "i"}, 400, None),
        (
            {
                "name": "n",
                "image": "i",
                "gpu": {"id": "NVIDIA L4"},
                "mounts": {
                    "persistent": {"size": 20, "path": "/w"},
                    "network": [{"volumeId": "v", "path": "/v"}],
                },
            },
            400,
            None,
        ),
    ],
)
def test_pod_create_rules(body: dict[str, Any], status: int, error: str | None) -> None:
    with pytest.raises(Problem) as info:
        validate_pod_create(body, build_context())
    assert info.value.status == status
    if error is not None:
        assert any(e.startswith(error) for e in info.value.errors or []), info.value.errors


def test_check_reports_every_violation() -> None:
    schema = {
        "type": "object",
        "closed": True,
        "required": ["a"],
        "props": {"a": {"enum": [1]}, "b": {"type": "integer", "min": 1, "max": 3}},
    }
    assert check({"b": 9, "c": True}, schema) == [
        "$.a: required",
        "$.b: must be <= 3",
        "$: additional properties 'c' not allowed",
    ]
    assert check({"a": 1, "b": True}, schema) == ["$.b: must be an integer"]
    assert check([], schema) == ["$: must be an object"]


# ---- the ASGI app, in process ---------------------------------------------------------------


def test_app_in_process() -> None:
    app = create_app(split_options(queue_delay_s=0, run_time_s=0))
    headers = {"Authorization": "Bearer fake-key"}

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://fake") as client:
            created = await client.post(
                "/runpod/v2/pods",
                headers=headers,
                json={"image": "i", "name": "atlas-1", "gpu": {"id": "NVIDIA L4"}},
            )
            assert created.status_code == 201 and created.json()["status"] == "RUNNING"
            assert created.headers["RateLimit-Policy"] == '"minute";q=600;w=60'
            denied = await client.post("/runpod/v2/pods", json={"image": "i"})
            assert denied.status_code == 401
            assert denied.headers["content-type"] == "application/problem+json"
            assert denied.json() == {
                "title": "Unauthorized",
                "status": 401,
                "detail": "missing api key",
            }
            job = (
                await client.post("/runpod/v2/ep/runsync", headers=headers, json={"input": 1})
            ).json()
            assert job["status"] == "COMPLETED" and job["output"] == {"echo": 1}
            state = (await client.get("/_admin/state")).json()
            assert state["totals"]["creates"] == 1 and state["totals"]["unauthorized"] == 1
            listing = await client.get("/runpod/v2/pods", headers=headers)
            assert listing.headers["content-type"].startswith("application/json")
            assert [p["name"] for p in listing.json()["pods"]] == ["atlas-1"]

    asyncio.run(scenario())
