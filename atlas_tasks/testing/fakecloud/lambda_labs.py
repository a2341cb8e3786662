"""Lambda Cloud API v1 (``https://cloud.lambda.ai/api/v1``) served under
``/lambda/api/v1``, with the shared auth, fault injection and counting of :mod:`.common`.

Wire format as Lambda's OpenAPI definition 1.8.3 gives it (``../shared/reference/specs/
lambda-cloud-openapi-1.8.3.json``; ``tests/contract/test_lambda_contract.py`` holds this
module to it): successes are ``{"data": ...}``, failures ``{"error": {"code", "message",
"suggestion"?}}``, 401 included (only injected faults keep the fake cloud's generic
``{"error": "..."}``, on statuses the definition does not describe). Instances carry the
required ``actions``; fields the definition types as plain strings (``ip``,
``private_ip``, ``name``, ``jupyter_url``) are left out rather than sent as ``null``.
Launch validates like the real API: only ``InstanceLaunchRequest`` fields (else 400
``global/invalid-parameters``), exactly one *registered* SSH key, a known region and
instance type, capacity in that region (else ``instance-operations/launch/
insufficient-capacity``). Instances boot (``booting``) for ``boot_delay_s``, then are
``active``; terminate makes them ``terminating`` for :data:`TERMINATING_S`, after which
they are gone (404 ``global/object-does-not-exist``), as on Lambda.

The account has one SSH key, :data:`DEFAULT_SSH_KEY`; ``POST /ssh-keys`` adds more.

Test controls (no auth, no faults)::

    POST /_admin/lambda_labs/instances/{id}/age      {"seconds": N}
    POST /_admin/lambda_labs/instances/{id}/status   {"status": "unhealthy"}  (or
                                                     "preempted", "active", "booting", null)
    POST /_admin/lambda_labs/capacity                {"instance_type": ..., "regions": [...]}
"""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from atlas_tasks.testing.fakecloud.common import (
    FakeCloudContext,
    RouteSpec,
    context_state,
    json_body_or,
    number_field,
    provider_routes,
)

PREFIX = "/lambda/api/v1"
ADMIN_PREFIX = "/_admin/lambda_labs"

#: The SSH key every fake account starts with (``ATLAS_LAMBDA_LABS_SSH_KEY_NAME``).
DEFAULT_SSH_KEY = "atlas-fakecloud"

#: Seconds a terminated instance stays listed as ``terminating``.
TERMINATING_S = 1.0

#: Largest ``user_data`` Lambda accepts (1 MiB).
MAX_USER_DATA = 1024 * 1024

REGIONS: dict[str, str] = {
    "us-east-1": "Virginia, USA",
    "us-west-1": "California, USA",
    "us-west-2": "Arizona, USA",
    "us-south-1": "Texas, USA",
    "europe-central-1": "Germany",
}


@dataclass(frozen=True)
class FakeInstanceType:
    """One instance type of the fake catalog."""

    name: str
    description: str
    gpu_description: str
    price_cents: int
    gpus: int
    vcpus: int
    memory_gib: int
    storage_gib: int
    regions: tuple[str, ...]

    def to_api(self) -> dict[str, Any]:
        """The ``instance_type`` object."""
        return {
            "name": self.name,
            "description": self.description,
            "gpu_description": self.gpu_description,
            "price_cents_per_hour": self.price_cents,
            "specs": {
                "vcpus": self.vcpus,
                "memory_gib": self.memory_gib,
                "storage_gib": self.storage_gib,
                "gpus": self.gpus,
            },
        }


