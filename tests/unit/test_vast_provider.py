"""VastProvider over httpx.MockTransport: auth, offer fallback, duplicate-safe create,
in-band refusals, config precedence."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from atlas_tasks.config import AtlasSettings, reset_settings
from atlas_tasks.errors import NotFoundError, ProviderError, UnauthorizedError, ValidationError
from atlas_tasks.providers import get_provider
from atlas_tasks.providers.base import ProviderContext, RequestInfo
from atlas_tasks.providers.vast import VastProvider
from atlas_tasks.specs import ComputeStatus, build_compute_request

BASE = "https://vast.test/api/v0"

Answer = Callable[[httpx.Request], httpx.Response]


class FakeVast:
    """Just enough of Vast's API, with per-route scripted answers."""

    def __init__(self) -> None:
        self.offers: list[dict[str, Any]] = [
            {
                "id": 1,
                "gpu_name": "RTX 4090",
                "num_gpus": 1,
                "dph_total": 0.40,
                "min_bid": 0.2,
                "geolocation": "Texas, US",
            },
            {
                "id": 2,
                "gpu_name": "RTX 4090",
                "num_gpus": 1,
                "dph_total": 0.30,
                "min_bid": 0.25,
                "geolocation": "Ohio, US",
            },
            {
                "id": 3,
                "gpu_name": "RTX 4090",
                "num_gpus": 1,
                "dph_total": 0.50,
                "min_bid": 0.3,
                "geolocation": "Sweden, SE",
            },
        ]
        self.instances: dict[int, dict[str, Any]] = {}
        self.requests: list[httpx.Request] = []
        self.scripted: dict[tuple[str, str], list[Answer]] = {}
        self.next_id = 100

    def script(self, method: str, path: str, *answers: Answer) -> None:
        self.scripted.setdefault((method, path), []).extend(answers)

    def calls(self, method: str, prefix: str) -> list[httpx.Request]:
        return [
            r
            for r in self.requests
            if r.method == method and r.url.path.removeprefix("/api/v0").startswith(prefix)
        ]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert request.headers["authorization"] == "Bearer test-key"
        assert "api_key" not in str(request.url)
        path = request.url.path.removeprefix("/api/v0")
        queue = self.scripted.get((request.method, path))
        if queue:
            return queue.pop(0)(request)
        if (request.method, path) == ("POST", "/bundles/"):
            query = json.loads(request.content)
            wanted = query.get("gpu_name", {}).get("eq")
            found = [o for o in self.offers if wanted in (None, o["gpu_name"])]
            return httpx.Response(200, json={"offers": found})
        if request.method == "PUT" and path.startswith("/asks/"):
            return self.create(request)
        if (request.method, path) == ("GET", "/instances/"):
            return httpx.Response(200, json={"instances": list(self.instances.values())})
        if path.startswith("/instances/"):
            inst = self.instances.get(int(path.split("/")[2]))
            if request.method == "GET":
                return httpx.Response(200, json={"instances": inst})
            if inst is None:
                return httpx.Response(
                    404,
                    json={
                        "success": False,
                        "error": "no_such_instance",
                        "msg": "Instance not found.",
                    },
                )
            if request.method == "DELETE":
                del self.instances[inst["id"]]
            else:
                inst["intended_status"] = json.loads(request.content)["state"]
            return httpx.Response(200, json={"success": True})
        return httpx.Response(404, json={"success": False, "msg": "no route"})

    def create(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        offer = next(o for o in self.offers if str(o["id"]) == request.url.path.split("/")[-2])
        self.next_id += 1
        self.instances[self.next_id] = {
            "id": self.next_id,
            "label": body.get("label"),
            "actual_status": "loading",
            "intended_status": "running",
            "gpu_name": offer["gpu_name"],
            "num_gpus": 1,
            "dph_total": body["price"] or offer["dph_total"],
            "public_ipaddr": "192.0.2.5",
            "ports": {},
            "image_uuid": body["image"],
            "start_date": 1732300000.0,
            "extra_env": [[k, v] for k, v in body["env"].items()],
        }
        return httpx.Response(200, json={"success": True, "new_contract": self.next_id})


@pytest.fixture
def fake() -> FakeVast:
    return FakeVast()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def hooks() -> list[RequestInfo]:
    return []


@pytest.fixture
def provider(fake: FakeVast, sleeps: list[float], hooks: list[RequestInfo]) -> VastProvider:
    p = VastProvider(
        ProviderContext(
            api_key="test-key",
            settings=AtlasSettings(vast_base_url=BASE),
            transport=httpx.MockTransport(fake),
            hooks=(hooks.append,),
        )
    )
    p.sleep = sleeps.append
    return p


def _request(**fields: Any) -> Any:
    return build_compute_request(
        **{"gpu": "rtx_4090", "image": "img:1", "name": "atlas-v1", **fields}
    )


def _refuse(status: int, error: str, msg: str) -> Answer:
    return lambda r: httpx.Response(status, json={"success": False, "error": error, "msg": msg})


def test_rents_cheapest_offer_on_demand(provider: VastProvider, fake: FakeVast) -> None:
    compute = provider.spawn_compute(_request(ports=[(8000, "http")]))
    assert compute.id == "101" and compute.name == "atlas-v1"
    assert compute.status == ComputeStatus.PROVISIONING and compute.cost_per_hour == 0.30
    (put,) = fake.calls("PUT", "/asks/")
    assert put.url.path.endswith("/asks/2/")
    body = json.loads(put.content)
    assert body["price"] is None and body["env"]["-p 8000:8000"] == "1"
    assert body["label"] == "atlas-v1" and body["client_id"] == "me"


def test_spot_bids_min_bid_of_cheapest_bid(provider: VastProvider, fake: FakeVast) -> None:
    provider.spawn_compute(_request(spot=True))
    search = json.loads(fake.calls("POST", "/bundles/")[0].content)
    assert search["type"] == "bid"
    (put,) = fake.calls("PUT", "/asks/")
    assert put.url.path.endswith("/asks/1/") and json.loads(put.content)["price"] == 0.2


def test_taken_offer_falls_back_to_next(provider: VastProvider, fake: FakeVast) -> None:
    fake.script("PUT", "/asks/2/", _refuse(404, "no_such_ask", "Offer 2 is not available."))
    compute = provider.spawn_compute(_request())
    assert compute.id == "101"
    assert [r.url.path.rsplit("/", 2)[1] for r in fake.calls("PUT", "/asks/")] == ["2", "1"]


def test_all_offers_taken_is_capacity_error(provider: VastProvider, fake: FakeVast) -> None:
    for offer_id in (1, 2, 3):
        fake.script("PUT", f"/asks/{offer_id}/", _refuse(200, "no_such_ask", "not available"))
    with pytest.raises(ProviderError) as info:
        provider.spawn_compute(_request())
    assert str(info.value.message).startswith("insufficient capacity")
    assert fake.instances == {}


def test_no_offers_is_capacity_error(provider: VastProvider, fake: FakeVast) -> None:
    fake.offers = []
    with pytest.raises(ProviderError) as info:
        provider.spawn_compute(_request())
    assert "insufficient capacity" in str(info.value) and "RTX 4090" in str(info.value)
    assert fake.calls("PUT", "/asks/") == []


def test_create_500_after_rent_finds_it_by_label(
    provider: VastProvider, fake: FakeVast, sleeps: list[float]
) -> None:
    def rented_then_500(request: httpx.Request) -> httpx.Response:
        fake.create(request)
        return httpx.Response(
            500, json={"success": False, "error": "server_error", "msg": "internal"}
        )

    fake.script("PUT", "/asks/2/", rented_then_500)
    compute = provider.spawn_compute(_request())
    assert compute.id == "101" and len(fake.instances) == 1
    assert len(fake.calls("PUT", "/asks/")) == 1 and len(sleeps) == 1


def test_rate_limit_on_create_is_retried(
    provider: VastProvider, fake: FakeVast, sleeps: list[float]
) -> None:
    fake.script(
        "PUT",
        "/asks/2/",
        lambda r: httpx.Response(
            429, json={"success": False, "msg": "slow down"}, headers={"Retry-After": "3"}
        ),
    )
    provider.spawn_compute(_request())
    assert sleeps == [3.0] and len(fake.instances) == 1


def test_refusal_with_http_200_is_an_error(provider: VastProvider, fake: FakeVast) -> None:
    fake.script("PUT", "/asks/2/", _refuse(200, "insufficient_credit", "Add credit first"))
    with pytest.raises(ProviderError) as info:
        provider.spawn_compute(_request())
    assert info.value.status == 200 and "Add credit first" in str(info.value)


def test_get_stop_start_terminate(provider: VastProvider, fake: FakeVast) -> None:
    c = provider.spawn_compute(_request())
    provider.stop(c.id)
    assert provider.get_compute(c.id).status == ComputeStatus.STOPPED
    assert json.loads(fake.calls("PUT", "/instances/")[-1].content) == {"state": "stopped"}
    provider.start(c.id)
    assert json.loads(fake.calls("PUT", "/instances/")[-1].content) == {"state": "running"}
    provider.terminate(c.id)
    with pytest.raises(NotFoundError):
        provider.get_compute(c.id)
    with pytest.raises(NotFoundError) as info:
        provider.terminate(c.id)
    assert "Instance not found. [no_such_instance]" in str(info.value)
    assert all(r.url.params.get("owner") == "me" for r in fake.requests if r.method == "GET")


def test_non_numeric_id_is_not_found_without_a_request(
    provider: VastProvider, fake: FakeVast
) -> None:
    with pytest.raises(NotFoundError):
        provider.get_compute("atlas-missing")
    with pytest.raises(ValidationError):
        provider.terminate("")
    assert fake.requests == []


def test_list_filters_by_label_and_status(provider: VastProvider) -> None:
    a = provider.spawn_compute(_request(name="atlas-a"))
    provider.spawn_compute(_request(name="other"))
    assert [c.id for c in provider.list_compute(name="atlas-a")] == [a.id]
    assert len(provider.list_compute(status="provisioning", gpu="rtx_4090")) == 2
    assert provider.find_compute_by_name("atlas-a") is not None


def test_missing_key_and_base_url_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UnauthorizedError) as info:
        VastProvider(ProviderContext(api_key=None)).list_compute()
    assert "VAST_API_KEY" in str(info.value)
    assert VastProvider(ProviderContext(settings=AtlasSettings())).client.base_url == (
        "https://console.vast.ai/api/v0"
    )
    monkeypatch.setenv("ATLAS_VAST_BASE_URL", "https://env.test/api/v0")
    reset_settings()
    assert _base(get_provider("vast", api_key="k", cache=False)) == ("https://env.test/api/v0")
    assert (
        _base(get_provider("vast", api_key="k", base_url="https://call.test", cache=False))
        == "https://call.test"
    )


def test_hooks_never_see_the_key(provider: VastProvider, hooks: list[RequestInfo]) -> None:
    provider.list_compute()
    assert hooks and all("test-key" not in h.url for h in hooks)
    assert hooks[0].provider == "vast"


def test_catalog(provider: VastProvider) -> None:
    (rtx,) = provider.list_gpu_types()
    assert (rtx.id, rtx.canonical, rtx.lowest_price_per_hour, rtx.spot_price_per_hour) == (
        "RTX 4090",
        "rtx_4090",
        0.3,
        0.2,
    )


def _base(provider: object) -> str:
    assert isinstance(provider, VastProvider)
    return provider.client.base_url


@pytest.mark.parametrize(("field", "value"), [("template_id", "t1"), ("network_volume_id", "v1")])
def test_unmodelled_fields_are_refused_not_ignored(
    provider: VastProvider, fake: FakeVast, field: str, value: str
) -> None:
    with pytest.raises(ValidationError) as info:
        provider.spawn_compute(_request(**{field: value}))
    assert info.value.field == field and fake.requests == []
