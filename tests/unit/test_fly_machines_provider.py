"""FlyMachinesProvider over httpx.MockTransport: create + wait, duplicate-safe create,
get/list/stop/start/destroy, app and token resolution."""

from __future__ import annotations

import itertools
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
    ValidationError,
)
from atlas_tasks.providers import get_provider
from atlas_tasks.providers.base import ProviderContext, RequestInfo
from atlas_tasks.providers.fly_machines import FlyMachinesProvider
from atlas_tasks.providers.http import is_maybe_created
from atlas_tasks.specs import ComputeStatus, build_compute_request

BASE = "https://machines.test"
APP = "my-app"


class FakeFly:
    """A tiny in-memory Machines API behind a MockTransport, with fault switches."""

    def __init__(self) -> None:
        self.apps = {APP, "other-app"}
        self.machines: dict[str, dict[str, Any]] = {}
        self.requests: list[httpx.Request] = []
        self.ids = (f"m{i:013x}" for i in itertools.count(1))
        #: Pops one per create: "500_after" (create, then 500), "500" (no create),
        #: "timeout_after" (create, then ReadTimeout), None (normal).
        self.create_faults: list[str | None] = []
        #: State a new machine reports in the create answer and after a wait.
        self.created_state = "created"
        #: Statuses /wait answers in turn (200 when empty); 200 also starts the machine.
        self.wait_answers: list[int] = []
        self.list_fault: Exception | None = None
        self.expected_auth = "Bearer test-key"

    def calls(self, method: str, suffix: str = "") -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and r.url.path.endswith(suffix)]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert request.headers["authorization"] == self.expected_auth
        parts = request.url.path.strip("/").split("/")
        # v1 apps <app> machines [<id> [action]]
        if parts[:2] != ["v1", "apps"] or len(parts) < 3:
            if request.method == "POST" and parts == ["v1", "apps"]:
                return httpx.Response(201, json={"id": "new", "created_at": 0})
            return httpx.Response(404, json={"error": "no route"})
        app = parts[2]
        if app not in self.apps:
            return httpx.Response(404, json={"error": f'Could not find App "{app}"'})
        rest = parts[4:]
        if not rest:
            if request.method == "POST":
                return self._create(request, app)
            if self.list_fault is not None:
                raise self.list_fault
            items = [
                m for m in self.machines.values() if m["_app"] == app and m["state"] != "destroyed"
            ]
            region = request.url.params.get("region")
            if region:
                items = [m for m in items if m["region"] == region]
            return httpx.Response(200, json=[self._public(m) for m in items])
        machine = self.machines.get(rest[0])
        if machine is None or machine["_app"] != app:
            return httpx.Response(404, json={"error": "machine not found"})
        action = rest[1] if len(rest) > 1 else ""
        if request.method == "GET" and action == "":
            return httpx.Response(200, json=self._public(machine))
        if request.method == "GET" and action == "wait":
            status = self.wait_answers.pop(0) if self.wait_answers else 200
            if status == 200:
                machine["state"] = request.url.params["state"]
                return httpx.Response(200, json={"ok": True})
            return httpx.Response(status, json={"error": "deadline_exceeded"})
        if request.method == "POST" and action == "stop":
            machine["state"] = "stopping"
            return httpx.Response(200, json={"ok": True})
        if request.method == "POST" and action == "start":
            machine["state"] = "starting"
            return httpx.Response(200, json={"previous_state": "stopped"})
        if request.method == "DELETE" and action == "":
            machine["state"] = "destroyed"
            return httpx.Response(200, json={"ok": True})
        return httpx.Response(404, json={"error": "no route"})

    def _create(self, request: httpx.Request, app: str) -> httpx.Response:
        body = json.loads(request.content)
        fault = self.create_faults.pop(0) if self.create_faults else None
        if fault == "500":
            return httpx.Response(500, json={"error": "internal"})
        machine_id = next(self.ids)
        machine = {
            "_app": app,
            "id": machine_id,
            "name": body.get("name", machine_id),
            "state": self.created_state,
            "region": body.get("region", "ord"),
            "instance_id": "01INSTANCE",
            "private_ip": "fdaa::2",
            "config": body["config"],
            "created_at": "2024-01-02T03:04:05Z",
        }
        self.machines[machine_id] = machine
        if fault == "500_after":
            return httpx.Response(500, json={"error": "internal"})
        if fault == "timeout_after":
            raise httpx.ReadTimeout("read timed out", request=request)
        return httpx.Response(200, json=self._public(machine))

    @staticmethod
    def _public(machine: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in machine.items() if not k.startswith("_")}

    def add(
        self,
        name: str,
        state: str = "started",
        *,
        app: str = APP,
        region: str = "ord",
        gpu_kind: str | None = "a10",
    ) -> str:
        machine_id = next(self.ids)
        guest: dict[str, Any] = {"cpu_kind": "performance", "cpus": 8, "memory_mb": 32768}
        if gpu_kind:
            guest.update(gpu_kind=gpu_kind, gpus=1)
        self.machines[machine_id] = {
            "_app": app,
            "id": machine_id,
            "name": name,
            "state": state,
            "region": region,
            "instance_id": f"01{machine_id}",
            "config": {"image": "img", "guest": guest},
            "created_at": "2024-01-02T03:04:05Z",
        }
        return machine_id


