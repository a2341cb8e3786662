"""Pure translation between atlas specs and RunPod's wire shapes (no I/O).

Targets the real REST v1 shapes (reference notes §1.2/§1.3), not the GraphQL-era shapes
ExAtlas parsed (§9): ``env`` is an *object*, there is no ``cloudType: "ALL"``, pods answer
with ``image``, a ``ports`` *array* and a ``portMappings`` *object*. The old shapes (a
comma-separated ``ports`` string, a list-of-dicts ``portMappings``, ``imageName``) are still
tolerated when reading, so older fixtures and the fake cloud's legacy mode keep working.

Every function here takes and returns plain dicts/models, so tests need no HTTP.
A body we cannot understand raises ``ProviderError`` (never ``KeyError``/``TypeError``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from atlas_tasks.errors import validation_error
from atlas_tasks.providers.translate_common import (
    as_dict,
    as_float,
    as_int,
    drop_none,
    iso_datetime,
    malformed,
    object_with_id,
    str_or_none,
    tcp_port,
)
from atlas_tasks.specs import (
    Compute,
    ComputeRequest,
    ComputeStatus,
    GpuType,
    Job,
    JobRequest,
    JobStatus,
    Port,
    canonical_for_native,
    for_provider,
)

PROVIDER = "runpod"

#: Request ``cloud_type`` → v1 ``cloudType``. ``any`` is omitted (v1 has no "ALL").
CLOUD_TYPES: dict[str, str] = {"secure": "SECURE", "community": "COMMUNITY"}

#: v1 ``desiredStatus`` → normalized status; anything else (or missing) is provisioning.
POD_STATUSES: dict[str, ComputeStatus] = {
    "RUNNING": ComputeStatus.RUNNING,
    "EXITED": ComputeStatus.STOPPED,
    "TERMINATED": ComputeStatus.TERMINATED,
}

#: Normalized status → ``desiredStatus`` list filter. failed/provisioning have no v1
#: equivalent (ExAtlas sent FAILED, which is not in the enum) and are filtered client-side.
STATUS_FILTERS: dict[ComputeStatus, str] = {
    ComputeStatus.RUNNING: "RUNNING",
    ComputeStatus.STOPPED: "EXITED",
    ComputeStatus.TERMINATED: "TERMINATED",
}

#: Serverless status strings → JobStatus.
JOB_STATUSES: dict[str, JobStatus] = {
    "IN_QUEUE": JobStatus.IN_QUEUE,
    "IN_PROGRESS": JobStatus.IN_PROGRESS,
    "COMPLETED": JobStatus.COMPLETED,
    "FAILED": JobStatus.FAILED,
    "CANCELLED": JobStatus.CANCELLED,
    "TIMED_OUT": JobStatus.TIMED_OUT,
}

#: GraphQL ``lowestPrice.stockStatus`` → GpuType.stock. "None" is RunPod's "out of stock";
#: "Unavailable" is what ExAtlas expected and is kept for tolerance.
STOCK: dict[str, str] = {
    "high": "high",
    "medium": "medium",
    "low": "low",
    "none": "unavailable",
    "unavailable": "unavailable",
}

PROXY_URL = "https://{pod_id}-{port}.proxy.runpod.net"


# ---------------------------------------------------------------------------- pods: request
def pod_create_body(request: ComputeRequest) -> dict[str, Any]:
    """The v1 ``PodCreateInput`` for a request; ``None``/empty values dropped,
    ``provider_opts`` merged last (so they override).

    Raises:
        ValidationError: ``image`` when neither an image nor a template is given; ``gpu``
            when RunPod does not offer the GPU.
    """
    if not request.image and not request.template_id:
        raise validation_error("image", "required unless template_id is set", provider=PROVIDER)
    body: dict[str, Any] = {
        "cloudType": CLOUD_TYPES.get(request.cloud_type),
        "computeType": "GPU",
        "gpuCount": request.gpu_count,
        "gpuTypeIds": [for_provider(request.gpu, PROVIDER)] if request.gpu else None,
        "interruptible": request.spot,
        "imageName": request.image,
        "name": request.name,
        "templateId": request.template_id,
        "networkVolumeId": request.network_volume_id,
        "ports": [f"{port}/{proto}" for port, proto in request.ports] or None,
        "env": dict(request.env) or None,
        "containerDiskInGb": request.container_disk_gb,
        "volumeInGb": request.volume_gb,
        "dataCenterIds": list(request.region_hints) or None,
    }
    body = drop_none(body)
    body.update({str(k): v for k, v in request.provider_opts.items()})
    return body


def list_params(status: ComputeStatus | None, name: str | None) -> dict[str, str]:
    """Query parameters of ``GET /pods`` for the filters the server understands."""
    params: dict[str, str] = {}
    if status is not None and status in STATUS_FILTERS:
        params["desiredStatus"] = STATUS_FILTERS[status]
    if name:
        params["name"] = name
    return params


# ---------------------------------------------------------------------------- pods: response
def pod_to_compute(body: Any) -> Compute:
    """Normalize one v1 pod body into a :class:`Compute` (``raw`` = the body).

    Raises:
        ProviderError: the body is not an object or has no id.
    """
    if not isinstance(body, dict):
        raise malformed(PROVIDER, "pod is not a JSON object", body)
    pod_id = body.get("id") or body.get("podId")
    if not isinstance(pod_id, str) or not pod_id:
        raise malformed(PROVIDER, "pod has no id", body)
    machine = as_dict(body.get("machine"))
    gpu = as_dict(body.get("gpu"))
    public_ip = str_or_none(body.get("publicIp")) or str_or_none(machine.get("publicIp"))
    return Compute(
        id=pod_id,
        provider=PROVIDER,
        status=POD_STATUSES.get(str(body.get("desiredStatus") or "").upper(),
                                ComputeStatus.PROVISIONING),
        public_ip=public_ip,
        ports=parse_ports(pod_id, body.get("ports"), body.get("portMappings"), public_ip),
        gpu_type=_gpu_type(body, machine, gpu),
        gpu_count=_gpu_count(body, gpu),
        cost_per_hour=_cost(body),
        region=_region(body, machine),
        image=str_or_none(body.get("image")) or str_or_none(body.get("imageName")),
        name=str_or_none(body.get("name")),
        created_at=parse_time(body.get("lastStartedAt")) or parse_time(body.get("createdAt")),
        raw=body,
    )


def pods_from_list(body: Any) -> list[dict[str, Any]]:
    """The pod objects of a ``GET /pods`` answer (bare array; ``pods``/``data`` tolerated).

    Raises:
        ProviderError: any other shape (an empty list would hide pods from the reaper).
    """
    if body is None:
        return []
    items = body
    if isinstance(body, dict):
        items = body.get("pods", body.get("data"))
    if not isinstance(items, list):
        raise malformed(PROVIDER, "pod list is not an array", body)
    return items


def parse_ports(
    pod_id: str, ports: Any, mappings: Any, public_ip: str | None
) -> list[Port]:
    """Ports from v1 ``ports`` (array of ``"8888/http"``) and ``portMappings``
    (object ``{"22": 10341}``). Also reads the old comma string and list-of-dicts shapes.

    http ports get the proxy URL ``https://<pod>-<port>.proxy.runpod.net``; tcp ports get
    ``tcp://<publicIp>:<external>`` when both are known.
    """
    external = _port_mappings(mappings)
    declared: list[tuple[int, str]] = []
    if isinstance(ports, str):
        ports = [p for p in ports.split(",") if p.strip()]
    if isinstance(ports, list):
        for item in ports:
            parsed = _port_entry(item)
            if parsed is not None and parsed not in declared:
                declared.append(parsed)
    if isinstance(mappings, list):  # old shape: the list also declares the ports
        for item in mappings:
            parsed = _port_entry(item)
            if parsed is not None and parsed[0] not in {p for p, _ in declared}:
                declared.append(parsed)
    if not declared:
        # No declaration but mappings exist: only TCP ports are mapped to public ports.
        declared = [(internal, "tcp") for internal in external]
    out: list[Port] = []
    for internal, proto in declared:
        ext = external.get(internal)
        if proto == "http":
            out.append(Port(internal=internal, external=ext, protocol="http",
                            url=PROXY_URL.format(pod_id=pod_id, port=internal)))
        else:
            out.append(tcp_port(internal, ext, public_ip))
    return out


def _port_mappings(mappings: Any) -> dict[int, int]:
    out: dict[int, int] = {}
    if isinstance(mappings, dict):
        for key, value in mappings.items():
            internal, ext = as_int(key), as_int(value)
            if internal is not None and ext is not None:
                out[internal] = ext
    elif isinstance(mappings, list):
        for item in mappings:
            if isinstance(item, dict):
                internal = as_int(item.get("privatePort", item.get("internal")))
                ext = as_int(item.get("publicPort", item.get("external")))
                if internal is not None and ext is not None:
                    out[internal] = ext
    return out


def _port_entry(item: Any) -> tuple[int, str] | None:
    if isinstance(item, str):
        number, _, proto = item.strip().partition("/")
        port = as_int(number)
        if port is None:
            return None
        return port, "http" if proto.strip().lower() in ("http", "https") else "tcp"
    if isinstance(item, dict):
        port = as_int(item.get("privatePort", item.get("internal")))
        if port is None:
            return None
        proto = str(item.get("type", item.get("protocol", "tcp"))).lower()
        return port, "http" if proto in ("http", "https") else "tcp"
    return None


def _gpu_type(body: dict[str, Any], machine: dict[str, Any], gpu: dict[str, Any]) -> str | None:
    ids = body.get("gpuTypeIds")
    candidates = [
        machine.get("gpuTypeId"),
        gpu.get("id"),
        ids[0] if isinstance(ids, list) and ids else None,
        body.get("gpuTypeId"),  # GraphQL-era top-level field
    ]
    natives = [c for c in candidates if isinstance(c, str) and c]
    for native in natives:
        canonical = canonical_for_native(PROVIDER, native)
        if canonical is not None:
            return canonical
    # A GPU the catalog does not know yet: keep RunPod's id rather than lose it.
    return natives[0] if natives else None


def _cost(body: dict[str, Any]) -> float | None:
    # The spec's example gives costPerHr as a string ("0.74"); adjustedCostPerHr is a number.
    cost = as_float(body.get("costPerHr"))
    return cost if cost is not None else as_float(body.get("adjustedCostPerHr"))


def _gpu_count(body: dict[str, Any], gpu: dict[str, Any]) -> int:
    for value in (gpu.get("count"), body.get("gpuCount")):
        count = as_int(value)
        if count is not None and count >= 0:
            return count
    return 1


def _region(body: dict[str, Any], machine: dict[str, Any]) -> str | None:
    region = str_or_none(machine.get("dataCenterId")) or str_or_none(body.get("dataCenterId"))
    if region:
        return region
    ids = body.get("dataCenterIds")
    # The request's hint list: only conclusive when it names a single data center.
    if isinstance(ids, list) and len(ids) == 1:
        return str_or_none(ids[0])
    return None


def parse_time(value: Any) -> datetime | None:
    """An aware datetime from ISO 8601 (or RunPod's Go-style ``2024-01-02 03:04:05.678
    +0000 UTC``); ``None`` when absent or unparsable."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.endswith(" UTC"):
        text = text[: -len(" UTC")]
    for candidate in (text, text.replace(" +0000", "+00:00")):
        parsed = iso_datetime(candidate)
        if parsed is not None:
            return parsed
    return None


