"""Lambda Cloud translation on the real response shapes (reference notes §5.1)."""

from __future__ import annotations

from typing import Any

import pytest

from atlas_tasks.errors import (
    AtlasError,
    NotFoundError,
    ProviderError,
    UnauthorizedError,
    ValidationError,
    error_from_response,
)
from atlas_tasks.providers.http import is_maybe_created, mark_maybe_created
from atlas_tasks.providers.lambda_labs import translate as t
from atlas_tasks.specs import ComputeStatus, build_compute_request

INSTANCE_TYPES: dict[str, Any] = {
    "data": {
        "gpu_1x_h100_sxm5": {
            "instance_type": {
                "name": "gpu_1x_h100_sxm5",
                "description": "1x H100 (80 GB SXM5)",
                "gpu_description": "H100 (80 GB SXM5)",
                "price_cents_per_hour": 249,
                "specs": {"vcpus": 26, "memory_gib": 200, "storage_gib": 1024, "gpus": 1},
            },
            "regions_with_capacity_available": [
                {"name": "us-east-1", "description": "Virginia, USA"},
                {"name": "us-west-1", "description": "California, USA"},
            ],
        },
        "gpu_8x_a100_80gb_sxm4": {
            "instance_type": {
                "name": "gpu_8x_a100_80gb_sxm4",
                "description": "8x A100 (80 GB SXM4)",
                "price_cents_per_hour": 1432,
                "specs": {"vcpus": 240, "memory_gib": 1800, "storage_gib": 20480, "gpus": 8},
            },
            "regions_with_capacity_available": [],
        },
        "gpu_1x_a10": {
            "instance_type": {
                "name": "gpu_1x_a10",
                "description": "1x A10 (24 GB PCIe)",
                "price_cents_per_hour": 75,
                "specs": {"gpus": 1},
            },
            "regions_with_capacity_available": [
                {"name": r, "description": r} for r in ("us-east-1", "us-west-1", "eu-1")
            ],
        },
    }
}

INSTANCE: dict[str, Any] = {
    "id": "0920582c7ff041399e34823a0be62549",
    "name": "atlas-abc123",
    "ip": "198.51.100.2",
    "private_ip": "10.19.60.24",
    "status": "active",
    "ssh_key_names": ["macbook-pro"],
    "file_system_names": ["shared-fs"],
    "region": {"name": "us-east-1", "description": "Virginia, USA"},
    "instance_type": {
        "name": "gpu_1x_h100_sxm5",
        "description": "1x H100 (80 GB SXM5)",
        "price_cents_per_hour": 249,
        "specs": {"vcpus": 26, "memory_gib": 200, "storage_gib": 1024, "gpus": 1},
    },
    "hostname": "198-51-100-2.cloud.lambdalabs.com",
    "jupyter_token": "53968f128c4a4489b688c2c0a181d083",
    "jupyter_url": "https://jupyter-3ac4c5c6-9026-47d2-9a33-71efccbcd0ee.lambdaspaces.com/",
}


def test_instance_types_become_gpu_types_in_dollars_with_stock() -> None:
    types = {g.id: g for g in t.gpu_types_from_body(INSTANCE_TYPES)}
    h100 = types["gpu_1x_h100_sxm5"]
    assert (h100.provider, h100.canonical, h100.lowest_price_per_hour) == (
        "lambda_labs",
        "h100",
        2.49,
    )
    assert h100.stock == "medium" and h100.memory_gb == 80.0 and h100.spot_price_per_hour is None
    assert h100.display_name == "1x H100 (80 GB SXM5)"
    assert types["gpu_8x_a100_80gb_sxm4"].stock == "unavailable"
    assert types["gpu_8x_a100_80gb_sxm4"].lowest_price_per_hour == 14.32
    assert types["gpu_1x_a10"].stock == "high" and types["gpu_1x_a10"].canonical == "a10"
    assert [g.id for g in t.gpu_types_from_body(INSTANCE_TYPES)] == sorted(types)


def test_stock_levels() -> None:
    assert [t.stock_of(n) for n in (0, 1, 2, 3, 9)] == [
        "unavailable",
        "low",
        "medium",
        "high",
        "high",
    ]


@pytest.mark.parametrize(
    ("gpu", "count", "expected"),
    [
        ("h100", 1, "gpu_1x_h100_sxm5"),
        ("h100", 8, "gpu_8x_h100_sxm5"),
        ("a100_80g", 8, "gpu_8x_a100_80gb_sxm4"),
        ("a6000", 4, "gpu_4x_a6000"),
        ("rtx_6000", 1, "gpu_1x_rtx6000"),
    ],
)
def test_instance_type_name_by_count(gpu: str, count: int, expected: str) -> None:
    assert t.instance_type_name(gpu, count) == expected
    assert t.canonical_of_type(expected) == gpu
    assert t.gpus_of_type(expected) == count


