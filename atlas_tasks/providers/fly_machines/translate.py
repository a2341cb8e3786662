"""Pure translation between atlas specs and Fly Machines API shapes (no I/O).

Create body (reference notes §4.1)::

    {"name": ..., "region": <first region hint>,
     "config": {"image": ..., "env": {...},
                "guest": {"cpu_kind": "performance", "cpus": 8, "memory_mb": 32768,
                          "gpu_kind": "a100-sxm4-80gb", "gpus": 1},
                "services": [...], "metadata": {"atlas": "1"}}}

Guest sizing: ComputeRequest has no CPU/memory fields, so they come from ``provider_opts``
(``cpu_kind``, ``cpus``, ``memory_mb``, or a whole ``guest`` object merged last). Defaults
follow Fly's GPU presets (``performance``, 8 CPUs, 32 GB) for a GPU machine and
``shared-cpu-1x`` (256 MB) otherwise. ``memory_mb`` must be a multiple of 256.

Ports become Fly proxy services. Fly routes by *app*, not by machine: every http port is
published on ``<app>.fly.dev``. The first http port takes 443 (TLS + HTTP, plus 80 with
``force_https``) and gets ``url = https://<app>.fly.dev``; later http ports are published
on their own number with TLS (``https://<app>.fly.dev:<port>``). The proxy balances over
every machine of the app publishing that port, so with several machines per app send
``fly-force-instance-id: <machine id>`` to reach a given one. tcp ports are raw services on
their own number; their ``url`` stays ``None`` because a raw TCP service needs a dedicated
public IPv4 the app may not have (inside Fly, use ``private_ip`` from ``raw``).

``provider_opts`` keys atlas consumes: ``app`` (create in another app), ``wait_timeout_s``
(how long create waits for ``started``), ``cpu_kind``/``cpus``/``memory_mb``/``guest``,
``config`` and ``metadata``. Every key must exist in Fly's definition
(``fly-machines-openapi.json`` plus ``fly-supplement.json``) and is merged *below* what
atlas sets, which it may not name at all: top-level keys of ``CreateMachineRequest``
(``skip_launch``, ``lease_ttl``...) but not ``name``/``region``/``config``; ``config``
keys of ``MachineConfig`` (``restart``, ``init``, ``mounts``...) but not ``image``,
``env`` (it carries the injected ``ATLAS_PRESHARED_KEY``), ``guest``, ``services`` or
``metadata``; ``guest`` keys of ``MachineGuest`` but not ``gpu_kind``/``gpus``;
``metadata`` entries, under atlas's own ``atlas`` label. Anything else is a
``ValidationError`` on ``provider_opts`` naming the keys.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from atlas_tasks.errors import validation_error
from atlas_tasks.providers.translate_common import (
    as_dict,
    iso_datetime,
    malformed,
    object_with_id,
    refused_keys,
    str_or_none,
)
from atlas_tasks.specs import (
    Compute,
    ComputeRequest,
    ComputeStatus,
    GpuType,
    Port,
    canonical_for_native,
    for_provider,
    supported_gpus,
)

PROVIDER = "fly"

#: ``gpu_kind`` values Fly accepts (flyctl ``--vm-gpu-kind``; reference notes §4.1).
VALID_GPU_KINDS: frozenset[str] = frozenset(
    {"a100-pcie-40gb", "a100-sxm4-80gb", "l40s", "a10", "none"}
)

#: ``gpu_kind`` → (display name, GPU memory in GB), for :func:`gpu_catalog`.
GPU_KINDS: dict[str, tuple[str, float]] = {
    "a100-pcie-40gb": ("A100 PCIe 40GB", 40.0),
    "a100-sxm4-80gb": ("A100 SXM4 80GB", 80.0),
    "l40s": ("L40S", 48.0),
    "a10": ("A10", 24.0),
}

#: Fly machine state → normalized status; anything else (``creating``, ``stopping``,
#: ``updating``, ``replacing``...) is ``provisioning``: the machine exists and is changing.
MACHINE_STATES: dict[str, ComputeStatus] = {
    "created": ComputeStatus.PROVISIONING,
    "starting": ComputeStatus.PROVISIONING,
    "started": ComputeStatus.RUNNING,
    "stopped": ComputeStatus.STOPPED,
    "suspended": ComputeStatus.STOPPED,
    "destroying": ComputeStatus.TERMINATED,
    "destroyed": ComputeStatus.TERMINATED,
    "failed": ComputeStatus.FAILED,
    "launch_failed": ComputeStatus.FAILED,
}

#: Metadata put on every machine atlas creates (lets operators tell them apart).
ATLAS_METADATA: dict[str, str] = {"atlas": "1"}

#: Guest defaults: Fly's GPU presets (performance-8x, 32 GB) and shared-cpu-1x.
GPU_GUEST_DEFAULTS: dict[str, Any] = {"cpu_kind": "performance", "cpus": 8, "memory_mb": 32768}
CPU_GUEST_DEFAULTS: dict[str, Any] = {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256}

#: provider_opts keys that are atlas options, never sent as such.
ATLAS_OPTS: frozenset[str] = frozenset(
    {"app", "wait_timeout_s", "cpu_kind", "cpus", "memory_mb", "guest", "config", "metadata"}
)

#: ``CreateMachineRequest`` properties (definition + supplement's ``create_fields_added``).
CREATE_FIELDS: frozenset[str] = frozenset(
    {
        "config",
        "lease_ttl",
        "lsvd",
        "name",
        "region",
        "skip_launch",
        "skip_service_registration",
        "skip_secrets",
        "min_secrets_version",
    }
)
#: ``MachineConfig`` properties (definition + supplement's ``config_fields_added``).
CONFIG_FIELDS: frozenset[str] = frozenset(
    {
        "auto_destroy",
        "checks",
        "disable_machine_autostart",
        "dns",
        "env",
        "files",
        "guest",
        "image",
        "init",
        "metadata",
        "metrics",
        "mounts",
        "processes",
        "restart",
        "schedule",
        "services",
        "size",
        "standbys",
        "statics",
        "stop_config",
        "containers",
        "volumes",
        "rootfs",
        "cache_drive",
        "spot",
    }
)
#: ``MachineGuest`` properties (definition + supplement's ``guest_fields_added``).
GUEST_FIELDS: frozenset[str] = frozenset(
    {
        "cpu_kind",
        "cpus",
        "gpu_kind",
        "host_dedication_id",
        "kernel_args",
        "memory_mb",
        "gpus",
        "max_memory_mb",
        "persist_rootfs",
    }
)
#: What atlas sets itself, per level; ``provider_opts`` may not name these.
OWN_CREATE_FIELDS: frozenset[str] = frozenset({"config", "name", "region"})
OWN_CONFIG_FIELDS: frozenset[str] = frozenset({"image", "env", "guest", "services", "metadata"})
OWN_GUEST_FIELDS: frozenset[str] = frozenset({"gpu_kind", "gpus"})

#: Fly app names: lowercase letters, digits and dashes (what ``fly apps create`` accepts).
_APP_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
#: Machine ids are hex strings; ``/`` and ``?`` must never reach a URL path unescaped.
_MACHINE_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

PUBLIC_HOST = "{app}.fly.dev"


# ---------------------------------------------------------------------------- ids and apps
def check_app(app: Any, field: str = "app") -> str:
    """``app`` if it is a valid Fly app name.

    Raises:
        ValidationError: naming ``field``.
    """
    if not isinstance(app, str) or not _APP_RE.match(app):
        raise validation_error(
            field,
            f"{app!r} is not a Fly app name (lowercase letters, digits, dashes)",
            provider=PROVIDER,
        )
    return app


def split_compute_id(compute_id: Any, default_app: str | None) -> tuple[str | None, str]:
    """``(app, machine_id)`` of a compute id.

    Ids are the bare machine id for machines of the provider's app, and
    ``"<app>/<machine id>"`` for machines created in another app (``provider_opts["app"]``),
    so that every id a provider hands out works with that provider again. ``app`` is
    ``default_app`` for a bare id (may be ``None``: the caller reports the missing app).

    Raises:
        ValidationError: field ``compute_id`` when the id is empty or malformed.
    """
    if not isinstance(compute_id, str) or not compute_id.strip():
        raise validation_error("compute_id", "must be a non-empty string", provider=PROVIDER)
    text = compute_id.strip()
    app: str | None = default_app
    machine_id = text
    if "/" in text:
        app_part, _, machine_id = text.partition("/")
        app = check_app(app_part, "compute_id")
    if not _MACHINE_RE.match(machine_id):
        raise validation_error(
            "compute_id", f"{compute_id!r} is not a Fly machine id", provider=PROVIDER
        )
    return app, machine_id


def compute_id_for(app: str, machine_id: str, default_app: str | None) -> str:
    """The compute id to hand out for ``machine_id`` of ``app`` (see :func:`split_compute_id`)."""
    return machine_id if app == default_app else f"{app}/{machine_id}"


def atlas_options(request: ComputeRequest) -> tuple[str | None, float | None]:
    """``(app, wait_timeout_s)`` from ``request.provider_opts`` (``None`` when absent).

    Raises:
        ValidationError: ``provider_opts.app`` or ``provider_opts.wait_timeout_s`` is bad.
    """
    opts = request.provider_opts
    app = opts.get("app")
    if app is not None:
        app = check_app(app, "provider_opts.app")
    wait = opts.get("wait_timeout_s")
    if wait is not None:
        if isinstance(wait, bool) or not isinstance(wait, int | float) or wait < 0:
            raise validation_error(
                "provider_opts.wait_timeout_s",
                "must be a number of seconds >= 0",
                provider=PROVIDER,
            )
        wait = float(wait)
    return app, wait


# ---------------------------------------------------------------------------- create
def machine_create_body(request: ComputeRequest) -> dict[str, Any]:
    """The ``POST /v1/apps/{app}/machines`` body for a request.

    Raises:
        ValidationError: a missing image, a GPU Fly does not offer, bad guest sizing, ports
            that collide on the public side, or a field Fly Machines cannot honour
            (``spot``, ``template_id``, ``network_volume_id``, ``volume_gb``,
            ``container_disk_gb``).
    """
    _reject_unsupported(request)
    if not request.image:
        raise validation_error(
            "image", "required (Fly Machines have no templates)", provider=PROVIDER
        )
    opts = request.provider_opts
    top = {str(k): v for k, v in opts.items() if k not in ATLAS_OPTS}
    _check_keys(
        "provider_opts",
        top,
        CREATE_FIELDS,
        OWN_CREATE_FIELDS,
        "use name=, region_hints= and the other request fields",
    )
    extra_config = _mapping(opts.get("config"), "config")
    _check_keys(
        "provider_opts.config",
        extra_config,
        CONFIG_FIELDS,
        OWN_CONFIG_FIELDS,
        "use image=, env=, ports=, provider_opts.guest / .metadata",
    )
    config: dict[str, Any] = {
        **extra_config,
        "image": request.image,
        "guest": guest_for(request),
        "metadata": {**_mapping(opts.get("metadata"), "metadata"), **ATLAS_METADATA},
    }
    if request.env:
        config["env"] = dict(request.env)
    services = services_for(request.ports)
    if services:
        config["services"] = services
    body: dict[str, Any] = {**top, "config": config}
    if request.name:
        body["name"] = request.name
    if request.region_hints:
        body["region"] = request.region_hints[0]
    return body


def _check_keys(
    field: str, given: dict[str, Any], allowed: frozenset[str], owned: frozenset[str], hint: str
) -> None:
    """Reject keys Fly's definition lacks and keys atlas sets itself (naming them)."""
    problem = refused_keys(
        given,
        owned=owned,
        known=allowed,
        owned_why=f"({hint})",
        unknown_why="not in Fly's definition",
    )
    if problem:
        raise validation_error(field, problem, provider=PROVIDER)


