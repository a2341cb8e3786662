"""Fly Machines API (``https://api.machines.dev``) served under ``/fly``.

Held to Fly's definition (``../shared/reference/specs/fly-machines-openapi.json`` plus
``fly-supplement.json``; ``tests/contract/test_fly_contract.py`` checks it): create bodies
may carry only the properties of ``CreateMachineRequest``, ``MachineConfig`` and
``MachineGuest`` (with the supplement's additions: ``guest.gpus``, ``config.spot``...),
else 400 (with ``strict_fields``). The definition describes no body for the 200s of
``/wait``, ``/stop``, ``/start`` and ``DELETE``; the fake sends what Fly sends there
(``{"ok": true}``, and for start the ``MachineStartResponse`` Fly's Go client decodes).
Behaves like the real API where atlas depends on it (reference notes §4.1):

* ``Authorization: Bearer <key>``; errors are ``{"error": "..."}``; an unknown app answers
  404 ``Could not find App "<name>"``, an unknown machine 404 ``machine not found``.
* ``POST /v1/apps/{app}/machines`` validates like Fly (``config.image`` required,
  ``guest.memory_mb`` a positive multiple of 256, ``gpu_kind`` one of Fly's kinds, known
  regions...) and answers **200** with the Machine in state ``created``. The machine then
  goes ``starting`` and ``started`` after :attr:`FlyState.boot_delay_s`; ``stop`` goes
  ``stopping`` → ``stopped`` after :attr:`FlyState.stop_delay_s`. States advance lazily
  on every read, so nothing runs in the background.
* ``GET .../wait?state=&timeout=`` blocks until the state is reached (200 ``{"ok": true}``)
  or the timeout passes (**408**, the supplement's addition); waiting for ``stopped``
  requires ``instance_id``.
* ``DELETE .../{id}`` refuses (412) a machine that is not stopped unless ``?force=true``.
  Destroyed machines stay readable by id (state ``destroyed``) but are left out of the
  list unless ``include_deleted=true``; stop/start/delete on them answer 404.
* ``POST /v1/apps`` and ``GET /v1/apps/{app}`` exist so tests can create apps; the app
  :data:`DEFAULT_APP` always exists after a reset.

Every route goes through the shared auth/fault/counting wrapper (api ``"fly"``: script rules
match paths below ``/fly``, e.g. ``fail_next("POST /v1/apps/*/machines", 500,
after_create=True)``). The Fly state lives on the context (:func:`fly_state`).

Test controls (no auth, no faults)::

    POST /_admin/fly/apps                      {"name": "my-app"} → create an app
    POST /_admin/fly/timings                   {"boot_delay_s": 0.5, "stop_delay_s": 0.1}
    POST /_admin/fly/machines/{id}/state       {"state": "failed"} → force a state
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import string
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from atlas_tasks.testing.fakecloud.common import (
    BadRequest,
    FakeCloudContext,
    RouteSpec,
    context_state,
    error,
    json_body,
    provider_routes,
)
from atlas_tasks.testing.fakecloud.state import iso

FLY_PREFIX = "/fly"
ADMIN_PREFIX = "/_admin/fly"

#: The app that exists in every fresh (or reset) fake cloud.
DEFAULT_APP = "atlas-fake"

#: Defaults of the state timings (seconds): short, but long enough that ``/wait`` matters.
DEFAULT_BOOT_DELAY_S = 0.05
DEFAULT_STOP_DELAY_S = 0.02

VALID_GPU_KINDS = frozenset({"a100-pcie-40gb", "a100-sxm4-80gb", "l40s", "a10", "none"})
CPU_KINDS = ("shared", "performance")
WAIT_STATES = ("started", "stopped", "suspended", "destroyed")
#: Fly's public regions (a machine may only be created in one of them).
REGIONS = frozenset(
    {
        "ams",
        "arn",
        "atl",
        "bog",
        "bom",
        "bos",
        "cdg",
        "den",
        "dfw",
        "ewr",
        "eze",
        "fra",
        "gdl",
        "gig",
        "gru",
        "hkg",
        "iad",
        "jnb",
        "lax",
        "lhr",
        "mad",
        "mia",
        "nrt",
        "ord",
        "otp",
        "phx",
        "qro",
        "scl",
        "sea",
        "sin",
        "sjc",
        "syd",
        "waw",
        "yul",
        "yyz",
    }
)
DEFAULT_REGION = "ord"
HANDLERS = frozenset({"tls", "http", "proxy_proto", "pg_tls", "edge_http"})

#: Properties of the create body, its ``config`` and ``guest`` (definition + supplement).
CREATE_FIELDS = frozenset(
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
CONFIG_FIELDS = frozenset(
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
GUEST_FIELDS = frozenset(
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

_HEX = "0123456789abcdef"
_ULID = string.digits + "ABCDEFGHJKMNPQRSTVWXYZ"


@dataclass
class FakeMachine:
    """One fake machine; :meth:`to_api` renders Fly's Machine object."""

    id: str
    app: str
    name: str
    region: str
    config: dict[str, Any]
    instance_id: str
    private_ip: str
    created_at: float
    updated_at: float
    state: str
    #: Future transitions ``(at, state)``, applied in order by :meth:`settle`.
    pending: list[tuple[float, str]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)

    def set_state(
        self, state: str, now: float, event: str, then: list[tuple[float, str]] | None = None
    ) -> None:
        """Move to ``state`` now and schedule ``then``."""
        self.state = state
        self.updated_at = now
        self.pending = list(then or [])
        self.events.insert(
            0, {"type": event, "status": state, "source": "user", "timestamp": int(now * 1000)}
        )

    def settle(self, now: float) -> None:
        """Apply every scheduled transition that is due."""
        while self.pending and self.pending[0][0] <= now:
            at, state = self.pending.pop(0)
            self.state = state
            self.updated_at = at
            self.events.insert(
                0, {"type": state, "status": state, "source": "flyd", "timestamp": int(at * 1000)}
            )

    def to_api(self) -> dict[str, Any]:
        """The Machine as ``GET /v1/apps/{app}/machines/{id}`` returns it."""
        image = str(self.config.get("image", ""))
        repository, _, tag = (
            image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "latest")
        )
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "region": self.region,
            "instance_id": self.instance_id,
            "private_ip": self.private_ip,
            "config": self.config,
            "image_ref": {
                "registry": "docker-hub-mirror.fly.io",
                "repository": repository,
                "tag": tag or "latest",
                "digest": "sha256:" + hashlib.sha256(image.encode()).hexdigest(),
                "labels": {},
            },
            # Fly's timestamps have whole seconds: 2023-06-19T19:28:26Z.
            "created_at": iso(self.created_at)[:19] + "Z",
            "updated_at": iso(self.updated_at)[:19] + "Z",
            "events": self.events[:10],
            "checks": [],
            "host_status": "ok",
        }

    def admin_view(self) -> dict[str, Any]:
        """Compact record for ``/_admin/state`` (under ``fly``)."""
        guest = self.config.get("guest") or {}
        return {
            "id": self.id,
            "app": self.app,
            "name": self.name,
            "state": self.state,
            "region": self.region,
            "gpu_kind": guest.get("gpu_kind"),
            "env_keys": sorted(self.config.get("env") or {}),
            "created_at": self.created_at,
            "calls": dict(self.calls),
        }


