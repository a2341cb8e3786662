"""Pure translation between atlas specs and RunPod's wire shapes (no I/O).

Pods, the GPU catalog, templates, network volumes and serverless endpoints follow RunPod
REST **v2** (``https://api.runpod.io``, the official definition
``runpod-rest-v2.openapi.json``): a nested ``CreatePodRequest`` (``gpu: {id, count}``,
``mounts``, ``disk``, ``env`` object, ``"8000/http"`` ports), pods with one of six
``status`` values, a numeric ``cost`` and live ``runtime`` (per-GPU load, public
ports), and lists wrapped in an object (``{"pods": [...]}``). Jobs follow the serverless
runtime (``https://api.runpod.ai/v2/<endpoint>``), a different API.

Every function here takes and returns plain dicts/models, so tests need no HTTP.
A body we cannot understand raises ``ProviderError`` (never ``KeyError``/``TypeError``).
"""

from __future__ import annotations

import math
import secrets
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
    GpuUtilization,
    Job,
    JobRequest,
    JobStatus,
    Port,
    canonical_for_native,
    for_provider,
)

PROVIDER = "runpod"

#: Request ``cloud_type`` → v2 ``cloud``. ``any`` is omitted: v2 then places the pod on
#: its default, ``SECURE`` (v2 has no "either" value).
CLOUD_TYPES: dict[str, str] = {"secure": "SECURE", "community": "COMMUNITY"}

#: v2 ``PodStatus`` → normalized status. ``STARTING`` is still provisioning from the
#: caller's side (the container is not healthy yet); ``ERROR`` is unrecoverable.
#: Anything else (a status a later API version adds) reads as provisioning.
POD_STATUSES: dict[str, ComputeStatus] = {
    "PROVISIONING": ComputeStatus.PROVISIONING,
    "STARTING": ComputeStatus.PROVISIONING,
    "RUNNING": ComputeStatus.RUNNING,
    "EXITED": ComputeStatus.STOPPED,
    "ERROR": ComputeStatus.FAILED,
    "TERMINATED": ComputeStatus.TERMINATED,
}

#: Mount paths atlas uses (v2 requires a path with every mount and has no default for
#: network volumes). ``/workspace`` and ``/runpod-volume`` are RunPod's own conventions.
PERSISTENT_MOUNT_PATH = "/workspace"
NETWORK_MOUNT_PATH = "/runpod-volume"

#: ``GET /v2/catalog/gpus`` query asking for pod stock, so ``GpuType.stock`` is filled
#: (``availability`` is only sent with ``include=AVAILABILITY`` and a ``product``).
CATALOG_PARAMS: dict[str, str] = {"include": "AVAILABILITY", "product": "POD"}

#: Serverless status strings → JobStatus.
JOB_STATUSES: dict[str, JobStatus] = {
    "IN_QUEUE": JobStatus.IN_QUEUE,
    "IN_PROGRESS": JobStatus.IN_PROGRESS,
    "COMPLETED": JobStatus.COMPLETED,
    "FAILED": JobStatus.FAILED,
    "CANCELLED": JobStatus.CANCELLED,
    "TIMED_OUT": JobStatus.TIMED_OUT,
}

#: v2 ``AvailabilityLevel`` → ``GpuType.stock``.
STOCK: dict[str, str] = {
    "HIGH": "high",
    "MEDIUM": "medium",
    "LOW": "low",
    "NONE": "unavailable",
}

PROXY_URL = "https://{pod_id}-{port}.proxy.runpod.net"


# ---------------------------------------------------------------------------- pods: request
def default_pod_name() -> str:
    """A name for a request that has none: v2 requires one, and the duplicate-safe create
    looks the pod up by name after an ambiguous failure."""
    return f"pod-{secrets.token_hex(6)}"


