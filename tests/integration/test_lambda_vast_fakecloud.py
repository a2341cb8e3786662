"""Lambda Labs and Vast.ai providers over real loopback HTTP against the fake cloud:
the shipped conformance suite, rate limiting, capacity errors, 500-after-create, in-band
refusals, env-var configuration and the ``gpus`` CLI."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from atlas_tasks import cli
from atlas_tasks.config import AtlasSettings, reset_settings
from atlas_tasks.errors import NotFoundError, ProviderError, UnauthorizedError, ValidationError
from atlas_tasks.providers import get_provider
from atlas_tasks.providers.base import Provider, ProviderContext
from atlas_tasks.providers.lambda_labs import LambdaLabsProvider
from atlas_tasks.providers.lambda_labs.translate import INSUFFICIENT_CAPACITY, env_from_user_data
from atlas_tasks.providers.registry import clear_provider_cache
from atlas_tasks.providers.vast import VastProvider
from atlas_tasks.providers.vast.translate import env_of
from atlas_tasks.specs import Compute, ComputeStatus, build_compute_request
from atlas_tasks.testing.conformance import PodEnv, ProviderConformance
from atlas_tasks.testing.fakecloud import FakeCloud
from atlas_tasks.testing.fakecloud.lambda_labs import DEFAULT_SSH_KEY

pytestmark = pytest.mark.integration

IMAGE = "ghcr.io/acme/infer:latest"


def lambda_provider(cloud: FakeCloud, **settings: Any) -> LambdaLabsProvider:
    ctx = ProviderContext(
        api_key=cloud.api_key,
        base_url=cloud.lambda_labs_url,
        settings=AtlasSettings(lambda_labs_ssh_key_name=DEFAULT_SSH_KEY, **settings),
    )
    return LambdaLabsProvider(ctx)


def vast_provider(cloud: FakeCloud, **settings: Any) -> VastProvider:
    ctx = ProviderContext(
        api_key=cloud.api_key, base_url=cloud.vast_url, settings=AtlasSettings(**settings)
    )
    return VastProvider(ctx)


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def lam(cloud: FakeCloud, sleeps: list[float]) -> Iterator[LambdaLabsProvider]:
    p = lambda_provider(cloud)
    p.sleep = sleeps.append
    yield p
    p.close()


@pytest.fixture
def vast(cloud: FakeCloud, sleeps: list[float]) -> Iterator[VastProvider]:
    p = vast_provider(cloud)
    p.sleep = sleeps.append
    yield p
    p.close()


def _lambda_live(cloud: FakeCloud) -> list[dict[str, Any]]:
    return list(cloud.state()["lambda_labs"]["instances"])


def _vast_live(cloud: FakeCloud) -> list[dict[str, Any]]:
    return list(cloud.state()["vast"]["instances"])


# ---------------------------------------------------------------------------- conformance
class TestLambdaLabsConformance(ProviderConformance):
    """The shipped suite; stop/start skip as ``unsupported`` (Lambda has neither)."""

    @pytest.fixture
    def provider(self, cloud: FakeCloud) -> Iterator[Provider]:
        p = get_provider(
            "lambda_labs",
            api_key=cloud.api_key,
            base_url=cloud.lambda_labs_url,
            ssh_key_name=DEFAULT_SSH_KEY,
        )
        yield p
        p.close()

    @pytest.fixture
    def pod_env(self, cloud: FakeCloud) -> PodEnv:
        # Lambda never echoes user_data; the fake keeps it for exactly this check.
        def read(provider: Provider, compute: Compute) -> dict[str, str]:
            view = next(
                i for i in cloud.state()["lambda_labs"]["instances"] if i["id"] == compute.id
            )
            return env_from_user_data(view["user_data"])

        return read


class TestVastConformance(ProviderConformance):
    @pytest.fixture
    def provider(self, cloud: FakeCloud) -> Iterator[Provider]:
        p = get_provider("vast", api_key=cloud.api_key, base_url=cloud.vast_url, cache=False)
        yield p
        p.close()

    @pytest.fixture
    def gpu(self) -> str:
        return "rtx_4090"

    @pytest.fixture
    def unknown_id(self) -> str:
        return "99999999"  # numeric, so the request really reaches the API

    @pytest.fixture
    def pod_env(self) -> PodEnv:
        def read(provider: Provider, compute: Compute) -> dict[str, str]:
            return env_of(provider.get_compute(compute.id).raw)

        return read


class TestVastSpotConformance(TestVastConformance):
    """Bids go through the same lifecycle."""

    @pytest.fixture
    def spawn_fields(self) -> dict[str, Any]:
        return {"spot": True}


# ---------------------------------------------------------------------------- rate limits
def test_lambda_429_with_retry_after_is_waited_out(
    lam: LambdaLabsProvider, cloud: FakeCloud, sleeps: list[float]
) -> None:
    cloud.fail_next("GET /instance-types", 429, retry_after=2, times=2)
    cloud.fail_next("POST /instance-operations/launch", 429, retry_after=1)
    compute = lam.spawn_compute(build_compute_request(gpu="h100", image=IMAGE, name="atlas-rl"))
    assert sleeps == [2.0, 2.0, 1.0]
    assert [i["id"] for i in _lambda_live(cloud)] == [compute.id]
    routes = cloud.state()["routes"]
    assert routes["GET /lambda/api/v1/instance-types"] == 3
    assert routes["POST /lambda/api/v1/instance-operations/launch"] == 2


def test_vast_429_with_retry_after_is_waited_out(
    vast: VastProvider, cloud: FakeCloud, sleeps: list[float]
) -> None:
    cloud.fail_next("POST /bundles/", 429, retry_after=3)
    cloud.fail_next("PUT /asks/*/", 429, retry_after=1)
    cloud.fail_next("GET /instances/*/", 429, retry_after=0)
    compute = vast.spawn_compute(
        build_compute_request(gpu="rtx_4090", image=IMAGE, name="atlas-rl")
    )
    assert compute.status == ComputeStatus.RUNNING
    assert sleeps == [3.0, 1.0, 0.0]
    assert [i["id"] for i in _vast_live(cloud)] == [int(compute.id)]


@pytest.mark.parametrize("make", [lambda_provider, vast_provider])
def test_lifecycle_survives_random_rate_limiting(cloud: FakeCloud, make: Any) -> None:
    cloud.set_faults(rate_limit_rate=0.3, retry_after_s=0, seed=11)
    provider = make(cloud, http_max_retries=10)
    gpu = "h100" if isinstance(provider, LambdaLabsProvider) else "rtx_4090"
    for i in range(3):
        c = provider.spawn_compute(
            build_compute_request(gpu=gpu, image=IMAGE, name=f"atlas-chaos{i}")
        )
        assert provider.get_compute(c.id).name == f"atlas-chaos{i}"
        provider.terminate(c.id)
    assert cloud.state()["faults_injected"]["rate_limited"] > 0
    live = _lambda_live(cloud) + _vast_live(cloud)
    assert live == []
    provider.close()


# ---------------------------------------------------------------------------- capacity
def test_lambda_sold_out_type_fails_before_launching(
    lam: LambdaLabsProvider, cloud: FakeCloud
) -> None:
    with pytest.raises(ProviderError) as info:
        lam.spawn_compute(build_compute_request(gpu="h100_pcie", image=IMAGE, name="atlas-c"))
    assert str(info.value.message).startswith("insufficient capacity")
    assert "gpu_1x_h100_pcie" in str(info.value)
    assert cloud.state()["lambda_labs"]["totals"].get("launches", 0) == 0


def test_lambda_region_hint_without_capacity(lam: LambdaLabsProvider, cloud: FakeCloud) -> None:
    httpx.post(
        f"{cloud.url}/_admin/lambda_labs/capacity",
        json={"instance_type": "gpu_1x_h100_sxm5", "regions": ["us-east-1"]},
    )
    with pytest.raises(ProviderError) as info:
        lam.spawn_compute(
            build_compute_request(gpu="h100", image=IMAGE, region_hints=["us-west-1"])
        )
    assert "in us-west-1" in str(info.value) and "us-east-1" in str(info.value)
    ok = lam.spawn_compute(
        build_compute_request(gpu="h100", image=IMAGE, region_hints=["us-west-1", "us-east-1"])
    )
    assert ok.region == "us-east-1"


def test_lambda_server_side_capacity_error(lam: LambdaLabsProvider, cloud: FakeCloud) -> None:
    # The fake refuses launches where it has no capacity, like Lambda does.
    direct = httpx.post(
        f"{cloud.lambda_labs_url}/instance-operations/launch",
        headers={"Authorization": f"Bearer {cloud.api_key}"},
        json={
            "region_name": "us-south-1",
            "instance_type_name": "gpu_1x_h100_pcie",
            "ssh_key_names": [DEFAULT_SSH_KEY],
        },
    )
    assert direct.status_code == 400
    assert direct.json()["error"]["code"] == INSUFFICIENT_CAPACITY
    # Capacity vanishing between the listing and the launch reaches the caller named.
    cloud.fail_next("POST /instance-operations/launch", 400, body=direct.json())
    with pytest.raises(ProviderError) as info:
        lam.spawn_compute(build_compute_request(gpu="h100", image=IMAGE, name="atlas-c2"))
    assert info.value.status == 400 and INSUFFICIENT_CAPACITY in str(info.value)
    assert str(info.value.message).startswith("insufficient capacity")


def test_vast_no_offer_is_a_capacity_error(vast: VastProvider, cloud: FakeCloud) -> None:
    with pytest.raises(ProviderError) as info:
        vast.spawn_compute(build_compute_request(gpu="h200", image=IMAGE))
    assert str(info.value.message).startswith("insufficient capacity")
    assert "H200" in str(info.value)
    assert cloud.state()["vast"]["totals"].get("creates", 0) == 0


def test_vast_taken_offer_falls_back_to_the_next_cheapest(
    vast: VastProvider, cloud: FakeCloud
) -> None:
    cloud.fail_next(
        "PUT /asks/*/",
        404,
        body={"success": False, "error": "no_such_ask", "msg": "Offer 7100001 is not available."},
    )
    compute = vast.spawn_compute(
        build_compute_request(gpu="rtx_4090", image=IMAGE, name="atlas-fallback")
    )
    (inst,) = _vast_live(cloud)
    # 7100002 is cheaper but unverified; 7100004 is the next verified offer.
    assert inst["offer_id"] == 7100004 and inst["id"] == int(compute.id)
    assert compute.cost_per_hour == 0.38


def test_vast_region_hint_and_spot_bid(vast: VastProvider, cloud: FakeCloud) -> None:
    c = vast.spawn_compute(
        build_compute_request(gpu="h100", image=IMAGE, spot=True, region_hints=["NO"])
    )
    (inst,) = _vast_live(cloud)
    assert inst["offer_id"] == 7100009 and inst["bid"] == pytest.approx(1.95 * 0.55)
    assert c.region == "Norway, NO" and c.cost_per_hour == pytest.approx(1.0725)


# ---------------------------------------------------------------------------- duplicates
def test_lambda_500_after_launch_makes_exactly_one_vm(
    lam: LambdaLabsProvider, cloud: FakeCloud
) -> None:
    cloud.fail_next("POST /instance-operations/launch", 500, after_create=True)
    compute = lam.spawn_compute(
        build_compute_request(gpu="h100", image=IMAGE, name="atlas-dup", ports=[(8000, "http")])
    )
    live = _lambda_live(cloud)
    assert [i["id"] for i in live] == [compute.id]
    assert compute.ports[0].url == f"tcp://{compute.public_ip}:8000"


def test_vast_500_after_create_makes_exactly_one_instance(
    vast: VastProvider, cloud: FakeCloud
) -> None:
    cloud.fail_next("PUT /asks/*/", 500, after_create=True)
    compute = vast.spawn_compute(
        build_compute_request(gpu="rtx_4090", image=IMAGE, name="atlas-dup")
    )
    assert [i["id"] for i in _vast_live(cloud)] == [int(compute.id)]


# ---------------------------------------------------------------------------- refusals
def test_vast_refusal_with_http_200(vast: VastProvider, cloud: FakeCloud) -> None:
    c = vast.spawn_compute(build_compute_request(gpu="rtx_4090", image=IMAGE, name="atlas-r"))
    cloud.fail_next(
        "DELETE /instances/*/",
        200,
        body={"success": False, "error": "busy", "msg": "Instance is being moved, retry later"},
    )
    with pytest.raises(ProviderError) as info:
        vast.terminate(c.id)
    assert info.value.status == 200 and "retry later" in str(info.value)
    assert len(_vast_live(cloud)) == 1
    vast.terminate(c.id)
    assert _vast_live(cloud) == []
    with pytest.raises(NotFoundError):
        vast.terminate(c.id)


def test_fake_validates_like_the_apis(cloud: FakeCloud) -> None:
    lam = lambda_provider(cloud)
    with pytest.raises(ProviderError) as key:
        lam.spawn_compute(
            build_compute_request(gpu="h100", image=IMAGE, provider_opts={"ssh_key_name": "nope"})
        )
    assert "SSH key 'nope' does not exist" in str(key.value) and key.value.status == 400
    vast = vast_provider(cloud)
    with pytest.raises(ValidationError) as opts:  # the price is ours to set, never an opt
        vast.spawn_compute(
            build_compute_request(gpu="rtx_4090", image=IMAGE, provider_opts={"price": 0.01})
        )
    assert opts.value.field == "provider_opts"
    bid = httpx.put(
        f"{cloud.vast_url}/asks/7100001/",
        headers={"Authorization": f"Bearer {cloud.api_key}"},
        json={"client_id": "me", "image": IMAGE, "env": {}, "disk": 10.0, "price": 0.01},
    )
    assert bid.status_code == 400 and "below the minimum bid" in bid.json()["msg"]
    for bad in (
        LambdaLabsProvider(ProviderContext(api_key="wrong", base_url=cloud.lambda_labs_url)),
        VastProvider(ProviderContext(api_key="wrong", base_url=cloud.vast_url)),
    ):
        with pytest.raises(UnauthorizedError):
            bad.list_compute()


def test_unhealthy_and_offline_are_failed(
    lam: LambdaLabsProvider, vast: VastProvider, cloud: FakeCloud
) -> None:
    a = lam.spawn_compute(build_compute_request(gpu="a10", image=IMAGE))
    httpx.post(
        f"{cloud.url}/_admin/lambda_labs/instances/{a.id}/status", json={"status": "unhealthy"}
    ).raise_for_status()
    assert lam.get_compute(a.id).status == ComputeStatus.FAILED
    b = vast.spawn_compute(build_compute_request(gpu="rtx_3090", image=IMAGE))
    httpx.post(
        f"{cloud.url}/_admin/vast/instances/{b.id}/status", json={"actual_status": "offline"}
    ).raise_for_status()
    assert vast.get_compute(b.id).status == ComputeStatus.FAILED


def test_boot_delay_then_running_with_ports() -> None:
    with FakeCloud(boot_delay_s=0.4) as slow:
        lam, vast = lambda_provider(slow), vast_provider(slow)
        a = lam.spawn_compute(build_compute_request(gpu="h100", image=IMAGE, ports=[(22, "tcp")]))
        b = vast.spawn_compute(
            build_compute_request(gpu="rtx_4090", image=IMAGE, ports=[(8000, "http")])
        )
        assert a.status == b.status == ComputeStatus.PROVISIONING
        assert a.public_ip is None and b.ports == []
        time.sleep(0.5)
        assert lam.get_compute(a.id).status == ComputeStatus.RUNNING
        ready = vast.get_compute(b.id)
        assert ready.status == ComputeStatus.RUNNING
        assert ready.ports[0].internal == 8000 and ready.ports[0].external
        assert ready.ports[0].url == f"tcp://{ready.public_ip}:{ready.ports[0].external}"


# ---------------------------------------------------------------------------- configuration
def test_env_vars_point_providers_at_the_fake(
    cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in cloud.env().items():
        monkeypatch.setenv(key, value)
    reset_settings()
    clear_provider_cache()
    try:
        c = get_provider("lambda_labs").spawn_compute(
            build_compute_request(gpu="a10", image=IMAGE, name="atlas-env")
        )
        assert get_provider("lambda_labs").get_compute(c.id).name == "atlas-env"
        v = get_provider("vast").spawn_compute(
            build_compute_request(gpu="rtx_4090", image=IMAGE, name="atlas-env")
        )
        assert get_provider("vast").get_compute(v.id).name == "atlas-env"
    finally:
        clear_provider_cache()


@pytest.mark.parametrize(
    ("provider", "expected"),
    [
        ("lambda_labs", ["gpu_1x_h100_pcie", "$2.49/h", "unavailable"]),
        ("vast", ["RTX 4090", "rtx_4090", "$0.35/h", "$0.19/h"]),
    ],
)
def test_gpus_cli_shows_the_catalog(cloud: FakeCloud, provider: str, expected: list[str]) -> None:
    env = {**cloud.env(), "COLUMNS": "200"}
    result = CliRunner().invoke(cli.cli, ["gpus", "--provider", provider], env=env)
    assert result.exit_code == 0, result.output
    for text in expected:
        assert text in result.output
