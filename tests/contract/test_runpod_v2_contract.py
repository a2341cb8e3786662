"""Our RunPod provider against the live fake cloud, every exchange checked against RunPod's
official REST v2 definition (``../shared/reference/specs/runpod-rest-v2.openapi.json``).

Both sides are held to the definition at once: a request our provider builds wrong, or an
answer the fake cloud shapes wrong (a string ``cost``, a missing ``actions``, a ``null``
where none is allowed), is a violation and fails the test. The provider's own HTTP layer
is used unchanged: a transport wrapper feeds each exchange to :class:`SpecChecker`'s
response hook.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from atlas_tasks.config import AtlasSettings
from atlas_tasks.errors import AtlasError, NotFoundError, RateLimitedError, ValidationError
from atlas_tasks.providers.base import ProviderContext, RequestInfo
from atlas_tasks.providers.runpod import RunPodProvider
from atlas_tasks.specs import ComputeStatus, build_compute_request
from atlas_tasks.testing.fakecloud import FakeCloud
from tests.contract.spec_check import SpecChecker

SPEC = "runpod-rest-v2.openapi.json"


class CheckedTransport(httpx.BaseTransport):
    """A real HTTP transport whose every exchange goes through the checker's hooks."""

    def __init__(self, checker: SpecChecker) -> None:
        self.inner = httpx.HTTPTransport()
        self.hooks = checker.event_hooks()["response"]

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        response.request = request
        for hook in self.hooks:
            hook(response)
        return response

    def close(self) -> None:
        self.inner.close()


@pytest.fixture(scope="module")
def cloud() -> Iterator[FakeCloud]:
    with FakeCloud() as running:
        yield running


@pytest.fixture
def checker() -> SpecChecker:
    # The fake mounts RunPod at /runpod: /runpod/v2/pods is the definition's /v2/pods.
    return SpecChecker.for_spec(SPEC, strip_prefix="/runpod")


@pytest.fixture
def seen() -> list[RequestInfo]:
    return []


@pytest.fixture
def runpod(
    cloud: FakeCloud, checker: SpecChecker, seen: list[RequestInfo]
) -> Iterator[RunPodProvider]:
    cloud.reset()
    settings = AtlasSettings(
        runpod_base_url=cloud.runpod_rest_url,
        runpod_runtime_url=cloud.runpod_runtime_url,
        runpod_api_key=cloud.api_key,
        http_max_retries=0,
    )
    context = ProviderContext(
        api_key=cloud.api_key,
        settings=settings,
        transport=CheckedTransport(checker),
        hooks=(seen.append,),
    )
    provider = RunPodProvider(context)
    yield provider
    provider.close()


def _request(**fields: Any) -> Any:
    base: dict[str, Any] = {
        "gpu": "h100",
        "image": "vllm/vllm-openai:latest",
        "ports": [(8000, "http"), (22, "tcp")],
        "env": {"MODEL": "m"},
    }
    return build_compute_request(**{**base, **fields})


def test_pod_lifecycle_matches_the_definition(
    runpod: RunPodProvider, checker: SpecChecker, seen: list[RequestInfo]
) -> None:
    pod = runpod.spawn_compute(
        _request(
            name="atlas-contract-1",
            volume_gb=20,
            region_hints=("US-TX-3",),
            container_disk_gb=30,
            cloud_type="community",
            auth="bearer",
        )
    )
    assert pod.status == ComputeStatus.RUNNING
    assert pod.gpu_type == "h100" and pod.region == "US-TX-3"
    assert isinstance(pod.cost_per_hour, float) and pod.cost_per_hour > 0
    assert pod.gpu_utilization and 0 <= pod.gpu_utilization[0].util_pct <= 100  # type: ignore[operator]
    assert pod.public_ip and any(p.url and p.url.startswith("tcp://") for p in pod.ports)
    assert pod.raw["env"]["ATLAS_PRESHARED_KEY"]  # the injected token reached the pod

    assert runpod.get_compute(pod.id).id == pod.id
    assert [c.id for c in runpod.list_compute(name="atlas-contract-1")] == [pod.id]
    runpod.stop(pod.id)
    assert runpod.get_compute(pod.id).status == ComputeStatus.STOPPED
    assert runpod.get_compute(pod.id).cost_per_hour == 0.0
    runpod.stop(pod.id)  # a second stop (409 at RunPod) settles as done
    runpod.start(pod.id)
    assert runpod.get_compute(pod.id).status == ComputeStatus.RUNNING
    runpod.terminate(pod.id)
    with pytest.raises(NotFoundError):
        runpod.get_compute(pod.id)
    with pytest.raises(NotFoundError):
        runpod.terminate(pod.id)  # already gone: 404 problem body, as the contract expects
    assert runpod.list_compute(name="atlas-contract-1") == []

    checker.assert_clean()
    assert checker.checked >= 14
    # Every answer carried the rate-limit headers, parsed for the hooks.
    limits = [info.rate_limit for info in seen if info.status is not None]
    assert limits and all(limit is not None and limit.window("minute") for limit in limits)