def test_gpu_lambda_lacks_is_a_validation_error() -> None:
    with pytest.raises(ValidationError) as info:
        t.instance_type_name("l4", 1)
    assert info.value.field == "gpu"


def test_region_first_hint_with_capacity_else_first_free() -> None:
    types = t.instance_types(INSTANCE_TYPES)
    assert t.choose_region(types, "gpu_1x_h100_sxm5", ()) == "us-east-1"
    assert t.choose_region(types, "gpu_1x_h100_sxm5", ("eu-1", "us-west-1")) == "us-west-1"


def test_region_without_capacity_is_a_clear_capacity_error() -> None:
    types = t.instance_types(INSTANCE_TYPES)
    with pytest.raises(ProviderError) as info:
        t.choose_region(types, "gpu_8x_a100_80gb_sxm4", ())
    assert str(info.value.message).startswith("insufficient capacity")
    assert t.INSUFFICIENT_CAPACITY in str(info.value)
    with pytest.raises(ProviderError) as hinted:
        t.choose_region(types, "gpu_1x_h100_sxm5", ("eu-1",))
    assert "in eu-1" in str(hinted.value) and "us-east-1" in str(hinted.value)


def test_unknown_size_names_the_gpu_count_field() -> None:
    with pytest.raises(ValidationError) as info:
        t.choose_region(t.instance_types(INSTANCE_TYPES), "gpu_3x_h100_sxm5", ())
    assert info.value.field == "gpu_count"
    assert "gpu_1x_h100_sxm5" in str(info.value)


def test_launch_body_has_exactly_one_key_and_opts_win() -> None:
    request = build_compute_request(
        gpu="h100",
        image="vllm/vllm-openai:latest",
        name="atlas-x",
        ports=[(8000, "http")],
        env={"HF_TOKEN": "hf_x"},
        provider_opts={"ssh_key_name": "k2", "file_system_names": ["fs"]},
    )
    body = t.launch_body(
        request, type_name="gpu_1x_h100_sxm5", region="us-east-1", ssh_key_name="k2"
    )
    assert body["region_name"] == "us-east-1" and body["instance_type_name"] == "gpu_1x_h100_sxm5"
    assert body["ssh_key_names"] == ["k2"]
    assert body["name"] == "atlas-x" and body["file_system_names"] == ["fs"]
    assert "ssh_key_name" not in body and "docker_args" not in body
    script = body["user_data"]
    assert script.startswith("#!/bin/bash") and "-p 8000:8000" in script
    assert "vllm/vllm-openai:latest" in script and "--env-file" in script
    assert "hf_x" not in script.split("ATLAS_ENV_EOF")[-1]  # secrets only in the env file
    assert t.env_from_user_data(script) == {"HF_TOKEN": "hf_x"}


def test_user_data_quotes_and_rejects_multiline_env() -> None:
    weird = build_compute_request(
        gpu="h100", image="img;rm -rf /", provider_opts={"docker_args": ["--shm-size", "8g"]}
    )
    script = t.user_data(weird)
    assert script is not None and "'img;rm -rf /'" in script and "--shm-size 8g" in script
    with pytest.raises(ValidationError) as info:
        t.user_data(build_compute_request(gpu="h100", image="i", env={"A": "x\ny"}))
    assert info.value.field == "env"
    assert t.user_data(build_compute_request(gpu="h100")) is None
    assert t.env_from_user_data(None) == {}


def test_launched_id() -> None:
    assert t.launched_id({"data": {"instance_ids": ["abc"]}}) == "abc"
    with pytest.raises(ProviderError):
        t.launched_id({"data": {"instance_ids": []}})


def test_instance_to_compute_real_shape() -> None:
    c = t.instance_to_compute(INSTANCE, ((8000, "http"),))
    assert (c.id, c.provider, c.status, c.name) == (
        INSTANCE["id"],
        "lambda_labs",
        ComputeStatus.RUNNING,
        "atlas-abc123",
    )
    assert (c.public_ip, c.region, c.gpu_type, c.gpu_count, c.cost_per_hour) == (
        "198.51.100.2",
        "us-east-1",
        "h100",
        1,
        2.49,
    )
    assert c.ports[0].url == "tcp://198.51.100.2:8000" and c.ports[0].protocol == "tcp"
    assert c.raw == INSTANCE and c.created_at is None
    assert t.instance_to_compute(INSTANCE).ports == []


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("booting", ComputeStatus.PROVISIONING),
        ("active", ComputeStatus.RUNNING),
        ("unhealthy", ComputeStatus.FAILED),
        ("terminating", ComputeStatus.TERMINATED),
        ("terminated", ComputeStatus.TERMINATED),
        ("something-new", ComputeStatus.PROVISIONING),
    ],
)
def test_status_mapping(status: str, expected: ComputeStatus) -> None:
    booting = {**INSTANCE, "status": status, "ip": None}
    compute = t.instance_to_compute(booting, ((22, "tcp"),))
    assert compute.status == expected
    assert compute.ports[0].url is None  # no IP yet


