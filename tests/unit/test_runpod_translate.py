"""Pure RunPod translation on REST v2 shapes, using the official definition's examples
(``../shared/reference/specs/runpod-rest-v2.openapi.json``) where it gives them."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from atlas_tasks.errors import ProviderError, ValidationError
from atlas_tasks.providers.runpod import translate
from atlas_tasks.specs import (
    ComputeStatus,
    GpuUtilization,
    JobStatus,
    build_compute_request,
    build_job_request,
)

SPEC = Path(__file__).resolve().parents[3] / "shared/reference/specs/runpod-rest-v2.openapi.json"


@cache
def _spec() -> dict[str, Any]:
    return json.loads(SPEC.read_text())  # type: ignore[no-any-return]


def listed_pod() -> dict[str, Any]:
    """The RUNNING pod of the definition's ``GET /v2/pods`` example."""
    content = _spec()["paths"]["/v2/pods"]["get"]["responses"]["200"]["content"]
    return copy.deepcopy(content["application/json"]["examples"]["pods"]["value"]["pods"][0])


def created_pod() -> dict[str, Any]:
    """The PROVISIONING pod of the definition's ``POST /v2/pods`` 201 example."""
    content = _spec()["paths"]["/v2/pods"]["post"]["responses"]["201"]["content"]
    return copy.deepcopy(content["application/json"]["examples"]["pod"]["value"])


# ------------------------------------------------------------------ create body
def test_pod_create_body_v2_shape() -> None:
    req = build_compute_request(
        gpu="h100",
        gpu_count=2,
        image="img:1",
        name="atlas-a",
        cloud_type="community",
        ports=[(8000, "http"), (22, "tcp")],
        env={"A": "1", "B": "two"},
        container_disk_gb=40,
        volume_gb=100,
        template_id="tpl",
        region_hints=["EU-RO-1", "US-TX-3"],
    )
    assert translate.pod_create_body(req) == {
        "name": "atlas-a",
        "image": "img:1",
        "templateId": "tpl",
        "gpu": {"id": "NVIDIA H100 80GB HBM3", "count": 2},
        "cloud": "COMMUNITY",
        "dataCenterIds": ["EU-RO-1", "US-TX-3"],
        "mounts": {"persistent": {"size": 100, "path": "/workspace"}},
        "disk": 40,
        "env": {"A": "1", "B": "two"},
        "ports": ["8000/http", "22/tcp"],
    }


def test_pod_create_body_drops_nil_and_omits_cloud_any() -> None:
    req = build_compute_request(gpu="l4", image="i", name="n", cloud_type="any", volume_gb=0)
    assert translate.pod_create_body(req) == {
        "name": "n",
        "image": "i",
        "gpu": {"id": "NVIDIA L4", "count": 1},
    }


def test_pod_create_body_provider_opts_stay_below_ours() -> None:
    # The request model refuses atlas-owned provider_opts keys up front
    # (tests/unit/test_hostile_input.py); this checks the translate's own second line
    # of defence, so the options are set past the model's validation.
    req = build_compute_request(
        gpu="l4", image="i", name="n", env={"ATLAS_PRESHARED_KEY": "real"}
    ).model_copy(
        update={
            "provider_opts": {
                "name": "other",
                "startSsh": True,
                "gpu": {"id": "x"},
                "env": {"ATLAS_PRESHARED_KEY": "forged", "HF_HOME": "/h"},
            }
        }
    )
    body = translate.pod_create_body(req)
    assert body["name"] == "n" and body["gpu"] == {"id": "NVIDIA L4", "count": 1}
    assert body["env"] == {"ATLAS_PRESHARED_KEY": "real", "HF_HOME": "/h"}
    assert body["startSsh"] is True
    # Without a gpu of our own, a raw gpu (or cpu) object in provider_opts is used as is.
    raw_gpu = {"id": "NVIDIA L4", "minCudaVersion": "12.1"}
    raw = build_compute_request(image="i", name="n", provider_opts={"gpu": raw_gpu})
    assert translate.pod_create_body(raw)["gpu"] == raw_gpu


