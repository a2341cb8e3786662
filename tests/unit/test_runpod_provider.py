"""RunPodProvider over httpx.MockTransport: REST v2 pods, duplicate-safe create, jobs,
catalog and extras. Wire shapes come from the examples in RunPod's official definition
(``../shared/reference/specs/runpod-rest-v2.openapi.json``) wherever it gives one."""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
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

REST = "https://rest.test"
RUNTIME = "https://runtime.test/v2"
SPEC = Path(__file__).resolve().parents[3] / "shared/reference/specs/runpod-rest-v2.openapi.json"


@cache
def _spec() -> dict[str, Any]:
    # Read from ../shared beside the checkout, never copied into the project; missing → fail.
    return json.loads(SPEC.read_text())  # type: ignore[no-any-return]


def example(path: str, method: str, status: str, name: str) -> Any:
    """A deep copy of one response example of the official definition."""
    content = _spec()["paths"][path][method]["responses"][status]["content"]
    return copy.deepcopy(next(iter(content.values()))["examples"][name]["value"])


def request_example(path: str, method: str, name: str) -> Any:
    """A deep copy of one request-body example of the official definition."""
    content = _spec()["paths"][path][method]["requestBody"]["content"]["application/json"]
    return copy.deepcopy(content["examples"][name]["value"])


