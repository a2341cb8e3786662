"""Pure translation between atlas specs and Lambda Cloud's wire shapes (no I/O).

Lambda wraps every success in ``{"data": ...}`` and every failure in
``{"error": {"code", "message", "suggestion"?}}`` (reference notes §5.1). Functions here
take and return plain dicts/models so tests need no HTTP; a body we cannot understand
raises ``ProviderError`` (never ``KeyError``/``TypeError``).

Lambda rents whole VMs, not containers. The requested image, env and ports therefore
travel as the launch's ``user_data`` (a cloud-init shell script, see :func:`user_data`)
that writes the env to a root-only file and ``docker run``\\ s the image with it. Lambda
never echoes ``user_data`` back and records no ports, so :func:`instance_to_compute`
reports ports only when the caller passes them (the create answer does, from the
request); every port of a Lambda VM is plain TCP on its public IP.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from atlas_tasks.errors import AtlasError, NotFoundError, ProviderError, validation_error
from atlas_tasks.providers.http import is_maybe_created, mark_maybe_created
from atlas_tasks.providers.translate_common import (
    as_dict,
    as_float,
    as_int,
    drop_none,
    malformed,
    object_with_id,
    refuse_foreign_opts,
    stripped_or_none,
    tcp_port,
)
from atlas_tasks.specs import (
    Compute,
    ComputeRequest,
    ComputeStatus,
    GpuType,
    Port,
)
from atlas_tasks.specs.gpu import lambda_instance_type, lambda_type_info

PROVIDER = "lambda_labs"

#: Lambda instance ``status`` → normalized status. ``unhealthy`` (the VM fails Lambda's
#: health checks) is reported as failed: nothing in it is reachable, and Lambda's fix is a
#: restart or a new instance. It may come back to ``active`` on its own, which later reads
#: then show. Unknown values read as provisioning.
STATUSES: dict[str, ComputeStatus] = {
    "booting": ComputeStatus.PROVISIONING,
    "active": ComputeStatus.RUNNING,
    "unhealthy": ComputeStatus.FAILED,
    "terminating": ComputeStatus.TERMINATED,
    "terminated": ComputeStatus.TERMINATED,
    # Lambda reclaimed the machine: it is gone and no longer bills, like a terminated one;
    # nothing brings it back, so the session must end rather than wait for it.
    "preempted": ComputeStatus.TERMINATED,
}

#: Error ``code`` of a launch Lambda cannot place (no free machine of that type there).
INSUFFICIENT_CAPACITY = "instance-operations/launch/insufficient-capacity"
#: Error ``code`` of an unknown instance (or other object) id.
NOT_FOUND_CODES = frozenset({"global/object-does-not-exist"})

#: ``provider_opts`` keys consumed here rather than merged into the launch body.
CONSUMED_OPTS = frozenset({"ssh_key_name", "docker_args"})

#: Every property of Lambda's ``InstanceLaunchRequest`` (API 1.8.3); the launch body
#: carries nothing else.
LAUNCH_FIELDS = frozenset(
    {
        "region_name",
        "instance_type_name",
        "ssh_key_names",
        "file_system_names",
        "file_system_mounts",
        "hostname",
        "name",
        "image",
        "user_data",
        "tags",
        "firewall_rulesets",
    }
)

#: Launch fields atlas sets from the request; ``provider_opts`` may not set them (the
#: name is how the orchestrator finds its instance again, ``user_data`` carries the
#: injected env such as ``ATLAS_PRESHARED_KEY``).
OWN_LAUNCH_FIELDS = frozenset(
    {"region_name", "instance_type_name", "ssh_key_names", "name", "user_data"}
)

#: ``InstanceLaunchRequest.name``'s ``maxLength``.
MAX_NAME = 64

#: ``provider_opts`` keys passed through to the launch body.
PASS_THROUGH_OPTS = LAUNCH_FIELDS - OWN_LAUNCH_FIELDS

#: Marker lines of the env heredoc inside :func:`user_data` (also read back by
#: :func:`env_from_user_data`).
ENV_FILE = "/etc/atlas/pod.env"
_ENV_MARK = "ATLAS_ENV_EOF"

_COUNT_RE = re.compile(r"^(gpu_)(\d+)(x_.+)$")
_GB_RE = re.compile(r"(\d+(?:\.\d+)?)\s*GB", re.IGNORECASE)


# ---------------------------------------------------------------------------- catalog
def instance_type_name(gpu: str, gpu_count: int) -> str:
    """Lambda's instance type for ``gpu_count`` of a canonical GPU (``gpu_4x_h100_sxm5``).

    Lambda sells whole machines of 1, 2, 4 or 8 GPUs, each size its own type; the catalog
    (:data:`atlas_tasks.specs.gpu.LAMBDA_SIZES`) lists the sizes that exist per GPU.

    Raises:
        ValidationError: field ``gpu`` when Lambda does not offer the GPU, ``gpu_count``
            when it does not sell that many of it.
    """
    return lambda_instance_type(gpu, gpu_count)


def canonical_of_type(type_name: str | None) -> str | None:
    """Canonical GPU of an instance type of any size (``gpu_8x_h100_sxm5`` → ``h100``)."""
    info = lambda_type_info(type_name)
    return info[0] if info else None


def gpus_of_type(type_name: str | None) -> int | None:
    """GPU count encoded in an instance type name, if any."""
    match = _COUNT_RE.match(type_name or "")
    return int(match.group(2)) if match else None


def instance_types(body: Any) -> dict[str, dict[str, Any]]:
    """The ``data`` object of ``GET /instance-types`` (type name → entry).

    Raises:
        ProviderError: the answer has no ``data`` object.
    """
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise malformed(PROVIDER, "instance-types answer has no data object", body)
    return {str(k): v for k, v in data.items() if isinstance(v, dict)}


def regions_with_capacity(entry: dict[str, Any]) -> list[str]:
    """Region names listed in ``regions_with_capacity_available`` of one type entry."""
    regions = entry.get("regions_with_capacity_available")
    if not isinstance(regions, list):
        return []
    names = [r.get("name") if isinstance(r, dict) else r for r in regions]
    return [n for n in names if isinstance(n, str) and n]


def stock_of(region_count: int) -> str:
    """How many regions have capacity → ``GpuType.stock``."""
    if region_count <= 0:
        return "unavailable"
    if region_count == 1:
        return "low"
    if region_count == 2:
        return "medium"
    return "high"


def gpu_type_from_entry(name: str, entry: dict[str, Any]) -> GpuType:
    """One ``/instance-types`` entry → :class:`GpuType` (price per hour of the whole VM)."""
    itype = as_dict(entry.get("instance_type"))
    specs = as_dict(itype.get("specs"))
    cents = as_float(itype.get("price_cents_per_hour"))
    description = stripped_or_none(itype.get("gpu_description")) or stripped_or_none(
        itype.get("description")
    )
    return GpuType(
        id=name,
        provider=PROVIDER,
        canonical=canonical_of_type(name),
        display_name=stripped_or_none(itype.get("description")) or description,
        memory_gb=_memory_gb(description, specs),
        lowest_price_per_hour=None if cents is None else round(cents / 100.0, 4),
        spot_price_per_hour=None,  # Lambda has no spot market
        stock=stock_of(len(regions_with_capacity(entry))),
        cloud_type="secure",  # Lambda's own data centers
        raw={**entry, "name": name},
    )


def gpu_types_from_body(body: Any) -> list[GpuType]:
    """The whole ``GET /instance-types`` answer → catalog, sorted by type name."""
    types = instance_types(body)
    return [gpu_type_from_entry(name, types[name]) for name in sorted(types)]


def _memory_gb(description: str | None, specs: dict[str, Any]) -> float | None:
    # "1x H100 (80 GB PCIe)" → 80 per GPU; fall back to nothing rather than guess.
    match = _GB_RE.search(description or "")
    return float(match.group(1)) if match else None


def choose_region(types: dict[str, dict[str, Any]], type_name: str, hints: tuple[str, ...]) -> str:
    """The region to launch ``type_name`` in: the first hint with capacity, else (no
    hints) the first region with capacity.

    Raises:
        ValidationError: field ``gpu_count`` when Lambda has no such instance type.
        ProviderError: nothing free (message names Lambda's insufficient-capacity code).
    """
    entry = types.get(type_name)
    if entry is None:
        known = ", ".join(sorted(types)) or "none"
        raise validation_error(
            "gpu_count",
            f"Lambda has no instance type {type_name!r}; available: {known}",
            provider=PROVIDER,
        )
    free = regions_with_capacity(entry)
    if hints:
        for hint in hints:
            if hint in free:
                return hint
        raise capacity_error(type_name, hints, free)
    if not free:
        raise capacity_error(type_name, (), free)
    return free[0]


def capacity_error(
    type_name: str, hints: tuple[str, ...], free: list[str], raw: Any = None
) -> ProviderError:
    """The ``provider`` error for "no free machine", naming the type, regions and code."""
    where = f"in {', '.join(hints)}" if hints else "in any region"
    elsewhere = f" (capacity now in: {', '.join(free)})" if hints and free else ""
    return ProviderError(
        f"insufficient capacity: Lambda has no {type_name} free {where}{elsewhere} "
        f"[{INSUFFICIENT_CAPACITY}]",
        provider=PROVIDER,
        status=None,
        raw=raw
        if isinstance(raw, dict)
        else {"instance_type": type_name, "regions": list(hints), "free": free},
    )


# ---------------------------------------------------------------------------- launch
def user_data(request: ComputeRequest) -> str | None:
    """The cloud-init script that runs ``request.image`` on the VM, or None without image.

    The env goes into a root-only env file (``--env-file``) rather than ``-e`` flags, so
    secrets never show in ``ps`` output; ports are published 1:1 (``-p 8000:8000``).
    Extra ``docker run`` flags may be given as ``provider_opts["docker_args"]`` (a list).

    Raises:
        ValidationError: field ``env`` for a name or value Docker's env file cannot carry.
    """
    if not request.image:
        return None
    lines = []
    for key, value in request.env.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise validation_error(
                "env", f"{key!r} is not a valid variable name", provider=PROVIDER
            )
        if "\n" in value or "\r" in value or _ENV_MARK in value:
            raise validation_error("env", f"{key}: value must be a single line", provider=PROVIDER)
        lines.append(f"{key}={value}")
    extra = request.provider_opts.get("docker_args") or []
    if not isinstance(extra, list) or not all(isinstance(a, str) for a in extra):
        raise validation_error(
            "provider_opts.docker_args", "must be a list of strings", provider=PROVIDER
        )
    publish = [f"-p {port}:{port}" for port, _proto in request.ports]
    run = " ".join(
        [
            "docker run -d --restart unless-stopped --gpus all --name atlas-pod",
            f"--env-file {ENV_FILE}",
            *publish,
            *(shlex.quote(a) for a in extra),
            shlex.quote(request.image),
        ]
    )
    return "\n".join(
        [
            "#!/bin/bash",
            "# atlas_tasks: run the requested container on this VM",
            "set -euo pipefail",
            f"install -d -m 700 {ENV_FILE.rsplit('/', 1)[0]}",
            f"umask 077 && cat > {ENV_FILE} <<'{_ENV_MARK}'",
            *lines,
            _ENV_MARK,
            run,
            "",
        ]
    )


def env_from_user_data(script: str | None) -> dict[str, str]:
    """The env written by :func:`user_data` (inverse; for tests and the fake cloud)."""
    if not script:
        return {}
    out: dict[str, str] = {}
    inside = False
    for line in script.splitlines():
        if not inside:
            inside = line.endswith(f"<<'{_ENV_MARK}'")
            continue
        if line == _ENV_MARK:
            break
        key, _, value = line.partition("=")
        out[key] = value
    return out


def launch_opts(request: ComputeRequest) -> dict[str, Any]:
    """The ``provider_opts`` that go into the launch body: keys Lambda's
    ``InstanceLaunchRequest`` has and atlas does not set (:data:`PASS_THROUGH_OPTS`, e.g.
    ``{"file_system_names": ["data"]}``); ``ssh_key_name``/``docker_args`` are consumed
    elsewhere.

    Raises:
        ValidationError: field ``provider_opts`` naming every other key (unknown to
            Lambda, or one atlas sets itself such as ``name`` or ``user_data``).
    """
    opts = {str(k): v for k, v in request.provider_opts.items() if k not in CONSUMED_OPTS}
    refuse_foreign_opts(
        opts,
        owned=OWN_LAUNCH_FIELDS,
        known=LAUNCH_FIELDS,
        unknown_why="not in Lambda's InstanceLaunchRequest",
        allowed=PASS_THROUGH_OPTS | CONSUMED_OPTS,
        provider=PROVIDER,
    )
    return opts


def check_name(request: ComputeRequest) -> None:
    """Refuse a name longer than ``InstanceLaunchRequest.name`` allows.

    Raises:
        ValidationError: field ``name``.
    """
    if request.name is not None and len(request.name) > MAX_NAME:
        raise validation_error(
            "name",
            f"Lambda instance names are at most {MAX_NAME} characters (got {len(request.name)})",
            provider=PROVIDER,
        )


def launch_body(
    request: ComputeRequest, *, type_name: str, region: str, ssh_key_name: str
) -> dict[str, Any]:
    """The ``POST /instance-operations/launch`` body: an ``InstanceLaunchRequest`` and
    nothing else (one instance per call; the schema has no ``quantity``).

    :func:`launch_opts` are merged *below* our fields, so they can never replace the
    name, region, type, SSH key or the ``user_data`` that carries the injected env.

    Raises:
        ValidationError: field ``provider_opts`` (see :func:`launch_opts`).
    """
    check_name(request)
    ours: dict[str, Any] = drop_none(
        {
            "region_name": region,
            "instance_type_name": type_name,
            "ssh_key_names": [ssh_key_name],
            "name": request.name,
            "user_data": user_data(request),
        }
    )
    return {**launch_opts(request), **ours}


def launched_id(body: Any) -> str:
    """The one id in a launch answer ``{"data": {"instance_ids": [id]}}``.

    Raises:
        ProviderError: no id in the answer.
    """
    data = as_dict(body.get("data")) if isinstance(body, dict) else {}
    ids = data.get("instance_ids")
    if not isinstance(ids, list) or not ids or not isinstance(ids[0], str) or not ids[0]:
        raise malformed(PROVIDER, "launch answer has no instance_ids", body)
    return ids[0]


# ---------------------------------------------------------------------------- instances
def instance_to_compute(body: Any, ports: tuple[tuple[int, str], ...] = ()) -> Compute:
    """One Lambda ``Instance`` → :class:`Compute` (``raw`` = the instance).

    Args:
        body: the instance object (``data`` of ``GET /instances/{id}``).
        ports: the ports the workload listens on, when known (the create answer);
            each becomes a TCP port on the VM's IP (Lambda publishes them 1:1).

    Raises:
        ProviderError: not an object, or no id.
    """
    body, instance_id = object_with_id(PROVIDER, body, "instance")
    itype = as_dict(body.get("instance_type"))
    type_name = stripped_or_none(itype.get("name"))
    specs = as_dict(itype.get("specs"))
    ip = stripped_or_none(body.get("ip"))
    cents = as_float(itype.get("price_cents_per_hour"))
    count = as_int(specs.get("gpus"), strings=False) or gpus_of_type(type_name) or 1
    return Compute(
        id=instance_id,
        provider=PROVIDER,
        status=STATUSES.get(str(body.get("status") or "").lower(), ComputeStatus.PROVISIONING),
        public_ip=ip,
        ports=tcp_ports(ip, ports),
        gpu_type=canonical_of_type(type_name) or type_name,
        gpu_count=count,
        cost_per_hour=None if cents is None else round(cents / 100.0, 4),
        region=stripped_or_none(as_dict(body.get("region")).get("name")),
        image=None,  # a VM; the container image lives in user_data, never echoed back
        name=stripped_or_none(body.get("name")),
        created_at=None,  # Lambda reports no creation time
        raw=body,
    )


def tcp_ports(ip: str | None, ports: tuple[tuple[int, str], ...]) -> list[Port]:
    """Requested ports as published 1:1 on the VM: ``tcp://<ip>:<port>`` once the IP is
    known. Reported as ``tcp`` whatever was asked: Lambda has no HTTP proxy, so an http
    service is reached as ``http://<ip>:<port>`` over that same TCP port."""
    return [tcp_port(p, p, ip) for p, _proto in ports]


def instance_from_get(body: Any) -> dict[str, Any]:
    """The ``data`` object of ``GET /instances/{id}``.

    Raises:
        ProviderError: no ``data`` object.
    """
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise malformed(PROVIDER, "instance answer has no data object", body)
    return data


def instances_from_list(body: Any) -> list[dict[str, Any]]:
    """The instances of ``GET /instances`` (``{"data": [...]}``).

    Raises:
        ProviderError: any other shape (an empty list would hide instances from the reaper).
    """
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise malformed(PROVIDER, "instance list has no data array", body)
    return [item for item in data if isinstance(item, dict)]


# ---------------------------------------------------------------------------- errors
def error_code(body: Any) -> str | None:
    """``error.code`` of a Lambda error body, if any."""
    err = body.get("error") if isinstance(body, dict) else None
    code = err.get("code") if isinstance(err, dict) else None
    return code if isinstance(code, str) and code else None


def refine_error(err: AtlasError) -> AtlasError:
    """Make a mapped HTTP error say what Lambda's ``error.code`` means.

    ``global/object-does-not-exist`` becomes ``NotFoundError`` whatever the status (Lambda
    has answered it with 400); every message gains the code and, when present, Lambda's
    ``suggestion``. Capacity failures read ``insufficient capacity: ...``.
    """
    body = err.raw
    code = error_code(body)
    if code is None:
        return err
    inner = as_dict(body.get("error")) if isinstance(body, dict) else {}
    message = str(inner.get("message") or err.message or code)
    suggestion = stripped_or_none(inner.get("suggestion"))
    text = f"{message} [{code}]" + (f"; suggestion: {suggestion}" if suggestion else "")
    if code == INSUFFICIENT_CAPACITY:
        text = f"insufficient capacity: {text}"
        new: AtlasError = ProviderError(text, provider=PROVIDER, status=err.status, raw=body)
    elif code in NOT_FOUND_CODES:
        new = NotFoundError(text, provider=PROVIDER, status=err.status, raw=body)
    else:
        new = AtlasError(text, kind=err.kind, provider=PROVIDER, status=err.status, raw=body)
    return mark_maybe_created(new) if is_maybe_created(err) else new


# ---------------------------------------------------------------------------- helpers
__all__ = [
    "CONSUMED_OPTS",
    "ENV_FILE",
    "INSUFFICIENT_CAPACITY",
    "LAUNCH_FIELDS",
    "MAX_NAME",
    "NOT_FOUND_CODES",
    "OWN_LAUNCH_FIELDS",
    "PASS_THROUGH_OPTS",
    "PROVIDER",
    "STATUSES",
    "canonical_of_type",
    "capacity_error",
    "check_name",
    "choose_region",
    "env_from_user_data",
    "error_code",
    "gpu_type_from_entry",
    "gpu_types_from_body",
    "gpus_of_type",
    "instance_from_get",
    "instance_to_compute",
    "instance_type_name",
    "instance_types",
    "instances_from_list",
    "launch_body",
    "launch_opts",
    "launched_id",
    "refine_error",
    "regions_with_capacity",
    "stock_of",
    "tcp_ports",
    "user_data",
]