class FlyState:
    """All Fly state of one fake cloud (apps, machines, counters, timings)."""

    def __init__(self, seed: int | None = None) -> None:
        self.lock = threading.RLock()
        self._rng = random.Random(seed)
        self.apps: dict[str, dict[str, Any]] = {}
        self.machines: dict[str, FakeMachine] = {}
        self.totals: Counter[str] = Counter()
        self.boot_delay_s = DEFAULT_BOOT_DELAY_S
        self.stop_delay_s = DEFAULT_STOP_DELAY_S
        self.reset()

    def reset(self) -> None:
        """No machines, only :data:`DEFAULT_APP`, zero counters, default timings."""
        with self.lock:
            self.machines.clear()
            self.apps.clear()
            self.totals.clear()
            self.boot_delay_s = DEFAULT_BOOT_DELAY_S
            self.stop_delay_s = DEFAULT_STOP_DELAY_S
            self.add_app(DEFAULT_APP)

    def add_app(self, name: str, org: str = "personal") -> dict[str, Any]:
        """Create (or return) an app."""
        with self.lock:
            app = self.apps.get(name)
            if app is None:
                app = {
                    "id": name,
                    "name": name,
                    "organization": {"slug": org},
                    "status": "pending",
                    "machine_count": 0,
                    "network": "default",
                }
                self.apps[name] = app
            return app

    def new_machine_id(self) -> str:
        """14 lowercase hex digits, like ``3d8d9014b32d58``."""
        with self.lock:
            while True:
                machine_id = "".join(self._rng.choice(_HEX) for _ in range(14))
                if machine_id not in self.machines:
                    return machine_id

    def new_instance_id(self) -> str:
        """A ULID-like version id (``01H3JK...``)."""
        with self.lock:
            return "01" + "".join(self._rng.choice(_ULID) for _ in range(24))

    def new_private_ip(self) -> str:
        """A 6PN address (``fdaa:...``)."""
        with self.lock:
            parts = [f"{self._rng.randint(0, 0xFFFF):x}" for _ in range(4)]
            return f"fdaa:0:{parts[0]}:a7b:{parts[1]}:{parts[2]}:{parts[3]}:2"

    def machine(self, app: str, machine_id: str, now: float) -> FakeMachine | None:
        """The machine of ``app`` (destroyed ones included), settled to ``now``."""
        with self.lock:
            machine = self.machines.get(machine_id)
            if machine is None or machine.app != app:
                return None
            machine.settle(now)
            return machine