def test_network_volume_pod_and_template_pod(runpod: RunPodProvider, checker: SpecChecker) -> None:
    volume = runpod.create_network_volume("contract-vol", 50, "EU-RO-1")
    on_volume = runpod.spawn_compute(
        _request(name="atlas-contract-2", network_volume_id=volume["id"], region_hints=("EU-RO-1",))
    )
    assert on_volume.raw["mounts"]["network"][0]["volumeId"] == volume["id"]
    template = runpod.create_template("contract-tpl", "runpod/pytorch:2", ports=["8888/http"])
    from_template = runpod.spawn_compute(
        build_compute_request(gpu="a100_80g", name="atlas-contract-3", template_id=template["id"])
    )
    assert from_template.image == "runpod/pytorch:2"
    assert {c.id for c in runpod.list_compute()} >= {on_volume.id, from_template.id}
    for pod_id in (on_volume.id, from_template.id):
        runpod.terminate(pod_id)
    runpod.delete_template(template["id"])
    runpod.delete_network_volume(volume["id"])
    checker.assert_clean()
    assert checker.checked >= 9


def test_catalog_templates_volumes_endpoints_billing(
    runpod: RunPodProvider, checker: SpecChecker
) -> None:
    gpus = runpod.list_gpu_types()
    h100 = next(g for g in gpus if g.canonical == "h100")
    assert h100.lowest_price_per_hour == 2.49 and h100.stock == "high"
    assert h100.spot_price_per_hour is None  # v2 has no spot market

    template = runpod.create_template("tpl", "runpod/worker:1", serverless=True, env={"A": "b"})
    assert runpod.get_template(template["id"])["name"] == "tpl"
    assert [t["id"] for t in runpod.list_templates()] == [template["id"]]

    volume = runpod.create_network_volume("data", 100, "US-TX-3")
    assert runpod.get_network_volume(volume["id"])["size"] == 100
    assert [v["id"] for v in runpod.list_network_volumes()] == [volume["id"]]

    endpoint = runpod.create_endpoint(
        "infer", template_id=template["id"], gpu={"pools": ["ADA_24"]}
    )
    assert runpod.get_endpoint(endpoint["id"])["name"] == "infer"
    assert [e["id"] for e in runpod.list_endpoints()] == [endpoint["id"]]

    pod = runpod.spawn_compute(_request(name="atlas-contract-bill"))
    billing = runpod.pod_billing(pod.id, bucketSize="day")
    assert [r["podId"] for r in billing["records"]] == [pod.id]

    runpod.delete_endpoint(endpoint["id"])
    runpod.delete_network_volume(volume["id"])
    runpod.delete_template(template["id"])
    runpod.terminate(pod.id)
    for getter, item in (
        (runpod.get_endpoint, endpoint),
        (runpod.get_template, template),
        (runpod.get_network_volume, volume),
    ):
        with pytest.raises(NotFoundError):
            getter(item["id"])
    checker.assert_clean()
    assert checker.checked >= 19