def problem(
    status: int, detail: str, errors: list[str] | None = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    body: dict[str, Any] = {"title": "x", "status": status, "detail": detail}
    if errors is not None:
        body["errors"] = errors
    return httpx.Response(
        status,
        content=json.dumps(body).encode(),
        headers={"content-type": "application/problem+json", **(headers or {})},
    )


class FakeRunPod:
    """A tiny in-memory RunPod REST v2 behind a MockTransport, with fault switches."""

    def __init__(self) -> None:
        self.pods: dict[str, dict[str, Any]] = {}
        self.requests: list[httpx.Request] = []
        self.ids = (f"pod{i}" for i in itertools.count(1))
        #: Each create pops a fault: "500_after" (create then 500), "500" (no create),
        #: "timeout_after" (create then ReadTimeout), None (normal).
        self.create_faults: list[str | None] = []
        self.list_fault: Exception | None = None
        self.routes: dict[tuple[str, str], Callable[[httpx.Request], httpx.Response]] = {}

    def posts(self, path: str = "/v2/pods") -> list[httpx.Request]:
        return [r for r in self.requests if r.method == "POST" and r.url.path == path]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert request.headers["authorization"] == "Bearer test-key"
        route = self.routes.get((request.method, request.url.path))
        if route is not None:
            return route(request)
        path = request.url.path
        if request.method == "POST" and path == "/v2/pods":
            return self._create(request)
        if request.method == "GET" and path == "/v2/pods":
            if self.list_fault is not None:
                raise self.list_fault
            return httpx.Response(
                200, json={"pods": [p for p in self.pods.values() if p["status"] != "TERMINATED"]}
            )
        if path.startswith("/v2/pods/"):
            pod_id, _, action = path.removeprefix("/v2/pods/").partition("/")
            pod = self.pods.get(pod_id)
            if pod is None or pod["status"] == "TERMINATED":
                return problem(404, "pod not found")
            if request.method == "GET":
                return httpx.Response(200, json=pod)
            if request.method == "DELETE":
                pod["status"] = "TERMINATED"
                return httpx.Response(204)
            if action == "action":
                verb = json.loads(request.content)["action"]
                if verb not in pod["actions"]:
                    return problem(409, f"cannot {verb} a pod in status {pod['status']}")
                pod["status"], pod["actions"] = (
                    ("EXITED", ["start", "terminate"])
                    if verb == "stop"
                    else ("RUNNING", ["stop", "restart", "terminate"])
                )
                return httpx.Response(200, json=pod)
        return problem(404, f"no route {request.method} {path}")

    def _create(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        fault = self.create_faults.pop(0) if self.create_faults else None
        if fault == "500":
            return problem(500, "internal")
        pod = example("/v2/pods", "get", "200", "pods")["pods"][0]
        pod.update(
            id=next(self.ids),
            name=body["name"],
            image=body.get("image"),
            gpu=body.get("gpu"),
            ports=body.get("ports", []),
            env=body.get("env", {}),
            dataCenterId="EU-RO-1",
            cost=2.49,
        )
        pod["runtime"]["ports"][0]["ip"] = "203.0.113.9"
        pod["runtime"]["ports"][0]["public"] = 40022
        self.pods[pod["id"]] = pod
        if fault == "500_after":
            return problem(500, "something went wrong")
        if fault == "timeout_after":
            raise httpx.ReadTimeout("timed out reading", request=request)
        return httpx.Response(201, json=pod)


def make_provider(
    handler: Callable[[httpx.Request], httpx.Response],
    *,
    api_key: str | None = "test-key",
    hooks: tuple[Callable[[RequestInfo], None], ...] = (),
    retries: int = 3,
) -> tuple[RunPodProvider, list[float]]:
    settings = AtlasSettings(http_max_retries=retries, runpod_base_url="https://unused.test")
    ctx = ProviderContext(
        api_key=api_key,
        base_url=REST,
        settings=settings,
        transport=httpx.MockTransport(handler),
        hooks=hooks,
        options={"runtime_url": RUNTIME},
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
    base: dict[str, Any] = {
        "gpu": "h100",
        "image": "vllm/vllm-openai",
        "name": "atlas-s1",
        "ports": [(8000, "http"), (22, "tcp")],
    }
    base.update(fields)
    return build_compute_request(**base)


# ------------------------------------------------------------------ construction / keys
def test_capabilities_need_no_key_and_spot_is_gone() -> None:
    assert RunPodProvider.capabilities() == {
        "serverless",
        "network_volumes",
        "http_proxy",
        "raw_tcp",
        "symmetric_ports",
        "webhooks",
        "global_networking",
        "job_stream_reads",
        "gpu_utilization",
    }
    provider = RunPodProvider(ProviderContext(api_key=None))
    assert "spot" not in provider.capabilities()


def test_missing_key_raises_unauthorized_at_first_call(fake: FakeRunPod) -> None:
    provider, _ = make_provider(fake, api_key=None)
    with pytest.raises(UnauthorizedError) as info:
        provider.list_compute()
    assert "RUNPOD_API_KEY" in str(info.value) and "ATLAS_RUNPOD_API_KEY" in str(info.value)
    assert fake.requests == []


def test_registry_builds_runpod_with_env_key(
    monkeypatch: pytest.MonkeyPatch, fake: FakeRunPod
) -> None:
    monkeypatch.setenv("RUNPOD_API_KEY", "test-key")
    provider = get_provider("runpod", base_url=REST, transport=httpx.MockTransport(fake))
    assert isinstance(provider, RunPodProvider)
    assert provider.list_compute() == []
    assert str(fake.requests[0].url) == f"{REST}/v2/pods"
    assert "test-key" not in repr(provider)


def test_default_base_urls() -> None:
    assert AtlasSettings().runpod_base_url == "https://api.runpod.io"
    settings = AtlasSettings(
        runpod_base_url="https://a.test", runpod_runtime_url="https://b.test/v2"
    )
    provider = RunPodProvider(ProviderContext(api_key="k", settings=settings))
    assert [provider.clients.base_url(a) for a in ("management", "runtime")] == [
        "https://a.test",
        "https://b.test/v2",
    ]
    with pytest.raises(ValueError):
        provider.clients.base_url("graphql")


# ------------------------------------------------------------------ pods
def test_create_sends_the_definitions_example_body_exactly(fake: FakeRunPod) -> None:
    provider, _ = make_provider(fake)
    sent = request_example("/v2/pods", "post", "gpuPod")
    provider.create_compute(
        build_compute_request(
            name=sent["name"],
            image=sent["image"],
            gpu="rtx_4090",
            gpu_count=1,
            container_disk_gb=sent["disk"],
            cloud_type="any",
        )
    )
    assert json.loads(fake.posts()[0].content) == sent


def test_create_sends_the_nested_body_and_parses_the_pod(fake: FakeRunPod) -> None:
    provider, _ = make_provider(fake)
    # The request model refuses provider_opts' name/env up front; set past its validation
    # here to check the provider's own second line of defence.
    request = spawn_request(
        auth="bearer",
        env={"A": "1"},
        gpu_count=2,
        cloud_type="community",
        volume_gb=20,
        region_hints=("EU-RO-1", "US-TX-3"),
        container_disk_gb=40,
    ).model_copy(
        update={
            "provider_opts": {
                "startSsh": True,
                "name": "hijack",
                "image": "evil",
                "env": {"ATLAS_PRESHARED_KEY": "forged", "EXTRA": "x", "A": "0"},
            }
        }
    )
    compute = provider.spawn_compute(request)
    body = json.loads(fake.posts()[0].content)
    token = body["env"]["ATLAS_PRESHARED_KEY"]
    assert body == {
        "name": "atlas-s1",
        "image": "vllm/vllm-openai",
        "gpu": {"id": "NVIDIA H100 80GB HBM3", "count": 2},
        "cloud": "COMMUNITY",
        "dataCenterIds": ["EU-RO-1", "US-TX-3"],
        "mounts": {"persistent": {"size": 20, "path": "/workspace"}},
        "disk": 40,
        "env": {"ATLAS_PRESHARED_KEY": token, "EXTRA": "x", "A": "1"},
        "ports": ["8000/http", "22/tcp"],
        "startSsh": True,
    }
    assert token != "forged"  # provider_opts can never override the injected token
    assert compute.id == "pod1" and compute.status == ComputeStatus.RUNNING
    assert compute.gpu_type == "h100" and compute.region == "EU-RO-1"
    assert compute.cost_per_hour == 2.49 and compute.image == "vllm/vllm-openai"
    assert compute.ports[0].url == "https://pod1-8000.proxy.runpod.net"
    assert compute.ports[1].url == "tcp://203.0.113.9:40022"
    assert compute.auth is not None and compute.auth.token == token


def test_network_volume_mount_and_template(fake: FakeRunPod) -> None:
    provider, _ = make_provider(fake)
    provider.create_compute(
        spawn_request(network_volume_id="vol_xyz", image=None, template_id="30zmvf89kd")
    )
    body = json.loads(fake.posts()[0].content)
    assert body["mounts"] == {"network": [{"volumeId": "vol_xyz", "path": "/runpod-volume"}]}
    assert body["templateId"] == "30zmvf89kd" and "image" not in body


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"spot": True}, "spot"),
        ({"image": None}, "image"),
        ({"gpu": None}, "gpu"),
        ({"volume_gb": 5}, "volume_gb"),
        ({"volume_gb": 20, "network_volume_id": "v"}, "volume_gb"),
        ({"provider_opts": {"env": ["A=1"]}}, "provider_opts.env"),
    ],
)
def test_create_validation_errors_name_the_field(
    fake: FakeRunPod, fields: dict[str, Any], field: str
) -> None:
    provider, _ = make_provider(fake)
    with pytest.raises(ValidationError) as info:
        provider.create_compute(spawn_request(**fields))
    assert info.value.kind == "validation" and info.value.field == field
    assert field in str(info.value)
    assert fake.requests == []