#: Real Lambda instance types (names from ``lambda-instance-types.json``), with capacity.
INSTANCE_TYPES: tuple[FakeInstanceType, ...] = (
    FakeInstanceType(
        "gpu_1x_h100_sxm5",
        "1x H100 (80 GB SXM5)",
        "H100 (80 GB SXM5)",
        329,
        1,
        26,
        225,
        2867,
        ("us-east-1", "us-west-1"),
    ),
    FakeInstanceType(
        "gpu_2x_h100_sxm5",
        "2x H100 (80 GB SXM5)",
        "H100 (80 GB SXM5)",
        658,
        2,
        52,
        450,
        5734,
        ("us-east-1",),
    ),
    FakeInstanceType(
        "gpu_8x_h100_sxm5",
        "8x H100 (80 GB SXM5)",
        "H100 (80 GB SXM5)",
        2392,
        8,
        208,
        1800,
        24780,
        ("us-east-1",),
    ),
    FakeInstanceType(
        "gpu_1x_h100_pcie", "1x H100 (80 GB PCIe)", "H100 (80 GB PCIe)", 249, 1, 26, 200, 1024, ()
    ),  # sold out everywhere
    FakeInstanceType(
        "gpu_8x_a100_80gb_sxm4",
        "8x A100 (80 GB SXM4)",
        "A100 (80 GB SXM4)",
        1432,
        8,
        240,
        1800,
        19500,
        ("us-west-2",),
    ),
    FakeInstanceType(
        "gpu_1x_a100_sxm4",
        "1x A100 (40 GB SXM4)",
        "A100 (40 GB SXM4)",
        129,
        1,
        30,
        200,
        512,
        ("us-west-2", "us-east-1"),
    ),
    FakeInstanceType(
        "gpu_1x_a10",
        "1x A10 (24 GB PCIe)",
        "A10 (24 GB PCIe)",
        75,
        1,
        30,
        200,
        1400,
        ("us-east-1", "us-west-1", "europe-central-1"),
    ),
    FakeInstanceType(
        "gpu_1x_a6000", "1x A6000 (48 GB)", "A6000 (48 GB)", 80, 1, 14, 46, 512, ("us-south-1",)
    ),
    FakeInstanceType(
        "gpu_1x_rtx6000",
        "1x RTX 6000 (24 GB)",
        "RTX 6000 (24 GB)",
        50,
        1,
        14,
        46,
        512,
        ("us-west-1",),
    ),
    FakeInstanceType(
        "gpu_1x_gh200", "1x GH200 (96 GB)", "GH200 (96 GB)", 149, 1, 64, 432, 4096, ("us-west-1",)
    ),
)

#: Every property of ``InstanceLaunchRequest``; anything else is a 400.
_LAUNCH_FIELDS = frozenset(
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

#: ``InstanceLaunchRequest.hostname``'s pattern.
_HOSTNAME = re.compile(r"^[a-z0-9][0-9a-z-]{0,62}$")

#: Statuses ``/_admin/lambda_labs/instances/{id}/status`` may force.
_FORCEABLE = (None, "unhealthy", "active", "booting", "preempted")


@dataclass
class FakeLambdaInstance:
    """One fake VM."""

    id: str
    name: str | None
    type_name: str
    region: str
    ssh_key_names: list[str]
    file_system_names: list[str]
    user_data: str | None
    created_at: float
    boot_until: float
    ip: str
    private_ip: str
    terminated_at: float | None = None
    forced_status: str | None = None
    calls: Counter[str] = field(default_factory=Counter)

    def status(self, now: float) -> str:
        """``booting``, ``active``, ``unhealthy``, ``preempted``, ``terminating`` or
        ``terminated``."""
        if self.terminated_at is not None:
            return "terminating" if now < self.terminated_at + TERMINATING_S else "terminated"
        if self.forced_status:
            return self.forced_status
        return "booting" if now < self.boot_until else "active"

    def to_api(self, now: float, itype: FakeInstanceType) -> dict[str, Any]:
        """The ``Instance`` object Lambda returns (no ``user_data``: Lambda never echoes it).

        Fields the definition types as non-nullable strings are omitted when unknown (no
        IP before boot, no name when none was given); ``actions`` is required.
        """
        status = self.status(now)
        up = status in ("active", "unhealthy")
        body: dict[str, Any] = {
            "id": self.id,
            "status": status,
            "ssh_key_names": list(self.ssh_key_names),
            "file_system_names": list(self.file_system_names),
            "region": {"name": self.region, "description": REGIONS[self.region]},
            "instance_type": itype.to_api(),
            "hostname": f"{self.ip.replace('.', '-')}.cloud.lambda.ai",
            "jupyter_token": self.id[:16],
            "actions": _actions(status),
        }
        if self.name is not None:
            body["name"] = self.name
        if up:
            body["ip"] = self.ip
            body["private_ip"] = self.private_ip
            body["jupyter_url"] = (
                f"https://jupyter-{self.id[:12]}.lambdaspaces.com/?token={self.id[:16]}"
            )
        return body

    def admin_view(self, now: float) -> dict[str, Any]:
        """Compact record for ``/_admin/state`` (includes ``user_data`` for tests)."""
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status(now),
            "instance_type": self.type_name,
            "region": self.region,
            "created_at": self.created_at,
            "user_data": self.user_data,
            "calls": dict(self.calls),
        }


