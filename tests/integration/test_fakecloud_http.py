"""The fake cloud over real loopback HTTP: RunPod REST v1, serverless runtime, GraphQL,
fault injection and the admin API."""

from __future__ import annotations

import asyncio
import json
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
    headers = {"Authorization": f"Bearer {cloud.api_key}"}
    with httpx.Client(base_url=cloud.runpod_rest_url, headers=headers, timeout=10) as client:
        yield client


@pytest.fixture
def runtime(cloud: FakeCloud) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {cloud.api_key}"}
    url = f"{cloud.runpod_runtime_url}/ep1"
    with httpx.Client(base_url=url, headers=headers, timeout=10) as client:
        yield client


def pod_body(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "atlas-test-1", "imageName": "test/image:latest", "gpuTypeIds": [H100],
        "gpuCount": 1, "cloudType": "SECURE", "ports": ["8000/http", "22/tcp"],
        "env": {"ATLAS_PRESHARED_KEY": "tok"},
    }
    body.update(extra)
    return body


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


# ---- REST v1 pods ---------------------------------------------------------------------------


def test_create_returns_201_v1_pod(rest: httpx.Client) -> None:
    response = rest.post("/pods", json=pod_body())
    assert response.status_code == 201
    pod = response.json()
    assert len(pod["id"]) == 14 and pod["id"].isalnum() and pod["id"].islower()
    assert pod["name"] == "atlas-test-1"
    assert pod["image"] == "test/image:latest" and "imageName" not in pod
    assert pod["desiredStatus"] == "RUNNING"
    assert isinstance(pod["costPerHr"], str) and float(pod["costPerHr"]) == 2.49
    assert isinstance(pod["adjustedCostPerHr"], float)
    assert pod["ports"] == ["8000/http", "22/tcp"]
    assert list(pod["portMappings"]) == ["22"]  # tcp only; http goes through the proxy
    assert pod["publicIp"]
    assert pod["gpu"] == pod["gpu"] | {"id": H100, "count": 1, "displayName": "H100 80GB"}
    assert pod["machine"]["gpuTypeId"] == H100 and pod["machine"]["dataCenterId"]
    assert pod["env"] == {"ATLAS_PRESHARED_KEY": "tok"}
    assert pod["lastStartedAt"].endswith("Z")
    assert pod["interruptible"] is False
    assert {"memoryInGb", "vcpuCount"} <= set(pod)
    # The v1 schema has none of these at top level.
    assert not {"createdAt", "gpuCount", "gpuTypeId", "dataCenterId"} & set(pod)


def test_get_list_stop_start_delete(rest: httpx.Client, cloud: FakeCloud) -> None:
    pod_id = rest.post("/pods", json=pod_body()).json()["id"]
    other = rest.post("/pods", json=pod_body(name="other")).json()["id"]
    assert rest.get(f"/pods/{pod_id}").json()["id"] == pod_id

    listing = rest.get("/pods")
    assert listing.status_code == 200 and isinstance(listing.json(), list)
    assert {p["id"] for p in listing.json()} == {pod_id, other}
    assert [p["id"] for p in rest.get("/pods", params={"name": "other"}).json()] == [other]

    assert rest.post(f"/pods/{pod_id}/stop").status_code == 200
    assert rest.get(f"/pods/{pod_id}").json()["desiredStatus"] == "EXITED"
    exited = rest.get("/pods", params={"desiredStatus": "EXITED"}).json()
    assert [p["id"] for p in exited] == [pod_id]
    assert rest.post(f"/pods/{pod_id}/start").status_code == 200
    assert rest.get(f"/pods/{pod_id}").json()["desiredStatus"] == "RUNNING"

    deleted = rest.delete(f"/pods/{pod_id}")
    assert deleted.status_code == 204 and deleted.content == b""
    gone = rest.get(f"/pods/{pod_id}")
    assert gone.status_code == 404 and gone.json() == {"error": "Pod not found."}
    assert rest.delete(f"/pods/{pod_id}").status_code == 404
    assert [p["id"] for p in rest.get("/pods").json()] == [other]
    assert rest.get("/pods", params={"desiredStatus": "TERMINATED"}).json() == []

    state = cloud.state()
    assert state["totals"]["creates"] == 2 and state["totals"]["deletes"] == 1
    assert state["totals"]["delete_calls"] == 2
    assert [p["id"] for p in state["terminated_pods"]] == [pod_id]
    assert state["terminated_pods"][0]["calls"]["delete_calls"] == 2
    assert state["terminated_pods"][0]["calls"]["deletes"] == 1