def test_create_without_a_name_gets_one(fake: FakeRunPod) -> None:
    provider, _ = make_provider(fake)
    compute = provider.create_compute(spawn_request(name=None))
    assert compute.name and compute.name.startswith("pod-")
    assert json.loads(fake.posts()[0].content)["name"] == compute.name


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


def test_unnamed_create_is_looked_up_by_its_generated_name(fake: FakeRunPod) -> None:
    fake.create_faults = ["500_after"]
    provider, _ = make_provider(fake)
    compute = provider.create_compute(spawn_request(name=None))
    assert compute.id == "pod1" and len(fake.posts()) == 1 and len(fake.pods) == 1


def test_create_retried_when_500_created_nothing(fake: FakeRunPod) -> None:
    fake.create_faults = ["500", "500"]
    provider, sleeps = make_provider(fake)
    compute = provider.create_compute(spawn_request())
    assert compute.id == "pod1"
    assert len(fake.posts()) == 3 and len(fake.pods) == 1
    assert sleeps == [1.0, 2.0]
    bodies = {p.content for p in fake.posts()}
    assert len(bodies) == 1  # every retry sends the same name


def test_create_gives_up_after_max_retries(fake: FakeRunPod) -> None:
    fake.create_faults = ["500"] * 10
    provider, _ = make_provider(fake, retries=2)
    with pytest.raises(ProviderError) as info:
        provider.create_compute(spawn_request())
    assert info.value.status == 500 and is_maybe_created(info.value)
    assert len(fake.posts()) == 3 and fake.pods == {}