def _actions(status: str) -> dict[str, dict[str, Any]]:
    """``InstanceActionAvailability`` for a status: everything while the VM is up,
    nothing (with Lambda's reason fields) once it is booting or going away."""
    up = status in ("active", "unhealthy")

    def one(available: bool) -> dict[str, Any]:
        if available:
            return {"available": True}
        return {
            "available": False,
            "reason_code": f"vm-{status}",
            "reason_description": f"The instance is {status}.",
        }

    return {
        "migrate": one(False),
        "rebuild": one(up),
        "restart": one(up),
        "cold_reboot": one(up),
        "terminate": one(status not in ("terminating", "terminated")),
    }


class LambdaState:
    """Instances, SSH keys and capacity of the fake Lambda account."""

    def __init__(self) -> None:
        self.instances: dict[str, FakeLambdaInstance] = {}
        self.ssh_keys: dict[str, dict[str, str]] = {}
        self.capacity: dict[str, tuple[str, ...]] = {}
        self.totals: Counter[str] = Counter()
        self._ips = 0
        self.reset()

    def reset(self) -> None:
        """Back to one SSH key, catalog capacity and no instances."""
        self.instances.clear()
        self.totals.clear()
        self.ssh_keys = {
            DEFAULT_SSH_KEY: {
                "id": uuid.uuid4().hex,
                "name": DEFAULT_SSH_KEY,
                "public_key": "ssh-ed25519 AAAAC3Nza fake",
            }
        }
        self.capacity = {t.name: t.regions for t in INSTANCE_TYPES}
        self._ips = 0

    def next_ip(self) -> tuple[str, str]:
        """A public (TEST-NET-3) and a private address."""
        self._ips += 1
        n = self._ips % 250 + 2
        return f"198.51.100.{n}", f"10.19.{self._ips // 250}.{n}"

    def live(self, instance_id: str, now: float) -> FakeLambdaInstance | None:
        """The instance unless unknown or fully terminated (what the API can see)."""
        inst = self.instances.get(instance_id)
        if inst is None or inst.status(now) == "terminated":
            return None
        return inst


_TYPES = {t.name: t for t in INSTANCE_TYPES}
_STATE_ATTR = "_lambda_labs_state"


def state_of(ctx: FakeCloudContext) -> LambdaState:
    """The Lambda state of a fake cloud (kept on its context, created on first use)."""
    return context_state(ctx, _STATE_ATTR, LambdaState, LambdaState)


def snapshot(ctx: FakeCloudContext) -> dict[str, Any]:
    """The ``lambda_labs`` part of ``/_admin/state``."""
    store, now = state_of(ctx), time.time()
    with ctx.state.lock:
        views = [i.admin_view(now) for i in store.instances.values()]
        return {
            "instances": [v for v in views if v["status"] not in ("terminating", "terminated")],
            "terminated_instances": [
                v for v in views if v["status"] in ("terminating", "terminated")
            ],
            "ssh_keys": sorted(store.ssh_keys),
            "totals": dict(store.totals),
        }


def reset(ctx: FakeCloudContext) -> None:
    """Forget every Lambda instance (part of ``/_admin/reset``)."""
    with ctx.state.lock:
        state_of(ctx).reset()


def age_instance(ctx: FakeCloudContext, instance_id: str, seconds: float) -> bool:
    """Backdate an instance's creation (and boot) by ``seconds``; False if unknown."""
    with ctx.state.lock:
        inst = state_of(ctx).instances.get(instance_id)
        if inst is None:
            return False
        inst.created_at -= seconds
        inst.boot_until -= seconds
        return True


