"""FlyMachinesProvider against the fake cloud's Fly Machines API over real loopback HTTP:
the shipped conformance suite, state progression and ``/wait``, faults, validation, the
admin state and the reaper's orphan scan."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from atlas_tasks.config import reset_settings
from atlas_tasks.errors import ValidationError
from atlas_tasks.providers import get_provider
from atlas_tasks.providers.base import Provider
from atlas_tasks.providers.fly_machines import FlyMachinesProvider
from atlas_tasks.providers.registry import clear_provider_cache
from atlas_tasks.redis_conn import get_redis, reset_redis_clients
from atlas_tasks.sessions.store import store_for
from atlas_tasks.specs import Compute, ComputeStatus, build_compute_request
from atlas_tasks.testing.conformance import ProviderConformance
from atlas_tasks.testing.fakecloud import FakeCloud
from atlas_tasks.testing.fakecloud.fly_machines import (
    DEFAULT_APP,
    fly_base_url,
    fly_env,
    fly_state,
)

pytestmark = pytest.mark.integration


def make_provider(cloud: FakeCloud, **options: Any) -> FlyMachinesProvider:
    options.setdefault("app", DEFAULT_APP)
    provider = get_provider(
        "fly", api_key=cloud.api_key, base_url=fly_base_url(cloud.url), **options
    )
    assert isinstance(provider, FlyMachinesProvider)
    provider.sleep = lambda seconds: time.sleep(min(seconds, 0.01))
    return provider


@pytest.fixture
def fly(cloud: FakeCloud) -> Iterator[FlyMachinesProvider]:
    provider = make_provider(cloud)
    yield provider
    provider.close()


@pytest.fixture
def api(cloud: FakeCloud) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {cloud.api_key}"}
    with httpx.Client(base_url=fly_base_url(cloud.url), headers=headers, timeout=10) as client:
        yield client


def spawn(provider: Provider, **fields: Any) -> Compute:
    fields.setdefault("image", "test/image:latest")
    fields.setdefault("gpu", "l40s")
    fields.setdefault("name", "atlas-fly-1")
    return provider.spawn_compute(build_compute_request(**fields))


# ---------------------------------------------------------------------------- conformance
def fly_pod_env(provider: Provider, compute: Compute) -> dict[str, str]:
    """Fly keeps the env under ``config.env`` of the Machine."""
    current = provider.get_compute(compute.id)
    env = current.raw.get("config", {}).get("env") or {}
    return {str(k): str(v) for k, v in env.items()}


class TestFlyConformance(ProviderConformance):
    @pytest.fixture
    def provider(self, cloud: FakeCloud) -> Iterator[Provider]:
        provider = make_provider(cloud)
        yield provider
        provider.close()

    @pytest.fixture
    def gpu(self) -> str:
        return "a100_80g"  # Fly offers no H100

    @pytest.fixture
    def pod_env(self) -> Any:
        return fly_pod_env

    @pytest.fixture
    def unknown_id(self) -> str:
        return "0123456789abcd"


# ---------------------------------------------------------------------------- lifecycle
def test_create_waits_through_created_and_starting(
    cloud: FakeCloud, fly: FlyMachinesProvider
) -> None:
    fly_state(cloud.ctx).boot_delay_s = 0.3
    started = time.monotonic()
    compute = spawn(fly, ports=[(8000, "http"), (22, "tcp")], region_hints=["iad"])
    assert time.monotonic() - started >= 0.25  # it really waited for the boot
    assert compute.status == ComputeStatus.RUNNING
    assert compute.region == "iad" and compute.gpu_type == "l40s"
    assert compute.ports[0].url == f"https://{DEFAULT_APP}.fly.dev"
    assert compute.ports[1].url is None
    state = cloud.state()["fly"]
    assert state["totals"]["creates"] == 1 and state["totals"]["waits"] == 1
    assert state["machines"][0]["gpu_kind"] == "l40s"


def test_wait_timeout_leaves_the_machine_provisioning(cloud: FakeCloud) -> None:
    fly_state(cloud.ctx).boot_delay_s = 30
    provider = make_provider(cloud, wait_timeout_s=1)
    started = time.monotonic()
    compute = spawn(provider)
    assert 0.9 <= time.monotonic() - started < 5
    assert compute.status == ComputeStatus.PROVISIONING
    assert cloud.state()["fly"]["totals"]["wait_timeouts"] == 1
    fly_state(cloud.ctx).machines[compute.id].pending = [(time.time(), "started")]
    assert provider.get_compute(compute.id).status == ComputeStatus.RUNNING


def test_stop_start_destroy_round_trip(cloud: FakeCloud, fly: FlyMachinesProvider) -> None:
    fly_state(cloud.ctx).stop_delay_s = 0.2
    compute = spawn(fly)
    fly.stop(compute.id)
    assert fly.get_compute(compute.id).status == ComputeStatus.STOPPED
    fly.start(compute.id)
    assert fly.get_compute(compute.id).status in (ComputeStatus.PROVISIONING, ComputeStatus.RUNNING)
    fly.terminate(compute.id)
    assert fly.get_compute(compute.id).status == ComputeStatus.TERMINATED
    assert fly.list_compute() == []
    state = cloud.state()["fly"]
    assert state["machines"] == [] and len(state["destroyed_machines"]) == 1


def test_failed_machines_map_to_failed(cloud: FakeCloud, fly: FlyMachinesProvider) -> None:
    compute = spawn(fly)
    answer = httpx.post(
        f"{cloud.url}/_admin/fly/machines/{compute.id}/state", json={"state": "failed"}
    )
    assert answer.status_code == 200
    assert fly.get_compute(compute.id).status == ComputeStatus.FAILED
    assert [c.id for c in fly.list_compute(status="failed")] == [compute.id]


def test_other_apps_are_addressed_by_qualified_ids(
    cloud: FakeCloud, fly: FlyMachinesProvider
) -> None:
    fly.create_app("atlas-second", "my-org")
    compute = spawn(fly, provider_opts={"app": "atlas-second"})
    assert compute.id.startswith("atlas-second/")
    assert fly.get_compute(compute.id).status == ComputeStatus.RUNNING
    assert fly.list_compute() == []  # the provider's own app is empty
    fly.terminate(compute.id)
    assert cloud.state()["fly"]["apps"] == ["atlas-fake", "atlas-second"]


# ---------------------------------------------------------------------------- faults
def test_500_after_create_yields_exactly_one_machine(
    cloud: FakeCloud, fly: FlyMachinesProvider
) -> None:
    cloud.fail_next("POST /v1/apps/*/machines", 500, after_create=True)
    compute = spawn(fly)
    state = cloud.state()["fly"]
    assert state["totals"]["creates"] == 1
    assert [m["id"] for m in state["machines"]] == [compute.id]
    assert cloud.state()["faults_injected"]["script"] == 1


def test_502_before_create_is_retried_after_a_lookup(
    cloud: FakeCloud, fly: FlyMachinesProvider
) -> None:
    cloud.fail_next("POST /v1/apps/*/machines", 502)
    compute = spawn(fly)
    assert [m["id"] for m in cloud.state()["fly"]["machines"]] == [compute.id]
    assert cloud.state()["routes"]["POST /fly/v1/apps/{app}/machines"] == 2


def test_429_on_create_is_retried_safely(cloud: FakeCloud, fly: FlyMachinesProvider) -> None:
    cloud.fail_next("POST /v1/apps/*/machines", 429, retry_after=0)
    spawn(fly)
    assert cloud.state()["fly"]["totals"]["creates"] == 1


def test_random_faults_never_duplicate_machines(cloud: FakeCloud) -> None:
    cloud.set_faults(seed=7, create_500_after_create_rate=0.5, error_rate=0.2)
    provider = make_provider(cloud, wait_timeout_s=0)
    names = [f"atlas-r{i}" for i in range(12)]
    for name in names:
        try:
            spawn(provider, name=name)
        except Exception:  # noqa: BLE001 - a spawn may fail; duplicates must not happen
            pass
    cloud.clear_faults()
    state = cloud.state()
    machines = state["fly"]["machines"]
    assert state["faults_injected"]["create_500_after_create"] > 0  # the faults did fire
    assert len(machines) >= len(names) // 2
    assert len({m["name"] for m in machines}) == len(machines)


# ---------------------------------------------------------------------------- fake API
def test_fake_validates_like_fly(api: httpx.Client) -> None:
    url = f"/v1/apps/{DEFAULT_APP}/machines"
    cases = [
        ({"config": {"image": "x", "guest": {"memory_mb": 1000}}}, "memory"),
        ({"config": {"image": "x", "guest": {"gpu_kind": "a100-80gb"}}}, "gpu_kind"),
        ({"config": {"guest": {"cpus": 1}}}, "image"),
        ({"config": {"image": "x"}, "region": "mars"}, "region"),
        ({"config": {"image": "x", "guest": {"cpu_kind": "turbo"}}}, "cpu_kind"),
        ({"config": {"image": "x", "services": [{"internal_port": 0}]}}, "internal_port"),
        ({"config": {"image": "x", "env": {"A": 1}}}, "env"),
    ]
    for body, word in cases:
        answer = api.post(url, json=body)
        assert answer.status_code == 400, body
        assert word in answer.json()["error"], answer.json()
    missing = api.post("/v1/apps/nope/machines", json={"config": {"image": "x"}})
    assert missing.status_code == 404
    assert missing.json() == {"error": 'Could not find App "nope"'}
    assert api.get(f"{url}/0123456789abcd").json() == {"error": "machine not found"}


def test_fake_auth_wait_and_destroy_rules(cloud: FakeCloud, api: httpx.Client) -> None:
    url = f"/v1/apps/{DEFAULT_APP}/machines"
    assert httpx.get(f"{fly_base_url(cloud.url)}{url}").status_code == 401
    bad = httpx.get(f"{fly_base_url(cloud.url)}{url}", headers={"Authorization": "Bearer wrong"})
    assert bad.status_code == 401 and "error" in bad.json()
    fly_state(cloud.ctx).boot_delay_s = 30
    machine = api.post(url, json={"config": {"image": "x"}, "name": "n"}).json()
    assert machine["state"] in ("created", "starting")
    assert machine["config"]["guest"] == {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256}
    wait = f"{url}/{machine['id']}/wait"
    assert api.get(wait, params={"state": "started", "timeout": 1}).status_code == 408
    assert api.get(wait, params={"state": "stopped", "timeout": 1}).status_code == 400
    assert api.get(wait, params={"state": "asleep"}).status_code == 400
    assert api.delete(f"{url}/{machine['id']}").status_code == 200  # created: not running
    fly_state(cloud.ctx).boot_delay_s = 0
    started = api.post(url, json={"config": {"image": "x"}}).json()
    assert api.get(f"{url}/{started['id']}/wait", params={"state": "started"}).json() == {
        "ok": True
    }
    refused = api.delete(f"{url}/{started['id']}")
    assert refused.status_code == 412
    assert api.delete(f"{url}/{started['id']}", params={"force": "true"}).status_code == 200
    assert api.delete(f"{url}/{started['id']}", params={"force": "true"}).status_code == 404
    listed = api.get(url, params={"include_deleted": "true"}).json()
    assert {m["state"] for m in listed} == {"destroyed"}
    assert api.get(url).json() == []


def test_admin_state_and_reset(cloud: FakeCloud, fly: FlyMachinesProvider) -> None:
    spawn(fly, auth="bearer")
    view = cloud.state()["fly"]["machines"][0]
    assert view["name"] == "atlas-fly-1" and "ATLAS_PRESHARED_KEY" in view["env_keys"]
    assert "routes" in cloud.state() and "pods" in cloud.state()  # RunPod view untouched
    httpx.post(f"{cloud.url}/_admin/fly/timings", json={"boot_delay_s": 2})
    assert fly_state(cloud.ctx).boot_delay_s == 2
    assert httpx.post(f"{cloud.url}/_admin/reset").status_code == 200
    state = cloud.state()["fly"]
    assert state["machines"] == [] and state["apps"] == [DEFAULT_APP]
    assert state["boot_delay_s"] < 1


def test_missing_app_is_a_clear_validation_error(cloud: FakeCloud) -> None:
    provider = get_provider(
        "fly", api_key=cloud.api_key, base_url=fly_base_url(cloud.url), wait_timeout_s=0
    )
    with pytest.raises(ValidationError) as info:
        spawn(provider)
    assert "ATLAS_FLY_APP" in str(info.value)
    assert cloud.state()["fly"]["totals"].get("creates", 0) == 0


# ---------------------------------------------------------------------------- reaper
def test_reaper_finds_fly_orphans_by_name_prefix(
    cloud: FakeCloud, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from atlas_tasks.deps import Dependencies
    from atlas_tasks.sessions.reaper import SessionReaper

    for key, value in fly_env(cloud.url, cloud.api_key).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("ATLAS_REDIS_URL", redis_url)
    monkeypatch.setenv("ATLAS_REAP_PROVIDERS", "fly")
    monkeypatch.setenv("ATLAS_ORPHAN_GRACE_MS", "0")
    reset_settings()
    reset_redis_clients()
    clear_provider_cache()
    # A deployment's first start: without the epoch, prefixed pods on a Redis that has
    # none look like a data loss and the reaper's data-loss guard spares them.
    store_for(get_redis()).ensure_epoch()
    fly = get_provider("fly")
    orphan = spawn(fly, name="atlas-deadbeefdeadbeef")
    spawn(fly, name="someone-elses-machine")
    found: list[tuple[str, str, str | None]] = []
    report = SessionReaper(Dependencies.default()).reap(
        enqueue_terminate=lambda *a: None,
        enqueue_orphan=lambda p, i, n: found.append((p, i, n)),
        scan_orphans=True,
    )
    assert report.errors == []
    assert report.providers_scanned == ["fly"]
    assert found == [("fly", orphan.id, "atlas-deadbeefdeadbeef")]
    clear_provider_cache()
    reset_redis_clients()