def test_create_does_not_recreate_when_lookup_fails(fake: FakeRunPod) -> None:
    fake.create_faults = ["500"]
    fake.list_fault = httpx.ConnectError("down")
    provider, _ = make_provider(fake, retries=1)
    with pytest.raises(ProviderError) as info:
        provider.create_compute(spawn_request())
    assert isinstance(info.value.__cause__, TransportError)
    assert len(fake.posts()) == 1


def test_create_429_is_retried_by_the_http_layer(fake: FakeRunPod) -> None:
    answers = iter(
        [problem(429, "rate limit exceeded for the minute window", headers={"Retry-After": "2"})]
    )

    def route(request: httpx.Request) -> httpx.Response:
        nxt = next(answers, None)
        if nxt is not None:
            fake.requests.append(request)
            return nxt
        fake.routes.clear()
        return fake(request)

    fake.routes[("POST", "/v2/pods")] = route
    provider, sleeps = make_provider(fake)
    assert provider.create_compute(spawn_request()).id == "pod1"
    assert sleeps == [2.0] and len(fake.pods) == 1


def test_get_list_stop_start_terminate(fake: FakeRunPod) -> None:
    provider, _ = make_provider(fake)
    pod = provider.create_compute(spawn_request())
    assert provider.get_compute(pod.id).id == pod.id
    provider.stop(pod.id)
    sent = fake.requests[-1]
    assert (sent.method, sent.url.path) == ("POST", f"/v2/pods/{pod.id}/action")
    assert json.loads(sent.content) == {"action": "stop"}
    assert provider.get_compute(pod.id).status == ComputeStatus.STOPPED
    assert provider.list_compute(status="stopped")[0].id == pod.id
    assert not fake.requests[-1].url.params  # v2 has no status filter: client-side
    provider.start(pod.id)
    assert json.loads(fake.requests[-1].content) == {"action": "start"}
    assert provider.list_compute(status=ComputeStatus.RUNNING)[0].id == pod.id
    provider.terminate(pod.id)
    assert (fake.requests[-1].method, fake.requests[-1].url.path) == (
        "DELETE",
        f"/v2/pods/{pod.id}",
    )
    with pytest.raises(NotFoundError):
        provider.get_compute(pod.id)
    assert provider.find_compute_by_name("atlas-s1") is None


def test_stop_409_settles_by_reading_the_pod(fake: FakeRunPod) -> None:
    provider, _ = make_provider(fake)
    pod = provider.create_compute(spawn_request())
    provider.stop(pod.id)
    provider.stop(pod.id)  # 409 (already EXITED): done, not an error
    assert [r.method for r in fake.requests[-2:]] == ["POST", "GET"]
    fake.routes[("POST", f"/v2/pods/{pod.id}/action")] = lambda r: problem(409, "locked")
    with pytest.raises(ProviderError) as info:
        provider.start(pod.id)  # 409 and the pod is still EXITED: the 409 stands
    assert info.value.status == 409 and "locked" in str(info.value)


def test_terminate_unknown_is_not_found(fake: FakeRunPod) -> None:
    provider, _ = make_provider(fake)
    with pytest.raises(NotFoundError) as info:
        provider.terminate("nope")
    assert info.value.kind == "not_found" and info.value.provider == "runpod"
    assert "pod not found" in str(info.value)
    with pytest.raises(NotFoundError):
        provider.get_compute("nope")
    with pytest.raises(NotFoundError):
        provider.stop("nope")


def test_problem_errors_keep_detail_and_errors(fake: FakeRunPod) -> None:
    ref = _spec()["components"]
    unauthorized = ref["responses"]["UnauthorizedError"]["content"]["application/problem+json"]
    body = unauthorized["examples"]["missingBearerToken"]["value"]
    fake.routes[("DELETE", "/v2/pods/x")] = lambda r: httpx.Response(
        401, json=body, headers={"content-type": "application/problem+json"}
    )
    errors = ref["schemas"]["ErrorResponse"]["properties"]["errors"]["examples"][0]
    fake.routes[("POST", "/v2/pods")] = lambda r: problem(
        422, "Request validation failed.", errors + ["$.gpu.count: must be >= 1"]
    )
    provider, _ = make_provider(fake)
    with pytest.raises(UnauthorizedError) as denied:
        provider.terminate("x")
    assert str(denied.value) == "[runpod] unauthorized (HTTP 401): missing bearer token"
    with pytest.raises(ProviderError) as invalid:
        provider.create_compute(spawn_request())
    assert invalid.value.message == (
        "Request validation failed.: $: additional properties 'bogus' not allowed; "
        "$.gpu.count: must be >= 1"
    )
    assert invalid.value.raw["errors"][1] == "$.gpu.count: must be >= 1"