# ---------------------------------------------------------------------------- serverless
def job_body(request: JobRequest) -> dict[str, Any]:
    """The ``/run`` or ``/runsync`` body: ``{input, webhook?, policy?} ∪ provider_opts``."""
    body: dict[str, Any] = {"input": request.input}
    if request.webhook:
        body["webhook"] = request.webhook
    if request.policy:
        body["policy"] = {str(k): v for k, v in request.policy.items()}
    body.update({str(k): v for k, v in request.provider_opts.items()})
    return body


def job_from_response(body: Any, endpoint: str) -> Job:
    """A :class:`Job` from a run/status/cancel answer (unknown status → in_queue).

    Raises:
        ProviderError: the body is not an object or has no id.
    """
    body, job_id = object_with_id(PROVIDER, body, "job")
    return Job(
        id=job_id,
        provider=PROVIDER,
        status=job_status(body.get("status")),
        endpoint=endpoint,
        output=body.get("output"),
        error=body.get("error"),
        execution_time_ms=as_int(body.get("executionTime")),
        delay_time_ms=as_int(body.get("delayTime")),
        raw=body,
    )


def job_status(value: Any) -> JobStatus:
    """Serverless status string → JobStatus (unknown or missing → in_queue)."""
    return JOB_STATUSES.get(str(value or "").upper(), JobStatus.IN_QUEUE)


