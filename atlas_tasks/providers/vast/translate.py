"""Pure translation between atlas specs and Vast.ai's wire shapes (no I/O).

Vast shapes (reference notes §5.2): offers come from a query object sent to
``POST /bundles/``; an instance is created by renting an offer (``PUT /asks/{id}/``);
``GET /instances/{id}/`` answers ``{"instances": {...}}`` (an *object*), the list
``{"instances": [...]}``. Failures may arrive as HTTP 200 with ``{"success": false,
"msg"}``, so every answer goes through :func:`check_success`.

Ports travel inside ``env`` as Docker flags (``{"-p 8000:8000": "1"}``) and come back in
``ports`` as Docker's mapping ``{"8000/tcp": [{"HostIp", "HostPort"}]}``. Vast has no
HTTP proxy, so every port is reported as ``tcp`` with ``tcp://<public_ipaddr>:<HostPort>``
(an http service is reached as ``http://`` on that same address). GPU names carry spaces
(``"RTX 4090"``), as stored in the catalog.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from atlas_tasks.errors import AtlasError, NotFoundError, ProviderError, validation_error
from atlas_tasks.providers.http import is_maybe_created, mark_maybe_created
from atlas_tasks.providers.translate_common import (
    as_float,
    as_int,
    malformed,
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
    for_provider,
)
from atlas_tasks.specs.gpu import vast_canonical, vast_search_filters

PROVIDER = "vast"

#: Disk (GB) asked for when the request names none (vast.py's default is 10; images for
#: GPU work rarely fit).
DEFAULT_DISK_GB = 20

#: Offers fetched per search; the cheapest usable one is taken, the next ones are the
#: fallbacks when an offer is rented by someone else between search and create.
SEARCH_LIMIT = 20

#: How many offers a create tries before giving up (offer taken → next cheapest).
MAX_OFFER_ATTEMPTS = 3

#: Vast ``error`` codes meaning "no such object".
NOT_FOUND_CODES = frozenset({"no_such_instance", "no_such_ask", "not_found"})

_PORT_KEY = re.compile(r"^(\d{1,5})(?:/(tcp|udp))?$")


# ---------------------------------------------------------------------------- status
def status_of(body: dict[str, Any]) -> ComputeStatus:
    """Normalized status from ``actual_status`` and ``intended_status``.

    * ``intended_status == "stopped"`` → stopped at once (Vast stops billing the GPU when
      asked, even while the container is still exiting).
    * ``running`` → running; ``created``/``loading``/``scheduling``/missing → provisioning.
    * ``exited``/``stopped`` → stopped, or provisioning while ``intended_status`` is
      ``running`` (a start is under way; a container that crashed looks the same until
      Vast reports more).
    * ``offline`` (the host went away) → failed.
    * ``destroying``/``deleted`` → terminated.
    """
    actual = str(body.get("actual_status") or "").lower()
    intended = str(body.get("intended_status") or "").lower()
    if actual in ("destroying", "deleted", "destroyed"):
        return ComputeStatus.TERMINATED
    if actual == "offline":
        return ComputeStatus.FAILED
    if intended == "stopped":
        return ComputeStatus.STOPPED
    if actual == "running":
        return ComputeStatus.RUNNING
    if actual in ("exited", "stopped"):
        return ComputeStatus.PROVISIONING if intended == "running" else ComputeStatus.STOPPED
    return ComputeStatus.PROVISIONING


# ---------------------------------------------------------------------------- offers
def gpu_name(gpu: str) -> str:
    """Vast's ``gpu_name`` (with spaces) for a canonical GPU.

    Raises:
        ValidationError: field ``gpu`` when Vast has no such GPU in the catalog.
    """
    return for_provider(gpu, PROVIDER)


#: The filters the official client adds to every search (``vastai`` 1.9.1
#: ``search_offers``): verified, rentable, not rented, not external. Booleans travel as
#: JSON booleans, as its query parser turns ``true``/``false`` into them.
DEFAULT_FILTERS: dict[str, dict[str, Any]] = {
    "verified": {"eq": True},
    "external": {"eq": False},
    "rentable": {"eq": True},
    "rented": {"eq": False},
}


def search_query(request: ComputeRequest, *, limit: int = SEARCH_LIMIT) -> dict[str, Any]:
    """The ``POST /bundles/`` query for the request's GPU and count, shaped the way the
    official client (``vastai`` 1.9.1) builds it from ``num_gpus=N gpu_name=X
    disk_space>=D``.

    Its query parser keeps plain values as **strings** (``{"num_gpus": {"eq": "1"}}``),
    turns ``true``/``false`` into booleans and scales ``gpu_ram`` from GB to MB as a
    number; then it adds ``order``, ``type``, ``limit`` and ``allocated_storage`` (the
    disk that ``dph_total`` is priced with). Cheapest first; ``type`` is ``bid``
    (interruptible) when ``request.spot``, else ``on-demand``. GPUs whose Vast name hides
    the memory size add a ``gpu_ram`` bound (see :mod:`atlas_tasks.specs.gpu`).

    Raises:
        ValidationError: field ``gpu`` when missing or not offered on Vast.
    """
    if not request.gpu:
        raise validation_error("gpu", "Vast rents GPU machines: gpu is required", provider=PROVIDER)
    disk = disk_gb(request)
    return {
        **DEFAULT_FILTERS,
        **vast_search_filters(request.gpu),
        "num_gpus": {"eq": str(request.gpu_count)},
        "disk_space": {"gte": str(disk)},
        "order": [["dph_total", "asc"]],
        "type": "bid" if request.spot else "on-demand",
        "limit": limit,
        "allocated_storage": float(disk),
    }


def catalog_query(limit: int = 1000) -> dict[str, Any]:
    """The ``POST /bundles/`` query behind ``list_gpu_types`` (every usable offer)."""
    return {
        **DEFAULT_FILTERS,
        "order": [["dph_total", "asc"]],
        "type": "on-demand",
        "limit": limit,
        "allocated_storage": float(DEFAULT_DISK_GB),
    }


def offers_from_body(body: Any) -> list[dict[str, Any]]:
    """The ``offers`` of a search answer.

    Raises:
        ProviderError: no ``offers`` list.
    """
    offers = body.get("offers") if isinstance(body, dict) else None
    if not isinstance(offers, list):
        raise malformed(PROVIDER, "search answer has no offers list", body)
    return [o for o in offers if isinstance(o, dict) and o.get("id") is not None]


def rank_offers(
    offers: list[dict[str, Any]], *, spot: bool, region_hints: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """Offers cheapest first by what we would pay (``min_bid`` for spot, else
    ``dph_total``), keeping only those whose ``geolocation`` mentions a region hint when
    hints are given (Vast locations read like ``"Texas, US"``; matching is
    case-insensitive on the comma-separated parts or the whole string)."""

    def price(offer: dict[str, Any]) -> float:
        value = as_float(offer.get("min_bid" if spot else "dph_total"))
        return value if value is not None else float("inf")

    kept = offers
    if region_hints:
        wanted = {h.strip().lower() for h in region_hints if h.strip()}

        def matches(offer: dict[str, Any]) -> bool:
            where = str(offer.get("geolocation") or "").lower()
            parts = {p.strip() for p in where.split(",")} | {where.strip()}
            return bool(parts & wanted)

        kept = [o for o in offers if matches(o)]
    return sorted(kept, key=price)


def no_offer_error(request: ComputeRequest) -> ProviderError:
    """The ``provider`` error for "no offer matches" (Vast's form of no capacity)."""
    kind = "interruptible (bid)" if request.spot else "on-demand"
    where = f" in {', '.join(request.region_hints)}" if request.region_hints else ""
    native = gpu_name(request.gpu) if request.gpu else "?"
    return ProviderError(
        f"insufficient capacity: no verified rentable {kind} Vast offer for "
        f"{request.gpu_count}x {native}{where}",
        provider=PROVIDER,
        raw={
            "gpu_name": native,
            "num_gpus": request.gpu_count,
            "regions": list(request.region_hints),
            "spot": request.spot,
        },
    )


def disk_gb(request: ComputeRequest) -> int:
    """Instance disk in GB: ``container_disk_gb`` (+ ``volume_gb``), else the default."""
    total = (request.container_disk_gb or 0) + (request.volume_gb or 0)
    return total or DEFAULT_DISK_GB


#: Every field of the official client's create-instance body (``vastai`` 1.9.1
#: ``build_create_instance_payload``).
CREATE_FIELDS = frozenset(
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

#: Fields atlas sets from the request; ``provider_opts`` may not set them (the label is
#: how the orchestrator finds its instance again, ``env`` carries the injected secrets
#: such as ``ATLAS_PRESHARED_KEY``, ``price`` and ``disk`` decide what is billed).
OWN_CREATE_FIELDS = frozenset({"client_id", "image", "env", "price", "disk", "label"})

#: ``provider_opts`` keys passed through to the create body (e.g. ``onstart``, ``args``,
#: ``runtype``, ``image_login``, ``template_hash_id``).
PASS_THROUGH_OPTS = CREATE_FIELDS - OWN_CREATE_FIELDS

#: What the official client sends for the fields atlas does not choose.
_CREATE_DEFAULTS: dict[str, Any] = {
    "extra": None,
    "onstart": None,
    "image_login": None,
    "python_utf8": False,
    "lang_utf8": False,
    "use_jupyter_lab": False,
    "jupyter_dir": None,
    "force": False,
    "cancel_unavail": False,
    "template_hash_id": None,
    "user": None,
    # Run the image's own entrypoint (the official client's "args" run type).
    "runtype": "args",
}


def create_opts(request: ComputeRequest) -> dict[str, Any]:
    """The ``provider_opts`` that go into the create body (:data:`PASS_THROUGH_OPTS`).

    Raises:
        ValidationError: field ``provider_opts`` naming every other key (not a field of
            the official client's create body, or one atlas sets itself).
    """
    opts = {str(k): v for k, v in request.provider_opts.items()}
    refuse_foreign_opts(
        opts,
        owned=OWN_CREATE_FIELDS,
        known=CREATE_FIELDS,
        unknown_why="not a Vast create-instance field",
        allowed=PASS_THROUGH_OPTS,
        provider=PROVIDER,
    )
    runtype = opts.get("runtype")
    if runtype is not None and runtype not in RUNTYPES:
        raise validation_error(
            "provider_opts.runtype",
            f"{runtype!r} is not a Vast run type; one of: {', '.join(sorted(RUNTYPES))}",
            provider=PROVIDER,
        )
    return opts


#: Run types the official client knows.
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


def create_body(request: ComputeRequest, offer: dict[str, Any]) -> dict[str, Any]:
    """The ``PUT /asks/{offer_id}/`` body, with the official client's fields.

    ``env`` carries the request env plus one ``"-p <port>:<port>": "1"`` entry per port;
    ``label`` is the request name (what the reaper and lookups match); ``price`` is the
    offer's ``min_bid`` for spot, else null (on-demand). Layers, lowest first: the
    official client's defaults (``runtype`` ``args``: the image's own entrypoint), then
    :func:`create_opts`, then our fields, which ``provider_opts`` can never replace.

    Raises:
        ValidationError: ``image`` missing, an env name that is a Docker flag, or bad
            ``provider_opts``.
    """
    if not request.image:
        raise validation_error(
            "image", "required on Vast (there are no templates here)", provider=PROVIDER
        )
    opts = create_opts(request)
    env: dict[str, str] = {}
    for key, value in request.env.items():
        if key.startswith("-"):
            raise validation_error(
                "env",
                f"{key!r}: names starting with '-' are Docker flags on Vast; use ports=[...]",
                provider=PROVIDER,
            )
        env[key] = value
    for port, _proto in request.ports:
        env[f"-p {port}:{port}"] = "1"
    price = as_float(offer.get("min_bid")) if request.spot else None
    if request.spot and price is None:
        raise ProviderError("Vast bid offer has no min_bid", provider=PROVIDER, raw=offer)
    ours: dict[str, Any] = {
        "client_id": "me",
        "image": request.image,
        "env": env,
        "price": price,
        "disk": float(disk_gb(request)),
        "label": request.name,
    }
    return {**_CREATE_DEFAULTS, **opts, **ours}


def new_contract_id(body: Any) -> str:
    """The instance id of a create answer ``{"success": true, "new_contract": 123}``.

    Raises:
        ProviderError: no id.
    """
    contract = body.get("new_contract") if isinstance(body, dict) else None
    if isinstance(contract, bool) or not isinstance(contract, int | str) or contract == "":
        raise malformed(PROVIDER, "create answer has no new_contract", body)
    return str(contract)


# ---------------------------------------------------------------------------- instances
def instance_from_get(body: Any) -> dict[str, Any] | None:
    """The instance of ``GET /instances/{id}/``; None when Vast answers it empty
    (``{"instances": null}`` or ``{}``, how an unknown or destroyed id can come back).

    Raises:
        ProviderError: an answer with neither shape.
    """
    if not isinstance(body, dict) or "instances" not in body:
        raise malformed(PROVIDER, "instance answer has no instances key", body)
    item = body["instances"]
    if item is None or item == {} or item == []:
        return None
    if isinstance(item, list) and len(item) == 1 and isinstance(item[0], dict):
        return item[0]  # tolerate a one-element list
    if not isinstance(item, dict):
        raise malformed(PROVIDER, "instances is not an object", body)
    return item


def instances_from_list(body: Any) -> list[dict[str, Any]]:
    """The instances of ``GET /instances/``.

    Raises:
        ProviderError: no ``instances`` list (an empty list would hide pods from the reaper).
    """
    items = body.get("instances") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise malformed(PROVIDER, "instance list has no instances array", body)
    return [item for item in items if isinstance(item, dict)]


def instance_to_compute(body: Any) -> Compute:
    """One Vast instance → :class:`Compute` (``raw`` = the instance).

    Raises:
        ProviderError: not an object, or no id.
    """
    if not isinstance(body, dict):
        raise malformed(PROVIDER, "instance is not a JSON object", body)
    raw_id = body.get("id")
    if isinstance(raw_id, bool) or not isinstance(raw_id, int | str) or raw_id == "":
        raise malformed(PROVIDER, "instance has no id", body)
    ip = stripped_or_none(body.get("public_ipaddr"))
    native = stripped_or_none(body.get("gpu_name"))
    return Compute(
        id=str(raw_id),
        provider=PROVIDER,
        status=status_of(body),
        public_ip=ip,
        ports=parse_ports(body.get("ports"), ip),
        gpu_type=vast_canonical(native, as_float(body.get("gpu_ram"))) or native,
        gpu_count=as_int(body.get("num_gpus")) or 1,
        cost_per_hour=as_float(body.get("dph_total")),
        region=stripped_or_none(body.get("geolocation")),
        image=stripped_or_none(body.get("image_uuid")) or stripped_or_none(body.get("image")),
        name=stripped_or_none(body.get("label")),
        created_at=_epoch(body.get("start_date")),
        raw=body,
    )


def parse_ports(ports: Any, ip: str | None) -> list[Port]:
    """Docker's mapping ``{"8000/tcp": [{"HostIp", "HostPort"}]}`` → tcp ports.

    The first IPv4 binding wins (Vast lists ``0.0.0.0`` and ``::`` with the same port).
    """
    if not isinstance(ports, dict):
        return []
    out: list[Port] = []
    for key in sorted(ports, key=lambda k: as_int(str(k).split("/")[0]) or 0):
        match = _PORT_KEY.match(str(key))
        if match is None or (match.group(2) or "tcp") != "tcp":
            continue
        internal = int(match.group(1))
        external: int | None = None
        bindings = ports[key]
        if isinstance(bindings, list):
            for binding in bindings:
                if isinstance(binding, dict):
                    external = as_int(binding.get("HostPort"))
                    if external is not None:
                        break
        out.append(tcp_port(internal, external, ip))
    return out


def env_of(body: dict[str, Any]) -> dict[str, str]:
    """The container env of an instance from ``extra_env`` (``[[k, v], ...]`` or an
    object), without the ``-p`` port flags."""
    raw = body.get("extra_env")
    pairs: list[Any] = (
        list(raw.items()) if isinstance(raw, dict) else (raw if isinstance(raw, list) else [])
    )
    out: dict[str, str] = {}
    for pair in pairs:
        if isinstance(pair, list | tuple) and len(pair) == 2 and not str(pair[0]).startswith("-"):
            out[str(pair[0])] = str(pair[1])
    return out


# ---------------------------------------------------------------------------- catalog
def gpu_types_from_offers(offers: list[dict[str, Any]]) -> list[GpuType]:
    """One :class:`GpuType` per ``gpu_name``: cheapest on-demand and bid price *per GPU*
    over its offers, memory from ``gpu_ram`` (MB), stock from the number of offers."""
    # Grouped by name *and* canonical GPU: one Vast name can hide two sizes (A100 SXM4
    # 40 GB / 80 GB), which are different canonical GPUs at different prices.
    groups: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
    for offer in offers:
        name = stripped_or_none(offer.get("gpu_name"))
        if name:
            canonical = vast_canonical(name, as_float(offer.get("gpu_ram")))
            groups.setdefault((name, canonical), []).append(offer)
    out = []
    for name, canonical in sorted(groups, key=lambda k: (k[0], k[1] or "")):
        group = groups[(name, canonical)]
        on_demand = _min_per_gpu(group, "dph_total")
        spot = _min_per_gpu(group, "min_bid")
        rams = [r for r in (as_float(o.get("gpu_ram")) for o in group) if r]
        count = len(group)
        stock = "high" if count >= 10 else "medium" if count >= 3 else "low"
        out.append(
            GpuType(
                id=name,
                provider=PROVIDER,
                canonical=canonical,
                display_name=name,
                memory_gb=round(max(rams) / 1024, 1) if rams else None,
                lowest_price_per_hour=on_demand,
                spot_price_per_hour=spot,
                stock=stock,
                cloud_type="any",
                raw={"gpu_name": name, "offers": count},
            )
        )
    return out


def _min_per_gpu(group: list[dict[str, Any]], field: str) -> float | None:
    prices = []
    for offer in group:
        price, gpus = as_float(offer.get(field)), as_int(offer.get("num_gpus")) or 1
        if price is not None:
            prices.append(price / gpus)
    return round(min(prices), 4) if prices else None


# ---------------------------------------------------------------------------- errors
def check_success(body: Any, status: int) -> None:
    """Raise for ``{"success": false, ...}``, which Vast may send with HTTP 200.

    Raises:
        NotFoundError: ``error`` is a no-such-object code.
        ProviderError: any other refusal; the message is Vast's ``msg``.
    """
    if isinstance(body, dict) and body.get("success") is False:
        raise refusal(body, status)


def refusal(body: dict[str, Any], status: int | None) -> AtlasError:
    """The error for a Vast refusal body ``{"success": false, "error", "msg"}``."""
    code = stripped_or_none(body.get("error"))
    msg = (
        stripped_or_none(body.get("msg"))
        or stripped_or_none(body.get("message"))
        or code
        or "request refused"
    )
    text = f"{msg} [{code}]" if code and code not in msg else msg
    if code in NOT_FOUND_CODES:
        return NotFoundError(text, provider=PROVIDER, status=status, raw=body)
    return ProviderError(text, provider=PROVIDER, status=status, raw=body)


def refine_error(err: AtlasError) -> AtlasError:
    """Give a mapped HTTP error Vast's ``msg`` (``error_from_response`` would pick the
    terse ``error`` code first) and map no-such-object codes to ``NotFoundError``."""
    body = err.raw
    if not isinstance(body, dict) or not ("msg" in body or "error" in body):
        return err
    if not isinstance(body.get("error"), str | None):
        return err
    refined = refusal(body, err.status)
    if not isinstance(refined, NotFoundError):
        refined = AtlasError(
            refined.message, kind=err.kind, provider=PROVIDER, status=err.status, raw=body
        )
    return mark_maybe_created(refined) if is_maybe_created(err) else refined


def is_offer_gone(err: AtlasError) -> bool:
    """Whether a create failed because the offer was rented meanwhile (try the next)."""
    body = err.raw if isinstance(err.raw, dict) else {}
    text = f"{body.get('error', '')} {body.get('msg', '')} {err.message or ''}".lower()
    return "no_such_ask" in text or "not available" in text or "no longer available" in text


# ---------------------------------------------------------------------------- helpers
def _epoch(value: Any) -> datetime | None:
    seconds = as_float(value)
    if seconds is None or seconds <= 0:
        return None
    return datetime.fromtimestamp(seconds, UTC)


__all__ = [
    "DEFAULT_DISK_GB",
    "MAX_OFFER_ATTEMPTS",
    "NOT_FOUND_CODES",
    "PROVIDER",
    "SEARCH_LIMIT",
    "CREATE_FIELDS",
    "DEFAULT_FILTERS",
    "OWN_CREATE_FIELDS",
    "PASS_THROUGH_OPTS",
    "RUNTYPES",
    "catalog_query",
    "check_success",
    "create_body",
    "create_opts",
    "disk_gb",
    "env_of",
    "gpu_name",
    "gpu_types_from_offers",
    "instance_from_get",
    "instance_to_compute",
    "instances_from_list",
    "is_offer_gone",
    "new_contract_id",
    "no_offer_error",
    "offers_from_body",
    "parse_ports",
    "rank_offers",
    "refine_error",
    "refusal",
    "search_query",
    "status_of",
]
