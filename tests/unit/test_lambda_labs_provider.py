"""LambdaLabsProvider over httpx.MockTransport: config precedence, duplicate-safe launch,
429 handling, error mapping."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from atlas_tasks.config import AtlasSettings, reset_settings
from atlas_tasks.errors import (
    NotFoundError,
    ProviderError,
    UnauthorizedError,
    UnsupportedError,
    ValidationError,
)
from atlas_tasks.providers import get_provider
from atlas_tasks.providers.base import ProviderContext
from atlas_tasks.providers.http import is_maybe_created
from atlas_tasks.providers.lambda_labs import LambdaLabsProvider
from atlas_tasks.specs import ComputeStatus, build_compute_request

BASE = "https://lambda.test/api/v1"
TYPE = {
    "name": "gpu_1x_h100_sxm5",
    "description": "1x H100 (80 GB SXM5)",
    "price_cents_per_hour": 249,
    "specs": {"gpus": 1},
}


class FakeLambda:
    """Just enough of Lambda's API, with per-route scripted answers."""

    def __init__(self) -> None:
        self.instances: dict[str, dict[str, Any]] = {}
        self.requests: list[httpx.Request] = []
        self.scripted: dict[tuple[str, str], list[Callable[[httpx.Request], httpx.Response]]] = {}
        self.capacity = ["us-east-1", "us-west-1"]

    def script(
        self, method: str, path: str, *answers: Callable[[httpx.Request], httpx.Response]
    ) -> None:
        self.scripted.setdefault((method, path), []).extend(answers)

    def calls(self, method: str, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and r.url.path == path]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert request.headers["authorization"] == "Bearer test-key"
        assert "test-key" not in str(request.url)
        path = request.url.path.removeprefix("/api/v1")
        queue = self.scripted.get((request.method, path))
        if queue:
            return queue.pop(0)(request)
        if path == "/instance-types":
            return httpx.Response(
                200,
                json={
                    "data": {
                        "gpu_1x_h100_sxm5": {
                            "instance_type": TYPE,
                            "regions_with_capacity_available": [
                                {"name": r, "description": r} for r in self.capacity
                            ],
                        }
                    }
                },
            )
        if path == "/instance-operations/launch":
            return self.launch(request)
        if path == "/instances":
            return httpx.Response(200, json={"data": list(self.instances.values())})
        if path.startswith("/instances/"):
            inst = self.instances.get(path.rsplit("/", 1)[1])
            if inst is None:
                return _error(404, "global/object-does-not-exist", "Instance not found")
            return httpx.Response(200, json={"data": inst})
        if path == "/instance-operations/terminate":
            ids = json.loads(request.content)["instance_ids"]
            if any(i not in self.instances for i in ids):
                return _error(404, "global/object-does-not-exist", "Instance not found")
            for i in ids:
                self.instances[i]["status"] = "terminating"
            return httpx.Response(
                200, json={"data": {"terminated_instances": [self.instances[i] for i in ids]}}
            )
        return httpx.Response(404, json={"error": {"code": "x", "message": "no route"}})

    def launch(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        new_id = f"inst{len(self.instances) + 1}"
        self.instances[new_id] = {
            "id": new_id,
            "name": body.get("name"),
            "ip": "198.51.100.9",
            "status": "booting",
            "region": {"name": body["region_name"], "description": ""},
            "instance_type": TYPE,
            "ssh_key_names": body["ssh_key_names"],
        }
        return httpx.Response(200, json={"data": {"instance_ids": [new_id]}})


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.Response(
        status, json={"error": {"code": code, "message": message}}, headers=headers
    )


@pytest.fixture
def fake() -> FakeLambda:
    return FakeLambda()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def provider(fake: FakeLambda, sleeps: list[float]) -> LambdaLabsProvider:
    settings = AtlasSettings(lambda_labs_base_url=BASE, lambda_labs_ssh_key_name="laptop")
    p = LambdaLabsProvider(
        ProviderContext(api_key="test-key", settings=settings, transport=httpx.MockTransport(fake))
    )
    p.sleep = sleeps.append
    return p


def _request(**fields: Any) -> Any:
    return build_compute_request(**{"gpu": "h100", "image": "img:1", "name": "atlas-s1", **fields})


def test_launch_picks_first_region_and_settings_key(
    provider: LambdaLabsProvider, fake: FakeLambda
) -> None:
    compute = provider.spawn_compute(_request(ports=[(8000, "http")]))
    assert compute.status == ComputeStatus.PROVISIONING and compute.name == "atlas-s1"
    assert compute.image == "img:1" and compute.ports[0].url == "tcp://198.51.100.9:8000"
    body = json.loads(fake.calls("POST", "/api/v1/instance-operations/launch")[0].content)
    assert body["region_name"] == "us-east-1" and body["ssh_key_names"] == ["laptop"]
    assert "quantity" not in body and body["instance_type_name"] == "gpu_1x_h100_sxm5"


def test_region_hint_and_ssh_key_from_provider_opts(
    provider: LambdaLabsProvider, fake: FakeLambda
) -> None:
    provider.spawn_compute(
        _request(region_hints=["us-west-1"], provider_opts={"ssh_key_name": "ci-key"})
    )
    body = json.loads(fake.calls("POST", "/api/v1/instance-operations/launch")[0].content)
    assert body["region_name"] == "us-west-1" and body["ssh_key_names"] == ["ci-key"]
    assert "ssh_key_name" not in body


def test_ssh_key_from_context_option_and_missing(fake: FakeLambda) -> None:
    transport = httpx.MockTransport(fake)
    opt = LambdaLabsProvider(
        ProviderContext(
            api_key="test-key",
            transport=transport,
            settings=AtlasSettings(lambda_labs_base_url=BASE),
            options={"ssh_key_name": "opt-key"},
        )
    )
    assert opt.ssh_key_name(_request()) == "opt-key"
    none = LambdaLabsProvider(
        ProviderContext(
            api_key="test-key",
            transport=transport,
            settings=AtlasSettings(lambda_labs_base_url=BASE),
        )
    )
    with pytest.raises(ValidationError) as info:
        none.spawn_compute(_request())
    assert info.value.field == "provider_opts.ssh_key_name"
    assert "ATLAS_LAMBDA_LABS_SSH_KEY_NAME" in str(info.value)
    assert fake.requests == []


def test_no_capacity_fails_before_launching(provider: LambdaLabsProvider, fake: FakeLambda) -> None:
    fake.capacity = []
    with pytest.raises(ProviderError) as info:
        provider.spawn_compute(_request())
    assert "insufficient capacity" in str(info.value)
    assert fake.calls("POST", "/api/v1/instance-operations/launch") == []


def test_server_capacity_error_is_named(provider: LambdaLabsProvider, fake: FakeLambda) -> None:
    fake.script(
        "POST",
        "/instance-operations/launch",
        lambda r: _error(
            400, "instance-operations/launch/insufficient-capacity", "Not enough capacity"
        ),
    )
    with pytest.raises(ProviderError) as info:
        provider.spawn_compute(_request())
    assert info.value.status == 400
    assert str(info.value.message).startswith("insufficient capacity")
    assert "instance-operations/launch/insufficient-capacity" in str(info.value)


def test_launch_500_after_create_finds_it_by_name(
    provider: LambdaLabsProvider, fake: FakeLambda
) -> None:
    def created_then_500(request: httpx.Request) -> httpx.Response:
        fake.launch(request)
        return _error(500, "global/unknown", "internal error")

    fake.script("POST", "/instance-operations/launch", created_then_500)
    compute = provider.spawn_compute(_request(ports=[(22, "tcp")]))
    assert compute.id == "inst1" and compute.ports[0].internal == 22
    assert len(fake.calls("POST", "/api/v1/instance-operations/launch")) == 1
    assert len(fake.instances) == 1


def test_launch_500_without_create_retries_once_nothing_found(
    provider: LambdaLabsProvider, fake: FakeLambda
) -> None:
    fake.script(
        "POST", "/instance-operations/launch", lambda r: _error(503, "global/unknown", "try later")
    )
    compute = provider.spawn_compute(_request())
    assert compute.id == "inst1"
    assert len(fake.calls("POST", "/api/v1/instance-operations/launch")) == 2


def test_launch_without_name_is_not_retried_after_5xx(
    provider: LambdaLabsProvider, fake: FakeLambda
) -> None:
    fake.script(
        "POST", "/instance-operations/launch", lambda r: _error(500, "global/unknown", "boom")
    )
    with pytest.raises(ProviderError) as info:
        provider.spawn_compute(_request(name=None))
    assert is_maybe_created(info.value)
    assert len(fake.calls("POST", "/api/v1/instance-operations/launch")) == 1


def test_rate_limited_launch_is_retried_after_retry_after(
    provider: LambdaLabsProvider, fake: FakeLambda, sleeps: list[float]
) -> None:
    def limited(r: httpx.Request) -> httpx.Response:
        return _error(429, "global/rate-limited", "slow down", headers={"Retry-After": "12"})

    fake.script("POST", "/instance-operations/launch", limited, limited)
    compute = provider.spawn_compute(_request())
    assert compute.id == "inst1" and len(fake.instances) == 1
    assert sleeps == [12.0, 12.0]


def test_terminate_unknown_is_not_found_and_stop_is_unsupported(
    provider: LambdaLabsProvider, fake: FakeLambda
) -> None:
    with pytest.raises(NotFoundError):
        provider.terminate("nope")
    fake.script(
        "POST",
        "/instance-operations/terminate",
        lambda r: httpx.Response(200, json={"data": {"terminated_instances": []}}),
    )
    with pytest.raises(NotFoundError):
        provider.terminate("nope")
    with pytest.raises(UnsupportedError):
        provider.stop("x")
    with pytest.raises(UnsupportedError):
        provider.start("x")
    with pytest.raises(ValidationError):
        provider.get_compute(" ")


def test_spot_and_missing_gpu_are_validation_errors(provider: LambdaLabsProvider) -> None:
    with pytest.raises(ValidationError) as spot:
        provider.spawn_compute(_request(spot=True))
    assert spot.value.field == "spot"
    with pytest.raises(ValidationError) as gpu:
        provider.spawn_compute(_request(gpu=None))
    assert gpu.value.field == "gpu"


def test_list_filters_and_terminated_status(provider: LambdaLabsProvider) -> None:
    a = provider.spawn_compute(_request(name="atlas-a"))
    provider.spawn_compute(_request(name="other"))
    assert [c.id for c in provider.list_compute(name="atlas-a")] == [a.id]
    assert len(provider.list_compute(gpu="h100", region="us-east-1")) == 2
    provider.terminate(a.id)
    assert provider.get_compute(a.id).status == ComputeStatus.TERMINATED
    assert provider.find_compute_by_name("atlas-a") is None
    with pytest.raises(ValidationError):
        provider.list_compute(status="exploded")


def test_missing_key_raises_on_first_call_only() -> None:
    p = LambdaLabsProvider(ProviderContext(api_key=None))
    assert p.capabilities() == frozenset({"raw_tcp"})
    with pytest.raises(UnauthorizedError) as info:
        p.list_compute()
    assert "LAMBDA_LABS_API_KEY" in str(info.value)


def test_base_url_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    assert LambdaLabsProvider(ProviderContext(settings=AtlasSettings())).client.base_url == (
        "https://cloud.lambda.ai/api/v1"
    )
    monkeypatch.setenv("ATLAS_LAMBDA_LABS_BASE_URL", "https://env.test/v1")
    reset_settings()
    assert _base(get_provider("lambda_labs", api_key="k", cache=False)) == ("https://env.test/v1")
    assert (
        _base(get_provider("lambda_labs", api_key="k", base_url="https://call.test", cache=False))
        == "https://call.test"
    )
    assert "sekrit" not in repr(get_provider("lambda_labs", api_key="sekrit", cache=False))


def test_catalog_over_http(provider: LambdaLabsProvider) -> None:
    (entry,) = provider.list_gpu_types()
    assert (entry.id, entry.canonical, entry.lowest_price_per_hour, entry.stock) == (
        "gpu_1x_h100_sxm5",
        "h100",
        2.49,
        "medium",
    )


def _base(provider: object) -> str:
    assert isinstance(provider, LambdaLabsProvider)
    return provider.client.base_url


@pytest.mark.parametrize(("field", "value"), [("template_id", "t1"), ("network_volume_id", "v1")])
def test_unmodelled_fields_are_refused_not_ignored(
    provider: LambdaLabsProvider, fake: FakeLambda, field: str, value: str
) -> None:
    with pytest.raises(ValidationError) as info:
        provider.spawn_compute(_request(**{field: value}))
    assert info.value.field == field and fake.requests == []