def test_list_filters_by_gpu_and_data_center(rest: httpx.Client) -> None:
    a = rest.post("/pods", json=pod_body(dataCenterIds=["EU-RO-1"])).json()["id"]
    rest.post("/pods", json=pod_body(gpuTypeIds=["NVIDIA L4"], dataCenterIds=["US-TX-3"]))
    assert [p["id"] for p in rest.get("/pods", params={"gpuTypeId": H100}).json()] == [a]
    assert [p["id"] for p in rest.get("/pods", params={"dataCenterId": "EU-RO-1"}).json()] == [a]
    assert rest.get("/pods", params={"desiredStatus": "FAILED"}).status_code == 400


def test_unknown_pod_is_404(rest: httpx.Client) -> None:
    for response in (rest.get("/pods/nope"), rest.post("/pods/nope/stop"),
                     rest.post("/pods/nope/start"), rest.delete("/pods/nope")):
        assert response.status_code == 404
        assert response.json() == {"error": "Pod not found."}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"env": [{"key": "A", "value": "b"}]}, "env"),  # ExAtlas's GraphQL-style env
        ({"cloudType": "ALL"}, "cloudType"),  # ExAtlas's default, not in the v1 enum
        ({"ports": "8000/http,22/tcp"}, "ports"),
        ({"ports": ["8000/udp"]}, "ports"),
        ({"gpuTypeIds": "NVIDIA L4"}, "gpuTypeIds"),
        ({"gpuTypeIds": ["NVIDIA A100-SXM4-40GB"]}, "gpuTypeIds"),
        ({"gpuCount": 0}, "gpuCount"),
        ({"gpuCount": "1"}, "gpuCount"),
        ({"interruptible": "yes"}, "interruptible"),
        ({"gpuTypeId": H100}, "gpuTypeId"),  # unknown field
        ({"imageName": None}, "imageName"),
    ],
)
def test_create_validation_400(rest: httpx.Client, cloud: FakeCloud, change: dict[str, Any],
                               field: str) -> None:
    response = rest.post("/pods", json=pod_body(**change))
    assert response.status_code == 400
    assert response.json()["error"].startswith(field)
    assert cloud.state()["totals"].get("creates", 0) == 0


