"""Normalized request/response models shared by every provider.

Requests are frozen and reject unknown fields (a typo must not silently drop an option);
responses carry ``raw`` with the provider's native body for fields not yet normalized.
Build requests through :func:`build_compute_request` / :func:`build_job_request` to get
``AtlasError(kind="validation")`` naming the field instead of a pydantic traceback.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from atlas_tasks.errors import ValidationError, validation_error
from atlas_tasks.specs.gpu import canonical_gpu

PortProtocol = Literal["http", "tcp"]
AuthScheme = Literal["none", "bearer", "signed_url"]
CloudType = Literal["any", "secure", "community"]


class Capability(StrEnum):
    """Optional features a provider may declare (``atlas.capabilities(provider)``)."""

    SPOT = "spot"
    SERVERLESS = "serverless"
    NETWORK_VOLUMES = "network_volumes"
    HTTP_PROXY = "http_proxy"
    RAW_TCP = "raw_tcp"
    SYMMETRIC_PORTS = "symmetric_ports"
    WEBHOOKS = "webhooks"
    GLOBAL_NETWORKING = "global_networking"
    #: ``Provider.read_job_stream``: one non-blocking read of a streaming job's new chunks.
    JOB_STREAM_READS = "job_stream_reads"
    #: ``Compute.gpu_utilization``: per-GPU utilisation of a running pod (GPU-idle reaping).
    GPU_UTILIZATION = "gpu_utilization"


class ComputeStatus(StrEnum):
    """Normalized lifecycle state of a compute resource."""

    PROVISIONING = "provisioning"
    RUNNING = "running"
    STOPPED = "stopped"
    TERMINATED = "terminated"
    FAILED = "failed"


class JobStatus(StrEnum):
    """Normalized state of a serverless job."""

    IN_QUEUE = "in_queue"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def is_terminal(self) -> bool:
        """True for completed, failed, cancelled and timed_out."""
        return self in _TERMINAL_JOB_STATUSES


_TERMINAL_JOB_STATUSES = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.TIMED_OUT}
)


#: Upper bound of ``idle_ttl_ms`` (30 days): beyond it a session is not "idle-reaped" in any
#: useful sense, and Redis PX arithmetic must stay far from overflow.
MAX_IDLE_TTL_MS = 30 * 24 * 3600 * 1000

#: ``provider_opts`` keys the orchestrator owns, mapped to the field to use instead. They
#: are merged *into* the provider's native body, so they could silently replace what atlas
#: sets: a ``name``/``label`` override leaves a pod without the reaper's name prefix (a
#: permanent leak), an ``env``/``user_data`` override drops ``ATLAS_PRESHARED_KEY`` (the
#: token handed out no longer opens the pod). Every provider's spelling is listed, since a
#: request does not know its provider yet: ``name`` (RunPod, Lambda, Fly), ``label``
#: (Vast's name), ``env`` (RunPod, Vast), ``user_data`` (Lambda's cloud-init, which
#: carries the env), and Fly's ``config.env`` (checked one level down).
RESERVED_PROVIDER_OPTS: dict[str, str] = {
    "name": "name",
    "label": "name",
    "env": "env",
    "user_data": "env",
}
#: Reserved keys inside a nested ``provider_opts`` mapping (Fly merges ``config`` into
#: the machine config, where ``env`` is the pod env).
RESERVED_NESTED_PROVIDER_OPTS: dict[str, dict[str, str]] = {"config": {"env": "env"}}


def _mapping_or_empty(value: Any, message: str) -> Mapping[Any, Any]:
    """``value`` when it is a mapping, ``{}`` for ``None``; else ``ValueError(message)``."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(message)
    return value


def _check_provider_opts(value: Mapping[Any, Any]) -> dict[str, Any]:
    """Reject reserved keys, non-string keys and anything that is not plain JSON.

    Checked here, up front, so a bad option fails the caller's ``spawn`` with a named
    field instead of failing later when the request is sealed for the broker.
    """
    for key in value:
        if not isinstance(key, str):
            raise ValueError(f"keys must be strings, got {type(key).__name__}")
    for key, use in RESERVED_PROVIDER_OPTS.items():
        if key in value:
            raise validation_error(
                f"provider_opts.{key}",
                f"atlas sets the pod's {use}; pass {use}= instead of provider_opts[{key!r}]",
            )
    for outer, inner in RESERVED_NESTED_PROVIDER_OPTS.items():
        nested = value.get(outer)
        if isinstance(nested, Mapping):
            for key, use in inner.items():
                if key in nested:
                    raise validation_error(
                        f"provider_opts.{outer}.{key}",
                        f"atlas sets the pod's {use}; pass {use}= instead",
                    )
    try:
        # allow_nan=False: NaN/Infinity are not JSON, and provider APIs reject them.
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"must be JSON-serialisable ({exc})") from None
    return dict(value)