def pod_create_body(request: ComputeRequest, *, name: str | None = None) -> dict[str, Any]:
    """The v2 ``CreatePodRequest`` for a request (``None``/empty values omitted).

    ``provider_opts`` (any other ``CreatePodRequest`` field, e.g. ``startSsh``,
    ``globalNetworking``, ``gpu.minCudaVersion`` via a full ``gpu`` object) is merged
    *below* atlas's own fields: it can never replace ``name``, the image or the env atlas
    injects (``ATLAS_PRESHARED_KEY``...); an ``env`` in ``provider_opts`` is merged per key
    with the request's env winning.

    Args:
        request: the normalized request.
        name: the pod name to use when ``request.name`` is empty.

    Raises:
        ValidationError: ``spot`` (v2 has no spot/interruptible pods); ``image`` when
            neither an image nor a template is given; ``gpu`` when none is given or RunPod
            does not offer it; ``volume_gb`` below RunPod's 10 GB floor or together with
            ``network_volume_id`` (v2 allows one mount kind); ``provider_opts.env`` not an
            object.
    """
    if request.spot:
        raise validation_error(
            "spot",
            "RunPod REST v2 has no spot (interruptible) pods; use spot=False",
            provider=PROVIDER,
        )
    if not request.image and not request.template_id:
        raise validation_error("image", "required unless template_id is set", provider=PROVIDER)
    opts = {str(k): v for k, v in request.provider_opts.items()}
    if not request.gpu and "gpu" not in opts and "cpu" not in opts:
        raise validation_error(
            "gpu",
            "required on RunPod (or pass a gpu/cpu object in provider_opts)",
            provider=PROVIDER,
        )
    extra_env = opts.pop("env", None) or {}
    if not isinstance(extra_env, dict):
        raise validation_error(
            "provider_opts.env", "must be an object of strings", provider=PROVIDER
        )
    env = {**{str(k): v for k, v in extra_env.items()}, **request.env}
    ours: dict[str, Any] = {
        "name": request.name or name or default_pod_name(),
        "image": request.image,
        "templateId": request.template_id,
        "gpu": (
            {"id": for_provider(request.gpu, PROVIDER), "count": request.gpu_count}
            if request.gpu
            else None
        ),
        "cloud": CLOUD_TYPES.get(request.cloud_type),
        "dataCenterIds": list(request.region_hints) or None,
        "mounts": _mounts(request),
        "disk": request.container_disk_gb,
        "env": env or None,
        "ports": [f"{port}/{proto}" for port, proto in request.ports] or None,
    }
    return {**opts, **drop_none(ours)}


def _mounts(request: ComputeRequest) -> dict[str, Any] | None:
    volume = request.volume_gb or None  # 0 means "no volume"
    if volume is not None and request.network_volume_id:
        raise validation_error(
            "volume_gb",
            "RunPod pods take a persistent volume or a network volume, not both",
            provider=PROVIDER,
        )
    if request.network_volume_id:
        return {"network": [{"volumeId": request.network_volume_id, "path": NETWORK_MOUNT_PATH}]}
    if volume is not None:
        if volume < 10:
            raise validation_error("volume_gb", "RunPod's minimum is 10 GB", provider=PROVIDER)
        return {"persistent": {"size": volume, "path": PERSISTENT_MOUNT_PATH}}
    return None


# ---------------------------------------------------------------------------- pods: response
def pod_status(value: Any) -> ComputeStatus:
    """A v2 ``PodStatus`` string → :class:`ComputeStatus` (unknown → provisioning)."""
    return POD_STATUSES.get(str(value or "").upper(), ComputeStatus.PROVISIONING)