def test_create_body_must_be_object(rest: httpx.Client) -> None:
    assert rest.post("/pods", json=[1, 2]).status_code == 400
    bad = rest.post("/pods", content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and "JSON" in bad.json()["error"]


def test_auth_401(cloud: FakeCloud) -> None:
    base = cloud.runpod_rest_url
    missing = httpx.get(f"{base}/pods")
    assert missing.status_code == 401 and "error" in missing.json()
    wrong = httpx.get(f"{base}/pods", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json() == {"error": "invalid api key"}
    # REST wants the Bearer scheme; the runtime also takes the docs' bare key.
    bare = {"Authorization": cloud.api_key}
    assert httpx.get(f"{base}/pods", headers=bare).status_code == 401
    assert httpx.get(f"{cloud.runpod_runtime_url}/ep/health", headers=bare).status_code == 200
    assert cloud.state()["totals"]["unauthorized"] == 3


def test_several_api_keys() -> None:
    with FakeCloud(api_keys={"k1", "k2"}) as cloud:
        for key in ("k1", "k2"):
            headers = {"Authorization": f"Bearer {key}"}
            assert httpx.get(f"{cloud.runpod_rest_url}/pods", headers=headers).status_code == 200
        assert cloud.api_key == "k1"
        assert httpx.get(f"{cloud.runpod_rest_url}/pods",
                         headers={"Authorization": "Bearer fake-key"}).status_code == 401


def test_boot_delay_and_age() -> None:
    with FakeCloud(boot_delay_s=0.3) as cloud:
        headers = {"Authorization": f"Bearer {cloud.api_key}"}
        with httpx.Client(base_url=cloud.runpod_rest_url, headers=headers) as rest:
            pod = rest.post("/pods", json=pod_body()).json()
            assert pod["desiredStatus"] == "RUNNING"
            assert pod["portMappings"] is None and pod["publicIp"] == ""
            started = pod["lastStartedAt"]
            response = httpx.post(f"{cloud.url}/_admin/pods/{pod['id']}/age",
                                  json={"seconds": 3600})
            assert response.status_code == 200
            aged = rest.get(f"/pods/{pod['id']}").json()
            assert aged["lastStartedAt"] < started  # an hour earlier, same ISO format
            # Backdating also ends the boot window.
            assert aged["portMappings"] == {"22": pod_port(aged)} and aged["publicIp"]
            assert httpx.post(f"{cloud.url}/_admin/pods/nope/age",
                              json={"seconds": 1}).status_code == 404


def pod_port(pod: dict[str, Any]) -> int:
    value = pod["portMappings"]["22"]
    assert isinstance(value, int)
    return value


def test_templates_volumes_endpoints_crud(rest: httpx.Client) -> None:
    template = rest.post("/templates", json={"name": "t", "imageName": "img:1"})
    assert template.status_code == 200 and template.json()["imageName"] == "img:1"
    tid = template.json()["id"]
    assert rest.post("/templates", json={"name": "t"}).status_code == 400
    volume = rest.post("/networkvolumes", json={"name": "v", "size": 10, "dataCenterId": "EU-RO-1"})
    assert volume.status_code == 200
    assert volume.json() == volume.json() | {"name": "v", "size": 10, "dataCenterId": "EU-RO-1"}
    endpoint = rest.post("/endpoints", json={"templateId": tid, "name": "e"})
    assert endpoint.status_code == 200 and endpoint.json()["templateId"] == tid
    assert [t["id"] for t in rest.get("/templates").json()] == [tid]
    assert rest.get(f"/endpoints/{endpoint.json()['id']}").json()["name"] == "e"
    assert rest.delete(f"/networkvolumes/{volume.json()['id']}").status_code == 204
    assert rest.get(f"/networkvolumes/{volume.json()['id']}").status_code == 404
    # A pod from a template takes its image.
    pod = rest.post("/pods", json={"templateId": tid, "gpuTypeIds": [H100]}).json()
    assert pod["image"] == "img:1" and pod["templateId"] == tid


# ---- faults ---------------------------------------------------------------------------------


def test_latency_is_added(rest: httpx.Client, cloud: FakeCloud) -> None:
    cloud.set_faults(latency_s=0.3)
    started = time.monotonic()
    assert rest.get("/pods").status_code == 200
    assert time.monotonic() - started >= 0.3
    assert cloud.state()["faults_injected"]["latency"] == 1


def test_rate_limit_sends_retry_after(rest: httpx.Client, cloud: FakeCloud) -> None:
    response = httpx.post(f"{cloud.url}/_admin/faults",
                          json={"rate_limit_rate": 1.0, "retry_after_s": 7})
    assert response.status_code == 200 and response.json()["rate_limit_rate"] == 1.0
    limited = rest.get("/pods")
    assert limited.status_code == 429 and limited.headers["retry-after"] == "7"
    assert "error" in limited.json()
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
    assert response.status_code == 500 and "error" in response.json()
    cloud.clear_faults()
    listed = rest.get("/pods", params={"name": "atlas-dup"}).json()
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
    pods = rest.get("/pods").json()
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
        assert httpx.get(f"{cloud.runpod_rest_url}/pods", headers=headers).status_code == 429
        assert httpx.post(f"{cloud.url}/_admin/reset").status_code == 200
        assert httpx.get(f"{cloud.runpod_rest_url}/pods", headers=headers).status_code == 429


async def raw_post(port: int, path: str, body: bytes, key: str) -> int:
    """One HTTP/1.1 POST on its own connection, with asyncio streams only.

    httpx's pool itself needs seconds to juggle 500 connections; this measures the server.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (f"POST {path} HTTP/1.1\r\nHost: fake\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode()
    writer.write(head + body)
    await writer.drain()
    reply = await reader.read()
    writer.close()
    return int(reply.split(b" ", 2)[1])


def test_500_concurrent_creates_with_1s_latency() -> None:
    async def burst(cloud: FakeCloud) -> list[int]:
        calls = [raw_post(cloud.port, "/runpod/v1/pods",
                          json.dumps(pod_body(name=f"atlas-{i}")).encode(), cloud.api_key)
                 for i in range(500)]
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
    pending = runtime.post("/runsync", params={"wait": 100},
                           json={"input": {"run_time_s": 5}}).json()
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
    by_policy = runtime.post("/run", json={"input": {"run_time_s": 5},
                                           "policy": {"executionTimeout": 100}}).json()["id"]
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
    with FakeCloud(queue_delay_s=0, run_time_s=0.05, result_ttl_s=0.2,
                   runsync_result_ttl_s=0.2) as cloud:
        headers = {"Authorization": f"Bearer {cloud.api_key}"}
        with httpx.Client(base_url=f"{cloud.runpod_runtime_url}/ep",
                          headers=headers) as client:
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
            assert httpx.get(f"{cloud.runpod_runtime_url}/elsewhere/status/{other}",
                             headers=headers).status_code == 404


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


# ---- GraphQL --------------------------------------------------------------------------------

QUERY = """query AtlasGpuTypes { gpuTypes { id displayName memoryInGb secureCloud communityCloud
  lowestPrice(input: {gpuCount: 1}) { minimumBidPrice uninterruptablePrice } stockStatus } }"""


def test_graphql_gpu_types(cloud: FakeCloud) -> None:
    response = httpx.post(cloud.runpod_graphql_url, params={"api_key": cloud.api_key},
                          json={"query": QUERY, "variables": {}})
    assert response.status_code == 200
    gpus = response.json()["data"]["gpuTypes"]
    h100 = next(g for g in gpus if g["id"] == H100)
    assert h100["displayName"] == "H100 80GB" and h100["memoryInGb"] == 80
    assert h100["lowestPrice"]["uninterruptablePrice"] == 2.49
    assert h100["lowestPrice"]["minimumBidPrice"] == 1.2
    assert h100["stockStatus"] == "High" and h100["lowestPrice"]["stockStatus"] == "High"
    assert len(gpus) >= 5


def test_graphql_bearer_filter_errors_and_auth(cloud: FakeCloud) -> None:
    headers = {"Authorization": f"Bearer {cloud.api_key}"}
    url = cloud.runpod_graphql_url
    one = httpx.post(url, headers=headers, json={
        "query": "query G($id: String) { gpuTypes(input: {id: $id}) { id } }",
        "variables": {"id": "NVIDIA L4"}})
    assert [g["id"] for g in one.json()["data"]["gpuTypes"]] == ["NVIDIA L4"]
    for body in ({"query": "{ myself { id } }"}, {"query": "{ gpuTypes { id "}, {"nope": 1}):
        answer = httpx.post(url, headers=headers, json=body)
        assert answer.status_code == 200 and answer.json()["errors"][0]["message"]
    broken = httpx.post(url, headers=headers, content=b"{{{")
    assert broken.status_code == 200 and "errors" in broken.json()
    unauthorized = httpx.post(url, json={"query": QUERY})
    assert unauthorized.status_code == 401 and "errors" in unauthorized.json()


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
    assert state["routes"]["GET /runpod/v1/pods/{pod_id}"] == 2
    assert state["totals"]["live_pods"] == 1 and state["totals"]["requests"] == 3
    assert httpx.post(f"{cloud.url}/_admin/reset").json() == {"ok": True}
    assert cloud.state()["pods"] == [] and rest.get("/pods").json() == []


def test_unknown_route_is_json_404(cloud: FakeCloud) -> None:
    response = httpx.get(f"{cloud.url}/runpod/v1/nothing-here")
    assert response.status_code == 404 and response.json()["error"] == "Not Found"
    assert response.json()["url"].endswith("/runpod/v1/nothing-here")  # names what was asked


def test_env_points_settings_at_the_fake(cloud: FakeCloud) -> None:
    env = cloud.env()
    assert env["ATLAS_RUNPOD_BASE_URL"] == cloud.runpod_rest_url
    assert env["ATLAS_RUNPOD_RUNTIME_URL"].endswith("/runpod/v2")
    assert env["ATLAS_RUNPOD_GRAPHQL_URL"].endswith("/runpod/graphql")
    assert env["ATLAS_RUNPOD_API_KEY"] == "fake-key"


def test_serve_runs_in_the_foreground_until_sigterm() -> None:
    from atlas_tasks.testing.redis_server import free_port

    port = free_port()
    code = ("from atlas_tasks.testing.fakecloud import serve; "
            f"serve('127.0.0.1', {port}, log_level='warning', api_keys=['cli-key'], "
            "rate_limit_rate=1.0, retry_after_s=4)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/_admin/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        limited = httpx.get(f"{url}/runpod/v1/pods", headers={"Authorization": "Bearer cli-key"})
        assert limited.status_code == 429 and limited.headers["retry-after"] == "4"
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=10)
        # uvicorn shuts down cleanly, then re-raises the signal it caught.
        assert proc.returncode in (0, -signal.SIGTERM)
        assert f"{url}/runpod/v1" in output.decode()
        assert "cli-key" not in output.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