def test_ids_are_validated_and_encoded(fake: FakeRunPod) -> None:
    provider, _ = make_provider(fake)
    with pytest.raises(ValidationError) as info:
        provider.terminate("  ")
    assert info.value.field == "compute_id"
    with pytest.raises(NotFoundError):
        provider.get_compute("../templates")
    assert fake.requests[-1].url.raw_path == b"/v2/pods/..%2Ftemplates"


def test_list_is_wrapped_and_filtered_client_side(fake: FakeRunPod) -> None:
    base = example("/v2/pods", "get", "200", "pods")["pods"][0]
    fake.pods = {
        "a": {
            **base,
            "id": "a",
            "name": "atlas-1",
            "status": "RUNNING",
            "gpu": {"id": "NVIDIA H100 80GB HBM3", "count": 1},
            "dataCenterId": "EU-RO-1",
        },
        "b": {
            **base,
            "id": "b",
            "name": "atlas-10",
            "status": "RUNNING",
            "gpu": {"id": "NVIDIA L4", "count": 1},
            "dataCenterId": "US-TX-3",
        },
        "c": {**base, "id": "c", "name": "atlas-1", "status": "STARTING"},
    }
    provider, _ = make_provider(fake)
    assert {c.id for c in provider.list_compute()} == {"a", "b", "c"}
    assert [c.id for c in provider.list_compute(region="US-TX-3")] == ["b"]
    assert [c.id for c in provider.list_compute(gpu="H100")] == ["a"]
    assert [c.id for c in provider.list_compute(status="provisioning")] == ["c"]
    assert {c.id for c in provider.list_compute(name="atlas-1")} == {"a", "c"}
    assert all(not r.url.params for r in fake.requests)
    assert provider.find_compute_by_name("atlas-1").id == "a"  # type: ignore[union-attr]
    with pytest.raises(ValidationError) as info:
        provider.list_compute(status="exploded")
    assert info.value.field == "status"


def test_malformed_pod_bodies_are_provider_errors(fake: FakeRunPod) -> None:
    fake.routes[("GET", "/v2/pods/p")] = lambda r: httpx.Response(200, json=["not", "a pod"])
    fake.routes[("GET", "/v2/pods/q")] = lambda r: httpx.Response(200, text="{truncated")
    fake.routes[("GET", "/v2/pods/deep")] = lambda r: httpx.Response(200, text="[" * 100_000)
    provider, _ = make_provider(fake)
    for call in (
        lambda: provider.get_compute("p"),
        lambda: provider.get_compute("q"),
        lambda: provider.get_compute("deep"),
    ):
        with pytest.raises(ProviderError):
            call()
    wrong: Any
    for wrong in ([], {"odd": True}, {"pods": {"a": 1}}, {"pods": ["x"]}):

        def answer(r: httpx.Request, w: Any = wrong) -> httpx.Response:
            return httpx.Response(200, json=w)

        fake.routes[("GET", "/v2/pods")] = answer
        with pytest.raises(ProviderError):
            provider.list_compute()


def test_hooks_see_every_attempt_with_rate_limits(fake: FakeRunPod) -> None:
    events: list[RequestInfo] = []
    fake.create_faults = ["500"]
    headers = _spec()["components"]["schemas"]
    limit = headers["RateLimitHeader"]["examples"][0]
    policy = headers["RateLimitPolicyHeader"]["examples"][0]

    def with_headers(request: httpx.Request) -> httpx.Response:
        response = fake(request)
        response.headers["RateLimit"] = limit
        response.headers["RateLimit-Policy"] = policy
        return response

    provider, _ = make_provider(with_headers, hooks=(events.append,))
    provider.create_compute(spawn_request())
    assert [(e.method, e.status, e.api) for e in events] == [
        ("POST", 500, "management"),
        ("GET", 200, "management"),
        ("POST", 201, "management"),
    ]
    assert all(e.attempt == 1 for e in events)
    seen = events[-1].rate_limit
    assert seen is not None and seen.exhausted and seen.reset_after_s == 12
    minute = seen.window("minute")
    assert minute is not None and (minute.remaining, minute.quota, minute.window_s) == (0, 60, 60)


