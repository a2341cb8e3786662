"""RunPodProvider over httpx.MockTransport: pods, duplicate-safe create, jobs, catalog."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from atlas_tasks.config import AtlasSettings
from atlas_tasks.errors import (
    AtlasError,
    AtlasTimeoutError,
    NotFoundError,
    ProviderError,
    TransportError,
    UnauthorizedError,
    ValidationError,
)
from atlas_tasks.providers import get_provider
from atlas_tasks.providers.base import ProviderContext, RequestInfo
from atlas_tasks.providers.http import is_maybe_created
from atlas_tasks.providers.runpod import RunPodProvider
from atlas_tasks.specs import ComputeStatus, JobStatus, build_compute_request, build_job_request

REST = "https://rest.test/v1"
RUNTIME = "https://runtime.test/v2"
GRAPHQL = "https://gql.test/graphql"


class FakeRunPod:
    """A tiny in-memory RunPod REST v1 behind a MockTransport, with fault switches."""

    def __init__(self) -> None:
        self.pods: dict[str, dict[str, Any]] = {}
        self.requests: list[httpx.Request] = []
        self.ids = (f"pod{i}" for i in itertools.count(1))
        #: Each create pops a fault: "500_after" (create then 500), "500" (no create),
        #: "timeout_after" (create then ReadTimeout), None (normal).
        self.create_faults: list[str | None] = []
        self.create_status = 201
        self.list_fault: Exception | None = None
        self.routes: dict[tuple[str, str], Callable[[httpx.Request], httpx.Response]] = {}

    def posts(self, path: str = "/v1/pods") -> list[httpx.Request]:
        return [r for r in self.requests if r.method == "POST" and r.url.path == path]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert request.headers["authorization"] == "Bearer test-key"
        route = self.routes.get((request.method, request.url.path))
        if route is not None:
            return route(request)
        path = request.url.path.removeprefix("/v1")
        if request.method == "POST" and path == "/pods":
            return self._create(request)
        if request.method == "GET" and path == "/pods":
            if self.list_fault is not None:
                raise self.list_fault
            pods = list(self.pods.values())
            if "name" in request.url.params:
                pods = [p for p in pods if p["name"] == request.url.params["name"]]
            if "desiredStatus" in request.url.params:
                pods = [p for p in pods if p["desiredStatus"] == request.url.params[
                    "desiredStatus"]]
            return httpx.Response(200, json=pods)
        if path.startswith("/pods/"):
            pod_id, _, action = path.removeprefix("/pods/").partition("/")
            pod = self.pods.get(pod_id)
            if pod is None:
                return httpx.Response(404, json={"error": "Pod not found."})
            if request.method == "GET":
                return httpx.Response(200, json=pod)
            if request.method == "DELETE":
                pod["desiredStatus"] = "TERMINATED"
                return httpx.Response(204)
            if action in ("stop", "start"):
                pod["desiredStatus"] = "EXITED" if action == "stop" else "RUNNING"
                return httpx.Response(200)
        return httpx.Response(404, json={"error": f"no route {request.method} {path}"})

    def _create(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        fault = self.create_faults.pop(0) if self.create_faults else None
        if fault == "500":
            return httpx.Response(500, json={"error": "internal"})
        pod_id = next(self.ids)
        pod = {
            "id": pod_id, "name": body.get("name", "my pod"), "image": body.get("imageName"),
            "desiredStatus": "RUNNING", "costPerHr": "2.49", "publicIp": "203.0.113.9",
            "ports": body.get("ports", []), "portMappings": {"22": 40022},
            "machine": {"gpuTypeId": (body.get("gpuTypeIds") or [None])[0],
                        "dataCenterId": "EU-RO-1"},
            "gpu": {"id": (body.get("gpuTypeIds") or [None])[0], "count": body.get("gpuCount")},
            "env": body.get("env", {}),
        }
        self.pods[pod_id] = pod
        if fault == "500_after":
            return httpx.Response(500, json={"error": "something went wrong"})
        if fault == "timeout_after":
            raise httpx.ReadTimeout("timed out reading", request=request)
        return httpx.Response(self.create_status, json=pod)


def make_provider(
    handler: Callable[[httpx.Request], httpx.Response],
    *,
    api_key: str | None = "test-key",
    hooks: tuple[Callable[[RequestInfo], None], ...] = (),
    retries: int = 3,
) -> tuple[RunPodProvider, list[float]]:
    settings = AtlasSettings(http_max_retries=retries, runpod_base_url="https://unused.test")
    ctx = ProviderContext(
        api_key=api_key, base_url=REST, settings=settings,
        transport=httpx.MockTransport(handler), hooks=hooks,
        options={"runtime_url": RUNTIME, "graphql_url": GRAPHQL},
    )
    provider = RunPodProvider(ctx)
    sleeps: list[float] = []
    provider.sleep = sleeps.append
    provider.rand = lambda: 0.0
    return provider, sleeps


@pytest.fixture
def fake() -> FakeRunPod:
    return FakeRunPod()


def spawn_request(**fields: Any) -> Any:
    base: dict[str, Any] = {"gpu": "h100", "image": "vllm/vllm-openai", "name": "atlas-s1",
                            "ports": [(8000, "http"), (22, "tcp")]}
    base.update(fields)
    return build_compute_request(**base)


# ------------------------------------------------------------------ construction / keys
def test_capabilities_need_no_key() -> None:
    assert RunPodProvider.capabilities() == {
        "spot", "serverless", "network_volumes", "http_proxy", "raw_tcp", "symmetric_ports",
        "webhooks", "global_networking"}
    provider = RunPodProvider(ProviderContext(api_key=None))
    assert "spot" in provider.capabilities()


def test_missing_key_raises_unauthorized_at_first_call(fake: FakeRunPod) -> None:
    provider, _ = make_provider(fake, api_key=None)
    with pytest.raises(UnauthorizedError) as info:
        provider.list_compute()
    assert "RUNPOD_API_KEY" in str(info.value) and "ATLAS_RUNPOD_API_KEY" in str(info.value)
    assert fake.requests == []


def test_registry_builds_runpod_with_env_key(monkeypatch: pytest.MonkeyPatch,
                                             fake: FakeRunPod) -> None:
    monkeypatch.setenv("RUNPOD_API_KEY", "test-key")
    provider = get_provider("runpod", base_url=REST, transport=httpx.MockTransport(fake))
    assert isinstance(provider, RunPodProvider)
    assert provider.list_compute() == []
    assert str(fake.requests[0].url) == f"{REST}/pods"
    assert "test-key" not in repr(provider)


def test_default_base_urls_come_from_settings() -> None:
    settings = AtlasSettings(runpod_base_url="https://a.test/v1",
                             runpod_runtime_url="https://b.test/v2",
                             runpod_graphql_url="https://c.test/graphql")
    provider = RunPodProvider(ProviderContext(api_key="k", settings=settings))
    assert [provider.clients.base_url(a) for a in ("management", "runtime", "graphql")] == [
        "https://a.test/v1", "https://b.test/v2", "https://c.test/graphql"]


# ------------------------------------------------------------------ pods
def test_create_sends_v1_body_and_parses_pod(fake: FakeRunPod) -> None:
    provider, _ = make_provider(fake)
    compute = provider.spawn_compute(spawn_request(auth="bearer", env={"A": "1"}))
    body = json.loads(fake.posts()[0].content)
    assert body["gpuTypeIds"] == ["NVIDIA H100 80GB HBM3"]
    assert body["ports"] == ["8000/http", "22/tcp"]
    assert body["env"]["A"] == "1" and "ATLAS_PRESHARED_KEY" in body["env"]
    assert body["cloudType"] == "SECURE" and body["name"] == "atlas-s1"
    assert compute.id == "pod1" and compute.status == ComputeStatus.RUNNING
    assert compute.gpu_type == "h100" and compute.region == "EU-RO-1"
    assert compute.cost_per_hour == 2.49 and compute.image == "vllm/vllm-openai"
    assert compute.ports[0].url == "https://pod1-8000.proxy.runpod.net"
    assert compute.ports[1].url == "tcp://203.0.113.9:40022"
    assert compute.auth is not None and compute.auth.token == body["env"]["ATLAS_PRESHARED_KEY"]


def test_create_accepts_200_too(fake: FakeRunPod) -> None:
    fake.create_status = 200
    provider, _ = make_provider(fake)
    assert provider.create_compute(spawn_request()).id == "pod1"


def test_exactly_one_pod_after_500_after_create(fake: FakeRunPod) -> None:
    fake.create_faults = ["500_after"]
    provider, sleeps = make_provider(fake)
    compute = provider.create_compute(spawn_request())
    assert compute.id == "pod1" and compute.name == "atlas-s1"
    assert len(fake.posts()) == 1
    assert len(fake.pods) == 1
    assert sleeps == [1.0]  # one backoff before the lookup


def test_exactly_one_pod_after_timeout_after_create(fake: FakeRunPod) -> None:
    fake.create_faults = ["timeout_after"]
    provider, _ = make_provider(fake)
    assert provider.create_compute(spawn_request()).id == "pod1"
    assert len(fake.posts()) == 1 and len(fake.pods) == 1


def test_create_retried_when_500_created_nothing(fake: FakeRunPod) -> None:
    fake.create_faults = ["500", "500"]
    provider, sleeps = make_provider(fake)
    compute = provider.create_compute(spawn_request())
    assert compute.id == "pod1"
    assert len(fake.posts()) == 3 and len(fake.pods) == 1
    assert sleeps == [1.0, 2.0]


def test_create_gives_up_after_max_retries(fake: FakeRunPod) -> None:
    fake.create_faults = ["500"] * 10
    provider, _ = make_provider(fake, retries=2)
    with pytest.raises(ProviderError) as info:
        provider.create_compute(spawn_request())
    assert info.value.status == 500
    assert len(fake.posts()) == 3 and fake.pods == {}


def test_create_without_name_is_not_retried_after_maybe_created(fake: FakeRunPod) -> None:
    fake.create_faults = ["500_after"]
    provider, _ = make_provider(fake)
    with pytest.raises(ProviderError) as info:
        provider.create_compute(spawn_request(name=None))
    assert is_maybe_created(info.value)
    assert len(fake.posts()) == 1 and len(fake.pods) == 1


def test_create_does_not_recreate_when_lookup_fails(fake: FakeRunPod) -> None:
    fake.create_faults = ["500"]
    fake.list_fault = httpx.ConnectError("down")
    provider, _ = make_provider(fake, retries=1)
    with pytest.raises(ProviderError) as info:
        provider.create_compute(spawn_request())
    assert isinstance(info.value.__cause__, TransportError)
    assert len(fake.posts()) == 1


def test_create_429_is_retried_by_the_http_layer(fake: FakeRunPod) -> None:
    answers = iter([httpx.Response(429, headers={"Retry-After": "2"})])

    def route(request: httpx.Request) -> httpx.Response:
        nxt = next(answers, None)
        if nxt is not None:
            fake.requests.append(request)
            return nxt
        fake.routes.clear()
        return fake(request)

    fake.routes[("POST", "/v1/pods")] = route
    provider, sleeps = make_provider(fake)
    assert provider.create_compute(spawn_request()).id == "pod1"
    assert sleeps == [2.0] and len(fake.pods) == 1


def test_get_list_stop_start_terminate(fake: FakeRunPod) -> None:
    provider, _ = make_provider(fake)
    pod = provider.create_compute(spawn_request())
    assert provider.get_compute(pod.id).id == pod.id
    provider.stop(pod.id)
    assert provider.get_compute(pod.id).status == ComputeStatus.STOPPED
    assert provider.list_compute(status="stopped")[0].id == pod.id
    assert fake.requests[-1].url.params["desiredStatus"] == "EXITED"
    provider.start(pod.id)
    assert provider.list_compute(status=ComputeStatus.RUNNING)[0].id == pod.id
    provider.terminate(pod.id)
    assert fake.requests[-1].method == "DELETE"
    assert provider.get_compute(pod.id).status == ComputeStatus.TERMINATED
    assert provider.find_compute_by_name("atlas-s1") is None


def test_terminate_unknown_is_not_found(fake: FakeRunPod) -> None:
    provider, _ = make_provider(fake)
    with pytest.raises(NotFoundError) as info:
        provider.terminate("nope")
    assert info.value.kind == "not_found" and info.value.provider == "runpod"
    with pytest.raises(NotFoundError):
        provider.get_compute("nope")


def test_terminate_401_and_400(fake: FakeRunPod) -> None:
    fake.routes[("DELETE", "/v1/pods/x")] = lambda r: httpx.Response(401, json={
        "error": "bad key"})
    fake.routes[("DELETE", "/v1/pods/y")] = lambda r: httpx.Response(400, json={
        "error": "Invalid Pod ID."})
    provider, _ = make_provider(fake)
    with pytest.raises(UnauthorizedError) as info:
        provider.terminate("x")
    assert str(info.value) == "[runpod] unauthorized (HTTP 401): bad key"
    with pytest.raises(ProviderError):
        provider.terminate("y")


def test_ids_are_validated_and_encoded(fake: FakeRunPod) -> None:
    provider, _ = make_provider(fake)
    with pytest.raises(ValidationError) as info:
        provider.terminate("  ")
    assert info.value.field == "compute_id"
    with pytest.raises(NotFoundError):
        provider.get_compute("../templates")
    assert fake.requests[-1].url.raw_path == b"/v1/pods/..%2Ftemplates"


def test_list_filters_client_side(fake: FakeRunPod) -> None:
    fake.pods = {
        "a": {"id": "a", "name": "atlas-1", "desiredStatus": "RUNNING",
              "machine": {"gpuTypeId": "NVIDIA H100 80GB HBM3", "dataCenterId": "EU-RO-1"}},
        "b": {"id": "b", "name": "atlas-10", "desiredStatus": "RUNNING",
              "machine": {"gpuTypeId": "NVIDIA L4", "dataCenterId": "US-TX-3"}},
        "c": {"id": "c", "name": "atlas-1", "desiredStatus": "CREATED"},
    }
    provider, _ = make_provider(fake)
    assert {c.id for c in provider.list_compute()} == {"a", "b", "c"}
    assert [c.id for c in provider.list_compute(region="US-TX-3")] == ["b"]
    assert [c.id for c in provider.list_compute(gpu="H100")] == ["a"]
    assert [c.id for c in provider.list_compute(status="provisioning")] == ["c"]
    assert "desiredStatus" not in fake.requests[-1].url.params
    # A server that ignores ?name= (prefix matches) is still filtered exactly.
    fake.routes[("GET", "/v1/pods")] = lambda r: httpx.Response(200, json=list(
        fake.pods.values()))
    assert {c.id for c in provider.list_compute(name="atlas-1")} == {"a", "c"}
    assert provider.find_compute_by_name("atlas-1").id == "a"  # type: ignore[union-attr]
    with pytest.raises(ValidationError) as info:
        provider.list_compute(status="exploded")
    assert info.value.field == "status"


def test_malformed_pod_bodies_are_provider_errors(fake: FakeRunPod) -> None:
    fake.routes[("GET", "/v1/pods/p")] = lambda r: httpx.Response(200, json=["not", "a pod"])
    fake.routes[("GET", "/v1/pods")] = lambda r: httpx.Response(200, json={"odd": True})
    fake.routes[("GET", "/v1/pods/q")] = lambda r: httpx.Response(200, text="{truncated")
    provider, _ = make_provider(fake)
    for call in (lambda: provider.get_compute("p"), provider.list_compute,
                 lambda: provider.get_compute("q")):
        with pytest.raises(ProviderError):
            call()


def test_hooks_see_every_attempt(fake: FakeRunPod) -> None:
    events: list[RequestInfo] = []
    fake.create_faults = ["500"]
    provider, _ = make_provider(fake, hooks=(events.append,))
    provider.create_compute(spawn_request())
    assert [(e.method, e.status, e.api) for e in events] == [
        ("POST", 500, "management"), ("GET", 200, "management"), ("POST", 201, "management")]
    assert all(e.attempt == 1 for e in events)


# ------------------------------------------------------------------ serverless
def runtime_route(fake: FakeRunPod, method: str, path: str,
                  *answers: httpx.Response | Exception) -> None:
    queue = list(answers)

    def route(request: httpx.Request) -> httpx.Response:
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(item, Exception):
            raise item
        return item

    fake.routes[(method, "/v2" + path)] = route


def test_run_job_async(fake: FakeRunPod) -> None:
    runtime_route(fake, "POST", "/ep1/run",
                  httpx.Response(200, json={"id": "job-1", "status": "IN_QUEUE"}))
    provider, _ = make_provider(fake)
    job = provider.run_job(build_job_request(endpoint="ep1", input={"p": 1},
                                             webhook="https://hook"))
    assert job.id == "job-1" and job.status == JobStatus.IN_QUEUE and job.endpoint == "ep1"
    sent = fake.requests[-1]
    assert str(sent.url) == f"{RUNTIME}/ep1/run"
    assert json.loads(sent.content) == {"input": {"p": 1}, "webhook": "https://hook"}


def test_run_job_sync_completed(fake: FakeRunPod) -> None:
    runtime_route(fake, "POST", "/ep1/runsync", httpx.Response(200, json={
        "id": "sync-1", "status": "COMPLETED", "output": {"ok": 1}, "executionTime": 3391,
        "delayTime": 824}))
    provider, _ = make_provider(fake)
    job = provider.run_job(build_job_request(endpoint="ep1", input={}, mode="sync",
                                             timeout_ms=5_000))
    assert job.status == JobStatus.COMPLETED and job.output == {"ok": 1}
    assert job.execution_time_ms == 3391
    assert fake.requests[-1].url.params["wait"] == "5000"


def test_run_job_sync_hard_timeout(fake: FakeRunPod) -> None:
    runtime_route(fake, "POST", "/ep1/runsync", httpx.ReadTimeout("read timed out"))
    provider, _ = make_provider(fake)
    with pytest.raises(AtlasTimeoutError) as info:
        provider.run_job(build_job_request(endpoint="ep1", input={}, mode="sync",
                                           timeout_ms=1500))
    assert info.value.kind == "timeout"
    assert "runsync exceeded 1500ms" in str(info.value)
    assert len([r for r in fake.requests if r.url.path.endswith("/runsync")]) == 1


def test_run_job_sync_polls_until_done(fake: FakeRunPod) -> None:
    runtime_route(fake, "POST", "/ep1/runsync",
                  httpx.Response(200, json={"id": "j9", "status": "IN_PROGRESS"}))
    runtime_route(fake, "GET", "/ep1/status/j9",
                  httpx.Response(200, json={"id": "j9", "status": "IN_PROGRESS"}),
                  httpx.Response(200, json={"id": "j9", "status": "COMPLETED", "output": 7}))
    provider, sleeps = make_provider(fake)
    job = provider.run_job(build_job_request(endpoint="ep1", input={}, mode="sync",
                                             timeout_ms=60_000))
    assert job.status == JobStatus.COMPLETED and job.output == 7
    assert sleeps == [0.5, 1.0]


def test_run_job_sync_deadline_while_polling(fake: FakeRunPod) -> None:
    runtime_route(fake, "POST", "/ep1/runsync",
                  httpx.Response(200, json={"id": "j9", "status": "IN_QUEUE"}))
    runtime_route(fake, "GET", "/ep1/status/j9",
                  httpx.Response(200, json={"id": "j9", "status": "IN_PROGRESS"}))
    provider, sleeps = make_provider(fake)
    now = [0.0]
    provider.clock = lambda: now[0]

    def advance(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    provider.sleep = advance
    with pytest.raises(AtlasTimeoutError) as info:
        provider.run_job(build_job_request(endpoint="ep1", input={}, mode="sync",
                                           timeout_ms=2_000))
    assert "runsync exceeded 2000ms (job j9)" in str(info.value)
    assert info.value.raw == {"job_id": "j9"}
    assert sum(sleeps) == pytest.approx(2.0)


def test_get_and_cancel_job(fake: FakeRunPod) -> None:
    runtime_route(fake, "GET", "/ep1/status/j1", httpx.Response(200, json={
        "id": "j1", "status": "FAILED", "error": "CUDA OOM"}))
    runtime_route(fake, "GET", "/ep1/status/gone", httpx.Response(404, json={
        "error": "job not found"}))
    runtime_route(fake, "POST", "/ep1/cancel/j1", httpx.Response(200, json={
        "id": "j1", "status": "CANCELLED"}))
    provider, _ = make_provider(fake)
    job = provider.get_job("j1", endpoint="ep1")
    assert job.status == JobStatus.FAILED and job.error == "CUDA OOM"
    with pytest.raises(NotFoundError):
        provider.get_job("gone", endpoint="ep1")
    provider.cancel_job("j1", endpoint="ep1")
    assert fake.requests[-1].url.path == "/v2/ep1/cancel/j1"
    with pytest.raises(ValidationError) as info:
        provider.get_job("j1", endpoint="")
    assert info.value.field == "endpoint"


def test_stream_yields_chunks_in_order_and_stops(fake: FakeRunPod) -> None:
    runtime_route(
        fake, "GET", "/ep1/stream/j1",
        httpx.Response(200, json={"status": "IN_QUEUE", "stream": []}),
        httpx.Response(200, json={"status": "IN_PROGRESS", "stream": [{"output": "a"},
                                                                      {"output": "b"}]}),
        httpx.Response(200, json={"status": "IN_PROGRESS", "stream": []}),
        httpx.Response(200, json={"status": "COMPLETED", "stream": [{"output": "c"}]}),
        httpx.Response(500),  # must never be reached
    )
    provider, sleeps = make_provider(fake)
    assert list(provider.stream_job("j1", endpoint="ep1")) == ["a", "b", "c"]
    assert sleeps == [1.0, 0.5, 1.0]
    assert len([r for r in fake.requests if "/stream/" in r.url.path]) == 4


def test_stream_of_a_failed_job_raises_its_error(fake: FakeRunPod) -> None:
    runtime_route(fake, "GET", "/ep1/stream/j1",
                  httpx.Response(200, json={"status": "FAILED", "stream": [{"output": 1}]}))
    runtime_route(fake, "GET", "/ep1/status/j1",
                  httpx.Response(200, json={"id": "j1", "status": "FAILED", "error": "oom"}))
    provider, _ = make_provider(fake)
    seen = []
    with pytest.raises(AtlasError) as info:
        for chunk in provider.stream_job("j1", endpoint="ep1"):
            seen.append(chunk)
    assert seen == [1]  # chunks before the failure are still delivered
    assert info.value.kind == "provider" and "oom" in str(info.value)


def test_stream_of_a_timed_out_job_raises_timeout(fake: FakeRunPod) -> None:
    runtime_route(fake, "GET", "/ep1/stream/j1",
                  httpx.Response(200, json={"status": "TIMED_OUT", "stream": []}))
    runtime_route(fake, "GET", "/ep1/status/j1",
                  httpx.Response(200, json={"id": "j1", "status": "TIMED_OUT"}))
    provider, _ = make_provider(fake)
    with pytest.raises(AtlasError) as info:
        list(provider.stream_job("j1", endpoint="ep1"))
    assert info.value.kind == "timeout"


def test_stream_validates_eagerly(fake: FakeRunPod) -> None:
    provider, _ = make_provider(fake)
    with pytest.raises(ValidationError):
        provider.stream_job("j1", endpoint=" ")


def test_endpoint_health(fake: FakeRunPod) -> None:
    health = {"jobs": {"completed": 1, "failed": 0, "inProgress": 0, "inQueue": 2,
                       "retried": 0}, "workers": {"idle": 1, "running": 0}}
    runtime_route(fake, "GET", "/ep1/health", httpx.Response(200, json=health))
    provider, _ = make_provider(fake)
    assert provider.endpoint_health("ep1") == health


# ------------------------------------------------------------------ graphql
GQL_FIXTURE = {"data": {"gpuTypes": [
    {"id": "NVIDIA H100 80GB HBM3", "displayName": "H100 80GB", "memoryInGb": 80,
     "secureCloud": True, "communityCloud": False,
     "lowestPrice": {"minimumBidPrice": 1.2, "uninterruptablePrice": 2.49,
                     "stockStatus": "High"}},
]}}


def test_list_gpu_types(fake: FakeRunPod) -> None:
    fake.routes[("POST", "/graphql")] = lambda r: httpx.Response(200, json=GQL_FIXTURE)
    provider, _ = make_provider(fake)
    (gpu,) = provider.list_gpu_types()
    assert (gpu.display_name, gpu.memory_gb, gpu.lowest_price_per_hour,
            gpu.spot_price_per_hour, gpu.stock, gpu.canonical) == (
        "H100 80GB", 80, 2.49, 1.2, "high", "h100")
    sent = fake.requests[-1]
    assert str(sent.url) == GRAPHQL  # no ?api_key=: the key travels in the header
    assert sent.headers["authorization"] == "Bearer test-key"
    payload = json.loads(sent.content)
    assert "gpuTypes" in payload["query"] and payload["variables"] == {}


def test_graphql_errors_are_provider_errors(fake: FakeRunPod) -> None:
    fake.routes[("POST", "/graphql")] = lambda r: httpx.Response(200, json={
        "errors": [{"message": "Cannot query field \"stockStatus\""}], "data": None})
    provider, _ = make_provider(fake)
    with pytest.raises(ProviderError) as info:
        provider.list_gpu_types()
    assert info.value.status == 200 and "stockStatus" in str(info.value.message)
    fake.routes[("POST", "/graphql")] = lambda r: httpx.Response(200, json={"data": {}})
    with pytest.raises(ProviderError):
        provider.list_gpu_types()
    fake.routes[("POST", "/graphql")] = lambda r: httpx.Response(403, json={
        "error": "forbidden"})
    with pytest.raises(Exception) as denied:
        provider.list_gpu_types()
    assert getattr(denied.value, "kind", None) == "forbidden"


# ------------------------------------------------------------------ extras
def test_extras_accept_200_and_201(fake: FakeRunPod) -> None:
    fake.routes[("POST", "/v1/templates")] = lambda r: httpx.Response(
        200, json={"id": "tpl1", **json.loads(r.content)})
    fake.routes[("POST", "/v1/networkvolumes")] = lambda r: httpx.Response(
        201, json={"id": "nv1", **json.loads(r.content)})
    fake.routes[("POST", "/v1/endpoints")] = lambda r: httpx.Response(
        200, json={"id": "ep1", **json.loads(r.content)})
    fake.routes[("GET", "/v1/networkvolumes")] = lambda r: httpx.Response(
        200, json=[{"id": "nv1", "name": "data", "size": 50, "dataCenterId": "EU-RO-1"}])
    fake.routes[("DELETE", "/v1/endpoints/ep1")] = lambda r: httpx.Response(204)
    fake.routes[("DELETE", "/v1/templates/zzz")] = lambda r: httpx.Response(404, json={
        "error": "not found"})
    provider, _ = make_provider(fake)
    tpl = provider.create_template("t", "img:1", containerDiskInGb=20)
    assert tpl == {"id": "tpl1", "name": "t", "imageName": "img:1", "containerDiskInGb": 20}
    vol = provider.create_network_volume("data", 50, "EU-RO-1")
    assert vol["size"] == 50 and vol["dataCenterId"] == "EU-RO-1"
    assert provider.create_endpoint("tpl1", name="e")["templateId"] == "tpl1"
    assert provider.list_network_volumes()[0]["id"] == "nv1"
    provider.delete_endpoint("ep1")
    with pytest.raises(NotFoundError):
        provider.delete_template("zzz")
    fake.routes[("POST", "/v1/templates")] = lambda r: httpx.Response(200, json={"oops": 1})
    with pytest.raises(ProviderError):
        provider.create_template("t", "img:1")