def test_lists_and_malformed_answers() -> None:
    assert t.instances_from_list({"data": [INSTANCE]}) == [INSTANCE]
    assert t.instance_from_get({"data": INSTANCE}) == INSTANCE
    bads: list[Any] = [{"data": {}}, [], None, {"instances": []}]
    for bad in bads:
        with pytest.raises(ProviderError):
            t.instances_from_list(bad)
    with pytest.raises(ProviderError):
        t.instance_to_compute({"name": "no id"})
    with pytest.raises(ProviderError):
        t.instance_types({"error": "x"})


def _lambda_error(status: int, code: str, message: str, **extra: str) -> AtlasError:
    return error_from_response(
        status, {"error": {"code": code, "message": message, **extra}}, "lambda_labs"
    )


def test_capacity_error_code_is_named() -> None:
    err = t.refine_error(
        _lambda_error(
            400,
            t.INSUFFICIENT_CAPACITY,
            "Not enough capacity to fulfill launch request.",
            suggestion="Try another region",
        )
    )
    assert isinstance(err, ProviderError) and err.kind == "provider" and err.status == 400
    assert err.message is not None and err.message.startswith("insufficient capacity")
    assert t.INSUFFICIENT_CAPACITY in err.message and "Try another region" in err.message


def test_object_missing_code_is_not_found_whatever_the_status() -> None:
    err = t.refine_error(_lambda_error(400, "global/object-does-not-exist", "gone"))
    assert isinstance(err, NotFoundError)


def test_other_codes_keep_kind_and_flag() -> None:
    err = t.refine_error(_lambda_error(401, "global/invalid-api-key", "API key was invalid"))
    assert isinstance(err, UnauthorizedError) and "global/invalid-api-key" in str(err)
    flagged = mark_maybe_created(_lambda_error(500, "global/unknown", "boom"))
    assert is_maybe_created(t.refine_error(flagged))
    plain = error_from_response(502, "<html>bad gateway</html>", "lambda_labs")
    assert t.refine_error(plain) is plain


def test_launch_body_keys_are_exactly_instance_launch_request_fields() -> None:
    request = build_compute_request(
        gpu="h100", image="i", name="atlas-x", provider_opts={"hostname": "node1", "tags": []}
    )
    body = t.launch_body(
        request, type_name="gpu_1x_h100_sxm5", region="us-east-1", ssh_key_name="k"
    )
    assert set(body) <= t.LAUNCH_FIELDS
    assert set(body) == {
        "region_name",
        "instance_type_name",
        "ssh_key_names",
        "name",
        "user_data",
        "hostname",
        "tags",
    }


@pytest.mark.parametrize(
    ("opts", "named"),
    [
        ({"name": "evil"}, "name"),
        ({"user_data": "#!/bin/sh\necho pwned"}, "user_data"),
        ({"region_name": "us-west-1"}, "region_name"),
        ({"quantity": 2}, "quantity"),
        ({"bogus": 1, "also_bad": 2}, "also_bad, bogus"),
    ],
)
def test_provider_opts_can_never_override_our_fields_or_add_unknown_ones(
    opts: dict[str, object], named: str
) -> None:
    # The request model refuses atlas-owned provider_opts keys up front
    # (tests/unit/test_hostile_input.py); this checks the translate's own second line
    # of defence, so the options are set past the model's validation.
    request = build_compute_request(
        gpu="h100", image="i", name="atlas-x", env={"ATLAS_PRESHARED_KEY": "tok"}
    )
    request = request.model_copy(update={"provider_opts": opts})
    with pytest.raises(ValidationError) as info:
        t.launch_body(request, type_name="gpu_1x_h100_sxm5", region="us-east-1", ssh_key_name="k")
    assert info.value.field == "provider_opts"
    assert named in str(info.value)


def test_preempted_instances_read_as_terminated() -> None:
    assert t.STATUSES["preempted"] == ComputeStatus.TERMINATED
    compute = t.instance_to_compute({**INSTANCE, "status": "preempted"})
    assert compute.status == ComputeStatus.TERMINATED


def test_name_longer_than_lambda_allows_is_a_name_error() -> None:
    request = build_compute_request(gpu="h100", image="i", name="atlas-" + "x" * 59)
    with pytest.raises(ValidationError) as info:
        t.launch_body(request, type_name="gpu_1x_h100_sxm5", region="us-east-1", ssh_key_name="k")
    assert info.value.field == "name" and "64" in str(info.value)