def lambda_error(
    status: int, code: str, message: str, suggestion: str | None = None
) -> JSONResponse:
    """Lambda's error body."""
    err: dict[str, str] = {"code": code, "message": message}
    if suggestion:
        err["suggestion"] = suggestion
    return JSONResponse({"error": err}, status_code=status)


def _invalid(message: str) -> JSONResponse:
    return lambda_error(400, "global/invalid-parameters", message)


def _not_found(what: str) -> JSONResponse:
    return lambda_error(404, "global/object-does-not-exist", f"{what} does not exist")


async def _body(request: Request) -> tuple[Any, JSONResponse | None]:
    return await json_body_or(request, _invalid)


async def _instance_ids(request: Request) -> tuple[list[str], JSONResponse | None]:
    """The ``instance_ids`` of a terminate or restart body, or Lambda's 400 answer."""
    body, problem = await _body(request)
    if problem is not None:
        return [], problem
    ids = body.get("instance_ids") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        return [], _invalid("instance_ids: a non-empty array of instance ids is required")
    return ids, None


def validate_launch(body: Any, store: LambdaState, strict: bool) -> JSONResponse | None:
    """None when the launch body is acceptable, else Lambda's 400 answer."""
    if not isinstance(body, dict):
        return _invalid("request body must be a JSON object")
    if strict:
        unknown = sorted(set(body) - _LAUNCH_FIELDS)
        if unknown:
            return _invalid(f"unknown field(s): {', '.join(unknown)}")
    region, type_name = body.get("region_name"), body.get("instance_type_name")
    missing = [f for f in ("region_name", "instance_type_name", "ssh_key_names") if f not in body]
    if missing:  # InstanceLaunchRequest's required fields
        return _invalid(f"{', '.join(missing)}: required")
    if not isinstance(region, str) or region not in REGIONS:
        return _invalid(f"region_name: unknown region {region!r}")
    if not isinstance(type_name, str) or type_name not in _TYPES:
        return _invalid(f"instance_type_name: unknown instance type {type_name!r}")
    keys = body.get("ssh_key_names")
    if not isinstance(keys, list) or len(keys) != 1 or not isinstance(keys[0], str):
        return _invalid("ssh_key_names: currently, exactly one SSH key must be specified")
    if keys[0] not in store.ssh_keys:
        return _invalid(f"ssh_key_names: SSH key {keys[0]!r} does not exist")
    fs = body.get("file_system_names", [])
    if not isinstance(fs, list) or len(fs) > 1 or not all(isinstance(f, str) for f in fs):
        return _invalid("file_system_names: at most one file system name")
    hostname = body.get("hostname")
    if hostname is not None and (not isinstance(hostname, str) or not _HOSTNAME.match(hostname)):
        return _invalid("hostname: must match ^[a-z0-9][0-9a-z-]{0,62}$")
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > 64):
        return _invalid("name: must be a string of at most 64 characters")
    user_data = body.get("user_data")
    if user_data is not None and (
        not isinstance(user_data, str) or len(user_data.encode()) > MAX_USER_DATA
    ):
        return _invalid("user_data: must be a string of at most 1 MiB")
    if region not in store.capacity.get(type_name, ()):
        return lambda_error(
            400,
            "instance-operations/launch/insufficient-capacity",
            "Not enough capacity to fulfill launch request.",
            "Choose an instance type with more availability, or try again later.",
        )
    return None


def _lambda_401(route: Route) -> Route:
    """``route`` with the shared auth's 401 re-shaped as Lambda's ``ApiErrorUnauthorized``
    (the definition requires ``error.code``/``message``/``suggestion`` on every 401)."""
    inner = route.endpoint

    async def endpoint(request: Request) -> Response:
        response: Response = await inner(request)
        if response.status_code == 401:
            return lambda_error(
                401,
                "global/invalid-api-key",
                "API key was invalid, expired, or deleted.",
                "Check your API key or create a new one, then try again.",
            )
        return response

    return Route(route.path, endpoint, methods=sorted(route.methods or ()))