def guest_for(request: ComputeRequest) -> dict[str, Any]:
    """``config.guest``: sizing defaults, ``provider_opts`` overrides, then the GPU.

    Raises:
        ValidationError: ``gpu`` not offered by Fly; ``provider_opts.<key>`` for a bad
            ``cpu_kind``, ``cpus`` or ``memory_mb`` (not a positive multiple of 256), or a
            GPU machine asked for on shared CPUs.
    """
    opts = request.provider_opts
    guest = dict(GPU_GUEST_DEFAULTS if request.gpu else CPU_GUEST_DEFAULTS)
    for key in ("cpu_kind", "cpus", "memory_mb"):
        if opts.get(key) is not None:
            guest[key] = opts[key]
    extra_guest = _mapping(opts.get("guest"), "guest")
    _check_keys(
        "provider_opts.guest",
        extra_guest,
        GUEST_FIELDS,
        OWN_GUEST_FIELDS,
        "use gpu= and gpu_count=",
    )
    guest.update(extra_guest)
    if request.gpu:
        guest["gpu_kind"] = for_provider(request.gpu, PROVIDER)
        guest["gpus"] = request.gpu_count
    if guest.get("cpu_kind") not in ("shared", "performance"):
        raise validation_error(
            "provider_opts.cpu_kind", "must be 'shared' or 'performance'", provider=PROVIDER
        )
    cpus = guest.get("cpus")
    if isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1:
        raise validation_error("provider_opts.cpus", "must be an integer >= 1", provider=PROVIDER)
    memory = guest.get("memory_mb")
    if isinstance(memory, bool) or not isinstance(memory, int) or memory < 256 or memory % 256:
        raise validation_error(
            "provider_opts.memory_mb",
            f"must be a positive multiple of 256 (got {memory!r})",
            provider=PROVIDER,
        )
    if request.gpu and guest["cpu_kind"] != "performance":
        raise validation_error(
            "provider_opts.cpu_kind", "GPU machines need cpu_kind 'performance'", provider=PROVIDER
        )
    return guest