def test_pod_create_body_spot_is_a_validation_error() -> None:
    with pytest.raises(ValidationError) as info:
        translate.pod_create_body(build_compute_request(gpu="l4", image="i", spot=True))
    assert info.value.field == "spot" and "spot" in str(info.value)


def test_pod_create_body_requires_image_or_template() -> None:
    with pytest.raises(ValidationError) as info:
        translate.pod_create_body(build_compute_request(gpu="h100"))
    assert info.value.field == "image"
    body = translate.pod_create_body(build_compute_request(gpu="h100", template_id="t", name="n"))
    assert body["templateId"] == "t" and "image" not in body


def test_pod_create_body_generates_a_name_when_missing() -> None:
    body = translate.pod_create_body(build_compute_request(gpu="h100", image="i"))
    assert body["name"].startswith("pod-") and len(body["name"]) == 16
    named = translate.pod_create_body(build_compute_request(gpu="h100", image="i"), name="x")
    assert named["name"] == "x"


def test_pod_create_body_unsupported_gpu_names_field() -> None:
    with pytest.raises(ValidationError) as info:
        translate.pod_create_body(build_compute_request(gpu="tpu_v5", image="i"))
    assert info.value.field == "gpu"


# ------------------------------------------------------------------ pods: response
def test_pod_to_compute_on_the_definitions_listed_pod() -> None:
    c = translate.pod_to_compute(listed_pod())
    assert c.id == "7h9k2m4n6p" and c.provider == "runpod"
    assert c.status == ComputeStatus.RUNNING and c.name == "pytorch-training"
    assert c.public_ip == "195.26.233.3"
    assert [(p.internal, p.external, p.protocol, p.url) for p in c.ports] == [
        (8888, None, "http", "https://7h9k2m4n6p-8888.proxy.runpod.net"),
        (22, 34446, "tcp", "tcp://195.26.233.3:34446"),
    ]
    assert c.gpu_type == "rtx_4090" and c.gpu_count == 1
    assert c.cost_per_hour == 0.44 and c.region == "US-KS-2"
    assert c.image == "runpod/pytorch:1.0.2-cu1281-torch280-ubuntu2404"
    assert c.created_at == datetime(2026, 6, 1, 12, tzinfo=UTC)  # createdAt, not startedAt
    assert c.gpu_utilization is None  # the example's runtime reports no gpus
    assert c.raw["status"] == "RUNNING"


def test_pod_to_compute_on_the_definitions_created_pod() -> None:
    c = translate.pod_to_compute(created_pod())
    assert c.status == ComputeStatus.PROVISIONING
    assert c.public_ip is None  # runtime is {}: nothing published yet
    assert c.ports[1].url is None and c.ports[1].external is None
    assert c.created_at == datetime(2026, 6, 1, 12, tzinfo=UTC)
    no_created = {k: v for k, v in listed_pod().items() if k != "createdAt"}
    assert translate.pod_to_compute(no_created).created_at == datetime(
        2026, 6, 1, 12, 2, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("PROVISIONING", ComputeStatus.PROVISIONING),
        ("STARTING", ComputeStatus.PROVISIONING),
        ("RUNNING", ComputeStatus.RUNNING),
        ("EXITED", ComputeStatus.STOPPED),
        ("ERROR", ComputeStatus.FAILED),
        ("TERMINATED", ComputeStatus.TERMINATED),
        ("SOMETHING_NEW", ComputeStatus.PROVISIONING),
        (None, ComputeStatus.PROVISIONING),
    ],
)
def test_pod_status_mapping(status: str | None, expected: ComputeStatus) -> None:
    pod = {**listed_pod(), "status": status}
    assert translate.pod_to_compute(pod).status == expected


def test_every_definition_status_is_mapped() -> None:
    enum = _spec()["components"]["schemas"]["PodStatus"]["enum"]
    assert sorted(translate.POD_STATUSES) == sorted(enum)