def build_routes(ctx: FakeCloudContext) -> list[Route]:
    """The Lambda API routes and their admin controls, bound to ``ctx``."""
    store = state_of(ctx)
    lock = ctx.state.lock

    async def instance_types(request: Request) -> Response:
        with lock:
            data = {
                t.name: {
                    "instance_type": t.to_api(),
                    "regions_with_capacity_available": [
                        {"name": r, "description": REGIONS[r]}
                        for r in store.capacity.get(t.name, ())
                    ],
                }
                for t in INSTANCE_TYPES
            }
        return JSONResponse({"data": data})

    async def launch(request: Request) -> Response:
        body, problem = await _body(request)
        if problem is not None:
            return problem
        with lock:
            problem = validate_launch(body, store, ctx.config.strict_fields)
            if problem is not None:
                return problem
            now = time.time()
            # InstanceLaunchRequest has no quantity: one instance per launch.
            ip, private_ip = store.next_ip()
            inst = FakeLambdaInstance(
                id=uuid.uuid4().hex,
                name=body.get("name"),
                type_name=body["instance_type_name"],
                region=body["region_name"],
                ssh_key_names=list(body["ssh_key_names"]),
                file_system_names=list(body.get("file_system_names", [])),
                user_data=body.get("user_data"),
                created_at=now,
                boot_until=now + ctx.config.boot_delay_s,
                ip=ip,
                private_ip=private_ip,
            )
            inst.calls["launches"] += 1
            store.instances[inst.id] = inst
            store.totals["launches"] += 1
        return JSONResponse({"data": {"instance_ids": [inst.id]}})

    async def terminate(request: Request) -> Response:
        ids, problem = await _instance_ids(request)
        if problem is not None:
            return problem
        now = time.time()
        with lock:
            store.totals["terminate_calls"] += 1
            found = [store.live(i, now) for i in ids]
            missing = [i for i, inst in zip(ids, found, strict=True) if inst is None]
            if missing:
                return _not_found(f"Instance {missing[0]}")
            out = []
            for inst in found:
                assert inst is not None
                inst.calls["terminates"] += 1
                if inst.terminated_at is None:
                    inst.terminated_at = now
                    store.totals["terminations"] += 1
                out.append(inst.to_api(now, _TYPES[inst.type_name]))
        return JSONResponse({"data": {"terminated_instances": out}})

    async def restart(request: Request) -> Response:
        # InstanceRestartRequest -> 200 {"data": {"restarted_instances": [Instance]}}: a
        # restarted instance boots again; an unknown or terminated id is a 404.
        ids, problem = await _instance_ids(request)
        if problem is not None:
            return problem
        now = time.time()
        with lock:
            found = [store.live(i, now) for i in ids]
            missing = [
                i
                for i, inst in zip(ids, found, strict=True)
                if inst is None or inst.terminated_at is not None
            ]
            if missing:
                return _not_found(f"Instance {missing[0]}")
            out = []
            for inst in found:
                assert inst is not None
                inst.calls["restarts"] += 1
                inst.boot_until = now + ctx.config.boot_delay_s
                out.append(inst.to_api(now, _TYPES[inst.type_name]))
        return JSONResponse({"data": {"restarted_instances": out}})

    async def update_instance(request: Request) -> Response:
        # POST /instances/{id} with InstanceModificationRequest ({"name"}) -> {"data": Instance}.
        instance_id = request.path_params["instance_id"]
        body, problem = await _body(request)
        if problem is not None:
            return problem
        if not isinstance(body, dict):
            return _invalid("request body must be a JSON object")
        name = body.get("name")
        if "name" in body and (not isinstance(name, str) or len(name) > 64):
            return _invalid("name: must be a string of at most 64 characters")
        now = time.time()
        with lock:
            inst = store.live(instance_id, now)
            if inst is None:
                return _not_found(f"Instance {instance_id}")
            if "name" in body:
                inst.name = name
            return JSONResponse({"data": inst.to_api(now, _TYPES[inst.type_name])})

    async def list_instances(request: Request) -> Response:
        now = time.time()
        with lock:
            store.totals["lists"] += 1
            data = [
                i.to_api(now, _TYPES[i.type_name])
                for i in store.instances.values()
                if i.status(now) != "terminated"
            ]
        return JSONResponse({"data": data})

    async def get_instance(request: Request) -> Response:
        instance_id = request.path_params["instance_id"]
        now = time.time()
        with lock:
            inst = store.live(instance_id, now)
            if inst is None:
                return _not_found(f"Instance {instance_id}")
            inst.calls["gets"] += 1
            return JSONResponse({"data": inst.to_api(now, _TYPES[inst.type_name])})

    async def list_keys(request: Request) -> Response:
        with lock:
            return JSONResponse({"data": list(store.ssh_keys.values())})

    async def add_key(request: Request) -> Response:
        body, problem = await _body(request)
        if problem is not None:
            return problem
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name:
            return _invalid("name: required")
        with lock:
            if name in store.ssh_keys:
                return _invalid(f"name: SSH key {name!r} already exists")
            key = {
                "id": uuid.uuid4().hex,
                "name": name,
                "public_key": str(body.get("public_key") or "ssh-ed25519 AAAAgenerated"),
            }
            store.ssh_keys[name] = key
        return JSONResponse({"data": key})

    # ---- admin (no auth, no faults)
    async def admin_age(request: Request) -> Response:
        body, problem = await _body(request)
        seconds = number_field(body, "seconds")
        if problem is not None or seconds is None:
            return _invalid('seconds: required number, e.g. {"seconds": 600}')
        if not age_instance(ctx, request.path_params["instance_id"], seconds):
            return _not_found("Instance")
        return JSONResponse({"ok": True})

    async def admin_status(request: Request) -> Response:
        body, problem = await _body(request)
        status = body.get("status") if isinstance(body, dict) else None
        if problem is not None or status not in _FORCEABLE:
            return _invalid("status: one of unhealthy, active, booting, preempted or null")
        with lock:
            inst = store.instances.get(request.path_params["instance_id"])
            if inst is None:
                return _not_found("Instance")
            inst.forced_status = status
        return JSONResponse({"ok": True})

    async def admin_capacity(request: Request) -> Response:
        body, problem = await _body(request)
        if problem is not None or not isinstance(body, dict):
            return _invalid('body: {"instance_type": ..., "regions": [...]}')
        type_name, regions = body.get("instance_type"), body.get("regions")
        if (
            type_name not in _TYPES
            or not isinstance(regions, list)
            or any(r not in REGIONS for r in regions)
        ):
            return _invalid("instance_type and regions must be known names")
        with lock:
            store.capacity[type_name] = tuple(regions)
        return JSONResponse({"ok": True})

    routes: list[RouteSpec] = [
        (["GET"], "/instance-types", instance_types, False),
        (["POST"], "/instance-operations/launch", launch, True),
        (["POST"], "/instance-operations/terminate", terminate, False),
        (["POST"], "/instance-operations/restart", restart, False),
        (["GET"], "/instances", list_instances, False),
        (["GET"], "/instances/{instance_id}", get_instance, False),
        (["POST"], "/instances/{instance_id}", update_instance, False),
        (["GET"], "/ssh-keys", list_keys, False),
        (["POST"], "/ssh-keys", add_key, False),
    ]
    out = [_lambda_401(route) for route in provider_routes(ctx, "lambda", PREFIX, routes)]
    out += [
        Route(f"{ADMIN_PREFIX}/instances/{{instance_id}}/age", admin_age, methods=["POST"]),
        Route(f"{ADMIN_PREFIX}/instances/{{instance_id}}/status", admin_status, methods=["POST"]),
        Route(f"{ADMIN_PREFIX}/capacity", admin_capacity, methods=["POST"]),
    ]
    return out


__all__ = [
    "ADMIN_PREFIX",
    "DEFAULT_SSH_KEY",
    "INSTANCE_TYPES",
    "PREFIX",
    "REGIONS",
    "TERMINATING_S",
    "FakeInstanceType",
    "FakeLambdaInstance",
    "LambdaState",
    "age_instance",
    "build_routes",
    "lambda_error",
    "reset",
    "snapshot",
    "state_of",
    "validate_launch",
]