def services_for(ports: tuple[tuple[int, str], ...]) -> list[dict[str, Any]]:
    """Fly proxy services for ``ports`` (see the module docstring for the public ports).

    Raises:
        ValidationError: field ``ports`` when two ports would be published on one number.
    """
    services: list[dict[str, Any]] = []
    used: set[int] = set()
    first_http = True
    for internal, proto in ports:
        if proto == "http" and first_http:
            first_http = False
            published = [443, 80]
            public: list[dict[str, Any]] = [
                {"port": 443, "handlers": ["tls", "http"]},
                {"port": 80, "handlers": ["http"], "force_https": True},
            ]
        elif proto == "http":
            published = [internal]
            public = [{"port": internal, "handlers": ["tls", "http"]}]
        else:
            published = [internal]
            public = [{"port": internal}]  # no handlers: raw TCP passthrough
        clash = used.intersection(published)
        if clash:
            raise validation_error(
                "ports",
                f"port {sorted(clash)[0]} would be published twice on Fly "
                "(the first http port takes 443 and 80)",
                provider=PROVIDER,
            )
        used.update(published)
        services.append({"protocol": "tcp", "internal_port": internal, "ports": public})
    return services


def _reject_unsupported(request: ComputeRequest) -> None:
    checks = (
        ("spot", request.spot, "Fly Machines have no spot/interruptible instances"),
        ("template_id", request.template_id, "Fly Machines have no templates; pass image"),
        (
            "network_volume_id",
            request.network_volume_id,
            "Fly volumes are not managed by atlas yet",
        ),
        ("volume_gb", request.volume_gb, "Fly volumes are not managed by atlas yet"),
        (
            "container_disk_gb",
            request.container_disk_gb,
            "Fly sizes the root filesystem from the image",
        ),
    )
    for field, value, why in checks:
        if value:
            raise validation_error(field, f"not supported on Fly: {why}", provider=PROVIDER)


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise validation_error(f"provider_opts.{key}", "must be an object", provider=PROVIDER)
    return {str(k): v for k, v in value.items()}