def fly_state(ctx: FakeCloudContext) -> FlyState:
    """The Fly state of a fake cloud context (created on first use)."""
    return context_state(ctx, "fly", lambda: FlyState(seed=ctx.config.faults.seed), FlyState)


def admin_snapshot(ctx: FakeCloudContext) -> dict[str, Any]:
    """The ``fly`` block of ``GET /_admin/state``."""
    fly = fly_state(ctx)
    now = time.time()
    with fly.lock:
        for machine in fly.machines.values():
            machine.settle(now)
        live = [m.admin_view() for m in fly.machines.values() if m.state != "destroyed"]
        dead = [m.admin_view() for m in fly.machines.values() if m.state == "destroyed"]
        return {
            "apps": sorted(fly.apps),
            "machines": live,
            "destroyed_machines": dead,
            "totals": {"live_machines": len(live), **dict(fly.totals)},
            "boot_delay_s": fly.boot_delay_s,
            "stop_delay_s": fly.stop_delay_s,
        }


def reset(ctx: FakeCloudContext) -> None:
    """What ``POST /_admin/reset`` does to the Fly state."""
    fly_state(ctx).reset()


def fly_base_url(cloud_url: str) -> str:
    """``ATLAS_FLY_BASE_URL`` for a fake cloud at ``cloud_url`` (stands in for
    ``https://api.machines.dev``)."""
    return f"{cloud_url.rstrip('/')}{FLY_PREFIX}"


def fly_env(cloud_url: str, api_key: str, app: str = DEFAULT_APP) -> dict[str, str]:
    """``ATLAS_*`` variables pointing the Fly provider at a fake cloud."""
    return {
        "ATLAS_FLY_BASE_URL": fly_base_url(cloud_url),
        "ATLAS_FLY_API_TOKEN": api_key,
        "ATLAS_FLY_APP": app,
    }