def pod_to_compute(body: Any) -> Compute:
    """Normalize one v2 ``Pod`` into a :class:`Compute` (``raw`` = the body).

    Raises:
        ProviderError: the body is not an object or has no id.
    """
    body, pod_id = object_with_id(PROVIDER, body, "pod")
    gpu = as_dict(body.get("gpu"))
    runtime = body.get("runtime")
    live = as_dict(runtime)
    runtime_ports = (
        [p for p in live.get("ports") or [] if isinstance(p, dict)]
        if isinstance(live.get("ports"), list)
        else []
    )
    public_ip = next(
        (str_or_none(p.get("ip")) for p in runtime_ports if str_or_none(p.get("ip"))), None
    )
    count = as_int(gpu.get("count"))
    return Compute(
        id=pod_id,
        provider=PROVIDER,
        status=pod_status(body.get("status")),
        public_ip=public_ip,
        ports=parse_ports(pod_id, body.get("ports"), runtime_ports, public_ip),
        gpu_type=_gpu_type(gpu),
        gpu_count=count if count is not None and count >= 0 else (1 if gpu else 0),
        cost_per_hour=as_float(body.get("cost")),
        region=str_or_none(body.get("dataCenterId")),
        image=str_or_none(body.get("image")),
        name=str_or_none(body.get("name")),
        # createdAt (required in v2) is the pod's birth; startedAt moves on every start,
        # which would make an old orphan look young to the reaper's grace period.
        created_at=parse_time(body.get("createdAt")) or parse_time(body.get("startedAt")),
        gpu_utilization=gpu_utilization(runtime),
        raw=body,
    )


def gpu_utilization(runtime: Any) -> list[GpuUtilization] | None:
    """Per-GPU load from a pod's ``runtime.gpus`` (``util``, ``memoryUtil``, 0-100).

    ``None`` when the pod has no runtime (not running) or reports no ``gpus``.
    """
    gpus = runtime.get("gpus") if isinstance(runtime, dict) else None
    if not isinstance(gpus, list):
        return None
    return [
        GpuUtilization(
            util_pct=_pct(item.get("util")), memory_util_pct=_pct(item.get("memoryUtil"))
        )
        for item in gpus
        if isinstance(item, dict)
    ]


def _pct(value: Any) -> int | None:
    # The definition says integer; a float is rounded, a string or bool is not a reading,
    # and neither is NaN/Infinity (which Python's json accepts and round() refuses).
    number = None if isinstance(value, str) else as_float(value)
    if number is None or not math.isfinite(number):
        return None
    return min(max(round(number), 0), 100)


def pods_from_list(body: Any) -> list[dict[str, Any]]:
    """The pod objects of a ``GET /v2/pods`` answer (``{"pods": [...]}``).

    Raises:
        ProviderError: any other shape (an empty list would hide pods from the reaper).
    """
    return wrapped_list(body, "pods", "pod")