# ------------------------------------------------------------------ serverless
def runtime_route(
    fake: FakeRunPod, method: str, path: str, *answers: httpx.Response | Exception
) -> None:
    queue = list(answers)

    def route(request: httpx.Request) -> httpx.Response:
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(item, Exception):
            raise item
        return item

    fake.routes[(method, "/v2" + path)] = route


def test_run_job_async(fake: FakeRunPod) -> None:
    runtime_route(
        fake, "POST", "/ep1/run", httpx.Response(200, json={"id": "job-1", "status": "IN_QUEUE"})
    )
    provider, _ = make_provider(fake)
    job = provider.run_job(
        build_job_request(endpoint="ep1", input={"p": 1}, webhook="https://hook")
    )
    assert job.id == "job-1" and job.status == JobStatus.IN_QUEUE and job.endpoint == "ep1"
    sent = fake.requests[-1]
    assert str(sent.url) == f"{RUNTIME}/ep1/run"
    assert json.loads(sent.content) == {"input": {"p": 1}, "webhook": "https://hook"}


def test_run_job_sync_completed(fake: FakeRunPod) -> None:
    runtime_route(
        fake,
        "POST",
        "/ep1/runsync",
        httpx.Response(
            200,
            json={
                "id": "sync-1",
                "status": "COMPLETED",
                "output": {"ok": 1},
                "executionTime": 3391,
                "delayTime": 824,
            },
        ),
    )
    provider, _ = make_provider(fake)
    job = provider.run_job(
        build_job_request(endpoint="ep1", input={}, mode="sync", timeout_ms=5_000)
    )
    assert job.status == JobStatus.COMPLETED and job.output == {"ok": 1}
    assert job.execution_time_ms == 3391
    assert fake.requests[-1].url.params["wait"] == "5000"


def test_run_job_sync_hard_timeout(fake: FakeRunPod) -> None:
    runtime_route(fake, "POST", "/ep1/runsync", httpx.ReadTimeout("read timed out"))
    provider, _ = make_provider(fake)
    with pytest.raises(AtlasTimeoutError) as info:
        provider.run_job(build_job_request(endpoint="ep1", input={}, mode="sync", timeout_ms=1500))
    assert info.value.kind == "timeout"
    assert "runsync exceeded 1500ms" in str(info.value)
    assert len([r for r in fake.requests if r.url.path.endswith("/runsync")]) == 1


def test_run_job_sync_polls_until_done(fake: FakeRunPod) -> None:
    runtime_route(
        fake,
        "POST",
        "/ep1/runsync",
        httpx.Response(200, json={"id": "j9", "status": "IN_PROGRESS"}),
    )
    runtime_route(
        fake,
        "GET",
        "/ep1/status/j9",
        httpx.Response(200, json={"id": "j9", "status": "IN_PROGRESS"}),
        httpx.Response(200, json={"id": "j9", "status": "COMPLETED", "output": 7}),
    )
    provider, sleeps = make_provider(fake)
    job = provider.run_job(
        build_job_request(endpoint="ep1", input={}, mode="sync", timeout_ms=60_000)
    )
    assert job.status == JobStatus.COMPLETED and job.output == 7
    assert sleeps == [0.5, 1.0]


def test_run_job_sync_deadline_while_polling(fake: FakeRunPod) -> None:
    runtime_route(
        fake, "POST", "/ep1/runsync", httpx.Response(200, json={"id": "j9", "status": "IN_QUEUE"})
    )
    runtime_route(
        fake,
        "GET",
        "/ep1/status/j9",
        httpx.Response(200, json={"id": "j9", "status": "IN_PROGRESS"}),
    )
    provider, sleeps = make_provider(fake)
    now = [0.0]
    provider.clock = lambda: now[0]

    def advance(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    provider.sleep = advance
    with pytest.raises(AtlasTimeoutError) as info:
        provider.run_job(build_job_request(endpoint="ep1", input={}, mode="sync", timeout_ms=2_000))
    assert "runsync exceeded 2000ms (job j9)" in str(info.value)
    assert info.value.raw == {"job_id": "j9"}
    assert sum(sleeps) == pytest.approx(2.0)


def test_get_and_cancel_job(fake: FakeRunPod) -> None:
    runtime_route(
        fake,
        "GET",
        "/ep1/status/j1",
        httpx.Response(200, json={"id": "j1", "status": "FAILED", "error": "CUDA OOM"}),
    )
    runtime_route(
        fake, "GET", "/ep1/status/gone", httpx.Response(404, json={"error": "job not found"})
    )
    runtime_route(
        fake,
        "POST",
        "/ep1/cancel/j1",
        httpx.Response(200, json={"id": "j1", "status": "CANCELLED"}),
    )
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
        fake,
        "GET",
        "/ep1/stream/j1",
        httpx.Response(200, json={"status": "IN_QUEUE", "stream": []}),
        httpx.Response(
            200, json={"status": "IN_PROGRESS", "stream": [{"output": "a"}, {"output": "b"}]}
        ),
        httpx.Response(200, json={"status": "IN_PROGRESS", "stream": []}),
        httpx.Response(200, json={"status": "COMPLETED", "stream": [{"output": "c"}]}),
        httpx.Response(500),  # must never be reached
    )
    provider, sleeps = make_provider(fake)
    assert list(provider.stream_job("j1", endpoint="ep1")) == ["a", "b", "c"]
    assert sleeps == [1.0, 0.5, 1.0]
    assert len([r for r in fake.requests if "/stream/" in r.url.path]) == 4