# ---------------------------------------------------------------------------- responses
def machine_status(state: Any) -> ComputeStatus:
    """Fly ``state`` → normalized status (unknown or missing → provisioning)."""
    return MACHINE_STATES.get(str(state or "").lower(), ComputeStatus.PROVISIONING)


def machine_to_compute(body: Any, app: str, default_app: str | None = None) -> Compute:
    """Normalize one Machine into a :class:`Compute` (``raw`` = the body plus ``app``).

    Args:
        body: the Machine object.
        app: the app the machine belongs to (Machines do not name their app).
        default_app: the provider's app; ids of machines of other apps carry their app.

    Raises:
        ProviderError: the body is not an object or has no id.
    """
    body, machine_id = object_with_id(PROVIDER, body, "machine")
    config = as_dict(body.get("config"))
    guest = as_dict(config.get("guest"))
    gpu_kind = str_or_none(guest.get("gpu_kind"))
    if gpu_kind == "none":
        gpu_kind = None
    gpus = guest.get("gpus")
    gpu_count = (
        gpus
        if isinstance(gpus, int) and not isinstance(gpus, bool) and gpus >= 0
        else (1 if gpu_kind else 0)
    )
    return Compute(
        id=compute_id_for(app, machine_id, default_app if default_app is not None else app),
        provider=PROVIDER,
        status=machine_status(body.get("state")),
        public_ip=None,  # Fly machines have no public IP of their own; the app has
        ports=parse_ports(config.get("services"), app),
        gpu_type=(canonical_for_native(PROVIDER, gpu_kind) or gpu_kind) if gpu_kind else None,
        gpu_count=gpu_count,
        cost_per_hour=None,  # the Machines API reports no price
        region=str_or_none(body.get("region")),
        image=str_or_none(config.get("image")) or _image_ref(body.get("image_ref")),
        name=str_or_none(body.get("name")),
        created_at=parse_time(body.get("created_at")),
        raw={**body, "app": app},
    )