def test_gpu_utilization_from_runtime() -> None:
    example = _spec()["components"]["schemas"]["PodGpuUtilization"]["properties"]
    gpu = {
        "util": example["util"]["examples"][0],
        "memoryUtil": example["memoryUtil"]["examples"][0],
    }
    pod = listed_pod()
    pod["runtime"]["gpus"] = [
        gpu,
        {"util": 150, "memoryUtil": -3.4},
        {"util": "hot", "memoryUtil": float("nan")},
        {"util": float("inf")},
        "x",
    ]
    c = translate.pod_to_compute(pod)
    assert c.gpu_utilization == [
        GpuUtilization(util_pct=94, memory_util_pct=78),
        GpuUtilization(util_pct=100, memory_util_pct=0),
        GpuUtilization(util_pct=None, memory_util_pct=None),
        GpuUtilization(util_pct=None, memory_util_pct=None),
    ]
    assert translate.gpu_utilization(None) is None
    assert translate.gpu_utilization({"gpus": []}) == []


def test_unknown_gpu_keeps_native_id_and_bad_values_are_ignored() -> None:
    c = translate.pod_to_compute(
        {
            "id": "z",
            "gpu": {"id": "NVIDIA Future 9000", "count": "x"},
            "cost": "free",
            "runtime": {"ports": "nope"},
            "ports": 3,
        }
    )
    assert c.gpu_type == "NVIDIA Future 9000" and c.gpu_count == 1
    assert c.cost_per_hour is None and c.ports == [] and c.public_ip is None
    cpu_pod = translate.pod_to_compute({"id": "cpu", "cpu": {"id": "cpu5c"}})
    assert cpu_pod.gpu_type is None and cpu_pod.gpu_count == 0


def test_live_ports_not_declared_are_kept() -> None:
    c = translate.pod_to_compute(
        {
            "id": "p",
            "ports": [],
            "runtime": {
                "ports": [{"private": 9000, "public": 41000, "type": "tcp", "ip": "198.51.100.7"}]
            },
        }
    )
    assert [(p.internal, p.url) for p in c.ports] == [(9000, "tcp://198.51.100.7:41000")]


def test_parse_time_go_format() -> None:
    assert translate.parse_time("2024-01-02 03:04:05.678 +0000 UTC") == datetime(
        2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC
    )
    assert translate.parse_time("2024-01-02T03:04:05") == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize("body", [None, [], "pod", 3, {}, {"id": ""}, {"id": 5}, {"name": "no id"}])
def test_malformed_pod_is_provider_error(body: Any) -> None:
    with pytest.raises(ProviderError):
        translate.pod_to_compute(body)


def test_pods_from_list_wants_the_wrapped_shape() -> None:
    assert translate.pods_from_list({"pods": [{"id": "b"}]}) == [{"id": "b"}]
    assert translate.pods_from_list({"pods": []}) == []
    wrong: Any
    for wrong in ([{"id": "a"}], None, {"data": []}, {"pods": None}, {"pods": [1]}, "nope"):
        with pytest.raises(ProviderError):
            translate.pods_from_list(wrong)


# ------------------------------------------------------------------ jobs
def test_job_body() -> None:
    req = build_job_request(
        endpoint="ep",
        input={"prompt": "hi"},
        webhook="https://h",
        policy={"executionTimeout": 1000, "ttl": 5},
        provider_opts={"s3Config": {"bucket": "b"}},
    )
    assert translate.job_body(req) == {
        "input": {"prompt": "hi"},
        "webhook": "https://h",
        "policy": {"executionTimeout": 1000, "ttl": 5},
        "s3Config": {"bucket": "b"},
    }
    assert translate.job_body(build_job_request(endpoint="ep", input=1)) == {"input": 1}