class _Request(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


class ComputeRequest(_Request):
    """What to spawn. Field names follow the ExAtlas README.

    ``ports`` takes ``[(8000, "http"), (22, "tcp")]``; ``auth`` mints a bearer token or a
    signed-URL secret into the pod's env; ``provider_opts`` is merged last into the
    provider's native request body (escape hatch for unmodelled options).
    """

    gpu: str | None = None
    # Strict ints everywhere: ``True`` must not become 1 GPU or a 1 ms idle TTL.
    gpu_count: StrictInt = Field(default=1, ge=1)
    image: str | None = None
    cloud_type: CloudType = "secure"
    spot: bool = False
    region_hints: tuple[str, ...] = ()
    ports: tuple[tuple[int, PortProtocol], ...] = ()
    env: dict[str, str] = Field(default_factory=dict)
    volume_gb: StrictInt | None = Field(default=None, ge=0)
    container_disk_gb: StrictInt | None = Field(default=None, ge=1)
    network_volume_id: str | None = None
    name: str | None = None
    template_id: str | None = None
    auth: AuthScheme = "none"
    #: The orchestrator also enforces ``ATLAS_MIN_IDLE_TTL_MS`` (default 10 s) on it.
    idle_ttl_ms: StrictInt | None = Field(default=None, gt=0, le=MAX_IDLE_TTL_MS)
    provider_opts: dict[str, Any] = Field(default_factory=dict)

    @field_validator("provider_opts", mode="before")
    @classmethod
    def _provider_opts(cls, value: Any) -> Any:
        return _check_provider_opts(
            _mapping_or_empty(value, "must be a mapping of option name to JSON value")
        )

    @field_validator("gpu")
    @classmethod
    def _canonical_gpu(cls, value: str | None) -> str | None:
        return None if value is None else canonical_gpu(value)

    @field_validator("ports", mode="before")
    @classmethod
    def _ports(cls, value: Any) -> Any:
        if value is None:
            return ()
        # Only ValueError becomes a pydantic error: anything a bad shape could raise
        # (TypeError on ``ports=5``) is checked for here instead.
        if isinstance(value, str | bytes | Mapping) or not isinstance(value, list | tuple):
            raise ValueError('must be a list like [(8000, "http"), (22, "tcp")]')
        out = []
        for item in value:
            if isinstance(item, dict):
                item = (item.get("internal", item.get("port")), item.get("protocol", "http"))
            elif isinstance(item, int):
                item = (item, "http")
            if not isinstance(item, list | tuple) or len(item) != 2:
                raise ValueError(f'port entry {item!r} must be (port, "http"|"tcp")')
            port, proto = item
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise ValueError(f"port {port!r} must be an integer in 1..65535")
            if not isinstance(proto, str):
                raise ValueError(f"protocol {proto!r} must be 'http' or 'tcp'")
            proto = proto.lower()
            if proto not in ("http", "tcp"):
                raise ValueError(f"protocol {proto!r} must be 'http' or 'tcp'")
            out.append((port, proto))
        return tuple(out)

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, value: Any) -> Any:
        out: dict[str, str] = {}
        for k, v in _mapping_or_empty(value, "env must be a mapping of NAME to value").items():
            if not isinstance(k, str) or not k:
                raise ValueError(f"variable name {k!r} must be a non-empty string")
            # Numbers are stringified (env={"N": 1}); None, bools and containers are junk.
            if isinstance(v, bool) or not isinstance(v, str | int | float):
                raise ValueError(f"{k}: value must be a string or a number")
            out[k] = str(v)
        return out

    @field_validator("region_hints", mode="before")
    @classmethod
    def _regions(cls, value: Any) -> Any:
        if isinstance(value, str):
            return (value,)
        if value is None:
            return ()
        if not isinstance(value, list | tuple):
            raise ValueError("must be a region name or a list of region names")
        return tuple(value)


class Port(BaseModel):
    """One exposed port; ``url`` is the proxy URL (http) or ``tcp://ip:port``."""

    internal: int
    external: int | None = None
    protocol: PortProtocol = "http"
    url: str | None = None


class GpuUtilization(BaseModel):
    """Live load of one GPU of a running compute, as the provider last measured it.

    Percentages run 0-100; ``None`` when the provider did not report that figure.
    """

    util_pct: int | None = None
    memory_util_pct: int | None = None