@pytest.fixture
def fly() -> FakeFly:
    return FakeFly()


@pytest.fixture
def make(fly: FakeFly) -> Callable[..., FlyMachinesProvider]:
    def _make(**options: Any) -> FlyMachinesProvider:
        settings = AtlasSettings(fly_base_url=BASE, http_max_retries=2)
        options.setdefault("app", APP)
        ctx = ProviderContext(
            api_key=options.pop("api_key", "test-key"),
            settings=settings,
            transport=httpx.MockTransport(fly),
            options=options,
        )
        provider = FlyMachinesProvider(ctx)
        provider.sleep = lambda seconds: None
        return provider

    return _make


@pytest.fixture
def provider(make: Callable[..., FlyMachinesProvider]) -> FlyMachinesProvider:
    return make()


def spawn(provider: FlyMachinesProvider, **fields: Any) -> Any:
    fields.setdefault("image", "test/image:latest")
    fields.setdefault("gpu", "a100_80g")
    fields.setdefault("name", "atlas-abc")
    return provider.spawn_compute(build_compute_request(**fields))


# ---------------------------------------------------------------------------- create
def test_create_posts_the_machine_then_waits_for_started(
    provider: FlyMachinesProvider, fly: FakeFly
) -> None:
    compute = spawn(provider, ports=[(8000, "http")], region_hints=["iad"], auth="bearer")
    post = fly.calls("POST", "/machines")[0]
    assert post.url.path == f"/v1/apps/{APP}/machines"
    body = json.loads(post.content)
    assert body["name"] == "atlas-abc" and body["region"] == "iad"
    assert body["config"]["guest"]["gpu_kind"] == "a100-sxm4-80gb"
    assert body["config"]["metadata"] == {"atlas": "1"}
    assert "ATLAS_PRESHARED_KEY" in body["config"]["env"]
    wait = fly.calls("GET", "/wait")
    assert len(wait) == 1
    assert wait[0].url.params["state"] == "started"
    assert wait[0].url.params["timeout"] == "60"
    assert compute.status == ComputeStatus.RUNNING
    assert compute.provider == "fly" and compute.gpu_type == "a100_80g"
    assert compute.ports[0].url == f"https://{APP}.fly.dev"
    assert compute.auth is not None and compute.auth.scheme == "bearer"


def test_wait_408_keeps_provisioning_and_is_not_retried(
    provider: FlyMachinesProvider, fly: FakeFly
) -> None:
    fly.wait_answers = [408]
    compute = spawn(provider)
    assert compute.status == ComputeStatus.PROVISIONING
    assert len(fly.calls("GET", "/wait")) == 1
    assert len(fly.calls("POST", "/machines")) == 1