def test_error_answers_are_problems_the_definition_allows(
    runpod: RunPodProvider, checker: SpecChecker, cloud: FakeCloud
) -> None:
    # 400: a GPU id RunPod does not offer (passed raw through provider_opts).
    with pytest.raises(AtlasError) as bad_gpu:
        runpod.spawn_compute(
            build_compute_request(
                image="x",
                name="atlas-contract-e1",
                provider_opts={"gpu": {"id": "NVIDIA Imaginary 9000", "count": 1}},
            )
        )
    assert bad_gpu.value.status == 400 and bad_gpu.value.kind == "provider"
    assert "Imaginary" in str(bad_gpu.value)
    # 422 with errors: an unknown field; the message keeps detail and every error. This
    # request breaks the definition on purpose, so only the answer is checked.
    checker.check_requests = False
    with pytest.raises(AtlasError) as unknown:
        runpod.spawn_compute(
            _request(name="atlas-contract-e2", provider_opts={"bogus": 1, "interruptible": True})
        )
    checker.check_requests = True
    assert unknown.value.status == 422
    assert "additional properties 'bogus' not allowed" in str(unknown.value)
    assert "additional properties 'interruptible' not allowed" in str(unknown.value)
    # 404 on get, action and delete.
    for call in (runpod.get_compute, runpod.stop, runpod.terminate):
        with pytest.raises(NotFoundError):
            call("nosuchpod")
    with pytest.raises(NotFoundError):
        runpod.get_template("nosuchtpl")
    checker.assert_clean()
    assert checker.checked >= 6

    # 401 answers are problems too (checked directly: the provider never sends a bad key).
    with httpx.Client(event_hooks=checker.event_hooks()) as client:
        denied = client.get(
            f"{cloud.runpod_rest_url}/v2/pods", headers={"Authorization": "Bearer wrong"}
        )
    assert denied.status_code == 401
    assert denied.headers["content-type"] == "application/problem+json"
    checker.assert_clean()


def test_spot_is_refused_before_any_request(runpod: RunPodProvider, checker: SpecChecker) -> None:
    with pytest.raises(ValidationError) as err:
        runpod.spawn_compute(_request(name="atlas-contract-spot", spot=True))
    assert err.value.field == "spot"
    assert checker.checked == 0
    assert "spot" not in RunPodProvider.capabilities()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/catalog/datacenters"),  # in the definition, not served by the fake
        ("GET", "/v2/billing/serverless"),
        ("PATCH", "/v2/templates/nosuchtpl"),  # a served path with a method it does not serve
    ],
)
def test_unserved_paths_answer_problems(
    cloud: FakeCloud, checker: SpecChecker, method: str, path: str
) -> None:
    # Every RunPod v2 error is application/problem+json ({title, status, detail}); the
    # fake's generic 404/405 used to be its own {"error": ...} JSON, which the
    # definition's `default` response (problem+json only) rejects.
    with httpx.Client(
        event_hooks=checker.event_hooks(),
        timeout=10,
        headers={"Authorization": f"Bearer {cloud.api_key}"},
    ) as client:
        answer = client.request(
            method,
            f"{cloud.runpod_rest_url}{path}",
            json={"name": "x"} if method == "PATCH" else None,
        )
    assert answer.status_code in (404, 405)
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["status"] == answer.status_code
    checker.assert_clean()


def test_rate_limited_answers_are_problems_with_rate_limit_headers(
    cloud: FakeCloud, checker: SpecChecker
) -> None:
    # TooManyRequestsError: problem+json with Retry-After, RateLimit and RateLimit-Policy.
    # An injected 429 used to be {"error": "Too Many Requests"} as application/json and
    # without the RateLimit headers.
    cloud.reset()
    settings = AtlasSettings(
        runpod_base_url=cloud.runpod_rest_url, runpod_api_key=cloud.api_key, http_max_retries=1
    )
    seen: list[RequestInfo] = []
    provider = RunPodProvider(
        ProviderContext(
            api_key=cloud.api_key,
            settings=settings,
            transport=CheckedTransport(checker),
            hooks=(seen.append,),
        )
    )
    slept: list[float] = []
    provider.sleep = slept.append
    try:
        cloud.fail_next("GET /pods", 429, retry_after=7, times=2)
        with pytest.raises(RateLimitedError) as err:
            provider.list_compute()
        assert err.value.status == 429 and err.value.kind == "rate_limited"
        assert slept and slept[0] >= 7  # Retry-After honoured before the one retry
        limits = [info.rate_limit for info in seen if info.status == 429]
        assert limits and all(limit is not None for limit in limits)
        cloud.fail_next("GET /pods", 429, retry_after=3)
        assert provider.list_compute() == []  # retried once, then answered
    finally:
        provider.close()
    checker.assert_clean()
    assert checker.checked == 4
    for status in (500, 503, 403):
        cloud.fail_next("GET /pods", status)
        with httpx.Client(event_hooks=checker.event_hooks(), timeout=10) as client:
            answer = client.get(
                f"{cloud.runpod_rest_url}/v2/pods",
                headers={"Authorization": f"Bearer {cloud.api_key}"},
            )
        assert answer.status_code == status
        assert answer.headers["content-type"] == "application/problem+json"
    checker.assert_clean()