def test_stream_of_a_failed_job_raises_its_error(fake: FakeRunPod) -> None:
    runtime_route(
        fake,
        "GET",
        "/ep1/stream/j1",
        httpx.Response(200, json={"status": "FAILED", "stream": [{"output": 1}]}),
    )
    runtime_route(
        fake,
        "GET",
        "/ep1/status/j1",
        httpx.Response(200, json={"id": "j1", "status": "FAILED", "error": "oom"}),
    )
    provider, _ = make_provider(fake)
    seen = []
    with pytest.raises(AtlasError) as info:
        for chunk in provider.stream_job("j1", endpoint="ep1"):
            seen.append(chunk)
    assert seen == [1]  # chunks before the failure are still delivered
    assert info.value.kind == "provider" and "oom" in str(info.value)


def test_stream_of_a_timed_out_job_raises_timeout(fake: FakeRunPod) -> None:
    runtime_route(
        fake,
        "GET",
        "/ep1/stream/j1",
        httpx.Response(200, json={"status": "TIMED_OUT", "stream": []}),
    )
    runtime_route(
        fake, "GET", "/ep1/status/j1", httpx.Response(200, json={"id": "j1", "status": "TIMED_OUT"})
    )
    provider, _ = make_provider(fake)
    with pytest.raises(AtlasError) as info:
        list(provider.stream_job("j1", endpoint="ep1"))
    assert info.value.kind == "timeout"


def test_read_job_stream_is_one_non_blocking_read(fake: FakeRunPod) -> None:
    runtime_route(
        fake,
        "GET",
        "/ep1/stream/j1",
        httpx.Response(200, json={"status": "IN_PROGRESS", "stream": [{"output": "a"}]}),
        httpx.Response(200, json={"status": "COMPLETED", "stream": []}),
    )
    provider, sleeps = make_provider(fake)
    assert provider.read_job_stream("j1", endpoint="ep1") == (JobStatus.IN_PROGRESS, ["a"])
    assert provider.read_job_stream("j1", endpoint="ep1") == (JobStatus.COMPLETED, [])
    assert sleeps == []


def test_stream_validates_eagerly(fake: FakeRunPod) -> None:
    provider, _ = make_provider(fake)
    with pytest.raises(ValidationError):
        provider.stream_job("j1", endpoint=" ")


def test_endpoint_health(fake: FakeRunPod) -> None:
    health = {
        "jobs": {"completed": 1, "failed": 0, "inProgress": 0, "inQueue": 2, "retried": 0},
        "workers": {"idle": 1, "running": 0},
    }
    runtime_route(fake, "GET", "/ep1/health", httpx.Response(200, json=health))
    provider, _ = make_provider(fake)
    assert provider.endpoint_health("ep1") == health


