"""Vast.ai API v0 (``https://console.vast.ai/api/v0``) served under ``/vast/api/v0``, with
the shared auth, fault injection and counting of :mod:`.common`.

Vast publishes no OpenAPI definition; the reference is its official client ``vastai``
1.9.1 (summarised in ``../shared/reference/specs/vast-official-client.json``), and
``tests/contract/test_vast_contract.py`` holds this module to it. Paths end in ``/``;
search is ``POST /bundles/`` with a query object (operators ``eq neq gt gte lt lte in
notin``; meta keys ``order``, ``type``, ``limit``, ``allocated_storage``). Values come
as the official query parser leaves them: strings for plain values (``{"num_gpus":
{"eq": "1"}}``), booleans, numbers for scaled fields, lists for ``in``/``notin``; a
string operand is compared as a number when the offer's field is one. Create is ``PUT
/asks/{offer_id}/`` with the official client's fields only (``user``, nulls and all) →
``{"success": true, "new_contract"}``; ``GET /instances/{id}/`` answers ``{"instances":
{...}}`` (an object; ``null`` for an unknown or destroyed id [inferred]); the official
client's paginated list ``GET /api/v1/instances/`` (served at ``/vast/api/v1/instances/``)
answers ``{"instances": [...], "next_token", "total_instances"}``; refusals are
``{"success": false, "error", "msg"}``.

Offers are a static market (:data:`OFFERS`) that renting does not deplete, so parallel
tests never run out; "someone else rented it" is simulated with a scripted fault (a 404
``no_such_ask`` on ``PUT /asks/*``). Containers load for ``boot_delay_s`` (ports appear
once ``running``); stop/start flip ``intended_status`` and ``actual_status`` at once.

Test controls (no auth, no faults)::

    POST /_admin/vast/instances/{id}/age      {"seconds": N}   backdates start_date
    POST /_admin/vast/instances/{id}/status   {"actual_status": "offline"} (or null)
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable
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

PREFIX = "/vast/api/v0"
#: Where the official client's ``/api/v1/...`` calls land.
V1_PREFIX = "/vast/api/v1"
ADMIN_PREFIX = "/_admin/vast"

#: The official client's run types (``vast-official-client.json`` ``runtypes``).
RUNTYPES = frozenset(
    {
        "ssh",
        "jupyter",
        "args",
        "ssh_proxy",
        "ssh_direc ssh_proxy",
        "jupyter_proxy ssh_proxy",
        "jupyter_direc ssh_direc ssh_proxy",
    }
)

#: The official client's create-instance fields (``create_instance_fields``); with
#: ``strict_fields`` anything else is refused.
_CREATE_FIELDS = frozenset(
    {
        "client_id",
        "image",
        "env",
        "price",
        "disk",
        "label",
        "extra",
        "onstart",
        "image_login",
        "python_utf8",
        "lang_utf8",
        "use_jupyter_lab",
        "jupyter_dir",
        "force",
        "cancel_unavail",
        "template_hash_id",
        "user",
        "runtype",
        "args",
        "volume_info",
    }
)
_OPS = frozenset({"eq", "neq", "gt", "gte", "lt", "lte", "in", "notin"})
_QUERY_META = frozenset({"order", "type", "limit", "allocated_storage"})
_PORT_FLAG = re.compile(r"^-p (\d{1,5}):(\d{1,5})(?:/(tcp|udp))?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _offer(
    offer_id: int, gpu: str, gpus: int, dph: float, ram_gb: int, where: str, verified: bool = True
) -> dict[str, Any]:
    return {
        "id": offer_id,
        "ask_contract_id": offer_id,
        "bundle_id": offer_id + 5_000_000,
        "machine_id": offer_id % 10_000 + 1000,
        "host_id": offer_id % 997 + 10,
        "gpu_name": gpu,
        "num_gpus": gpus,
        "gpu_ram": ram_gb * 1024,
        "gpu_total_ram": ram_gb * 1024 * gpus,
        "dph_total": round(dph, 4),
        "dph_base": round(dph * 0.95, 4),
        "min_bid": round(dph * 0.55, 4),
        "geolocation": where,
        "verified": verified,
        "verification": "verified" if verified else "unverified",
        "rentable": True,
        "rented": False,
        "external": False,
        # The official client filters on `reliability` (its alias to reliability2 is
        # commented out in vastai 1.9.1 api/query.py); real offers carry both.
        "reliability": 0.995,
        "reliability2": 0.995,
        "disk_space": 500.0,
        "cpu_cores_effective": 16.0 * gpus,
        "cpu_ram": 64_000 * gpus,
        "inet_up": 900.0,
        "inet_down": 2000.0,
        "cuda_max_good": 12.4,
        "direct_port_count": 100,
        "hosting_type": 1 if verified else 0,
        "public_ipaddr": f"192.0.2.{offer_id % 200 + 20}",
    }


#: The market: verified offers plus cheaper unverified ones the query must filter out.
#: GPU names are the official client's (``H100 SXM``, ``A100 SXM4``...); ``gpu_ram`` (MB)
#: tells the A100 sizes apart. No H200 is on offer (capacity-error tests).
OFFERS: tuple[dict[str, Any], ...] = (
    _offer(7100001, "RTX 4090", 1, 0.35, 24, "Texas, US"),
    _offer(7100002, "RTX 4090", 1, 0.29, 24, "Quebec, CA", verified=False),
    _offer(7100003, "RTX 4090", 1, 0.41, 24, "Sweden, SE"),
    _offer(7100004, "RTX 4090", 1, 0.38, 24, "California, US"),
    _offer(7100005, "RTX 4090", 2, 0.74, 24, "Texas, US"),
    _offer(7100006, "RTX 3090", 1, 0.19, 24, "Poland, PL"),
    _offer(7100007, "RTX 3090", 1, 0.22, 24, "Ohio, US"),
    _offer(7100008, "H100 SXM", 1, 2.10, 80, "Texas, US"),
    _offer(7100009, "H100 SXM", 1, 1.95, 80, "Norway, NO"),
    _offer(7100010, "H100 SXM", 1, 1.70, 80, "Nevada, US", verified=False),
    _offer(7100011, "H100 SXM", 8, 16.4, 80, "Utah, US"),
    _offer(7100012, "A100 SXM4", 1, 1.10, 80, "Belgium, BE"),
    _offer(7100013, "A100 SXM4", 1, 0.75, 40, "Oregon, US"),
    _offer(7100014, "RTX A6000", 1, 0.45, 48, "Japan, JP"),
    _offer(7100015, "H100 PCIE", 1, 1.60, 80, "Texas, US"),
)
_OFFERS_BY_ID = {o["id"]: o for o in OFFERS}


@dataclass
class FakeVastInstance:
    """One rented container."""

    id: int
    offer: dict[str, Any]
    label: str | None
    image: str
    env: dict[str, str]
    port_map: dict[int, int]
    disk: float
    runtype: str
    bid: float | None
    onstart: str | None
    start_date: float
    boot_until: float
    ssh_port: int
    intended: str = "running"
    forced_actual: str | None = None
    destroyed: bool = False
    calls: Counter[str] = field(default_factory=Counter)

    def actual(self, now: float) -> str:
        """``loading`` → ``running``; ``exited`` when stopped; or a forced value."""
        if self.forced_actual:
            return self.forced_actual
        if self.intended == "stopped":
            return "exited"
        return "loading" if now < self.boot_until else "running"

    def to_api(self, now: float) -> dict[str, Any]:
        """The instance object of ``GET /instances/{id}/``."""
        actual = self.actual(now)
        running = actual == "running"
        offer = self.offer
        ports: dict[str, Any] = {}
        if running:
            for internal, host in sorted(self.port_map.items()):
                ports[f"{internal}/tcp"] = [
                    {"HostIp": "0.0.0.0", "HostPort": str(host)},
                    {"HostIp": "::", "HostPort": str(host)},
                ]
        return {
            "id": self.id,
            "machine_id": offer["machine_id"],
            "host_id": offer["host_id"],
            "actual_status": actual,
            "intended_status": self.intended,
            "cur_state": "stopped" if self.intended == "stopped" else "running",
            "next_state": self.intended,
            "status_msg": "success, running" if running else f"{actual}",
            "label": self.label,
            "image_uuid": self.image,
            "image_runtype": self.runtype,
            "onstart": self.onstart,
            "extra_env": [[k, v] for k, v in self.env.items()],
            "gpu_name": offer["gpu_name"],
            "num_gpus": offer["num_gpus"],
            "gpu_ram": offer["gpu_ram"],
            "dph_total": self.bid if self.bid is not None else offer["dph_total"],
            "dph_base": offer["dph_base"],
            "min_bid": offer["min_bid"],
            "is_bid": self.bid is not None,
            "geolocation": offer["geolocation"],
            # Vast's value carries a trailing newline at times; clients must strip it.
            "public_ipaddr": offer["public_ipaddr"] + "\n",
            "ssh_host": f"ssh{self.id % 9 + 1}.vast.ai",
            "ssh_port": self.ssh_port,
            "ports": ports,
            "start_date": self.start_date,
            "disk_space": self.disk,
            "reliability2": offer["reliability2"],
            "verification": offer["verification"],
        }

    def admin_view(self, now: float) -> dict[str, Any]:
        """Compact record for ``/_admin/state``."""
        return {
            "id": self.id,
            "label": self.label,
            "actual_status": self.actual(now),
            "intended_status": self.intended,
            "offer_id": self.offer["id"],
            "bid": self.bid,
            "start_date": self.start_date,
            "env_keys": sorted(self.env),
            "ports": {str(k): v for k, v in self.port_map.items()},
            "calls": dict(self.calls),
        }


class VastState:
    """Instances of the fake Vast account."""

    def __init__(self) -> None:
        self.instances: dict[int, FakeVastInstance] = {}
        self.totals: Counter[str] = Counter()
        self._rng = random.Random(7)
        self._next_id = 21_000_000

    def reset(self) -> None:
        """No instances, zero counters."""
        self.instances.clear()
        self.totals.clear()
        self._rng = random.Random(7)
        self._next_id = 21_000_000

    def new_id(self) -> int:
        """Eight-digit contract ids, increasing."""
        self._next_id += self._rng.randint(1, 97)
        return self._next_id

    def host_port(self) -> int:
        """A random public port on the host."""
        return self._rng.randint(20000, 65000)

    def live(self, raw_id: str) -> FakeVastInstance | None:
        """The instance unless unknown or destroyed."""
        try:
            inst = self.instances.get(int(raw_id))
        except ValueError:
            return None
        return None if inst is None or inst.destroyed else inst


_STATE_ATTR = "_vast_state"


def state_of(ctx: FakeCloudContext) -> VastState:
    """The Vast state of a fake cloud (kept on its context, created on first use)."""
    return context_state(ctx, _STATE_ATTR, VastState, VastState)


def snapshot(ctx: FakeCloudContext) -> dict[str, Any]:
    """The ``vast`` part of ``/_admin/state``."""
    store, now = state_of(ctx), time.time()
    with ctx.state.lock:
        return {
            "instances": [i.admin_view(now) for i in store.instances.values() if not i.destroyed],
            "destroyed_instances": [
                i.admin_view(now) for i in store.instances.values() if i.destroyed
            ],
            "totals": dict(store.totals),
        }


def reset(ctx: FakeCloudContext) -> None:
    """Forget every Vast instance (part of ``/_admin/reset``)."""
    with ctx.state.lock:
        state_of(ctx).reset()


def age_instance(ctx: FakeCloudContext, instance_id: int | str, seconds: float) -> bool:
    """Backdate an instance's ``start_date`` (and boot) by ``seconds``; False if unknown."""
    with ctx.state.lock:
        inst = state_of(ctx).instances.get(int(instance_id))
        if inst is None:
            return False
        inst.start_date -= seconds
        inst.boot_until -= seconds
        return True