def wrapped_list(body: Any, key: str, what: str) -> list[dict[str, Any]]:
    """The array of objects under ``key`` of a v2 list answer (``{"<key>": [...]}``).

    Raises:
        ProviderError: not an object, ``key`` missing, or not an array of objects.
    """
    items = body.get(key) if isinstance(body, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise malformed(PROVIDER, f"{what} list is not {{{key!r}: [objects]}}", body)
    return items


def parse_ports(
    pod_id: str, ports: Any, runtime_ports: list[dict[str, Any]], public_ip: str | None
) -> list[Port]:
    """Ports from the pod's declared ``ports`` (``["8888/http", "22/tcp"]``) and its live
    ``runtime.ports`` (``[{private, public, type, ip}]``).

    http ports get the proxy URL ``https://<pod>-<port>.proxy.runpod.net``; tcp ports get
    ``tcp://<ip>:<public>`` once RunPod has published them. A live port the declaration
    does not list is kept too (with its own ``type``).
    """
    live: dict[int, dict[str, Any]] = {}
    for item in runtime_ports:
        private = as_int(item.get("private"), strings=False)
        if private is not None:
            live[private] = item
    declared: list[tuple[int, str]] = []
    for item in ports if isinstance(ports, list) else []:
        parsed = _port_entry(item)
        if parsed is not None and parsed[0] not in {p for p, _ in declared}:
            declared.append(parsed)
    for private, item in live.items():
        if private not in {p for p, _ in declared}:
            kind = str(item.get("type") or "tcp").lower()
            declared.append((private, "http" if kind in ("http", "https") else "tcp"))
    out: list[Port] = []
    for internal, proto in declared:
        item = live.get(internal, {})
        ext = as_int(item.get("public"), strings=False)
        if proto == "http":
            out.append(
                Port(
                    internal=internal,
                    external=ext,
                    protocol="http",
                    url=PROXY_URL.format(pod_id=pod_id, port=internal),
                )
            )
        else:
            out.append(tcp_port(internal, ext, str_or_none(item.get("ip")) or public_ip))
    return out


def _port_entry(item: Any) -> tuple[int, str] | None:
    if not isinstance(item, str):
        return None
    number, _, proto = item.strip().partition("/")
    port = as_int(number)
    if port is None:
        return None
    return port, "http" if proto.strip().lower() in ("http", "https") else "tcp"


def _gpu_type(gpu: dict[str, Any]) -> str | None:
    native = str_or_none(gpu.get("id"))
    if native is None:
        return None
    # A GPU the catalog does not know yet: keep RunPod's id rather than lose it.
    return canonical_for_native(PROVIDER, native) or native


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
    chunks = [
        item["output"] if isinstance(item, dict) and "output" in item else item for item in items
    ]
    status = body.get("status")
    return (job_status(status) if status else None), chunks


# ---------------------------------------------------------------------------- catalog
def gpu_type_from_catalog(item: Any) -> GpuType:
    """One v2 ``GpuType`` (``GET /v2/catalog/gpus``) → :class:`GpuType`.

    ``lowest_price_per_hour`` is the cheaper of ``price.secure``/``price.community`` over
    the clouds that offer the GPU; v2 has no spot market, so ``spot_price_per_hour`` stays
    ``None``. ``stock`` comes from ``availability`` (requested with
    :data:`CATALOG_PARAMS`), ``unknown`` when absent.

    Raises:
        ProviderError: the entry is not an object or has no id.
    """
    item, gpu_id = object_with_id(PROVIDER, item, "GPU type")
    price = as_dict(item.get("price"))
    secure, community = item.get("secure") is True, item.get("community") is True
    offered = [
        as_float(price.get(cloud))
        for cloud, ok in (("secure", secure), ("community", community))
        if ok
    ]
    prices = [p for p in offered if p is not None]
    availability = item.get("availability")
    stock = STOCK.get(availability, "unknown") if isinstance(availability, str) else "unknown"
    cloud = (
        "secure" if secure and not community else "community" if community and not secure else "any"
    )
    return GpuType(
        id=gpu_id,
        provider=PROVIDER,
        canonical=canonical_for_native(PROVIDER, gpu_id),
        display_name=str_or_none(item.get("name")),
        memory_gb=as_float(item.get("memory")),
        lowest_price_per_hour=min(prices) if prices else None,
        spot_price_per_hour=None,
        stock=stock,
        cloud_type=cloud,
        raw=item,
    )


def gpu_types_from_catalog(body: Any) -> list[GpuType]:
    """The catalog from a ``GET /v2/catalog/gpus`` answer (``{"gpus": [...]}``).

    Raises:
        ProviderError: ``gpus`` missing or not an array of objects.
    """
    return [gpu_type_from_catalog(item) for item in wrapped_list(body, "gpus", "GPU type")]


__all__ = [
    "CATALOG_PARAMS",
    "CLOUD_TYPES",
    "JOB_STATUSES",
    "NETWORK_MOUNT_PATH",
    "PERSISTENT_MOUNT_PATH",
    "POD_STATUSES",
    "PROXY_URL",
    "STOCK",
    "default_pod_name",
    "gpu_type_from_catalog",
    "gpu_types_from_catalog",
    "gpu_utilization",
    "job_body",
    "job_from_response",
    "job_status",
    "parse_ports",
    "parse_time",
    "pod_create_body",
    "pod_status",
    "pod_to_compute",
    "pods_from_list",
    "stream_chunks",
    "wrapped_list",
]