def test_wait_timeout_option_and_long_waits_are_split(
    make: Callable[..., FlyMachinesProvider], fly: FakeFly
) -> None:
    fly.wait_answers = [408, 408]
    compute = spawn(make(wait_timeout_s=130))
    timeouts = [r.url.params["timeout"] for r in fly.calls("GET", "/wait")]
    assert timeouts == ["60", "60", "10"]
    assert compute.status == ComputeStatus.RUNNING


def test_wait_can_be_disabled_per_provider_or_request(
    make: Callable[..., FlyMachinesProvider], fly: FakeFly
) -> None:
    assert spawn(make(wait_timeout_s=0)).status == ComputeStatus.PROVISIONING
    assert spawn(make(), provider_opts={"wait_timeout_s": 0}).status == ComputeStatus.PROVISIONING
    assert fly.calls("GET", "/wait") == []
    with pytest.raises(ValidationError) as info:
        spawn(make(wait_timeout_s="soon"))
    assert info.value.field == "wait_timeout_s"


def test_a_failing_wait_never_loses_the_created_machine(
    provider: FlyMachinesProvider, fly: FakeFly
) -> None:
    fly.wait_answers = [404]
    compute = spawn(provider)
    assert compute.status == ComputeStatus.PROVISIONING
    assert compute.id in fly.machines


def test_already_started_machine_is_not_waited_for(
    provider: FlyMachinesProvider, fly: FakeFly
) -> None:
    fly.created_state = "started"
    assert spawn(provider).status == ComputeStatus.RUNNING
    assert fly.calls("GET", "/wait") == []


def test_create_500_after_creating_finds_the_machine_by_name(
    provider: FlyMachinesProvider, fly: FakeFly
) -> None:
    fly.create_faults = ["500_after"]
    compute = spawn(provider)
    assert len(fly.calls("POST", "/machines")) == 1
    assert len(fly.machines) == 1 and compute.id in fly.machines


def test_create_read_timeout_after_creating_finds_the_machine(
    provider: FlyMachinesProvider, fly: FakeFly
) -> None:
    fly.create_faults = ["timeout_after"]
    compute = spawn(provider)
    assert len(fly.machines) == 1 and compute.id in fly.machines


def test_create_500_without_creating_retries_once_nothing_exists(
    provider: FlyMachinesProvider, fly: FakeFly
) -> None:
    fly.create_faults = ["500", None]
    compute = spawn(provider)
    assert len(fly.calls("POST", "/machines")) == 2
    assert list(fly.machines) == [compute.id]


def test_create_gives_up_after_max_retries(provider: FlyMachinesProvider, fly: FakeFly) -> None:
    fly.create_faults = ["500"] * 5
    with pytest.raises(ProviderError) as info:
        spawn(provider)
    assert is_maybe_created(info.value)
    assert len(fly.calls("POST", "/machines")) == 3  # first try + http_max_retries (2)


def test_create_without_a_name_never_retries_a_maybe_created_failure(
    provider: FlyMachinesProvider, fly: FakeFly
) -> None:
    fly.create_faults = ["500_after"]
    with pytest.raises(ProviderError) as info:
        provider.spawn_compute(build_compute_request(image="img", gpu="a10"))
    assert is_maybe_created(info.value)
    assert len(fly.calls("POST", "/machines")) == 1


def test_create_raises_when_the_lookup_fails_too(
    provider: FlyMachinesProvider, fly: FakeFly
) -> None:
    fly.create_faults = ["500_after"]
    fly.list_fault = httpx.ConnectError("down")
    with pytest.raises(ProviderError):
        spawn(provider)
    assert len(fly.calls("POST", "/machines")) == 1


def test_bad_request_fails_before_any_network_call(
    provider: FlyMachinesProvider, fly: FakeFly
) -> None:
    with pytest.raises(ValidationError) as info:
        spawn(provider, provider_opts={"memory_mb": 1000})
    assert info.value.field == "provider_opts.memory_mb"
    assert fly.requests == []


