"""The fake cloud over real loopback HTTP: RunPod REST v2, serverless runtime, fault
injection and the admin API."""

from __future__ import annotations

import asyncio
import json
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from atlas_tasks.testing.fakecloud import FakeCloud

pytestmark = pytest.mark.integration

H100 = "NVIDIA H100 80GB HBM3"


@pytest.fixture(scope="module")
def shared_cloud() -> Iterator[FakeCloud]:
    with FakeCloud(queue_delay_s=0.05, run_time_s=0.2) as cloud:
        yield cloud


@pytest.fixture
def cloud(shared_cloud: FakeCloud) -> Iterator[FakeCloud]:
    shared_cloud.reset()
    yield shared_cloud
    shared_cloud.reset()


@pytest.fixture
def rest(cloud: FakeCloud) -> Iterator[httpx.Client]:
    """A client on the REST v2 root: ``/pods`` here is RunPod's ``/v2/pods``."""
    headers = {"Authorization": f"Bearer {cloud.api_key}"}
    with httpx.Client(
        base_url=f"{cloud.runpod_rest_url}/v2", headers=headers, timeout=10
    ) as client:
        yield client


@pytest.fixture
def runtime(cloud: FakeCloud) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {cloud.api_key}"}
    url = f"{cloud.runpod_runtime_url}/ep1"
    with httpx.Client(base_url=url, headers=headers, timeout=10) as client:
        yield client


def pod_body(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "atlas-test-1",
        "image": "test/image:latest",
        "gpu": {"id": H100, "count": 1},
        "cloud": "SECURE",
        "ports": ["8000/http", "22/tcp"],
        "env": {"ATLAS_PRESHARED_KEY": "tok"},
    }
    body.update(extra)
    return body


def pods_of(response: httpx.Response) -> list[dict[str, Any]]:
    """The pods of a ``GET /v2/pods`` answer (``{"pods": [...]}``)."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"pods"}
    pods: list[dict[str, Any]] = body["pods"]
    return pods


def wait_status(
    client: httpx.Client, job_id: str, wanted: str, timeout: float = 5
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = client.get(f"/status/{job_id}").json()
        if body["status"] == wanted:
            return body
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never reached {wanted}")


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """An RFC 9457 problem answer with ``status``; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


# ---- REST v2 pods ---------------------------------------------------------------------------


def test_create_returns_201_v2_pod(rest: httpx.Client) -> None:
    response = rest.post("/pods", json=pod_body())
    assert response.status_code == 201
    pod = response.json()
    assert len(pod["id"]) == 14 and pod["id"].isalnum() and pod["id"].islower()
    assert pod["name"] == "atlas-test-1" and pod["image"] == "test/image:latest"
    assert pod["status"] == "RUNNING" and pod["actions"] == ["stop", "restart", "terminate"]
    assert isinstance(pod["cost"], float) and pod["cost"] == 2.49
    assert pod["ports"] == ["8000/http", "22/tcp"]
    assert pod["gpu"] == {"id": H100, "count": 1} and pod["cloud"] == "SECURE"
    assert pod["dataCenterId"] and pod["env"] == {"ATLAS_PRESHARED_KEY": "tok"}
    live = {p["private"]: p for p in pod["runtime"]["ports"]}
    assert live[22]["public"] and live[22]["ip"] and live[8000]["public"] is None
    assert pod["ssh"]["direct"]["port"] == live[22]["public"]
    assert [set(g) for g in pod["runtime"]["gpus"]] == [{"util", "memoryUtil"}]
    assert pod["createdAt"].endswith("Z") and pod["startedAt"].endswith("Z")
    # No v1 field survives.
    assert not {
        "desiredStatus",
        "costPerHr",
        "imageName",
        "portMappings",
        "publicIp",
        "machine",
        "interruptible",
    } & set(pod)
    assert response.headers["RateLimit"].startswith('"minute";r=')


