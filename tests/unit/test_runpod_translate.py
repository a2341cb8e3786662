"""Pure RunPod translation on the real REST v1 shapes (and the tolerated legacy ones)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from atlas_tasks.errors import ProviderError, ValidationError
from atlas_tasks.providers.runpod import translate
from atlas_tasks.specs import (
    ComputeStatus,
    JobStatus,
    build_compute_request,
    build_job_request,
)

#: A pod as REST v1 documents it (object portMappings, array ports, image, costPerHr string).
V1_POD: dict[str, Any] = {
    "id": "xedezhzb9la3ye",
    "name": "atlas-s1",
    "image": "vllm/vllm-openai:latest",
    "desiredStatus": "RUNNING",
    "costPerHr": "0.74",
    "adjustedCostPerHr": 0.69,
    "publicIp": "100.65.0.119",
    "portMappings": {"22": 10341},
    "ports": ["8888/http", "22/tcp"],
    "machine": {"gpuTypeId": "NVIDIA H100 80GB HBM3", "dataCenterId": "EU-RO-1"},
    "gpu": {"id": "NVIDIA H100 80GB HBM3", "count": 2, "displayName": "H100 SXM"},
    "env": {"ATLAS_PRESHARED_KEY": "x"},
    "interruptible": False,
    "lastStartedAt": "2024-05-01T12:30:00Z",
}


# ------------------------------------------------------------------ create body
def test_pod_create_body_v1_shape() -> None:
    req = build_compute_request(
        gpu="h100", gpu_count=2, image="img:1", name="atlas-a", spot=True,
        cloud_type="community", ports=[(8000, "http"), (22, "tcp")],
        env={"A": "1", "B": "two"}, container_disk_gb=40, volume_gb=100,
        network_volume_id="nv1", template_id="tpl", region_hints=["EU-RO-1", "US-TX-3"],
    )
    assert translate.pod_create_body(req) == {
        "cloudType": "COMMUNITY",
        "computeType": "GPU",
        "gpuCount": 2,
        "gpuTypeIds": ["NVIDIA H100 80GB HBM3"],
        "interruptible": True,
        "imageName": "img:1",
        "name": "atlas-a",
        "templateId": "tpl",
        "networkVolumeId": "nv1",
        "ports": ["8000/http", "22/tcp"],
        "env": {"A": "1", "B": "two"},  # an object, not ExAtlas's [{key, value}]
        "containerDiskInGb": 40,
        "volumeInGb": 100,
        "dataCenterIds": ["EU-RO-1", "US-TX-3"],
    }


def test_pod_create_body_drops_nil_and_omits_cloud_type_any() -> None:
    body = translate.pod_create_body(build_compute_request(gpu="a6000", image="i",
                                                           cloud_type="any"))
    assert "cloudType" not in body  # v1 has no "ALL"; SECURE is the API default
    assert body == {"computeType": "GPU", "gpuCount": 1, "gpuTypeIds": ["NVIDIA RTX A6000"],
                    "interruptible": False, "imageName": "i"}
    secure = translate.pod_create_body(build_compute_request(gpu="h100", image="i"))
    assert secure["cloudType"] == "SECURE"


def test_pod_create_body_provider_opts_win() -> None:
    req = build_compute_request(gpu="h100", image="i", provider_opts={
        "computeType": "CPU", "supportPublicIp": True, "cloudType": "SECURE"})
    body = translate.pod_create_body(req)
    assert body["computeType"] == "CPU" and body["supportPublicIp"] is True


def test_pod_create_body_requires_image_or_template() -> None:
    with pytest.raises(ValidationError) as info:
        translate.pod_create_body(build_compute_request(gpu="h100"))
    assert info.value.field == "image"
    assert translate.pod_create_body(build_compute_request(template_id="t"))["templateId"] == "t"


def test_pod_create_body_unsupported_gpu_names_field() -> None:
    with pytest.raises(ValidationError) as info:
        translate.pod_create_body(build_compute_request(gpu="a10", image="i"))
    assert info.value.field == "gpu" and "runpod" in str(info.value)


def test_list_params() -> None:
    assert translate.list_params(ComputeStatus.RUNNING, "n") == {"desiredStatus": "RUNNING",
                                                                 "name": "n"}
    assert translate.list_params(ComputeStatus.STOPPED, None) == {"desiredStatus": "EXITED"}
    assert translate.list_params(ComputeStatus.TERMINATED, None) == {
        "desiredStatus": "TERMINATED"}
    # Not in the v1 enum: filtered client-side only.
    assert translate.list_params(ComputeStatus.FAILED, None) == {}
    assert translate.list_params(ComputeStatus.PROVISIONING, None) == {}


# ------------------------------------------------------------------ pod → compute
def test_pod_to_compute_v1() -> None:
    c = translate.pod_to_compute(V1_POD)
    assert c.id == "xedezhzb9la3ye" and c.provider == "runpod" and c.name == "atlas-s1"
    assert c.status == ComputeStatus.RUNNING
    assert c.image == "vllm/vllm-openai:latest"
    assert c.cost_per_hour == pytest.approx(0.74)
    assert c.public_ip == "100.65.0.119"
    assert c.gpu_type == "h100" and c.gpu_count == 2
    assert c.region == "EU-RO-1"
    assert c.created_at == datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    assert c.raw is V1_POD or c.raw == V1_POD
    http, tcp = c.ports
    assert (http.internal, http.protocol, http.external) == (8888, "http", None)
    assert http.url == "https://xedezhzb9la3ye-8888.proxy.runpod.net"
    assert (tcp.internal, tcp.protocol, tcp.external) == (22, "tcp", 10341)
    assert tcp.url == "tcp://100.65.0.119:10341"


@pytest.mark.parametrize(("desired", "status"), [
    ("RUNNING", ComputeStatus.RUNNING),
    ("EXITED", ComputeStatus.STOPPED),
    ("TERMINATED", ComputeStatus.TERMINATED),
    ("CREATED", ComputeStatus.PROVISIONING),
    (None, ComputeStatus.PROVISIONING),
])
def test_pod_status_mapping(desired: str | None, status: ComputeStatus) -> None:
    assert translate.pod_to_compute({"id": "p", "desiredStatus": desired}).status == status


def test_pod_to_compute_initialising_pod() -> None:
    # portMappings is null and publicIp empty while a pod initialises.
    c = translate.pod_to_compute({"id": "p1", "desiredStatus": "RUNNING", "portMappings": None,
                                  "publicIp": "", "ports": ["8000/http", "22/tcp"],
                                  "adjustedCostPerHr": 1.5, "gpuTypeIds": ["NVIDIA L4"],
                                  "dataCenterIds": ["US-TX-3"]})
    assert c.public_ip is None
    assert c.ports[0].url == "https://p1-8000.proxy.runpod.net"
    assert c.ports[1].external is None and c.ports[1].url is None
    assert c.cost_per_hour == 1.5
    assert c.gpu_type == "l4" and c.gpu_count == 1
    assert c.region == "US-TX-3"


def test_pod_to_compute_legacy_shapes() -> None:
    # ExAtlas's Bypass fixture: a comma string of ports and imageName.
    c = translate.pod_to_compute({"id": "pod_abc123", "desiredStatus": "RUNNING",
                                  "ports": "8000/http,22/tcp", "gpuCount": 1,
                                  "imageName": "img"})
    assert c.image == "img"
    assert [p.url for p in c.ports] == ["https://pod_abc123-8000.proxy.runpod.net", None]
    # GraphQL-era portMappings list of dicts.
    c = translate.pod_to_compute({"id": "q", "publicIp": "1.2.3.4", "portMappings": [
        {"privatePort": 22, "publicPort": 40022, "type": "tcp"},
        {"privatePort": 8000, "publicPort": 8000, "type": "http"},
    ]})
    assert [(p.internal, p.external, p.protocol, p.url) for p in c.ports] == [
        (22, 40022, "tcp", "tcp://1.2.3.4:40022"),
        (8000, 8000, "http", "https://q-8000.proxy.runpod.net"),
    ]
    # A ports array of dicts.
    c = translate.pod_to_compute({"id": "r", "ports": [{"internal": 9000, "type": "http"}]})
    assert c.ports[0].url == "https://r-9000.proxy.runpod.net"


def test_pod_mappings_without_declared_ports_are_tcp() -> None:
    c = translate.pod_to_compute({"id": "s", "publicIp": "9.9.9.9", "portMappings": {"22": 2}})
    assert [(p.internal, p.protocol, p.url) for p in c.ports] == [(22, "tcp", "tcp://9.9.9.9:2")]


def test_unknown_gpu_keeps_native_id_and_bad_values_are_ignored() -> None:
    c = translate.pod_to_compute({"id": "u", "machine": {"gpuTypeId": "NVIDIA B200"},
                                  "costPerHr": "n/a", "lastStartedAt": "yesterday",
                                  "gpu": {"count": "x"}, "ports": ["abc/http", 7, None]})
    assert c.gpu_type == "NVIDIA B200"
    assert c.cost_per_hour is None and c.created_at is None and c.gpu_count == 1
    assert c.ports == []


def test_region_from_multiple_hints_is_unknown() -> None:
    c = translate.pod_to_compute({"id": "m", "dataCenterIds": ["EU-RO-1", "US-TX-3"]})
    assert c.region is None


def test_parse_time_go_format() -> None:
    assert translate.parse_time("2024-01-02 03:04:05.678 +0000 UTC") == datetime(
        2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    assert translate.parse_time("2024-01-02T03:04:05") == datetime(2024, 1, 2, 3, 4, 5,
                                                                   tzinfo=UTC)


@pytest.mark.parametrize("body", [None, [], "pod", 3, {}, {"id": ""}, {"id": 5},
                                  {"name": "no id"}])
def test_malformed_pod_is_provider_error(body: Any) -> None:
    with pytest.raises(ProviderError):
        translate.pod_to_compute(body)


def test_pods_from_list_shapes() -> None:
    assert translate.pods_from_list([{"id": "a"}]) == [{"id": "a"}]
    assert translate.pods_from_list({"pods": [{"id": "b"}]}) == [{"id": "b"}]
    assert translate.pods_from_list({"data": []}) == []
    assert translate.pods_from_list(None) == []
    with pytest.raises(ProviderError):
        translate.pods_from_list({"weird": 1})
    with pytest.raises(ProviderError):
        translate.pods_from_list("nope")


# ------------------------------------------------------------------ jobs
def test_job_body() -> None:
    req = build_job_request(endpoint="ep", input={"prompt": "hi"}, webhook="https://h",
                            policy={"executionTimeout": 1000, "ttl": 5},
                            provider_opts={"s3Config": {"bucket": "b"}})
    assert translate.job_body(req) == {
        "input": {"prompt": "hi"}, "webhook": "https://h",
        "policy": {"executionTimeout": 1000, "ttl": 5}, "s3Config": {"bucket": "b"},
    }
    assert translate.job_body(build_job_request(endpoint="ep", input=1)) == {"input": 1}


def test_job_from_response() -> None:
    job = translate.job_from_response({"id": "sync-1", "status": "COMPLETED", "output": [1],
                                       "executionTime": 3391, "delayTime": 824}, "ep")
    assert job.status == JobStatus.COMPLETED and job.output == [1]
    assert job.execution_time_ms == 3391 and job.delay_time_ms == 824
    assert job.endpoint == "ep" and job.provider == "runpod" and job.raw["id"] == "sync-1"
    failed = translate.job_from_response({"id": "j", "status": "FAILED", "error": "oom"}, "ep")
    assert failed.status == JobStatus.FAILED and failed.error == "oom"
    assert translate.job_from_response({"id": "j"}, "ep").status == JobStatus.IN_QUEUE
    assert translate.job_from_response({"id": "j", "status": "WEIRD"}, "ep").status == \
        JobStatus.IN_QUEUE
    for status in ("IN_QUEUE", "IN_PROGRESS", "CANCELLED", "TIMED_OUT"):
        assert translate.job_status(status).value == status.lower()
    with pytest.raises(ProviderError):
        translate.job_from_response({"status": "COMPLETED"}, "ep")
    with pytest.raises(ProviderError):
        translate.job_from_response(["x"], "ep")


def test_stream_chunks_unwraps_output() -> None:
    status, chunks = translate.stream_chunks(
        {"status": "IN_PROGRESS", "stream": [{"output": "a"}, {"output": {"t": 1}}, {"x": 2}]})
    assert status == JobStatus.IN_PROGRESS
    assert chunks == ["a", {"t": 1}, {"x": 2}]
    assert translate.stream_chunks({"status": "COMPLETED", "stream": []}) == (
        JobStatus.COMPLETED, [])
    assert translate.stream_chunks({}) == (None, [])
    with pytest.raises(ProviderError):
        translate.stream_chunks({"stream": "nope"})


# ------------------------------------------------------------------ catalog
def test_gpu_types_from_graphql() -> None:
    data = {"gpuTypes": [
        {"id": "NVIDIA H100 80GB HBM3", "displayName": "H100 80GB", "memoryInGb": 80,
         "secureCloud": True, "communityCloud": False,
         "lowestPrice": {"minimumBidPrice": 1.2, "uninterruptablePrice": 2.49,
                         "stockStatus": "High"}},
        {"id": "NVIDIA GeForce RTX 4090", "displayName": "RTX 4090", "memoryInGb": 24,
         "secureCloud": True, "communityCloud": True,
         "lowestPrice": {"minimumBidPrice": None, "uninterruptablePrice": 0.69,
                         "stockStatus": "None"}},
        {"id": "Some New GPU", "communityCloud": True, "lowestPrice": None},
    ]}
    h100, r4090, new = translate.gpu_types_from_data(data)
    assert (h100.canonical, h100.display_name, h100.memory_gb) == ("h100", "H100 80GB", 80)
    assert (h100.lowest_price_per_hour, h100.spot_price_per_hour) == (2.49, 1.2)
    assert h100.stock == "high" and h100.cloud_type == "secure" and h100.provider == "runpod"
    assert r4090.stock == "unavailable" and r4090.cloud_type == "any"
    assert r4090.canonical == "rtx_4090" and r4090.spot_price_per_hour is None
    assert new.canonical is None and new.stock == "unknown" and new.cloud_type == "community"


def test_gpu_type_tolerates_exatlas_top_level_stock() -> None:
    item = {"id": "NVIDIA L4", "stockStatus": "Medium", "lowestPrice": {}}
    assert translate.gpu_type_from_graphql(item).stock == "medium"


def test_gpu_types_malformed() -> None:
    with pytest.raises(ProviderError):
        translate.gpu_types_from_data({"gpuTypes": None})
    with pytest.raises(ProviderError):
        translate.gpu_types_from_data([])
    with pytest.raises(ProviderError):
        translate.gpu_types_from_data({"gpuTypes": [{"displayName": "no id"}]})


def test_query_asks_stock_under_lowest_price() -> None:
    q = translate.GPU_TYPES_QUERY
    price_block = q[q.index("lowestPrice"):]
    assert "stockStatus" in price_block
    assert q.count("stockStatus") == 1