def test_create_in_another_app_hands_out_a_qualified_id(
    provider: FlyMachinesProvider, fly: FakeFly
) -> None:
    compute = spawn(provider, provider_opts={"app": "other-app"})
    assert compute.id.startswith("other-app/")
    assert fly.calls("POST", "/machines")[0].url.path == "/v1/apps/other-app/machines"
    assert provider.get_compute(compute.id).id == compute.id
    provider.terminate(compute.id)
    assert fly.calls("DELETE")[0].url.path.startswith("/v1/apps/other-app/machines/")


# ---------------------------------------------------------------------------- read
def test_get_and_not_found(provider: FlyMachinesProvider, fly: FakeFly) -> None:
    machine_id = fly.add("atlas-a")
    compute = provider.get_compute(machine_id)
    assert compute.id == machine_id and compute.status == ComputeStatus.RUNNING
    with pytest.raises(NotFoundError) as info:
        provider.get_compute("mdeadbeef")
    assert info.value.provider == "fly" and info.value.status == 404
    with pytest.raises(NotFoundError) as app_info:
        provider.get_compute("ghost-app/m1")
    assert "Could not find App" in str(app_info.value)


def test_list_filters_client_side(provider: FlyMachinesProvider, fly: FakeFly) -> None:
    a = fly.add("atlas-a", "started", gpu_kind="a10")
    b = fly.add("atlas-ab", "stopped", region="iad", gpu_kind="l40s")
    c = fly.add("atlas-c", "created", gpu_kind=None)
    fly.add("atlas-d", "destroyed")
    fly.add("elsewhere", app="other-app")
    assert {x.id for x in provider.list_compute()} == {a, b, c}
    assert [x.id for x in provider.list_compute(name="atlas-a")] == [a]
    assert [x.id for x in provider.list_compute(status="stopped")] == [b]
    assert [x.id for x in provider.list_compute(status=ComputeStatus.PROVISIONING)] == [c]
    assert [x.id for x in provider.list_compute(gpu="L40S")] == [b]
    assert [x.id for x in provider.list_compute(region="iad")] == [b]
    assert fly.requests[-1].url.params["region"] == "iad"
    assert all(x.name for x in provider.list_compute())  # the reaper needs names
    with pytest.raises(ValidationError) as info:
        provider.list_compute(status="sleeping")
    assert info.value.field == "status"


def test_find_by_name_prefers_a_started_machine(
    provider: FlyMachinesProvider, fly: FakeFly
) -> None:
    fly.add("atlas-x", "stopped")
    started = fly.add("atlas-x", "started")
    found = provider.find_compute_by_name("atlas-x")
    assert found is not None and found.id == started
    assert provider.find_compute_by_name("atlas-x-nope") is None


# ---------------------------------------------------------------------------- actions
def test_stop_posts_then_waits_for_stopped_with_the_instance_id(
    provider: FlyMachinesProvider, fly: FakeFly
) -> None:
    machine_id = fly.add("atlas-a")
    provider.stop(machine_id)
    assert len(fly.calls("POST", "/stop")) == 1
    wait = fly.calls("GET", "/wait")[0]
    assert wait.url.params["state"] == "stopped"
    assert wait.url.params["instance_id"] == f"01{machine_id}"
    assert provider.get_compute(machine_id).status == ComputeStatus.STOPPED


def test_stop_wait_timeout_is_not_an_error(provider: FlyMachinesProvider, fly: FakeFly) -> None:
    machine_id = fly.add("atlas-a")
    fly.wait_answers = [408]
    provider.stop(machine_id)
    assert provider.get_compute(machine_id).status == ComputeStatus.PROVISIONING  # stopping


def test_start_and_unknown_ids(provider: FlyMachinesProvider, fly: FakeFly) -> None:
    machine_id = fly.add("atlas-a", "stopped")
    provider.start(machine_id)
    assert fly.calls("POST", "/start")[0].url.path.endswith(f"{machine_id}/start")
    for call in (provider.stop, provider.start, provider.terminate):
        with pytest.raises(NotFoundError):
            call("mnope")