# ------------------------------------------------------------------ catalog
def test_list_gpu_types_from_the_v2_catalog(fake: FakeRunPod) -> None:
    catalog = example("/v2/catalog/gpus", "get", "200", "gpus")
    fake.routes[("GET", "/v2/catalog/gpus")] = lambda r: httpx.Response(200, json=catalog)
    provider, _ = make_provider(fake)
    (gpu,) = provider.list_gpu_types()
    assert (
        gpu.id,
        gpu.display_name,
        gpu.memory_gb,
        gpu.lowest_price_per_hour,
        gpu.spot_price_per_hour,
        gpu.stock,
        gpu.canonical,
        gpu.cloud_type,
    ) == ("NVIDIA GeForce RTX 4090", "RTX 4090", 24, 0.31, None, "high", "rtx_4090", "any")
    sent = fake.requests[-1]
    assert sent.url.params["include"] == "AVAILABILITY" and sent.url.params["product"] == "POD"
    fake.routes[("GET", "/v2/catalog/gpus")] = lambda r: httpx.Response(200, json=[])
    with pytest.raises(ProviderError):
        provider.list_gpu_types()
    fake.routes[("GET", "/v2/catalog/gpus")] = lambda r: problem(403, "access denied")
    with pytest.raises(AtlasError) as denied:
        provider.list_gpu_types()
    assert denied.value.kind == "forbidden"


# ------------------------------------------------------------------ extras
def test_extras_use_v2_paths_and_wrapped_lists(fake: FakeRunPod) -> None:
    fake.routes[("POST", "/v2/templates")] = lambda r: httpx.Response(
        201, json={"id": "tpl1", **json.loads(r.content)}
    )
    fake.routes[("POST", "/v2/network-volumes")] = lambda r: httpx.Response(
        201, json={"id": "nv1", **json.loads(r.content)}
    )
    fake.routes[("POST", "/v2/serverless")] = lambda r: httpx.Response(
        201, json={"id": "ep1", **json.loads(r.content)}
    )
    fake.routes[("GET", "/v2/network-volumes")] = lambda r: httpx.Response(
        200,
        json={
            "networkVolumes": [
                {
                    "id": "nv1",
                    "name": "data",
                    "size": 50,
                    "dataCenter": "EU-RO-1",
                    "type": "STANDARD",
                }
            ]
        },
    )
    fake.routes[("GET", "/v2/templates")] = lambda r: httpx.Response(200, json={"templates": []})
    fake.routes[("GET", "/v2/serverless")] = lambda r: httpx.Response(200, json=[{"id": "x"}])
    fake.routes[("DELETE", "/v2/serverless/ep1")] = lambda r: httpx.Response(204)
    fake.routes[("DELETE", "/v2/templates/zzz")] = lambda r: problem(404, "template not found")
    provider, _ = make_provider(fake)
    tpl = provider.create_template("t", "img:1", disk=20)
    assert tpl == {"id": "tpl1", "name": "t", "image": "img:1", "disk": 20}
    vol = provider.create_network_volume("data", 50, "EU-RO-1")
    assert vol == {"id": "nv1", "name": "data", "size": 50, "dataCenter": "EU-RO-1"}
    endpoint = provider.create_endpoint("e", template_id="tpl1", gpu={"pools": ["ADA_24"]})
    assert json.loads(fake.requests[-1].content) == {
        "name": "e",
        "templateId": "tpl1",
        "type": "QUEUE",
        "gpu": {"pools": ["ADA_24"]},
        "scaling": {"type": "QUEUE_DELAY", "queueDelay": 4},
    }
    assert endpoint["id"] == "ep1"
    assert provider.list_network_volumes()[0]["dataCenter"] == "EU-RO-1"
    assert provider.list_templates() == []
    with pytest.raises(ProviderError):
        provider.list_endpoints()  # a bare array is not the v2 shape
    provider.delete_endpoint("ep1")
    with pytest.raises(NotFoundError) as gone:
        provider.delete_template("zzz")
    assert "template not found" in str(gone.value)
    fake.routes[("POST", "/v2/templates")] = lambda r: httpx.Response(201, json={"oops": 1})
    with pytest.raises(ProviderError):
        provider.create_template("t", "img:1")


def test_pod_billing(fake: FakeRunPod) -> None:
    answer = example("/v2/billing/pods", "get", "200", "podBilling")
    fake.routes[("GET", "/v2/billing/pods")] = lambda r: httpx.Response(200, json=answer)
    provider, _ = make_provider(fake)
    assert provider.pod_billing("7h9k2m4n6p", lastN=1) == answer
    assert dict(fake.requests[-1].url.params) == {"podId": "7h9k2m4n6p", "lastN": "1"}
    fake.routes[("GET", "/v2/billing/pods")] = lambda r: httpx.Response(200, json={})
    with pytest.raises(ProviderError):
        provider.pod_billing()