class AuthHandle(BaseModel):
    """Credentials minted for a compute. ``token`` is raw and handed out exactly once."""

    scheme: AuthScheme
    # Secrets stay out of repr()/str(): a Compute printed in a log or a traceback must not
    # leak the bearer token. They are still attributes and still in model_dump().
    token: str | None = Field(default=None, repr=False)
    hash: str | None = None
    header: str | None = Field(default=None, repr=False)


class Compute(BaseModel):
    """A compute resource as a provider reports it."""

    id: str
    provider: str
    status: ComputeStatus = ComputeStatus.PROVISIONING
    public_ip: str | None = None
    ports: list[Port] = Field(default_factory=list)
    gpu_type: str | None = None
    gpu_count: int = 1
    cost_per_hour: float | None = None
    region: str | None = None
    image: str | None = None
    name: str | None = None
    auth: AuthHandle | None = None
    created_at: datetime | None = None
    #: Per-GPU load, one entry per GPU, when the provider reports it (RunPod: running pods);
    #: ``None`` when unknown (not the same as an empty list: no GPUs measured).
    gpu_utilization: list[GpuUtilization] | None = None
    raw: dict[str, Any] = Field(default_factory=dict, repr=False)


class JobRequest(_Request):
    """A serverless job submission."""

    endpoint: str
    input: Any = None
    mode: Literal["async", "sync"] = "async"
    timeout_ms: int = Field(default=90_000, gt=0)
    webhook: str | None = None
    policy: dict[str, Any] | None = None
    provider_opts: dict[str, Any] = Field(default_factory=dict)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if not value:
            raise ValueError("endpoint must not be empty")
        return value


class Job(BaseModel):
    """A serverless job as the provider reports it."""

    id: str
    provider: str
    status: JobStatus = JobStatus.IN_QUEUE
    endpoint: str | None = None
    output: Any = None
    error: Any = None
    execution_time_ms: int | None = None
    delay_time_ms: int | None = None
    raw: dict[str, Any] = Field(default_factory=dict, repr=False)


class GpuType(BaseModel):
    """A catalog entry with prices (``list_gpu_types``)."""

    id: str
    provider: str
    canonical: str | None = None
    display_name: str | None = None
    memory_gb: float | None = None
    lowest_price_per_hour: float | None = None
    spot_price_per_hour: float | None = None
    stock: Literal["high", "medium", "low", "unavailable", "unknown"] = "unknown"
    cloud_type: CloudType = "any"
    raw: dict[str, Any] = Field(default_factory=dict, repr=False)


def _field_name(err: Any) -> str:
    loc = [str(p) for p in err.get("loc", ()) if not isinstance(p, int)] or ["request"]
    return ".".join(loc)


def raise_validation(exc: pydantic.ValidationError) -> ValidationError:
    """Turn a pydantic error into ``AtlasError(kind="validation")`` naming the first field."""
    first = exc.errors()[0]
    field = _field_name(first)
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        msg = "unknown field"
    return validation_error(field, msg)


_RequestT = TypeVar("_RequestT", ComputeRequest, JobRequest)


def build_compute_request(
    request: ComputeRequest | dict[str, Any] | None = None, **fields: Any
) -> ComputeRequest:
    """A :class:`ComputeRequest` from a model, a dict and/or keyword fields (later wins)."""
    return _build_request(ComputeRequest, request, fields, drop_none=False)


def build_job_request(
    request: JobRequest | dict[str, Any] | None = None, **fields: Any
) -> JobRequest:
    """A :class:`JobRequest` from a model, a dict and/or keyword fields (later wins)."""
    # The SDK passes every keyword, unset ones as None: those must not override ``request``.
    return _build_request(JobRequest, request, fields, drop_none=True)


def _build_request(
    model: type[_RequestT],
    request: _RequestT | dict[str, Any] | None,
    fields: dict[str, Any],
    *,
    drop_none: bool,
) -> _RequestT:
    """``model`` from ``request`` (a model or a dict) with ``fields`` merged over it.

    Raises:
        ValidationError: ``request`` is neither, or a field is invalid (named).
    """
    if isinstance(request, model) and not fields:
        return request
    data: dict[str, Any] = {}
    if isinstance(request, model):
        data.update(request.model_dump(exclude_unset=True))
    elif isinstance(request, dict):
        data.update(request)
    elif request is not None:
        raise validation_error("request", f"must be a {model.__name__} or a dict")
    data.update({k: v for k, v in fields.items() if v is not None} if drop_none else fields)
    try:
        # model_validate, not model(**data): a request dict with non-string keys must be a
        # validation error, not a TypeError from the call.
        return model.model_validate(data)
    except ValidationError:
        raise
    except pydantic.ValidationError as exc:
        raise raise_validation(exc) from None