def machines_from_list(body: Any) -> list[dict[str, Any]]:
    """The machines of a ``GET /v1/apps/{app}/machines`` answer (a bare array).

    Raises:
        ProviderError: any other shape (an empty list would hide machines from the reaper).
    """
    if body is None:
        return []
    if not isinstance(body, list):
        raise malformed(PROVIDER, "machine list is not an array", body)
    return body


def parse_ports(services: Any, app: str) -> list[Port]:
    """Ports from ``config.services`` (see the module docstring for the URLs)."""
    out: list[Port] = []
    if not isinstance(services, list):
        return out
    host = PUBLIC_HOST.format(app=app)
    for service in services:
        if not isinstance(service, dict):
            continue
        internal = _int(service.get("internal_port"))
        if internal is None:
            continue
        public = [p for p in service.get("ports") or [] if isinstance(p, dict)]
        http = [p for p in public if "http" in (p.get("handlers") or [])]
        if http:
            chosen = _pick_http(http)
            number = _int(chosen.get("port"))
            tls = "tls" in (chosen.get("handlers") or [])
            out.append(
                Port(
                    internal=internal,
                    external=number,
                    protocol="http",
                    url=_http_url(host, number, tls),
                )
            )
        else:
            number = _int(public[0].get("port")) if public else None
            out.append(Port(internal=internal, external=number, protocol="tcp", url=None))
    return out


def _pick_http(ports: list[dict[str, Any]]) -> dict[str, Any]:
    for port in ports:
        if _int(port.get("port")) == 443:
            return port
    for port in ports:
        if "tls" in (port.get("handlers") or []):
            return port
    return ports[0]


def _http_url(host: str, number: int | None, tls: bool) -> str:
    scheme = "https" if tls else "http"
    default = 443 if tls else 80
    if number is None or number == default:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{number}"


def parse_time(value: Any) -> datetime | None:
    """An aware datetime from Fly's ISO 8601 (``2024-01-02T03:04:05Z``); ``None`` if absent."""
    if not isinstance(value, str) or not value.strip():
        return None
    return iso_datetime(value.strip().replace("Z", "+00:00"))


def gpu_catalog() -> list[GpuType]:
    """Fly's GPU kinds as :class:`GpuType` entries, from atlas's catalog.

    The Machines API has no catalog or price endpoint, so prices and stock are unknown.
    """
    out = []
    for canonical in supported_gpus(PROVIDER):
        kind = for_provider(canonical, PROVIDER)
        display, memory = GPU_KINDS.get(kind, (kind, None))
        out.append(
            GpuType(
                id=kind,
                provider=PROVIDER,
                canonical=canonical,
                display_name=display,
                memory_gb=memory,
                stock="unknown",
                cloud_type="secure",
            )
        )
    return out


# ---------------------------------------------------------------------------- helpers
def _image_ref(value: Any) -> str | None:
    ref = as_dict(value)
    repository = str_or_none(ref.get("repository"))
    if not repository:
        return None
    tag = str_or_none(ref.get("tag"))
    registry = str_or_none(ref.get("registry"))
    name = f"{registry}/{repository}" if registry else repository
    return f"{name}:{tag}" if tag else name


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


__all__ = [
    "CONFIG_FIELDS",
    "CREATE_FIELDS",
    "GUEST_FIELDS",
    "OWN_CONFIG_FIELDS",
    "OWN_CREATE_FIELDS",
    "OWN_GUEST_FIELDS",
    "ATLAS_METADATA",
    "ATLAS_OPTS",
    "CPU_GUEST_DEFAULTS",
    "GPU_GUEST_DEFAULTS",
    "GPU_KINDS",
    "MACHINE_STATES",
    "PUBLIC_HOST",
    "VALID_GPU_KINDS",
    "atlas_options",
    "check_app",
    "compute_id_for",
    "gpu_catalog",
    "guest_for",
    "machine_create_body",
    "machine_status",
    "machine_to_compute",
    "machines_from_list",
    "parse_ports",
    "parse_time",
    "services_for",
    "split_compute_id",
]