def refusal(status: int, error: str, msg: str) -> JSONResponse:
    """Vast's refusal body."""
    return JSONResponse({"success": False, "error": error, "msg": msg}, status_code=status)


def _invalid(msg: str) -> JSONResponse:
    return refusal(400, "invalid_args", msg)


def _no_instance(instance_id: str) -> JSONResponse:
    return refusal(404, "no_such_instance", f"Instance {instance_id} not found.")


async def _body(request: Request) -> tuple[Any, JSONResponse | None]:
    return await json_body_or(request, _invalid)


# ---- search ----------------------------------------------------------------------------


def _coerce(value: Any, operand: Any) -> Any:
    """``operand`` as the offer field's type: the official client sends plain values as
    strings (``"1"``, ``"20"``), which Vast compares with numeric fields as numbers."""
    if isinstance(operand, str) and isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return float(operand)
        except ValueError:
            return operand
    return operand


def _matches(value: Any, op: str, operand: Any) -> bool:
    if op in ("in", "notin"):
        items = operand if isinstance(operand, list) else []
        inside = any(value == _coerce(value, item) for item in items)
        return inside if op == "in" else not inside
    operand = _coerce(value, operand)
    if op == "eq":
        return bool(value == operand)
    if op == "neq":
        return bool(value != operand)
    if not isinstance(value, int | float) or not isinstance(operand, int | float):
        return False
    return {
        "gt": value > operand,
        "gte": value >= operand,
        "lt": value < operand,
        "lte": value <= operand,
    }[op]