# ---------------------------------------------------------------------------- validation
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _unknown(where: str, given: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise BadRequest(f"{where}: unknown field(s) {', '.join(unknown)}")


def validate_create(body: Any, strict: bool = True) -> dict[str, Any]:
    """Check a create body the way the Machines API does; return it.

    Args:
        strict: also refuse properties the definition does not have.

    Raises:
        BadRequest: naming the offending field.
    """
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    config = body.get("config")
    if not isinstance(config, dict):
        raise BadRequest("config: required object")
    if strict:
        _unknown("body", body, CREATE_FIELDS)
        _unknown("config", config, CONFIG_FIELDS)
        if isinstance(config.get("guest"), dict):
            _unknown("config.guest", config["guest"], GUEST_FIELDS)
    image = config.get("image")
    if not isinstance(image, str) or not image.strip():
        raise BadRequest("config.image: an image is required")
    for key in ("name", "region"):
        if key in body and not isinstance(body[key], str):
            raise BadRequest(f"{key}: must be a string")
    if "region" in body and body["region"] not in REGIONS:
        raise BadRequest(f"region: {body['region']!r} is not a valid region")
    _validate_guest(config.get("guest"))
    for key in ("env", "metadata"):
        value = config.get(key)
        if value is not None and not (
            isinstance(value, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
        ):
            raise BadRequest(f"config.{key}: must be an object of string values")
    _validate_services(config.get("services"))
    return body


def _validate_guest(guest: Any) -> None:
    if guest is None:
        return
    if not isinstance(guest, dict):
        raise BadRequest("config.guest: must be an object")
    if "cpu_kind" in guest and guest["cpu_kind"] not in CPU_KINDS:
        raise BadRequest(f"invalid cpu_kind {guest['cpu_kind']!r}: must be shared or performance")
    if "cpus" in guest and (not _is_int(guest["cpus"]) or guest["cpus"] < 1):
        raise BadRequest(f"invalid cpus {guest['cpus']!r}: must be an integer >= 1")
    memory = guest.get("memory_mb")
    if memory is not None and (not _is_int(memory) or memory < 256 or memory % 256):
        raise BadRequest(
            f"invalid memory size {memory!r}: memory_mb must be a multiple of 256 and at least 256"
        )
    kind = guest.get("gpu_kind")
    if kind is not None and kind not in VALID_GPU_KINDS:
        raise BadRequest(
            f"invalid gpu_kind {kind!r}: must be one of " + ", ".join(sorted(VALID_GPU_KINDS))
        )
    if "gpus" in guest and (not _is_int(guest["gpus"]) or guest["gpus"] < 0):
        raise BadRequest(f"invalid gpus {guest['gpus']!r}: must be an integer >= 0")


def _validate_services(services: Any) -> None:
    if services is None:
        return
    if not isinstance(services, list):
        raise BadRequest("config.services: must be an array")
    for i, service in enumerate(services):
        where = f"config.services[{i}]"
        if not isinstance(service, dict):
            raise BadRequest(f"{where}: must be an object")
        if service.get("protocol", "tcp") not in ("tcp", "udp"):
            raise BadRequest(f"{where}.protocol: must be tcp or udp")
        port = service.get("internal_port")
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise BadRequest(f"{where}.internal_port: must be a port number")
        for j, public in enumerate(service.get("ports") or []):
            if not isinstance(public, dict) or not _is_int(public.get("port")):
                raise BadRequest(f"{where}.ports[{j}].port: must be a port number")
            handlers = public.get("handlers") or []
            if not isinstance(handlers, list) or not set(handlers) <= HANDLERS:
                raise BadRequest(f"{where}.ports[{j}].handlers: unknown handler in {handlers!r}")


def _filled_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config as Fly echoes it: guest defaults filled in."""
    guest = {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256, **(config.get("guest") or {})}
    if guest.get("gpu_kind") and guest["gpu_kind"] != "none":
        guest.setdefault("gpus", 1)
    return {
        **config,
        "guest": guest,
        "init": config.get("init", {}),
        "restart": config.get("restart", {"policy": "on-failure"}),
    }


def _ok() -> Response:
    """The ``{"ok": true}`` Fly answers wait, stop and delete with."""
    return JSONResponse({"ok": True})


# ---------------------------------------------------------------------------- routes
def build_routes(ctx: FakeCloudContext) -> list[Route]:
    """The Fly Machines routes (behind auth and faults) and the Fly admin routes."""
    fly = fly_state(ctx)

    def no_app(app: str) -> JSONResponse:
        return error(404, f'Could not find App "{app}"')

    def no_machine() -> JSONResponse:
        return error(404, "machine not found")

    def count(machine_id: str | None, kind: str) -> None:
        with fly.lock:
            fly.totals[kind] += 1
            machine = fly.machines.get(machine_id or "")
            if machine is not None:
                machine.calls[kind] += 1

    def lookup(request: Request, kind: str) -> FakeMachine | JSONResponse:
        app = request.path_params["app"]
        machine_id = request.path_params["machine_id"]
        count(machine_id, kind)
        if app not in fly.apps:
            return no_app(app)
        machine = fly.machine(app, machine_id, time.time())
        return no_machine() if machine is None else machine

    async def create_app(request: Request) -> Response:
        body = await json_body(request, default={})
        name = body.get("app_name") if isinstance(body, dict) else None
        org = body.get("org_slug") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name:
            raise BadRequest("app_name: required")
        if not isinstance(org, str) or not org:
            raise BadRequest("org_slug: required")
        with fly.lock:
            if name in fly.apps:
                return error(422, "Validation failed: Name has already been taken")
            app = fly.add_app(name, org)
        return JSONResponse(
            {"id": app["id"], "created_at": int(time.time() * 1000)}, status_code=201
        )

    async def get_app(request: Request) -> Response:
        app = request.path_params["app"]
        with fly.lock:
            record = fly.apps.get(app)
            if record is None:
                return no_app(app)
            count_live = sum(
                1 for m in fly.machines.values() if m.app == app and m.state != "destroyed"
            )
            return JSONResponse({**record, "machine_count": count_live})

    async def list_apps(request: Request) -> Response:
        # Apps_list: org_slug is required; ListAppsResponse {total_apps, apps: [ListApp]}
        # (ListApp.network is an object in the definition).
        org = request.query_params.get("org_slug")
        if not org:
            raise BadRequest("org_slug: required")
        with fly.lock:
            apps = [
                {
                    "id": a["id"],
                    "name": a["name"],
                    "network": {},
                    "machine_count": sum(
                        1
                        for m in fly.machines.values()
                        if m.app == a["name"] and m.state != "destroyed"
                    ),
                }
                for a in fly.apps.values()
                if a["organization"]["slug"] == org
            ]
        return JSONResponse({"total_apps": len(apps), "apps": apps})

    async def delete_app(request: Request) -> Response:
        # Apps_delete: 202 with no body; the app's machines go with it.
        app = request.path_params["app"]
        now = time.time()
        with fly.lock:
            if app not in fly.apps:
                return no_app(app)
            for machine in fly.machines.values():
                if machine.app == app and machine.state != "destroyed":
                    machine.set_state("destroyed", now, "destroy")
            del fly.apps[app]
        return Response(status_code=202)

    async def create_machine(request: Request) -> Response:
        app = request.path_params["app"]
        if app not in fly.apps:
            return no_app(app)
        body = validate_create(await json_body(request), ctx.config.strict_fields)
        now = time.time()
        with fly.lock:
            machine_id = fly.new_machine_id()
            machine = FakeMachine(
                id=machine_id,
                app=app,
                name=body.get("name") or f"machine-{machine_id[:6]}",
                region=body.get("region") or DEFAULT_REGION,
                config=_filled_config(body["config"]),
                instance_id=fly.new_instance_id(),
                private_ip=fly.new_private_ip(),
                created_at=now,
                updated_at=now,
                state="created",
            )
            launch = (
                []
                if body.get("skip_launch")
                else [(now + fly.boot_delay_s / 2, "starting"), (now + fly.boot_delay_s, "started")]
            )
            machine.set_state("created", now, "launch", launch)
            machine.settle(now)
            fly.machines[machine_id] = machine
            fly.apps[app]["status"] = "deployed"
            fly.totals["creates"] += 1
            machine.calls["creates"] += 1
            return JSONResponse(machine.to_api(), status_code=200)

    async def list_machines(request: Request) -> Response:
        app = request.path_params["app"]
        q = request.query_params
        with fly.lock:
            fly.totals["lists"] += 1
            if app not in fly.apps:
                return no_app(app)
            include_deleted = q.get("include_deleted", "").lower() in ("1", "true")
            meta = {k[len("metadata.") :]: v for k, v in q.items() if k.startswith("metadata.")}
            now = time.time()
            result = []
            for machine in fly.machines.values():
                if machine.app != app:
                    continue
                machine.settle(now)
                if machine.state == "destroyed" and not include_deleted:
                    continue
                if q.get("region") and machine.region != q["region"]:
                    continue
                labels = machine.config.get("metadata") or {}
                if any(labels.get(k) != v for k, v in meta.items()):
                    continue
                result.append(machine.to_api())
        return JSONResponse(result)

    async def get_machine(request: Request) -> Response:
        found = lookup(request, "gets")
        if isinstance(found, Response):
            return found
        with fly.lock:
            return JSONResponse(found.to_api())

    async def stop_machine(request: Request) -> Response:
        found = lookup(request, "stops")
        if isinstance(found, Response):
            return found
        await json_body(request, default={})  # optional {"signal", "timeout"}: checked only
        now = time.time()
        with fly.lock:
            if found.state == "destroyed":
                return no_machine()
            if found.state not in ("stopped", "stopping", "suspended", "failed"):
                found.set_state("stopping", now, "stop", [(now + fly.stop_delay_s, "stopped")])
        return _ok()

    async def start_machine(request: Request) -> Response:
        found = lookup(request, "starts")
        if isinstance(found, Response):
            return found
        now = time.time()
        with fly.lock:
            if found.state == "destroyed":
                return no_machine()
            previous = found.state
            if previous not in ("started", "starting"):
                found.set_state("starting", now, "start", [(now + fly.boot_delay_s, "started")])
        return JSONResponse({"previous_state": previous, "migrated": False, "new_host": ""})

    async def restart_machine(request: Request) -> Response:
        # Machines_restart (POST .../restart, optional ?timeout): 200 {"ok": true}; the
        # machine goes through starting again. Only a running machine restarts; anything
        # else is the definition's one declared error, a 400 ErrorResponse.
        found = lookup(request, "restarts")
        if isinstance(found, Response):
            return found
        now = time.time()
        with fly.lock:
            if found.state == "destroyed":
                return no_machine()
            if found.state not in ("started", "starting"):
                return error(400, f"machine is {found.state}, not started: cannot restart")
            found.set_state("starting", now, "restart", [(now + fly.boot_delay_s, "started")])
        return _ok()

    async def destroy_machine(request: Request) -> Response:
        found = lookup(request, "delete_calls")
        if isinstance(found, Response):
            return found
        force = request.query_params.get("force", "").lower() in ("1", "true")
        now = time.time()
        with fly.lock:
            if found.state == "destroyed":
                return no_machine()
            if not force and found.state not in ("stopped", "suspended", "failed", "created"):
                return error(
                    412,
                    "unable to destroy machine, not currently stopped, "
                    "suspended, or failed (use force=true)",
                )
            found.set_state("destroyed", now, "destroy")
            fly.totals["deletes"] += 1
            found.calls["deletes"] += 1
        return _ok()

    async def wait_machine(request: Request) -> Response:
        found = lookup(request, "waits")
        if isinstance(found, Response):
            return found
        q = request.query_params
        target = q.get("state", "started")
        if target not in WAIT_STATES:
            raise BadRequest(f"invalid state {target!r}: must be one of " + ", ".join(WAIT_STATES))
        if target == "stopped" and not q.get("instance_id"):
            raise BadRequest("instance_id is required when waiting for the stopped state")
        try:
            timeout = int(q.get("timeout", "60"))
        except ValueError:
            raise BadRequest("timeout: must be an integer number of seconds") from None
        if not 1 <= timeout <= 300:
            raise BadRequest("timeout: must be between 1 and 300 seconds")
        deadline = time.monotonic() + timeout
        while True:
            with fly.lock:
                found.settle(time.time())
                state = found.state
            if state == target:
                return _ok()
            if time.monotonic() >= deadline:
                with fly.lock:
                    fly.totals["wait_timeouts"] += 1
                return error(
                    408,
                    f"deadline_exceeded: machine did not reach state "
                    f"{target!r} within {timeout}s (state {state!r})",
                )
            await asyncio.sleep(0.01)

    p = "/v1/apps"
    machine = p + "/{app}/machines/{machine_id}"
    api_routes: list[RouteSpec] = [
        (["POST"], p, create_app, True),
        (["GET"], p, list_apps, False),
        (["DELETE"], p + "/{app}", delete_app, False),
        (["GET"], p + "/{app}", get_app, False),
        (["POST"], p + "/{app}/machines", create_machine, True),
        (["GET"], p + "/{app}/machines", list_machines, False),
        (["GET"], machine, get_machine, False),
        (["POST"], machine + "/stop", stop_machine, False),
        (["POST"], machine + "/start", start_machine, False),
        (["POST"], machine + "/restart", restart_machine, False),
        (["DELETE"], machine, destroy_machine, False),
        (["GET"], machine + "/wait", wait_machine, False),
    ]
    return provider_routes(ctx, "fly", FLY_PREFIX, api_routes) + _admin_routes(fly)


def _admin_routes(fly: FlyState) -> list[Route]:
    async def add_app(request: Request) -> Response:
        try:
            body = await json_body(request, default={})
        except BadRequest as exc:
            return error(400, str(exc))
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name:
            return error(400, 'name: required, e.g. {"name": "my-app"}')
        return JSONResponse(fly.add_app(name, str(body.get("org") or "personal")))

    async def timings(request: Request) -> Response:
        try:
            body = await json_body(request, default={})
        except BadRequest as exc:
            return error(400, str(exc))
        if not isinstance(body, dict):
            return error(400, "body must be a JSON object")
        with fly.lock:
            for key in ("boot_delay_s", "stop_delay_s"):
                value = body.get(key)
                if value is None:
                    continue
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    return error(400, f"{key}: must be a number >= 0")
                setattr(fly, key, float(value))
            return JSONResponse(
                {"boot_delay_s": fly.boot_delay_s, "stop_delay_s": fly.stop_delay_s}
            )

    async def force_state(request: Request) -> Response:
        try:
            body = await json_body(request, default={})
        except BadRequest as exc:
            return error(400, str(exc))
        state = body.get("state") if isinstance(body, dict) else None
        if not isinstance(state, str) or not state:
            return error(400, 'state: required, e.g. {"state": "failed"}')
        with fly.lock:
            machine = fly.machines.get(request.path_params["machine_id"])
            if machine is None:
                return error(404, "machine not found")
            machine.set_state(state, time.time(), "admin")
            return JSONResponse(machine.admin_view())

    a = ADMIN_PREFIX
    return [
        Route(f"{a}/apps", add_app, methods=["POST"]),
        Route(f"{a}/timings", timings, methods=["POST"]),
        Route(f"{a}/machines/{{machine_id}}/state", force_state, methods=["POST"]),
    ]


__all__ = [
    "ADMIN_PREFIX",
    "DEFAULT_APP",
    "FLY_PREFIX",
    "REGIONS",
    "VALID_GPU_KINDS",
    "FakeMachine",
    "FlyState",
    "admin_snapshot",
    "build_routes",
    "fly_base_url",
    "fly_env",
    "fly_state",
    "reset",
    "validate_create",
]
