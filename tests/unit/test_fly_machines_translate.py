"""Pure Fly Machines translation: create bodies, guest sizing, services, states, ports."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from atlas_tasks.errors import ProviderError, ValidationError
from atlas_tasks.providers.fly_machines import translate as t
from atlas_tasks.specs import ComputeStatus, build_compute_request


def body_for(**fields: Any) -> dict[str, Any]:
    fields.setdefault("image", "test/image:latest")
    opts = fields.pop("provider_opts", None)
    request = build_compute_request(**fields)
    if opts is not None:
        # The request model refuses atlas-owned provider_opts keys up front
        # (tests/unit/test_hostile_input.py); this checks the translate's own second line
        # of defence, so the options are set past the model's validation.
        request = request.model_copy(update={"provider_opts": opts})
    return t.machine_create_body(request)


# ---------------------------------------------------------------------------- create body
def test_gpu_machine_body() -> None:
    body = body_for(
        gpu="a100_80g",
        gpu_count=2,
        name="atlas-abc",
        region_hints=["ord", "iad"],
        env={"A": "1"},
        ports=[(8000, "http")],
    )
    assert body["name"] == "atlas-abc"
    assert body["region"] == "ord"  # only the first hint: Fly takes one region
    config = body["config"]
    assert config["image"] == "test/image:latest"
    assert config["env"] == {"A": "1"}
    assert config["metadata"] == {"atlas": "1"}
    assert config["guest"] == {
        "cpu_kind": "performance",
        "cpus": 8,
        "memory_mb": 32768,
        "gpu_kind": "a100-sxm4-80gb",
        "gpus": 2,
    }


@pytest.mark.parametrize(
    ("gpu", "kind"),
    [
        ("a100_80g", "a100-sxm4-80gb"),
        ("a100_40g", "a100-pcie-40gb"),
        ("l40s", "l40s"),
        ("a10", "a10"),
    ],
)
def test_gpu_kind_comes_from_the_catalog_and_is_a_real_fly_kind(gpu: str, kind: str) -> None:
    guest = body_for(gpu=gpu)["config"]["guest"]
    assert guest["gpu_kind"] == kind
    assert kind in t.VALID_GPU_KINDS


def test_cpu_machine_defaults_to_shared_cpu_1x_and_omits_empty_parts() -> None:
    body = body_for()
    assert body["config"]["guest"] == {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256}
    assert "gpu_kind" not in body["config"]["guest"]
    for absent in ("env", "services"):
        assert absent not in body["config"]
    assert "name" not in body and "region" not in body


def test_guest_sizing_from_provider_opts() -> None:
    body = body_for(gpu="l40s", provider_opts={"cpus": 16, "memory_mb": 65536})
    assert body["config"]["guest"]["cpus"] == 16
    assert body["config"]["guest"]["memory_mb"] == 65536
    merged = body_for(provider_opts={"guest": {"cpus": 2, "kernel_args": ["x"]}})
    assert merged["config"]["guest"]["cpus"] == 2
    assert merged["config"]["guest"]["kernel_args"] == ["x"]


@pytest.mark.parametrize(
    ("opts", "field"),
    [
        ({"memory_mb": 1000}, "provider_opts.memory_mb"),
        ({"memory_mb": 0}, "provider_opts.memory_mb"),
        ({"memory_mb": "512"}, "provider_opts.memory_mb"),
        ({"cpus": 0}, "provider_opts.cpus"),
        ({"cpus": True}, "provider_opts.cpus"),
        ({"cpu_kind": "dedicated"}, "provider_opts.cpu_kind"),
        ({"guest": "big"}, "provider_opts.guest"),
        ({"config": []}, "provider_opts.config"),
    ],
)
def test_bad_guest_sizing_is_a_validation_error(opts: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        body_for(provider_opts=opts)
    assert info.value.field == field


def test_gpu_on_shared_cpus_is_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        body_for(gpu="a10", provider_opts={"cpu_kind": "shared"})
    assert info.value.field == "provider_opts.cpu_kind"


def test_gpu_fly_does_not_offer_names_the_gpu_field() -> None:
    with pytest.raises(ValidationError) as info:
        body_for(gpu="h100")
    assert info.value.field == "gpu"


def test_image_is_required() -> None:
    with pytest.raises(ValidationError) as info:
        t.machine_create_body(build_compute_request(gpu="a10"))
    assert info.value.field == "image"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"spot": True}, "spot"),
        ({"template_id": "tpl"}, "template_id"),
        ({"network_volume_id": "vol"}, "network_volume_id"),
        ({"volume_gb": 20}, "volume_gb"),
        ({"container_disk_gb": 50}, "container_disk_gb"),
    ],
)
def test_fields_fly_cannot_honour_are_rejected(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        body_for(**fields)
    assert info.value.field == field


def test_provider_opts_pass_through_except_atlas_options() -> None:
    body = body_for(
        provider_opts={
            "app": "other-app",
            "wait_timeout_s": 5,
            "skip_launch": True,
            "lease_ttl": 30,
            "config": {"auto_destroy": True},
            "metadata": {"team": "ml"},
        }
    )
    assert body["skip_launch"] is True and body["lease_ttl"] == 30
    assert "app" not in body and "wait_timeout_s" not in body
    assert body["config"]["auto_destroy"] is True
    assert body["config"]["metadata"] == {"atlas": "1", "team": "ml"}


def test_atlas_options() -> None:
    req = build_compute_request(image="x", provider_opts={"app": "my-app", "wait_timeout_s": 3})
    assert t.atlas_options(req) == ("my-app", 3.0)
    assert t.atlas_options(build_compute_request(image="x")) == (None, None)
    for bad in ({"app": "Bad_App"}, {"wait_timeout_s": -1}, {"wait_timeout_s": "3"}):
        with pytest.raises(ValidationError):
            t.atlas_options(build_compute_request(image="x", provider_opts=bad))


# ---------------------------------------------------------------------------- services
def test_services_first_http_port_takes_443_others_their_own_number() -> None:
    services = t.services_for(((8000, "http"), (22, "tcp"), (9000, "http")))
    assert services == [
        {
            "protocol": "tcp",
            "internal_port": 8000,
            "ports": [
                {"port": 443, "handlers": ["tls", "http"]},
                {"port": 80, "handlers": ["http"], "force_https": True},
            ],
        },
        {"protocol": "tcp", "internal_port": 22, "ports": [{"port": 22}]},
        {
            "protocol": "tcp",
            "internal_port": 9000,
            "ports": [{"port": 9000, "handlers": ["tls", "http"]}],
        },
    ]


def test_ports_published_twice_are_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        t.services_for(((8000, "http"), (443, "tcp")))
    assert info.value.field == "ports"


# ---------------------------------------------------------------------------- responses
@pytest.mark.parametrize(
    ("state", "status"),
    [
        ("created", ComputeStatus.PROVISIONING),
        ("starting", ComputeStatus.PROVISIONING),
        ("started", ComputeStatus.RUNNING),
        ("stopped", ComputeStatus.STOPPED),
        ("suspended", ComputeStatus.STOPPED),
        ("destroyed", ComputeStatus.TERMINATED),
        ("destroying", ComputeStatus.TERMINATED),
        ("failed", ComputeStatus.FAILED),
        ("launch_failed", ComputeStatus.FAILED),
        ("stopping", ComputeStatus.PROVISIONING),
        ("replacing", ComputeStatus.PROVISIONING),
        ("weird-new-state", ComputeStatus.PROVISIONING),
        (None, ComputeStatus.PROVISIONING),
        ("STARTED", ComputeStatus.RUNNING),
    ],
)
def test_state_mapping(state: str | None, status: ComputeStatus) -> None:
    assert t.machine_status(state) == status


MACHINE: dict[str, Any] = {
    "id": "3d8d9014b32d58",
    "name": "atlas-abc",
    "state": "started",
    "region": "ord",
    "instance_id": "01H3JK",
    "private_ip": "fdaa:0:1:a7b:2:3:4:2",
    "config": {
        "image": "vllm/vllm-openai:latest",
        "env": {"A": "1"},
        "guest": {
            "cpu_kind": "performance",
            "cpus": 8,
            "memory_mb": 32768,
            "gpu_kind": "l40s",
            "gpus": 2,
        },
        "services": t.services_for(((8000, "http"), (22, "tcp"))),
    },
    "created_at": "2024-06-19T19:28:26Z",
}


def test_machine_to_compute() -> None:
    compute = t.machine_to_compute(MACHINE, "my-app", "my-app")
    assert compute.id == "3d8d9014b32d58"
    assert compute.provider == "fly"
    assert compute.status == ComputeStatus.RUNNING
    assert compute.gpu_type == "l40s" and compute.gpu_count == 2
    assert compute.region == "ord"
    assert compute.image == "vllm/vllm-openai:latest"
    assert compute.name == "atlas-abc"
    assert compute.public_ip is None and compute.cost_per_hour is None
    assert compute.created_at == datetime(2024, 6, 19, 19, 28, 26, tzinfo=UTC)
    assert [p.model_dump() for p in compute.ports] == [
        {"internal": 8000, "external": 443, "protocol": "http", "url": "https://my-app.fly.dev"},
        {"internal": 22, "external": 22, "protocol": "tcp", "url": None},
    ]
    assert compute.raw["app"] == "my-app"
    assert compute.raw["private_ip"] == "fdaa:0:1:a7b:2:3:4:2"


def test_machine_of_another_app_gets_a_qualified_id() -> None:
    compute = t.machine_to_compute(MACHINE, "other-app", "my-app")
    assert compute.id == "other-app/3d8d9014b32d58"
    assert compute.ports[0].url == "https://other-app.fly.dev"
    assert t.split_compute_id(compute.id, "my-app") == ("other-app", "3d8d9014b32d58")
    assert t.split_compute_id("3d8d9014b32d58", "my-app") == ("my-app", "3d8d9014b32d58")


@pytest.mark.parametrize("bad", ["", "  ", "a/b/c", "x?y", "BAD_APP/abc", 42])
def test_malformed_compute_ids(bad: Any) -> None:
    with pytest.raises(ValidationError) as info:
        t.split_compute_id(bad, "my-app")
    assert info.value.field == "compute_id"


def test_unknown_gpu_kind_is_kept_and_cpu_machines_have_no_gpu() -> None:
    future = {**MACHINE, "config": {"guest": {"gpu_kind": "h200-new", "gpus": 1}}}
    assert t.machine_to_compute(future, "a").gpu_type == "h200-new"
    cpu = {**MACHINE, "config": {"guest": {"cpu_kind": "shared", "cpus": 1}}}
    compute = t.machine_to_compute(cpu, "a")
    assert compute.gpu_type is None and compute.gpu_count == 0
    none = {**MACHINE, "config": {"guest": {"gpu_kind": "none"}}}
    assert t.machine_to_compute(none, "a").gpu_type is None


def test_image_falls_back_to_image_ref() -> None:
    body = {
        "id": "m1",
        "image_ref": {
            "registry": "registry-1.docker.io",
            "repository": "library/nginx",
            "tag": "1.25",
        },
    }
    assert t.machine_to_compute(body, "a").image == "registry-1.docker.io/library/nginx:1.25"


def test_http_port_without_tls_and_odd_services() -> None:
    services = [
        {"internal_port": 8080, "ports": [{"port": 80, "handlers": ["http"]}]},
        {"internal_port": 8081, "ports": [{"port": 8443, "handlers": ["tls", "http"]}]},
        {"internal_port": 5432, "ports": []},
        "junk",
        {"ports": [{"port": 1}]},
    ]
    ports = t.parse_ports(services, "a")
    assert [(p.internal, p.external, p.protocol, p.url) for p in ports] == [
        (8080, 80, "http", "http://a.fly.dev"),
        (8081, 8443, "http", "https://a.fly.dev:8443"),
        (5432, None, "tcp", None),
    ]


@pytest.mark.parametrize("body", [None, [], "x", {"name": "no id"}, {"id": ""}])
def test_malformed_machines_raise_provider_error(body: Any) -> None:
    with pytest.raises(ProviderError):
        t.machine_to_compute(body, "a")


def test_machine_list_shapes() -> None:
    assert t.machines_from_list([MACHINE]) == [MACHINE]
    assert t.machines_from_list(None) == []
    with pytest.raises(ProviderError):
        t.machines_from_list({"machines": []})


def test_parse_time() -> None:
    assert t.parse_time("2024-01-02T03:04:05Z") == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert t.parse_time("2024-01-02T03:04:05") == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert t.parse_time("yesterday") is None and t.parse_time(None) is None


def test_gpu_catalog_lists_fly_kinds_without_prices() -> None:
    catalog = t.gpu_catalog()
    assert {g.id for g in catalog} == {"a100-sxm4-80gb", "a100-pcie-40gb", "l40s", "a10"}
    for entry in catalog:
        assert entry.provider == "fly" and entry.canonical
        assert entry.lowest_price_per_hour is None and entry.stock == "unknown"


@pytest.mark.parametrize("app", ["my-app", "a", "app-123"])
def test_valid_app_names(app: str) -> None:
    assert t.check_app(app) == app


@pytest.mark.parametrize("app", ["", "My-App", "-x", "a_b", "a" * 64, None])
def test_invalid_app_names(app: Any) -> None:
    with pytest.raises(ValidationError) as info:
        t.check_app(app)
    assert info.value.field == "app"


@pytest.mark.parametrize(
    ("opts", "field", "named"),
    [
        ({"name": "evil"}, "provider_opts", "name"),
        ({"region": "ams"}, "provider_opts", "region"),
        ({"bogus": 1}, "provider_opts", "bogus"),
        ({"config": {"env": {"ATLAS_PRESHARED_KEY": "mine"}}}, "provider_opts.config", "env"),
        ({"config": {"image": "other"}}, "provider_opts.config", "image"),
        ({"config": {"nonsense": True}}, "provider_opts.config", "nonsense"),
        ({"guest": {"gpu_kind": "a10"}}, "provider_opts.guest", "gpu_kind"),
        ({"guest": {"gpus": 8}}, "provider_opts.guest", "gpus"),
    ],
)
def test_provider_opts_never_override_our_fields(
    opts: dict[str, Any], field: str, named: str
) -> None:
    with pytest.raises(ValidationError) as info:
        body_for(gpu="a10", name="atlas-f1", env={"ATLAS_PRESHARED_KEY": "tok"}, provider_opts=opts)
    assert info.value.field == field and named in str(info.value)


def test_provider_opts_from_the_definition_pass_below_ours() -> None:
    body = body_for(
        gpu="a100_80g",
        gpu_count=2,
        name="atlas-f1",
        env={"ATLAS_PRESHARED_KEY": "tok"},
        provider_opts={
            "skip_service_registration": True,
            "lease_ttl": 30,
            "config": {"restart": {"policy": "no"}, "spot": False},
            "guest": {"max_memory_mb": 65536},
            "metadata": {"atlas": "0", "team": "ml"},
        },
    )
    assert body["skip_service_registration"] is True and body["lease_ttl"] == 30
    assert body["name"] == "atlas-f1"
    config = body["config"]
    assert config["restart"] == {"policy": "no"} and config["spot"] is False
    assert config["env"] == {"ATLAS_PRESHARED_KEY": "tok"}
    assert config["metadata"] == {"atlas": "1", "team": "ml"}  # our label wins
    guest = config["guest"]
    assert guest["gpu_kind"] == "a100-sxm4-80gb" and guest["gpus"] == 2
    assert guest["max_memory_mb"] == 65536