def _field_value(offer: dict[str, Any], name: str) -> Any:
    # The official client documents geolocation filters as two-letter country codes
    # ('geolocation in [TW,SE]', 'geolocation notin [CN,VN]'): offers say "Texas, US", so
    # the filter compares the country code.
    if name == "geolocation" and isinstance(offer.get(name), str):
        return offer[name].rsplit(",", 1)[-1].strip()
    return offer[name]


def _sort_key(name: str) -> Callable[[dict[str, Any]], tuple[bool, Any]]:
    # Offers lacking the field sort last (ascending), like missing values in Vast's SQL.
    return lambda offer: (offer.get(name) is None, offer.get(name) or 0)


def search(query: Any) -> tuple[list[dict[str, Any]], str | None]:
    """Offers matching a ``/bundles/`` query, ordered and limited; or an error text."""
    if not isinstance(query, dict):
        return [], "query must be a JSON object"
    kind = query.get("type", "on-demand")
    if kind not in ("on-demand", "bid", "reserved"):
        return [], f"type: must be on-demand, bid or reserved (got {kind!r})"
    conditions: list[tuple[str, str, Any]] = []
    for name, spec in query.items():
        if name in _QUERY_META:
            continue
        if not isinstance(spec, dict) or not spec:
            return [], f'{name}: expected an object of operators, e.g. {{"eq": 1}}'
        for op, operand in spec.items():
            if op not in _OPS:
                return [], f"{name}: unknown operator {op!r}"
            conditions.append((name, op, operand))
    found = [
        o
        for o in OFFERS
        if all(
            name in o and _matches(_field_value(o, name), op, operand)
            for name, op, operand in conditions
        )
    ]
    order = query.get("order", [["score", "desc"]])
    if not isinstance(order, list):
        return [], "order: expected a list of [field, asc|desc]"
    for entry in reversed(order):
        if not isinstance(entry, list) or len(entry) != 2 or entry[1] not in ("asc", "desc"):
            return [], "order: expected a list of [field, asc|desc]"
        found.sort(key=_sort_key(str(entry[0])), reverse=entry[1] == "desc")
    limit = query.get("limit", 64)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        return [], "limit: expected a positive integer"
    storage = query.get("allocated_storage", 5.0)
    if isinstance(storage, bool) or not isinstance(storage, int | float) or storage < 0:
        return [], "allocated_storage: expected a number of GB"
    return [dict(o) for o in found[:limit]], None