def test_get_list_stop_start_delete(rest: httpx.Client, cloud: FakeCloud) -> None:
    pod_id = rest.post("/pods", json=pod_body()).json()["id"]
    other = rest.post("/pods", json=pod_body(name="other")).json()["id"]
    assert rest.get(f"/pods/{pod_id}").json()["id"] == pod_id
    assert {p["id"] for p in pods_of(rest.get("/pods"))} == {pod_id, other}

    stopped = rest.post(f"/pods/{pod_id}/action", json={"action": "stop"})
    assert stopped.status_code == 200 and stopped.json()["status"] == "EXITED"
    assert stopped.json()["actions"] == ["start", "terminate"]
    assert stopped.json()["cost"] == 0.0 and stopped.json()["runtime"] is None
    again = rest.post(f"/pods/{pod_id}/action", json={"action": "stop"})
    assert "cannot stop" in assert_problem(again, 409)["detail"]
    started = rest.post(f"/pods/{pod_id}/action", json={"action": "start"})
    assert started.json()["status"] == "RUNNING"
    assert rest.post(f"/pods/{pod_id}/action", json={"action": "restart"}).status_code == 200

    deleted = rest.delete(f"/pods/{pod_id}")
    assert deleted.status_code == 204 and deleted.content == b""
    assert assert_problem(rest.get(f"/pods/{pod_id}"), 404)["detail"] == "pod not found"
    assert_problem(rest.delete(f"/pods/{pod_id}"), 404)
    by_action = rest.post(f"/pods/{other}/action", json={"action": "terminate"})
    assert by_action.status_code == 204 and by_action.content == b""
    assert pods_of(rest.get("/pods")) == []

    state = cloud.state()
    assert state["totals"]["creates"] == 2 and state["totals"]["deletes"] == 2
    assert state["totals"]["delete_calls"] == 3
    dead = {p["id"]: p for p in state["terminated_pods"]}
    assert dead[pod_id]["calls"]["delete_calls"] == 2 and dead[pod_id]["calls"]["deletes"] == 1


def test_unknown_pod_is_404(rest: httpx.Client) -> None:
    for response in (
        rest.get("/pods/nope"),
        rest.post("/pods/nope/action", json={"action": "stop"}),
        rest.delete("/pods/nope"),
    ):
        assert assert_problem(response, 404)["detail"] == "pod not found"


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"env": [{"key": "A", "value": "b"}]}, "$.env"),  # ExAtlas's GraphQL-style env
        ({"cloud": "ALL"}, "$.cloud"),
        ({"ports": "8000/http,22/tcp"}, "$.ports"),
        ({"gpu": {"id": H100, "count": 0}}, "$.gpu.count"),
        ({"gpu": {"id": H100, "count": "1"}}, "$.gpu.count"),
        ({"gpuTypeIds": [H100]}, "$: additional properties 'gpuTypeIds'"),  # v1 field
        ({"interruptible": True}, "$: additional properties 'interruptible'"),
        ({"image": None}, "$.image"),
        ({"name": ""}, "$.name"),
        ({"mounts": {"persistent": {"size": 20}}}, "$.mounts.persistent.path"),
    ],
)
def test_create_validation_422(
    rest: httpx.Client, cloud: FakeCloud, change: dict[str, Any], error: str
) -> None:
    problem = assert_problem(rest.post("/pods", json=pod_body(**change)), 422)
    assert any(e.startswith(error) for e in problem["errors"]), problem
    assert cloud.state()["totals"].get("creates", 0) == 0


@pytest.mark.parametrize(
    "change",
    [
        {"gpu": {"id": "NVIDIA A100-SXM4-40GB"}},  # not a GPU RunPod offers
        {"cpu": {"id": "cpu5c", "vcpuCount": 4}},  # gpu and cpu
        {
            "mounts": {
                "persistent": {"size": 20, "path": "/w"},
                "network": [{"volumeId": "v", "path": "/v"}],
            }
        },
    ],
)
def test_create_rule_violations_400(rest: httpx.Client, change: dict[str, Any]) -> None:
    assert_problem(rest.post("/pods", json=pod_body(**change)), 400)


def test_create_body_must_be_object(rest: httpx.Client) -> None:
    assert_problem(rest.post("/pods", json=[1, 2]), 422)
    bad = rest.post("/pods", content=b"{not json", headers={"content-type": "application/json"})
    assert "JSON" in assert_problem(bad, 400)["detail"]
    deep = rest.post("/pods", content=b"[" * 100_000)
    assert_problem(deep, 400)


def test_auth_401(cloud: FakeCloud) -> None:
    base = f"{cloud.runpod_rest_url}/v2"
    missing = httpx.get(f"{base}/pods")
    assert assert_problem(missing, 401)["detail"] == "missing api key"
    wrong = httpx.get(f"{base}/pods", headers={"Authorization": "Bearer nope"})
    assert assert_problem(wrong, 401)["detail"] == "invalid api key"
    # REST wants the Bearer scheme; the runtime also takes the docs' bare key.
    bare = {"Authorization": cloud.api_key}
    assert httpx.get(f"{base}/pods", headers=bare).status_code == 401
    assert httpx.get(f"{cloud.runpod_runtime_url}/ep/health", headers=bare).status_code == 200
    assert cloud.state()["totals"]["unauthorized"] == 3