def test_more_gpus_than_the_catalog_max_count_is_refused(
    runpod: RunPodProvider, checker: SpecChecker
) -> None:
    # GpuType.maxCount says how many of a GPU one pod can have; the fake used to create a
    # 64-GPU pod. The refusal is a 400 problem the definition allows, and it reaches the
    # caller as a provider error naming gpu.count.
    limit = next(g for g in runpod.list_gpu_types() if g.canonical == "h100")
    assert limit.raw["maxCount"]["secure"] == 8
    with pytest.raises(AtlasError) as err:
        runpod.spawn_compute(_request(name="atlas-contract-64", gpu_count=64))
    assert err.value.status == 400 and err.value.kind == "provider"
    assert "gpu.count" in str(err.value)
    assert runpod.list_compute(name="atlas-contract-64") == []
    checker.assert_clean()


def test_catalog_gpu_by_id_per_the_definition(cloud: FakeCloud, checker: SpecChecker) -> None:
    # GET /v2/catalog/gpus/{id} is in the definition; the fake answered 404 for every id.
    with httpx.Client(
        event_hooks=checker.event_hooks(),
        timeout=10,
        base_url=cloud.runpod_rest_url,
        headers={"Authorization": f"Bearer {cloud.api_key}"},
    ) as client:
        one = client.get("/v2/catalog/gpus/NVIDIA%20H100%2080GB%20HBM3")
        assert one.status_code == 200 and one.json()["id"] == "NVIDIA H100 80GB HBM3"
        assert "dataCenters" not in one.json()
        rich = client.get(
            "/v2/catalog/gpus/NVIDIA%20H100%2080GB%20HBM3",
            params={"include": "AVAILABILITY", "product": "POD"},
        )
        assert rich.status_code == 200 and rich.json()["dataCenters"]
        assert one.headers["ratelimit"]
        missing = client.get("/v2/catalog/gpus/NVIDIA%20Imaginary%209000")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
    assert checker.checked == 3
    checker.assert_clean()


def test_enforced_quota_billing_and_pinned_gpus_follow_the_definition(checker: SpecChecker) -> None:
    # The per-key quota's 429 is a TooManyRequestsError (problem+json, Retry-After,
    # RateLimit, RateLimit-Policy); billing and a pod with pinned GPU figures keep their
    # schemas.
    with (
        FakeCloud(rate_limit_per_minute=4) as limited,
        httpx.Client(
            base_url=f"{limited.runpod_rest_url}/v2",
            event_hooks=checker.event_hooks(),
            headers={"Authorization": f"Bearer {limited.api_key}"},
            timeout=10,
        ) as api,
    ):
        pod = api.post(
            "/pods",
            json={
                "name": "q",
                "image": "busybox",
                "gpu": {"id": "NVIDIA H100 80GB HBM3", "count": 2},
            },
        )
        assert pod.status_code == 201
        limited.set_gpu_util(pod.json()["id"], [3, 97])
        got = api.get(f"/pods/{pod.json()['id']}").json()
        assert [g["util"] for g in got["runtime"]["gpus"]] == [3, 97]
        billing = api.get("/billing/pods", params={"podId": pod.json()["id"]})
        assert billing.status_code == 200
        assert api.get("/pods").status_code == 200  # the 4th call of the minute
        refused = api.get("/pods")
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert refused.headers["RateLimit"].startswith('"minute";r=0;t=')
        assert refused.headers["RateLimit-Policy"] == '"minute";q=4;w=60'
        assert refused.headers["content-type"] == "application/problem+json"
    checker.assert_clean()
    assert checker.checked == 5