# ---- create ----------------------------------------------------------------------------


def validate_create(body: Any, offer: dict[str, Any], strict: bool) -> str | None:
    """None when a ``PUT /asks/{id}/`` body is acceptable, else the refusal message."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    if strict:
        unknown = sorted(set(body) - _CREATE_FIELDS)
        if unknown:
            return f"unknown field(s): {', '.join(unknown)}"
    if body.get("client_id") != "me":
        return 'client_id: must be "me"'
    if not isinstance(body.get("image"), str) or not body["image"].strip():
        return "image: required"
    env = body.get("env") or {}
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        return "env: must be an object of string values"
    for key in env:
        if key.startswith("-"):
            match = _PORT_FLAG.match(key)
            if match is None or not all(1 <= int(p) <= 65535 for p in match.group(1, 2)):
                return f"env: {key!r} is not a valid -p port flag"
        elif not _ENV_NAME.match(key):
            return f"env: {key!r} is not a valid variable name"
    for key in ("python_utf8", "lang_utf8", "use_jupyter_lab", "force", "cancel_unavail"):
        if not isinstance(body.get(key, False), bool):
            return f"{key}: must be a boolean"
    for key in ("extra", "onstart", "image_login", "jupyter_dir", "template_hash_id", "user"):
        if body.get(key) is not None and not isinstance(body[key], str):
            return f"{key}: must be a string or null"
    disk = body.get("disk", 10)
    if isinstance(disk, bool) or not isinstance(disk, int | float) or disk <= 0:
        return "disk: must be a positive number of GB"
    if disk > offer["disk_space"]:
        return f"disk: {disk} GB exceeds the offer's {offer['disk_space']} GB"
    if body.get("runtype") is not None and body["runtype"] not in RUNTYPES:
        return f"runtype: unknown value {body.get('runtype')!r}"
    label = body.get("label")
    if label is not None and not isinstance(label, str):
        return "label: must be a string"
    price = body.get("price")
    if price is not None:
        if isinstance(price, bool) or not isinstance(price, int | float):
            return "price: must be a number or null"
        if price < offer["min_bid"]:
            return f"price: bid {price} is below the minimum bid {offer['min_bid']}"
    args = body.get("args")
    if args is not None and (
        not isinstance(args, list) or not all(isinstance(a, str) for a in args)
    ):
        return "args: must be a list of strings or null"
    return None


def build_routes(ctx: FakeCloudContext) -> list[Route]:
    """The Vast API routes and their admin controls, bound to ``ctx``."""
    store = state_of(ctx)
    lock = ctx.state.lock

    async def bundles(request: Request) -> Response:
        query, problem = await _body(request)
        if problem is not None:
            return problem
        offers, err = search(query)
        if err is not None:
            return _invalid(err)
        with lock:
            store.totals["searches"] += 1
        return JSONResponse({"offers": offers})

    async def create(request: Request) -> Response:
        raw_offer = request.path_params["offer_id"]
        offer = _OFFERS_BY_ID.get(int(raw_offer)) if raw_offer.isdigit() else None
        if offer is None:
            return refusal(404, "no_such_ask", f"Offer {raw_offer} is no longer available.")
        body, problem = await _body(request)
        if problem is not None:
            return problem
        err = validate_create(body, offer, ctx.config.strict_fields)
        if err is not None:
            return _invalid(err)
        env = {k: v for k, v in (body.get("env") or {}).items() if not k.startswith("-")}
        now = time.time()
        with lock:
            port_map = {}
            for key in body.get("env") or {}:
                match = _PORT_FLAG.match(key)
                if match is not None:
                    port_map[int(match.group(2))] = store.host_port()
            inst = FakeVastInstance(
                id=store.new_id(),
                offer=offer,
                label=body.get("label"),
                image=body["image"],
                env=env,
                port_map=port_map,
                disk=float(body.get("disk", 10)),
                runtype=body.get("runtype") or "ssh",
                bid=body.get("price"),
                onstart=body.get("onstart"),
                start_date=now,
                boot_until=now + ctx.config.boot_delay_s,
                ssh_port=store.host_port(),
            )
            inst.calls["creates"] += 1
            store.instances[inst.id] = inst
            store.totals["creates"] += 1
        return JSONResponse({"success": True, "new_contract": inst.id})

    async def list_instances(request: Request) -> Response:
        now = time.time()
        with lock:
            store.totals["lists"] += 1
            items = [i.to_api(now) for i in store.instances.values() if not i.destroyed]
        return JSONResponse({"instances": items})

    async def list_instances_v1(request: Request) -> Response:
        # The official client's show_instances: JSON-encoded query args, pages of `limit`
        # ordered by id, `after_token` = the last id seen.
        try:
            limit = json.loads(request.query_params.get("limit", "25"))
            after = json.loads(request.query_params.get("after_token", "0"))
        except json.JSONDecodeError:
            return _invalid("limit and after_token must be JSON values")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            return _invalid("limit: expected a positive integer")
        if isinstance(after, str) and after.isdigit():
            after = int(after)
        if isinstance(after, bool) or not isinstance(after, int):
            return _invalid("after_token: expected a token from next_token")
        now = time.time()
        with lock:
            store.totals["lists"] += 1
            live = sorted(
                (i for i in store.instances.values() if not i.destroyed), key=lambda i: i.id
            )
            page = [i for i in live if i.id > after][:limit]
            items = [i.to_api(now) for i in page]
        more = bool(page) and page[-1].id < live[-1].id
        return JSONResponse(
            {
                "instances": items,
                "total_instances": len(live),
                "next_token": str(page[-1].id) if more else None,
            }
        )

    async def get_instance(request: Request) -> Response:
        instance_id = request.path_params["instance_id"]
        with lock:
            store.totals["gets"] += 1
            inst = store.live(instance_id)
            if inst is None:
                return JSONResponse({"instances": None})
            inst.calls["gets"] += 1
            return JSONResponse({"instances": inst.to_api(time.time())})

    async def update_instance(request: Request) -> Response:
        instance_id = request.path_params["instance_id"]
        body, problem = await _body(request)
        if problem is not None:
            return problem
        if not isinstance(body, dict) or not body:
            return _invalid('expected {"state": "running"|"stopped"} or {"label": ...}')
        state = body.get("state")
        if "state" in body and state not in ("running", "stopped"):
            return _invalid(f"state: must be running or stopped (got {state!r})")
        if "label" in body and not isinstance(body["label"], str):
            return _invalid("label: must be a string")
        with lock:
            inst = store.live(instance_id)
            if inst is None:
                return _no_instance(instance_id)
            if isinstance(state, str):
                inst.calls["stops" if state == "stopped" else "starts"] += 1
                if state == "running" and inst.intended == "stopped":
                    inst.boot_until = time.time() + ctx.config.boot_delay_s
                inst.intended = state
            if "label" in body:
                inst.label = body["label"]
        return JSONResponse({"success": True})

    async def reboot(request: Request) -> Response:
        # vastai reboot_instance: PUT /instances/reboot/{id}/ with {} -> {"success": true}.
        instance_id = request.path_params["instance_id"]
        with lock:
            inst = store.live(instance_id)
            if inst is None:
                return _no_instance(instance_id)
            inst.calls["reboots"] += 1
            if inst.intended == "running":
                inst.boot_until = time.time() + ctx.config.boot_delay_s
        return JSONResponse({"success": True})

    async def current_user(request: Request) -> Response:
        # vastai show_user (GET /users/current): the CLI calls it before most commands
        # (detect_role reads host_agreement_accepted; search templates reads id).
        return JSONResponse(
            {
                "id": 424242,
                "username": "atlas-fake",
                "email": "fake@example.invalid",
                "fullname": "Fake Cloud",
                "credit": 100.0,
                "balance": 0.0,
                "balance_threshold": 0.0,
                "balance_threshold_enabled": False,
                "host_agreement_accepted": False,
                "ssh_key": None,
                "has_billing": True,
            }
        )

    async def destroy(request: Request) -> Response:
        instance_id = request.path_params["instance_id"]
        with lock:
            store.totals["destroy_calls"] += 1
            inst = store.live(instance_id)
            if inst is None:
                return _no_instance(instance_id)
            inst.destroyed = True
            inst.calls["destroys"] += 1
            store.totals["destroys"] += 1
        return JSONResponse({"success": True})

    # ---- admin (no auth, no faults)
    async def admin_age(request: Request) -> Response:
        body, problem = await _body(request)
        seconds = number_field(body, "seconds")
        raw_id = request.path_params["instance_id"]
        if problem is not None or seconds is None or not raw_id.isdigit():
            return _invalid('seconds: required number, e.g. {"seconds": 600}')
        if not age_instance(ctx, raw_id, seconds):
            return _no_instance(raw_id)
        return JSONResponse({"success": True})

    async def admin_status(request: Request) -> Response:
        body, problem = await _body(request)
        actual = body.get("actual_status") if isinstance(body, dict) else None
        if problem is not None or (actual is not None and not isinstance(actual, str)):
            return _invalid('expected {"actual_status": "offline"} or null')
        with lock:
            inst = store.live(request.path_params["instance_id"])
            if inst is None:
                return _no_instance(request.path_params["instance_id"])
            inst.forced_actual = actual
        return JSONResponse({"success": True})

    routes: list[RouteSpec] = [
        (["POST"], "/bundles/", bundles, False),
        (["PUT"], "/asks/{offer_id}/", create, True),
        (["GET"], "/instances/", list_instances, False),
        (["GET"], "/instances/{instance_id}/", get_instance, False),
        (["PUT"], "/instances/{instance_id}/", update_instance, False),
        (["DELETE"], "/instances/{instance_id}/", destroy, False),
        (["PUT"], "/instances/reboot/{instance_id}/", reboot, False),
        (["GET"], "/users/current", current_user, False),
    ]
    out = provider_routes(ctx, "vast", PREFIX, routes)
    # The official client sends paths that already start with /api/v1 as they are.
    out += provider_routes(
        ctx, "vast", V1_PREFIX, [(["GET"], "/instances/", list_instances_v1, False)]
    )
    out += [
        Route(f"{ADMIN_PREFIX}/instances/{{instance_id}}/age", admin_age, methods=["POST"]),
        Route(f"{ADMIN_PREFIX}/instances/{{instance_id}}/status", admin_status, methods=["POST"]),
    ]
    return out


__all__ = [
    "ADMIN_PREFIX",
    "OFFERS",
    "PREFIX",
    "RUNTYPES",
    "V1_PREFIX",
    "FakeVastInstance",
    "VastState",
    "age_instance",
    "build_routes",
    "refusal",
    "reset",
    "search",
    "snapshot",
    "state_of",
    "validate_create",
]