def stream_chunks(body: Any) -> tuple[JobStatus | None, list[Any]]:
    """``(status, chunks)`` of a ``/stream`` answer; chunks are the unwrapped ``output``
    values of the ``stream`` items (items without ``output`` are passed through).
    ``status`` is ``None`` when the answer has none.

    Raises:
        ProviderError: the body is not an object or ``stream`` is not a list.
    """
    if not isinstance(body, dict):
        raise malformed(PROVIDER, "stream answer is not a JSON object", body)
    items = body.get("stream") or []
    if not isinstance(items, list):
        raise malformed(PROVIDER, "stream is not an array", body)
    chunks = [item["output"] if isinstance(item, dict) and "output" in item else item
              for item in items]
    status = body.get("status")
    return (job_status(status) if status else None), chunks


# ---------------------------------------------------------------------------- catalog
GPU_TYPES_QUERY = (
    "query AtlasGpuTypes { gpuTypes { id displayName memoryInGb secureCloud communityCloud "
    "lowestPrice(input: {gpuCount: 1}) { minimumBidPrice uninterruptablePrice stockStatus } "
    "} }"
)


def gpu_type_from_graphql(item: Any) -> GpuType:
    """One GraphQL ``gpuTypes`` entry → :class:`GpuType`.

    Raises:
        ProviderError: the entry is not an object or has no id.
    """
    if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
        raise malformed(PROVIDER, "gpuTypes entry without an id", item)
    price = as_dict(item.get("lowestPrice"))
    # stockStatus lives under lowestPrice; ExAtlas read it at the top level (§9.6).
    stock_raw = price.get("stockStatus", item.get("stockStatus"))
    stock = STOCK.get(str(stock_raw).lower(), "unknown") if stock_raw is not None else "unknown"
    secure, community = item.get("secureCloud") is True, item.get("communityCloud") is True
    cloud = "secure" if secure and not community else "community" if community and not secure \
        else "any"
    return GpuType(
        id=item["id"],
        provider=PROVIDER,
        canonical=canonical_for_native(PROVIDER, item["id"]),
        display_name=str_or_none(item.get("displayName")),
        memory_gb=as_float(item.get("memoryInGb")),
        lowest_price_per_hour=as_float(price.get("uninterruptablePrice")),
        spot_price_per_hour=as_float(price.get("minimumBidPrice")),
        stock=stock,
        cloud_type=cloud,
        raw=item,
    )


def gpu_types_from_data(data: Any) -> list[GpuType]:
    """The catalog from a GraphQL ``data`` object.

    Raises:
        ProviderError: ``gpuTypes`` missing or not a list.
    """
    items = data.get("gpuTypes") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise malformed(PROVIDER, "GraphQL answer has no gpuTypes list", data)
    return [gpu_type_from_graphql(item) for item in items]


# ---------------------------------------------------------------------------- helpers
__all__ = [
    "CLOUD_TYPES",
    "GPU_TYPES_QUERY",
    "JOB_STATUSES",
    "POD_STATUSES",
    "PROXY_URL",
    "STATUS_FILTERS",
    "STOCK",
    "gpu_type_from_graphql",
    "gpu_types_from_data",
    "job_body",
    "job_from_response",
    "job_status",
    "list_params",
    "parse_ports",
    "parse_time",
    "pod_create_body",
    "pod_to_compute",
    "pods_from_list",
    "stream_chunks",
]