def test_terminate_forces_destroy(provider: FlyMachinesProvider, fly: FakeFly) -> None:
    machine_id = fly.add("atlas-a")
    provider.terminate(machine_id)
    delete = fly.calls("DELETE")[0]
    assert delete.url.params["force"] == "true"
    assert provider.get_compute(machine_id).status == ComputeStatus.TERMINATED


@pytest.mark.parametrize("bad", ["", "a/b/c", "has space"])
def test_malformed_ids_are_validation_errors(provider: FlyMachinesProvider, bad: str) -> None:
    with pytest.raises(ValidationError) as info:
        provider.get_compute(bad)
    assert info.value.field == "compute_id"


# ---------------------------------------------------------------------------- config
def test_missing_token_is_unauthorized_on_first_call(
    make: Callable[..., FlyMachinesProvider],
) -> None:
    provider = make(api_key=None)
    with pytest.raises(UnauthorizedError) as info:
        provider.list_compute()
    assert "FLY_API_TOKEN" in str(info.value)


def test_missing_app_names_atlas_fly_app(make: Callable[..., FlyMachinesProvider]) -> None:
    provider = make(app=None)
    with pytest.raises(ValidationError) as info:
        provider.list_compute()
    assert info.value.field == "app"
    assert "ATLAS_FLY_APP" in str(info.value)
    with pytest.raises(ValidationError):
        spawn(provider)


def test_app_and_token_from_the_environment(monkeypatch: pytest.MonkeyPatch, fly: FakeFly) -> None:
    monkeypatch.setenv("ATLAS_FLY_APP", APP)
    monkeypatch.setenv("ATLAS_FLY_BASE_URL", BASE)
    monkeypatch.setenv("FLY_API_TOKEN", "test-key")
    reset_settings()
    provider = get_provider("fly", transport=httpx.MockTransport(fly))
    assert isinstance(provider, FlyMachinesProvider)
    fly.add("atlas-a")
    assert [c.name for c in provider.list_compute()] == ["atlas-a"]
    assert fly.requests[0].url.path == f"/v1/apps/{APP}/machines"


def test_macaroon_tokens_keep_their_scheme(
    make: Callable[..., FlyMachinesProvider], fly: FakeFly
) -> None:
    fly.expected_auth = "FlyV1 fm2_abc,def"
    make(api_key="FlyV1 fm2_abc,def").list_compute()
    assert len(fly.requests) == 1


def test_hooks_see_every_call_and_repr_hides_the_token(fly: FakeFly) -> None:
    seen: list[RequestInfo] = []
    ctx = ProviderContext(
        api_key="test-key",
        settings=AtlasSettings(fly_base_url=BASE),
        transport=httpx.MockTransport(fly),
        hooks=(seen.append,),
        options={"app": APP},
    )
    provider = FlyMachinesProvider(ctx)
    provider.list_compute()
    assert [(i.provider, i.api, i.method, i.status) for i in seen] == [
        ("fly", "machines", "GET", 200)
    ]
    assert "test-key" not in repr(provider)
    assert APP in repr(provider)


def test_capabilities_and_catalog(provider: FlyMachinesProvider) -> None:
    assert FlyMachinesProvider.capabilities() == {"http_proxy", "raw_tcp", "global_networking"}
    assert {g.canonical for g in provider.list_gpu_types()} == {
        "a100_80g",
        "a100_40g",
        "l40s",
        "a10",
    }


def test_create_app(make: Callable[..., FlyMachinesProvider], fly: FakeFly) -> None:
    provider = make()
    with pytest.raises(ValidationError) as info:
        provider.create_app("new-app")
    assert info.value.field == "org"
    provider.create_app("new-app", "my-org")
    post = fly.calls("POST", "/v1/apps")[0]
    assert json.loads(post.content) == {"app_name": "new-app", "org_slug": "my-org"}