def test_job_from_response() -> None:
    job = translate.job_from_response(
        {
            "id": "sync-1",
            "status": "COMPLETED",
            "output": [1],
            "executionTime": 3391,
            "delayTime": 824,
        },
        "ep",
    )
    assert job.status == JobStatus.COMPLETED and job.output == [1]
    assert job.execution_time_ms == 3391 and job.delay_time_ms == 824
    assert job.endpoint == "ep" and job.provider == "runpod" and job.raw["id"] == "sync-1"
    failed = translate.job_from_response({"id": "j", "status": "FAILED", "error": "oom"}, "ep")
    assert failed.status == JobStatus.FAILED and failed.error == "oom"
    assert translate.job_from_response({"id": "j"}, "ep").status == JobStatus.IN_QUEUE
    assert (
        translate.job_from_response({"id": "j", "status": "WEIRD"}, "ep").status
        == JobStatus.IN_QUEUE
    )
    for status in ("IN_QUEUE", "IN_PROGRESS", "CANCELLED", "TIMED_OUT"):
        assert translate.job_status(status).value == status.lower()
    with pytest.raises(ProviderError):
        translate.job_from_response({"status": "COMPLETED"}, "ep")
    with pytest.raises(ProviderError):
        translate.job_from_response(["x"], "ep")


def test_stream_chunks_unwraps_output() -> None:
    status, chunks = translate.stream_chunks(
        {"status": "IN_PROGRESS", "stream": [{"output": "a"}, {"output": {"t": 1}}, {"x": 2}]}
    )
    assert status == JobStatus.IN_PROGRESS
    assert chunks == ["a", {"t": 1}, {"x": 2}]
    assert translate.stream_chunks({"status": "COMPLETED", "stream": []}) == (
        JobStatus.COMPLETED,
        [],
    )
    assert translate.stream_chunks({}) == (None, [])
    with pytest.raises(ProviderError):
        translate.stream_chunks({"stream": "nope"})


# ------------------------------------------------------------------ catalog
def catalog_example() -> dict[str, Any]:
    content = _spec()["paths"]["/v2/catalog/gpus"]["get"]["responses"]["200"]["content"]
    return copy.deepcopy(content["application/json"]["examples"]["gpus"]["value"])


def test_gpu_types_from_the_definitions_catalog() -> None:
    (gpu,) = translate.gpu_types_from_catalog(catalog_example())
    assert (gpu.id, gpu.canonical, gpu.display_name, gpu.memory_gb) == (
        "NVIDIA GeForce RTX 4090",
        "rtx_4090",
        "RTX 4090",
        24,
    )
    assert gpu.lowest_price_per_hour == 0.31 and gpu.spot_price_per_hour is None
    assert gpu.stock == "high" and gpu.cloud_type == "any"
    assert gpu.raw["pool"] == "ADA_24"


@pytest.mark.parametrize(
    ("changes", "price", "stock", "cloud"),
    [
        ({"community": False}, 0.44, "high", "secure"),
        ({"secure": False, "availability": "NONE"}, 0.31, "unavailable", "community"),
        ({"availability": "LOW"}, 0.31, "low", "any"),
        ({"availability": None}, 0.31, "unknown", "any"),
        ({"secure": False, "community": False}, None, "high", "any"),
    ],
)
def test_gpu_type_price_stock_cloud(
    changes: dict[str, Any], price: float | None, stock: str, cloud: str
) -> None:
    item = {**catalog_example()["gpus"][0], **changes}
    gpu = translate.gpu_type_from_catalog(item)
    assert (gpu.lowest_price_per_hour, gpu.stock, gpu.cloud_type) == (price, stock, cloud)


def test_every_availability_level_is_mapped() -> None:
    enum = _spec()["components"]["schemas"]["AvailabilityLevel"]["enum"]
    assert sorted(translate.STOCK) == sorted(enum)


def test_gpu_types_malformed() -> None:
    wrong: Any
    for wrong in (None, [], {"gpus": None}, {"gpus": [{"name": "no id"}]}, {"gpus": ["x"]}):
        with pytest.raises(ProviderError):
            translate.gpu_types_from_catalog(wrong)