def test_several_api_keys() -> None:
    with FakeCloud(api_keys={"k1", "k2"}) as cloud:
        url = f"{cloud.runpod_rest_url}/v2/pods"
        for key in ("k1", "k2"):
            assert httpx.get(url, headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert cloud.api_key == "k1"
        assert httpx.get(url, headers={"Authorization": "Bearer fake-key"}).status_code == 401


def test_boot_delay_and_age() -> None:
    with FakeCloud(boot_delay_s=0.3) as cloud:
        headers = {"Authorization": f"Bearer {cloud.api_key}"}
        with httpx.Client(base_url=f"{cloud.runpod_rest_url}/v2", headers=headers) as rest:
            pod = rest.post("/pods", json=pod_body()).json()
            assert pod["status"] == "PROVISIONING" and pod["runtime"] is None
            assert pod["actions"] == ["stop", "terminate"]
            started = pod["startedAt"]
            response = httpx.post(
                f"{cloud.url}/_admin/pods/{pod['id']}/age", json={"seconds": 3600}
            )
            assert response.status_code == 200
            aged = rest.get(f"/pods/{pod['id']}").json()
            assert aged["startedAt"] < started  # an hour earlier, same ISO format
            # Backdating also ends the boot window.
            assert aged["status"] == "RUNNING" and aged["runtime"]["uptime"] >= 3600
            assert (
                httpx.post(f"{cloud.url}/_admin/pods/nope/age", json={"seconds": 1}).status_code
                == 404
            )


def test_catalog_gpus(rest: httpx.Client) -> None:
    plain = rest.get("/catalog/gpus").json()["gpus"]
    h100 = next(g for g in plain if g["id"] == H100)
    assert h100["price"]["secure"] == 2.49 and h100["memory"] == 80
    assert "availability" not in h100
    stocked = rest.get("/catalog/gpus", params={"include": "AVAILABILITY", "product": "POD"})
    assert next(g for g in stocked.json()["gpus"] if g["id"] == H100)["availability"] == "HIGH"
    assert_problem(rest.get("/catalog/gpus", params={"include": "AVAILABILITY"}), 400)
    assert_problem(rest.get("/catalog/gpus", params={"include": "PRICES", "product": "POD"}), 422)


def test_templates_volumes_endpoints_crud(rest: httpx.Client) -> None:
    template = rest.post(
        "/templates", json={"name": "t", "image": "img:1", "env": {"FROM": "template", "X": "t"}}
    )
    assert template.status_code == 201 and template.json()["image"] == "img:1"
    tid = template.json()["id"]
    assert (
        "$.image: required"
        in assert_problem(rest.post("/templates", json={"name": "t"}), 422)["errors"]
    )
    volume = rest.post("/network-volumes", json={"name": "v", "size": 10, "dataCenter": "EU-RO-1"})
    assert volume.status_code == 201
    assert volume.json() == volume.json() | {"name": "v", "size": 10, "dataCenter": "EU-RO-1"}
    assert_problem(
        rest.post("/network-volumes", json={"name": "v", "size": 5, "dataCenter": "EU-RO-1"}), 422
    )
    endpoint = rest.post(
        "/serverless",
        json={
            "templateId": tid,
            "name": "e",
            "type": "QUEUE",
            "scaling": {"type": "QUEUE_DELAY", "queueDelay": 4},
        },
    )
    assert endpoint.status_code == 201 and endpoint.json()["name"] == "e"
    assert [t["id"] for t in rest.get("/templates").json()["templates"]] == [tid]
    assert [e["id"] for e in rest.get("/serverless").json()["endpoints"]] == [endpoint.json()["id"]]
    assert rest.get(f"/serverless/{endpoint.json()['id']}").json()["name"] == "e"
    vid = volume.json()["id"]
    assert [v["id"] for v in rest.get("/network-volumes").json()["networkVolumes"]] == [vid]
    assert rest.delete(f"/network-volumes/{vid}").status_code == 204
    assert_problem(rest.get(f"/network-volumes/{vid}"), 404)
    # A pod from a template takes its image and env (the body's env wins per key).
    pod = rest.post(
        "/pods", json={"name": "p", "templateId": tid, "gpu": {"id": H100}, "env": {"X": "body"}}
    ).json()
    assert pod["image"] == "img:1" and pod["env"] == {"FROM": "template", "X": "body"}
    assert pod["template"] is None  # v2: a pod keeps no link to its template
    assert_problem(
        rest.post("/pods", json={"name": "p", "templateId": "nope", "gpu": {"id": H100}}), 404
    )


def test_billing_pods(rest: httpx.Client) -> None:
    pod_id = rest.post("/pods", json=pod_body()).json()["id"]
    billing = rest.get("/billing/pods", params={"podId": pod_id}).json()
    assert [r["podId"] for r in billing["records"]] == [pod_id]
    assert billing["metadata"]["recordCount"] == 1
    assert_problem(rest.get("/billing/pods", params={"bucketSize": "decade"}), 422)


# ---- faults ---------------------------------------------------------------------------------


def test_latency_is_added(rest: httpx.Client, cloud: FakeCloud) -> None:
    cloud.set_faults(latency_s=0.3)
    started = time.monotonic()
    assert rest.get("/pods").status_code == 200
    assert time.monotonic() - started >= 0.3
    assert cloud.state()["faults_injected"]["latency"] == 1


def test_rate_limit_sends_retry_after(rest: httpx.Client, cloud: FakeCloud) -> None:
    response = httpx.post(
        f"{cloud.url}/_admin/faults", json={"rate_limit_rate": 1.0, "retry_after_s": 7}
    )
    assert response.status_code == 200 and response.json()["rate_limit_rate"] == 1.0
    limited = rest.get("/pods")
    assert limited.status_code == 429 and limited.headers["retry-after"] == "7"
    # RunPod REST v2's TooManyRequestsError: a problem, with RateLimit headers.
    assert limited.headers["content-type"] == "application/problem+json"
    assert limited.json()["status"] == 429 and limited.headers["ratelimit"].endswith("t=7")
    assert cloud.state()["faults_injected"]["rate_limited"] == 1


def test_error_rate_is_seeded_and_mixed(cloud: FakeCloud, rest: httpx.Client) -> None:
    def run() -> list[int]:
        cloud.reset()
        cloud.set_faults(error_rate=0.5, seed=42)
        return [rest.get("/pods").status_code for _ in range(40)]

    first = run()
    assert first == run()  # same seed, same faults
    assert {500, 502, 503} <= set(first) and 200 in first
    assert cloud.state()["faults_injected"]["error_5xx"] == sum(s >= 500 for s in first)


def test_502_is_html(rest: httpx.Client, cloud: FakeCloud) -> None:
    cloud.fail_next("GET /pods", 502)
    response = rest.get("/pods")
    assert response.status_code == 502
    assert response.headers["content-type"].startswith("text/html")


def test_random_500_after_create_creates_the_pod(rest: httpx.Client, cloud: FakeCloud) -> None:
    cloud.set_faults(create_500_after_create_rate=1.0)
    response = rest.post("/pods", json=pod_body(name="atlas-dup"))
    assert response.status_code == 500 and response.json()["status"] == 500  # a problem
    cloud.clear_faults()
    listed = [p for p in pods_of(rest.get("/pods")) if p["name"] == "atlas-dup"]
    assert len(listed) == 1
    state = cloud.state()
    assert state["faults_injected"]["create_500_after_create"] == 1
    assert state["totals"]["creates"] == 1


def test_scripted_faults_via_admin(rest: httpx.Client, cloud: FakeCloud) -> None:
    script = [
        {"match": "POST /pods", "status": 500, "after_create": True, "times": 1},
        {"match": "DELETE /pods/*", "status": 429, "retry_after": 2, "times": 2},
    ]
    assert httpx.post(f"{cloud.url}/_admin/faults", json={"script": script}).status_code == 200
    assert rest.post("/pods", json=pod_body()).status_code == 500
    pods = pods_of(rest.get("/pods"))
    assert len(pods) == 1
    assert rest.post("/pods", json=pod_body(name="second")).status_code == 201  # rule used up
    pod_id = pods[0]["id"]
    for _ in range(2):
        limited = rest.delete(f"/pods/{pod_id}")
        assert limited.status_code == 429 and limited.headers["retry-after"] == "2"
    assert rest.delete(f"/pods/{pod_id}").status_code == 204
    faults = httpx.get(f"{cloud.url}/_admin/faults").json()
    assert [r["remaining"] for r in faults["script"]] == [0, 0]
    assert cloud.state()["faults_injected"]["script"] == 3


def test_admin_faults_rejects_bad_settings(cloud: FakeCloud) -> None:
    assert httpx.post(f"{cloud.url}/_admin/faults", json={"error_rate": 2}).status_code == 400
    assert httpx.post(f"{cloud.url}/_admin/faults", json={"bogus": 1}).status_code == 400
    bad_rule = {"script": [{"match": "pods", "status": 500}]}
    assert httpx.post(f"{cloud.url}/_admin/faults", json=bad_rule).status_code == 400
    assert httpx.delete(f"{cloud.url}/_admin/faults").json()["error_rate"] == 0.0


def test_constructor_faults_survive_reset() -> None:
    with FakeCloud(rate_limit_rate=1.0, retry_after_s=3) as cloud:
        headers = {"Authorization": f"Bearer {cloud.api_key}"}
        url = f"{cloud.runpod_rest_url}/v2/pods"
        assert httpx.get(url, headers=headers).status_code == 429
        assert httpx.post(f"{cloud.url}/_admin/reset").status_code == 200
        assert httpx.get(url, headers=headers).status_code == 429


async def raw_post(port: int, path: str, body: bytes, key: str) -> int:
    """One HTTP/1.1 POST on its own connection, with asyncio streams only.

    httpx's pool itself needs seconds to juggle 500 connections; this measures the server.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: fake\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    writer.write(head + body)
    await writer.drain()
    reply = await reader.read()
    writer.close()
    return int(reply.split(b" ", 2)[1])


def test_500_concurrent_creates_with_1s_latency() -> None:
    async def burst(cloud: FakeCloud) -> list[int]:
        calls = [
            raw_post(
                cloud.port,
                "/runpod/v2/pods",
                json.dumps(pod_body(name=f"atlas-{i}")).encode(),
                cloud.api_key,
            )
            for i in range(500)
        ]
        return list(await asyncio.gather(*calls))

    # 500 client + 500 server sockets live in this one process; 1024 fds may not be enough.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        wanted = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    with FakeCloud(latency_s=1.0) as cloud:
        started = time.monotonic()
        statuses = asyncio.run(burst(cloud))
        elapsed = time.monotonic() - started
        assert statuses == [201] * 500
        assert cloud.state()["totals"]["live_pods"] == 500
        # The latency is slept concurrently: about 1 s in all, not 500 s.
        assert elapsed < 6, elapsed


# ---- serverless runtime ---------------------------------------------------------------------


def test_job_lifecycle(runtime: httpx.Client, cloud: FakeCloud) -> None:
    submitted = runtime.post("/run", json={"input": {"prompt": "hi"}})
    assert submitted.status_code == 200
    job = submitted.json()
    assert job["status"] == "IN_QUEUE" and set(job) == {"id", "status"}
    assert runtime.get(f"/status/{job['id']}").json()["status"] == "IN_QUEUE"
    wait_status(runtime, job["id"], "IN_PROGRESS")
    done = wait_status(runtime, job["id"], "COMPLETED")
    assert done["output"] == {"echo": {"prompt": "hi"}}
    assert isinstance(done["delayTime"], int) and isinstance(done["executionTime"], int)
    assert done["executionTime"] >= 150
    calls = cloud.state()["endpoints"]["ep1"]["calls"]
    assert calls["runs"] == 1 and calls["status_calls"] >= 3


def test_run_requires_input(runtime: httpx.Client) -> None:
    assert runtime.post("/run", json={"prompt": "hi"}).status_code == 400
    assert runtime.post("/run", json={"input": {}, "policy": {"ttl": "x"}}).status_code == 400


def test_runsync_blocks_until_done_or_wait(runtime: httpx.Client) -> None:
    done = runtime.post("/runsync", json={"input": {"output": [1, 2]}})
    assert done.status_code == 200
    body = done.json()
    assert body["status"] == "COMPLETED" and body["output"] == [1, 2]
    assert body["id"].startswith("sync-")
    assert {"delayTime", "executionTime"} <= set(body)
    started = time.monotonic()
    pending = runtime.post(
        "/runsync", params={"wait": 100}, json={"input": {"run_time_s": 5}}
    ).json()
    assert time.monotonic() - started < 1.0
    assert pending["status"] in ("IN_QUEUE", "IN_PROGRESS") and "output" not in pending


def test_stream_delivers_each_chunk_once(runtime: httpx.Client) -> None:
    job_id = runtime.post("/run", json={"input": {"chunks": 5}}).json()["id"]
    seen: list[Any] = []
    statuses = set()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        body = runtime.get(f"/stream/{job_id}").json()
        statuses.add(body["status"])
        seen += [item["output"] for item in body["stream"]]
        if body["status"] == "COMPLETED":
            break
        time.sleep(0.03)
    assert seen == [f"chunk-{i}" for i in range(5)]
    assert "IN_PROGRESS" in statuses
    assert runtime.get(f"/stream/{job_id}").json() == {"status": "COMPLETED", "stream": []}
    assert runtime.get(f"/status/{job_id}").json()["output"] == seen


def test_stream_of_plain_job_yields_output_once(runtime: httpx.Client) -> None:
    job_id = runtime.post("/run", json={"input": {"x": 1}}).json()["id"]
    wait_status(runtime, job_id, "COMPLETED")
    first = runtime.get(f"/stream/{job_id}").json()
    assert first == {"status": "COMPLETED", "stream": [{"output": {"echo": {"x": 1}}}]}
    assert runtime.get(f"/stream/{job_id}").json()["stream"] == []


def test_cancel_mid_flight(runtime: httpx.Client) -> None:
    job_id = runtime.post("/run", json={"input": {"run_time_s": 5}}).json()["id"]
    wait_status(runtime, job_id, "IN_PROGRESS")
    cancelled = runtime.post(f"/cancel/{job_id}")
    assert cancelled.json() == {"id": job_id, "status": "CANCELLED"}
    assert runtime.get(f"/status/{job_id}").json()["status"] == "CANCELLED"
    assert runtime.get(f"/stream/{job_id}").json() == {"status": "CANCELLED", "stream": []}
    assert runtime.post("/cancel/unknown-job").status_code == 404


def test_fail_then_retry(runtime: httpx.Client) -> None:
    job_id = runtime.post("/run", json={"input": {"fail": "boom", "fail_attempts": 1}}).json()["id"]
    failed = wait_status(runtime, job_id, "FAILED")
    assert failed["error"] == "boom" and "output" not in failed
    retried = runtime.post(f"/retry/{job_id}")
    assert retried.json() == {"id": job_id, "status": "IN_QUEUE"}
    done = wait_status(runtime, job_id, "COMPLETED")
    assert done["output"] == {"echo": {"fail": "boom", "fail_attempts": 1}}
    assert runtime.post(f"/retry/{job_id}").status_code == 400  # only FAILED/TIMED_OUT


def test_timeouts(runtime: httpx.Client) -> None:
    by_input = runtime.post("/run", json={"input": {"timeout": True}}).json()["id"]
    by_policy = runtime.post(
        "/run", json={"input": {"run_time_s": 5}, "policy": {"executionTimeout": 100}}
    ).json()["id"]
    assert wait_status(runtime, by_input, "TIMED_OUT")["error"]
    assert wait_status(runtime, by_policy, "TIMED_OUT", timeout=2)["executionTime"] < 1000


def test_purge_and_health(runtime: httpx.Client) -> None:
    slow = {"input": {"queue_delay_s": 5}}
    queued = [runtime.post("/run", json=slow).json()["id"] for _ in range(2)]
    running = runtime.post("/run", json={"input": {"queue_delay_s": 0, "run_time_s": 5}})
    time.sleep(0.05)
    health = runtime.get("/health").json()
    assert health["jobs"] == health["jobs"] | {"inQueue": 2, "inProgress": 1}
    assert health["workers"]["running"] == 1
    assert runtime.post("/purge-queue").json() == {"removed": 2, "status": "completed"}
    assert runtime.get(f"/status/{queued[0]}").status_code == 404
    assert runtime.get(f"/status/{running.json()['id']}").json()["status"] == "IN_PROGRESS"


def test_status_404_after_result_ttl() -> None:
    with FakeCloud(
        queue_delay_s=0, run_time_s=0.05, result_ttl_s=0.2, runsync_result_ttl_s=0.2
    ) as cloud:
        headers = {"Authorization": f"Bearer {cloud.api_key}"}
        with httpx.Client(base_url=f"{cloud.runpod_runtime_url}/ep", headers=headers) as client:
            job_id = client.post("/run", json={"input": 1}).json()["id"]
            sync_id = client.post("/runsync", json={"input": 2}).json()["id"]
            wait_status(client, job_id, "COMPLETED")
            assert client.get(f"/status/{sync_id}").json()["output"] == {"echo": 2}
            time.sleep(0.35)
            for gone in (job_id, sync_id):
                response = client.get(f"/status/{gone}")
                assert response.status_code == 404 and "error" in response.json()
            # Jobs belong to their endpoint.
            other = client.post("/run", json={"input": 3}).json()["id"]
            assert (
                httpx.get(
                    f"{cloud.runpod_runtime_url}/elsewhere/status/{other}", headers=headers
                ).status_code
                == 404
            )


def test_webhook_gets_final_status(runtime: httpx.Client, cloud: FakeCloud) -> None:
    received: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers["Content-Length"])
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        job_id = runtime.post("/run", json={"input": {"k": 1}, "webhook": url}).json()["id"]
        deadline = time.monotonic() + 5
        while not received and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [r["id"] for r in received] == [job_id]
        assert received[0]["status"] == "COMPLETED"
        assert received[0]["output"] == {"echo": {"k": 1}}
        # The fake counts a webhook once the receiver's answer is back, which can be just
        # after the receiver recorded it: wait for the count rather than race it.
        while "webhooks_sent" not in cloud.state()["totals"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert cloud.state()["totals"]["webhooks_sent"] == 1
    finally:
        server.shutdown()
        server.server_close()


# ---- admin ----------------------------------------------------------------------------------


def test_admin_state_counts_and_reset(rest: httpx.Client, cloud: FakeCloud) -> None:
    pod_id = rest.post("/pods", json=pod_body()).json()["id"]
    rest.get(f"/pods/{pod_id}")
    rest.get(f"/pods/{pod_id}")
    state = httpx.get(f"{cloud.url}/_admin/state").json()
    [pod] = state["pods"]
    assert pod["id"] == pod_id and pod["status"] == "RUNNING"
    assert pod["calls"] == {"creates": 1, "gets": 2}
    assert pod["env_keys"] == ["ATLAS_PRESHARED_KEY"]  # names only, never values
    assert "tok" not in str(state)
    assert state["routes"]["GET /runpod/v2/pods/{pod_id}"] == 2
    assert state["totals"]["live_pods"] == 1 and state["totals"]["requests"] == 3
    assert httpx.post(f"{cloud.url}/_admin/reset").json() == {"ok": True}
    assert cloud.state()["pods"] == [] and pods_of(rest.get("/pods")) == []


def test_unknown_route_is_json_404(cloud: FakeCloud) -> None:
    response = httpx.get(f"{cloud.url}/runpod/nothing-here")
    assert response.status_code == 404 and response.json()["title"] == "Not Found"
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["url"].endswith("/runpod/nothing-here")  # names what was asked


def test_env_points_settings_at_the_fake(cloud: FakeCloud) -> None:
    env = cloud.env()
    assert env["ATLAS_RUNPOD_BASE_URL"] == cloud.runpod_rest_url
    assert env["ATLAS_RUNPOD_RUNTIME_URL"].endswith("/runpod/v2")
    assert env["ATLAS_RUNPOD_BASE_URL"].endswith("/runpod")
    assert "ATLAS_RUNPOD_GRAPHQL_URL" not in env
    assert env["ATLAS_RUNPOD_API_KEY"] == "fake-key"


def test_serve_runs_in_the_foreground_until_sigterm() -> None:
    from atlas_tasks.testing.localstack import free_port

    port = free_port()
    code = (
        "from atlas_tasks.testing.fakecloud import serve; "
        f"serve('127.0.0.1', {port}, log_level='warning', api_keys=['cli-key'], "
        "rate_limit_rate=1.0, retry_after_s=4)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/_admin/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        limited = httpx.get(f"{url}/runpod/v2/pods", headers={"Authorization": "Bearer cli-key"})
        assert limited.status_code == 429 and limited.headers["retry-after"] == "4"
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=10)
        # uvicorn shuts down cleanly, then re-raises the signal it caught.
        assert proc.returncode in (0, -signal.SIGTERM)
        assert re.search(
            rf"{re.escape(url)}/runpod\s+ATLAS_RUNPOD_BASE_URL \(paths /v2/pods", output.decode()
        )
        assert "cli-key" not in output.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
