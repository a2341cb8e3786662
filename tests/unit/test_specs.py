"""Specs: every ComputeRequest / JobRequest rule fails with a validation error naming its field."""

from __future__ import annotations

from typing import Any

import pytest

from atlas_tasks.errors import AtlasError, ValidationError
from atlas_tasks.specs import (
    Compute,
    ComputeRequest,
    ComputeStatus,
    JobRequest,
    JobStatus,
    Port,
    build_compute_request,
    build_job_request,
)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"gpu": "nope"}, "gpu"),
        ({"gpu": "h1000"}, "gpu"),
        ({"gpu_count": 0}, "gpu_count"),
        ({"gpu_count": -2}, "gpu_count"),
        ({"gpu_count": "many"}, "gpu_count"),
        ({"cloud_type": "cheap"}, "cloud_type"),
        ({"spot": "sometimes"}, "spot"),
        ({"ports": [(0, "http")]}, "ports"),
        ({"ports": [(65536, "http")]}, "ports"),
        ({"ports": [(8000, "udp")]}, "ports"),
        ({"ports": [("8000", "http")]}, "ports"),
        ({"ports": [(True, "http")]}, "ports"),
        ({"env": ["A=1"]}, "env"),
        ({"volume_gb": -1}, "volume_gb"),
        ({"container_disk_gb": 0}, "container_disk_gb"),
        ({"auth": "basic"}, "auth"),
        ({"idle_ttl_ms": 0}, "idle_ttl_ms"),
        ({"idle_ttl_ms": -5}, "idle_ttl_ms"),
        ({"provider_opts": "x"}, "provider_opts"),
        ({"gpus": 2}, "gpus"),
        ({"imageName": "x"}, "imageName"),
    ],
)
def test_compute_request_rule_names_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        build_compute_request(image="img", **fields)
    err = info.value
    assert isinstance(err, AtlasError)
    assert err.kind == "validation"
    assert err.field == field
    assert field in str(err)


def test_unknown_field_says_so() -> None:
    with pytest.raises(ValidationError, match="gpus: unknown field"):
        build_compute_request(gpus=2)


def test_compute_request_normalises() -> None:
    req = build_compute_request(
        gpu="H100",
        image="img",
        ports=[8000, {"internal": 22, "protocol": "TCP"}, (9000, "http")],
        env={"N": 1},
        region_hints="US-TX-3",
    )
    assert req.gpu == "h100"
    assert req.ports == ((8000, "http"), (22, "tcp"), (9000, "http"))
    assert req.env == {"N": "1"}
    assert req.region_hints == ("US-TX-3",)
    assert req.auth == "none" and req.gpu_count == 1 and req.cloud_type == "secure"


def test_every_seed_field_is_accepted() -> None:
    req = build_compute_request(
        gpu="a100_80g",
        gpu_count=2,
        image="img",
        cloud_type="community",
        spot=True,
        region_hints=["EU-RO-1"],
        ports=[(8000, "http")],
        env={"A": "b"},
        volume_gb=20,
        container_disk_gb=30,
        network_volume_id="nv1",
        name="atlas-x",
        template_id="t1",
        auth="bearer",
        idle_ttl_ms=60_000,
        provider_opts={"x": 1},
    )
    assert req.model_dump()["gpu_count"] == 2


def test_requests_are_frozen() -> None:
    req = build_compute_request(image="img")
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        req.image = "other"  # type: ignore[misc]


def test_build_merges_model_dict_and_fields() -> None:
    base = ComputeRequest(gpu="h100", image="img")
    merged = build_compute_request(base, gpu_count=4)
    assert (merged.gpu, merged.gpu_count, merged.image) == ("h100", 4, "img")
    assert build_compute_request(base) is base
    from_dict = build_compute_request({"image": "a"}, image="b")
    assert from_dict.image == "b"
    with pytest.raises(ValidationError) as info:
        build_compute_request(42)  # type: ignore[arg-type]
    assert info.value.field == "request"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({}, "endpoint"),
        ({"endpoint": ""}, "endpoint"),
        ({"endpoint": "e", "mode": "later"}, "mode"),
        ({"endpoint": "e", "timeout_ms": 0}, "timeout_ms"),
        ({"endpoint": "e", "unknown": 1}, "unknown"),
    ],
)
def test_job_request_rule_names_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        build_job_request(**fields)
    assert info.value.field == field


def test_job_request_defaults() -> None:
    req = build_job_request(endpoint="e", input={"p": 1})
    assert isinstance(req, JobRequest)
    assert (req.mode, req.timeout_ms, req.input) == ("async", 90_000, {"p": 1})


def test_response_models_and_enums() -> None:
    compute = Compute(
        id="x",
        provider="mock",
        status="running",
        ports=[Port(internal=8000, external=8000, url="https://x")],
    )
    assert compute.status is ComputeStatus.RUNNING
    assert compute.status == "running"  # type: ignore[comparison-overlap]  # StrEnum == str
    assert {s.value for s in ComputeStatus} == {
        "provisioning",
        "running",
        "stopped",
        "terminated",
        "failed",
    }
    assert {s.value for s in JobStatus} == {
        "in_queue",
        "in_progress",
        "completed",
        "failed",
        "cancelled",
        "timed_out",
    }
    assert JobStatus.COMPLETED.is_terminal and not JobStatus.IN_QUEUE.is_terminal
    assert "raw" not in repr(compute)
