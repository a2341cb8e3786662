"""RunPod REST v2 (``https://api.runpod.io/v2/...``) served under ``/runpod/v2``.

Point ``ATLAS_RUNPOD_BASE_URL`` at ``<fake>/runpod`` (``FakeCloud.runpod_rest_url``): paths
then read exactly as in RunPod's definition (``/v2/pods``...), and the tests check every
exchange against ``runpod-rest-v2.openapi.json``. Served:

=====================================  ================================================
``/v2/pods`` (GET, POST)               wrapped list ``{"pods": [...]}``; create → 201
``/v2/pods/{id}`` (GET, DELETE)        DELETE → 204
``/v2/pods/{id}/action`` (POST)        ``{"action": "start|stop|restart|terminate"}``
``/v2/catalog/gpus`` (GET)             prices per cloud; stock with
                                       ``include=AVAILABILITY&product=POD``
``/v2/templates[/{id}]``               list / create (201) / get / delete (204)
``/v2/network-volumes[/{id}]``         likewise
``/v2/serverless[/{id}]``              likewise (endpoints)
``/v2/billing/pods`` (GET)             one record per pod: price × time run
=====================================  ================================================

Strict where the definition is strict: create bodies with unknown or mistyped fields get a
**422** problem listing every violation in ``errors`` (``$.bogus: unknown field``);
cross-field rules (``gpu`` and ``cpu``, two mount kinds, a GPU id RunPod does not have)
get **400**; an action the pod's status does not allow gets **409**; unknown ids **404**.
Every error is an RFC 9457 ``application/problem+json`` body ``{title, status, detail,
errors?}``, and every answer carries ``RateLimit``/``RateLimit-Policy`` headers counting
the key's per-minute quota (:mod:`.ratelimit`: enforced with 429 + ``Retry-After`` when
``rate_limit_per_minute`` is set, else reported as :data:`MINUTE_QUOTA` and never refused).

The serverless *runtime* (``/runpod/v2/<endpoint>/run``...) is :mod:`.runpod_runtime`;
its routes come after these, so an endpoint id cannot shadow a management path.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from atlas_tasks.testing.fakecloud.catalog import GPU_TYPE_IDS, GPUS, FakeGpu, gpu_info
from atlas_tasks.testing.fakecloud.common import (
    FakeCloudContext,
    Handler,
    RouteSpec,
    provider_routes,
)
from atlas_tasks.testing.fakecloud.ratelimit import UNENFORCED_QUOTA
from atlas_tasks.testing.fakecloud.state import Pod, iso

#: Route prefix: ``/runpod`` (the stand-in for ``https://api.runpod.io``) + ``/v2``. Fault
#: rules match the path below it (``POST /pods``, ``DELETE /pods/*``), as they did for v1.
REST_PREFIX = "/runpod/v2"

#: RunPod's ``application/problem+json`` media type.
PROBLEM_JSON = "application/problem+json"

#: Per-minute quota the fake reports in ``RateLimit-Policy`` when none is enforced.
MINUTE_QUOTA = UNENFORCED_QUOTA

_PORT_RE = re.compile(r"^(\d{1,5})/(http|tcp|udp)$")
_CUDA_RE = re.compile(r"^\d+\.\d+$")


# ---- problems and rate-limit headers ----------------------------------------------------


class Problem(Exception):
    """Raised by handlers; becomes an RFC 9457 problem answer."""

    def __init__(self, status: int, detail: str, errors: list[str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors


def problem(status: int, detail: str, errors: list[str] | None = None) -> JSONResponse:
    """An ``application/problem+json`` answer ``{title, status, detail, errors?}``."""
    body: dict[str, Any] = {"title": HTTPStatus(status).phrase, "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


def _with_problems(handler: Handler) -> Handler:
    """``handler`` with :class:`Problem` rendered (the ``RateLimit`` headers are added by
    :func:`~.common.provider_route` from the key's quota window)."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except Problem as exc:
            return problem(exc.status, exc.detail, exc.errors)

    return wrapped


async def _body(request: Request) -> Any:
    """The decoded JSON body. Raises a 400 problem for invalid JSON."""
    raw = await request.body()
    if not raw.strip():
        raise Problem(400, "request body is required")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise Problem(400, "request body is not valid JSON") from exc


# ---- a small validator for the request schemas the fake accepts -------------------------
# Each schema is a dict: {"type": "object", "props": {...}, "required": [...],
# "closed": True} | {"type": "string", "min": 1} | {"type": "integer", "min": 1, "max": 9}
# | {"type": "number", "min": 0.5} | {"type": "boolean"} | {"enum": [...]}
# | {"type": "array", "items": {...}, "max_items": 1} | {"type": "string_map"}
# | {"type": "nullable_string"}. Errors read like RunPod's: "$.gpu.count: must be >= 1".

Schema = dict[str, Any]

_STR: Schema = {"type": "string"}
_STR1: Schema = {"type": "string", "min": 1}
_BOOL: Schema = {"type": "boolean"}
_STR_LIST: Schema = {"type": "array", "items": _STR}
_CUDA_LIST: Schema = {"type": "array", "items": {"type": "string", "pattern": _CUDA_RE}}
_PORTS: Schema = {"type": "array", "items": {"type": "string", "pattern": _PORT_RE}}

#: ``ContainerConfig`` (shared by pods, templates and endpoints).
_CONTAINER: dict[str, Schema] = {
    "args": _STR,
    "disk": {"type": "integer", "min": 1},
    "env": {"type": "string_map"},
    "image": _STR,
    "ports": _PORTS,
    "registry": {"type": "nullable_string"},
}

_PERSISTENT: Schema = {
    "type": "object",
    "closed": True,
    "required": ["size", "path"],
    "props": {"size": {"type": "integer", "min": 10}, "path": _STR},
}
_NETWORK: Schema = {
    "type": "object",
    "closed": True,
    "required": ["volumeId", "path"],
    "props": {"volumeId": _STR, "path": _STR},
}

CREATE_POD: Schema = {
    "type": "object",
    "closed": True,
    "required": ["name"],
    "props": {
        **_CONTAINER,
        "name": _STR1,
        "cloud": {"enum": ["SECURE", "COMMUNITY"]},
        "cpu": {
            "type": "object",
            "closed": True,
            "required": ["id", "vcpuCount"],
            "props": {"id": _STR1, "vcpuCount": {"type": "integer", "min": 2}},
        },
        "dataCenterIds": _STR_LIST,
        "globalNetworking": _BOOL,
        "gpu": {
            "type": "object",
            "closed": True,
            "required": ["id"],
            "props": {
                "id": _STR,
                "count": {"type": "integer", "min": 1},
                "allowedCudaVersions": _CUDA_LIST,
                "minCudaVersion": {"type": "string", "pattern": _CUDA_RE},
            },
        },
        "mounts": {
            "type": "object",
            "closed": True,
            "props": {
                "persistent": _PERSISTENT,
                "network": {"type": "array", "items": _NETWORK, "max_items": 1},
            },
        },
        "startJupyter": _BOOL,
        "startSsh": _BOOL,
        "templateId": _STR1,
    },
}

CREATE_TEMPLATE: Schema = {
    "type": "object",
    "closed": True,
    "required": ["name", "image"],
    "props": {
        **_CONTAINER,
        "name": _STR1,
        "allowedCudaVersions": _CUDA_LIST,
        "category": {"enum": ["CPU", "NVIDIA", "AMD"]},
        "mounts": {"type": "object", "closed": True, "props": {"persistent": _PERSISTENT}},
        "public": _BOOL,
        "serverless": _BOOL,
        "startJupyter": _BOOL,
        "startSsh": _BOOL,
    },
}

CREATE_VOLUME: Schema = {
    "type": "object",
    "closed": True,
    "required": ["name", "size", "dataCenter"],
    "props": {
        "name": _STR1,
        "dataCenter": _STR1,
        "size": {"type": "integer", "min": 10, "max": 4096},
        "type": {"enum": ["STANDARD", "HIGH_PERFORMANCE"]},
    },
}

CREATE_ENDPOINT: Schema = {
    "type": "object",
    "closed": True,
    "required": ["name", "type", "scaling"],
    "props": {
        **_CONTAINER,
        "name": _STR1,
        "type": {"enum": ["QUEUE", "LOAD_BALANCER"]},
        "scaling": {
            "type": "object",
            "closed": True,
            "required": ["type"],
            "props": {
                "type": {"enum": ["QUEUE_DELAY", "REQUEST_COUNT"]},
                "queueDelay": {"type": "number", "min": 0.5},
                "requestCount": {"type": "integer", "min": 1},
            },
        },
        "gpu": {
            "type": "object",
            "closed": True,
            "required": ["pools"],
            "props": {
                "pools": {"type": "array", "items": _STR, "min_items": 1},
                "excludedTypes": _STR_LIST,
                "count": {"type": "integer", "min": 1},
                "allowedCudaVersions": _CUDA_LIST,
                "minCudaVersion": {"type": "string", "pattern": _CUDA_RE},
            },
        },
        "dataCenterIds": _STR_LIST,
        "flashboot": {"enum": ["OFF", "FLASHBOOT", "PRIORITY_FLASHBOOT"]},
        "networkVolumes": _STR_LIST,
        "templateId": _STR1,
        "timeout": {"type": "integer", "min": 1},
        "workers": {
            "type": "object",
            "closed": True,
            "props": {
                "min": {"type": "integer", "min": 0},
                "max": {"type": "integer", "min": 0},
                "idleTimeout": {"type": "integer", "min": 1, "max": 3600},
            },
        },
    },
}

ACTION: Schema = {
    "type": "object",
    "closed": True,
    "required": ["action"],
    "props": {"action": {"enum": ["start", "stop", "restart", "terminate"]}},
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check(value: Any, schema: Schema, path: str = "$") -> list[str]:
    """Every violation of ``schema`` by ``value`` (``[]`` when it conforms)."""
    errors: list[str] = []
    if "enum" in schema:
        if value not in schema["enum"]:
            errors.append(f"{path}: must be one of {', '.join(schema['enum'])}")
        return errors
    kind = schema["type"]
    if kind == "object":
        if not isinstance(value, dict):
            return [f"{path}: must be an object"]
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{path}.{name}: required")
        props: dict[str, Schema] = schema.get("props", {})
        for name, item in value.items():
            if name in props:
                errors += check(item, props[name], f"{path}.{name}")
            elif schema.get("closed"):
                errors.append(f"{path}: additional properties '{name}' not allowed")
    elif kind == "array":
        if not isinstance(value, list):
            return [f"{path}: must be an array"]
        if len(value) > schema.get("max_items", len(value)):
            errors.append(f"{path}: at most {schema['max_items']} item(s)")
        if len(value) < schema.get("min_items", 0):
            errors.append(f"{path}: at least {schema['min_items']} item(s)")
        for i, item in enumerate(value):
            errors += check(item, schema["items"], f"{path}[{i}]")
    elif kind == "string_map":
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            errors.append(f'{path}: must be an object of strings, e.g. {{"KEY": "value"}}')
    elif kind == "nullable_string":
        if value is not None and not isinstance(value, str):
            errors.append(f"{path}: must be a string or null")
    elif kind == "string":
        if not isinstance(value, str):
            errors.append(f"{path}: must be a string")
        elif len(value) < schema.get("min", 0):
            errors.append(f"{path}: must not be empty")
        elif "pattern" in schema and not schema["pattern"].match(value):
            errors.append(f"{path}: {value!r} does not match {schema['pattern'].pattern}")
    elif kind == "boolean":
        if not isinstance(value, bool):
            errors.append(f"{path}: must be a boolean")
    elif kind in ("integer", "number"):
        ok = (
            _is_int(value)
            if kind == "integer"
            else (isinstance(value, int | float) and not isinstance(value, bool))
        )
        if not ok:
            errors.append(f"{path}: must be {'an integer' if kind == 'integer' else 'a number'}")
        elif value < schema.get("min", value):
            errors.append(f"{path}: must be >= {schema['min']}")
        elif value > schema.get("max", value):
            errors.append(f"{path}: must be <= {schema['max']}")
    else:  # pragma: no cover - schema typo
        raise AssertionError(kind)
    return errors


def validated(body: Any, schema: Schema, what: str) -> dict[str, Any]:
    """``body`` if it conforms to ``schema``, else a 422 problem listing every violation."""
    errors = check(body, schema)
    if errors:
        raise Problem(422, f"{what}: request validation failed", errors)
    assert isinstance(body, dict)
    return body


def validate_pod_create(raw: Any, ctx: FakeCloudContext) -> dict[str, Any]:
    """Check a ``CreatePodRequest`` as RunPod does: contract violations → 422, cross-field
    rules and placement failures → 400 (see the ``createPod`` operation's table).

    Raises:
        Problem: 422 or 400.
    """
    if not ctx.config.strict_fields and isinstance(raw, dict):
        # Lenient mode: unknown top-level fields are ignored instead of refused (422).
        raw = {k: v for k, v in raw.items() if k in CREATE_POD["props"]}
    body = validated(raw, CREATE_POD, "CreatePodRequest")
    if "image" not in body and "templateId" not in body:
        raise Problem(
            422,
            "CreatePodRequest: request validation failed",
            ["$.image: required unless templateId is set"],
        )
    if ("gpu" in body) == ("cpu" in body):
        raise Problem(400, "exactly one of gpu or cpu must be set")
    mounts = body.get("mounts") or {}
    if "persistent" in mounts and "network" in mounts:
        raise Problem(400, "mounts: persistent and network are mutually exclusive")
    if "cpu" in body and "persistent" in mounts:
        raise Problem(400, "mounts.persistent is not allowed on CPU pods")
    gpu = body.get("gpu") or {}
    if gpu.get("allowedCudaVersions") and "minCudaVersion" in gpu:
        raise Problem(400, "gpu: allowedCudaVersions and minCudaVersion are mutually exclusive")
    if ctx.config.strict_gpu_types and gpu and gpu["id"] not in GPU_TYPE_IDS:
        raise Problem(400, f"gpu.id: {gpu['id']!r} is not a GPU type RunPod offers")
    most = gpu_info(gpu["id"]).max_gpu_count if gpu else 0
    if gpu and gpu.get("count", 1) > most:
        # The catalog's GpuType.maxCount: no machine has more; RunPod refuses the placement.
        raise Problem(
            400,
            f"gpu.count: {gpu['count']} exceeds the {most} {gpu['id']} GPUs a "
            "pod can have (GET /v2/catalog/gpus maxCount)",
        )
    if "cpu" in body:
        # The fake implements GPU pods only; say so rather than pretend.
        raise Problem(400, "this fake cloud does not implement CPU pods")
    return body


# ---- pods ---------------------------------------------------------------------------------


def build_routes(ctx: FakeCloudContext) -> list[Route]:
    """Every REST v2 route, bound to ``ctx``."""
    state = ctx.state

    def pod_or_404(pod_id: str) -> Pod:
        pod = state.live_pod(pod_id)
        if pod is None:
            raise Problem(404, "pod not found")
        return pod

    async def create_pod(request: Request) -> Response:
        body = validate_pod_create(await _body(request), ctx)
        template_id = body.get("templateId")
        if template_id:
            template = state.templates.get(template_id)
            if template is None:
                raise Problem(404, f"template {template_id!r} not found")
            if template["serverless"]:
                raise Problem(
                    422,
                    "template is a serverless template",
                    ["$.templateId: must not be a serverless template"],
                )
            # Body fields override the template's, except env, merged with the body winning.
            merged: dict[str, Any] = {
                k: template[k] for k in ("image", "args", "disk", "ports") if k in template
            }
            body = {**merged, **body, "env": {**template["env"], **body.get("env", {})}}
        pod = state.create_pod(body, boot_delay_s=ctx.config.boot_delay_s)
        return JSONResponse(pod.to_v2(time.time()), status_code=201)

    async def list_pods(request: Request) -> Response:
        include = request.query_params.get("includeClusterPods")
        if include is not None and include not in ("true", "false"):
            raise Problem(422, "invalid query", ["includeClusterPods: must be a boolean"])
        now = time.time()
        with state.lock:
            state.totals["lists"] += 1
            # Terminated pods no longer appear in listPods.
            pods = [p.to_v2(now) for p in state.pods.values() if p.desired_status != "TERMINATED"]
        return JSONResponse({"pods": pods})

    async def get_pod(request: Request) -> Response:
        pod_id = request.path_params["pod_id"]
        state.count_pod_call(pod_id, "gets")
        return JSONResponse(pod_or_404(pod_id).to_v2(time.time()))

    def stop(pod: Pod, now: float) -> None:
        pod.halt("EXITED", now)
        pod.last_status_change = f"Exited by user: {iso(now)}"

    def start(pod: Pod, now: float) -> None:
        pod.desired_status = "RUNNING"
        pod.last_started_at = now
        pod.boot_until = now + ctx.config.boot_delay_s
        pod.last_status_change = f"Resumed by user: {iso(now)}"

    def terminate(pod: Pod, now: float) -> None:
        pod.halt("TERMINATED", now)
        pod.last_status_change = f"Terminated by user: {iso(now)}"
        pod.calls["deletes"] += 1
        state.totals["deletes"] += 1

    transitions: dict[str, tuple[str, Callable[[Pod, float], None]]] = {
        "stop": ("stops", stop),
        "start": ("starts", start),
        "restart": ("restarts", start),
        "terminate": ("delete_calls", terminate),
    }

    async def pod_action(request: Request) -> Response:
        pod_id = request.path_params["pod_id"]
        verb = validated(await _body(request), ACTION, "PodActionRequest")["action"]
        calls, change = transitions[verb]
        state.count_pod_call(pod_id, calls)
        now = time.time()
        with state.lock:
            pod = pod_or_404(pod_id)
            status = pod.v2_status(now)
            if verb not in pod.to_v2(now)["actions"]:
                raise Problem(409, f"cannot {verb} a pod in status {status}")
            change(pod, now)
            if verb == "terminate":
                return Response(status_code=204)
            answer: dict[str, Any] = pod.to_v2(now)
            return JSONResponse(answer)

    async def delete_pod(request: Request) -> Response:
        pod_id = request.path_params["pod_id"]
        state.count_pod_call(pod_id, "delete_calls")
        with state.lock:
            terminate(pod_or_404(pod_id), time.time())
        return Response(status_code=204)

    routes: list[RouteSpec] = [
        (["POST"], "/pods", create_pod, True),
        (["GET"], "/pods", list_pods, False),
        (["GET"], "/pods/{pod_id}", get_pod, False),
        (["DELETE"], "/pods/{pod_id}", delete_pod, False),
        (["POST"], "/pods/{pod_id}/action", pod_action, False),
        (["GET"], "/catalog/gpus", _catalog_handler(), False),
        (["GET"], "/catalog/gpus/{gpu_id}", _catalog_gpu_handler(), False),
        (["GET"], "/billing/pods", _billing_handler(ctx), False),
    ]
    routes += _crud_routes(
        ctx, "/templates", "templates", "template", _template_from, state.templates
    )
    routes += _crud_routes(
        ctx, "/network-volumes", "networkVolumes", "network volume", _volume_from, state.volumes
    )
    routes += _crud_routes(
        ctx, "/serverless", "endpoints", "endpoint", _endpoint_from, state.endpoints
    )
    wrapped = [
        (methods, path, _with_problems(handler), creates)
        for methods, path, handler, creates in routes
    ]
    return provider_routes(ctx, "rest", REST_PREFIX, wrapped)


# ---- catalog and billing ------------------------------------------------------------------


def gpu_type_json(gpu: FakeGpu, *, availability: bool) -> dict[str, Any]:
    """One v2 catalog ``GpuType`` (``availability``/``dataCenters`` only when asked)."""
    manufacturer = gpu.manufacturer.upper()
    body: dict[str, Any] = {
        "id": gpu.id,
        "name": gpu.display_name,
        "pool": gpu.pool,
        "manufacturer": manufacturer if manufacturer in ("NVIDIA", "AMD") else "UNKNOWN",
        "memory": gpu.memory_gb,
        "secure": gpu.secure_cloud,
        "community": gpu.community_cloud,
        "price": {
            "secure": gpu.secure_price,
            "community": gpu.community_price,
            **({"serverless": gpu.serverless_price} if gpu.pool else {}),
        },
        "maxCount": {
            "secure": gpu.max_gpu_count if gpu.secure_cloud else 0,
            "community": gpu.max_gpu_count if gpu.community_cloud else 0,
        },
    }
    if availability:
        body["availability"] = gpu.stock
        body["dataCenters"] = [
            {"id": dc, "name": dc, "availability": gpu.stock} for dc in gpu.data_centers
        ]
    return body


def _catalog_include(request: Request) -> bool:
    """Whether ``include=AVAILABILITY`` was asked (with the ``product`` it requires).

    Raises:
        Problem: 422 for unknown values, 400 for include without product or vice versa.
    """
    q = request.query_params
    include = [v for v in q.get("include", "").split(",") if v]
    product = [v for v in q.get("product", "").split(",") if v]
    errors = [f"include: unknown value {v!r}" for v in include if v != "AVAILABILITY"]
    errors += [
        f"product: unknown value {v!r}"
        for v in product
        if v not in ("POD", "CLUSTER", "SERVERLESS")
    ]
    if errors:
        raise Problem(422, "invalid query", errors)
    if bool(include) != bool(product):
        raise Problem(400, "product is required with include=AVAILABILITY, and valid only with it")
    return bool(include)


def _catalog_handler() -> Handler:
    async def catalog(request: Request) -> Response:
        availability = _catalog_include(request)
        return JSONResponse({"gpus": [gpu_type_json(g, availability=availability) for g in GPUS]})

    return catalog


def _catalog_gpu_handler() -> Handler:
    # GET /v2/catalog/gpus/{id}: one GpuType (the id is percent-encoded: it has spaces).
    async def catalog_gpu(request: Request) -> Response:
        availability = _catalog_include(request)
        gpu_id = request.path_params["gpu_id"]
        for gpu in GPUS:
            if gpu.id == gpu_id:
                return JSONResponse(gpu_type_json(gpu, availability=availability))
        raise Problem(404, f"GPU type {gpu_id!r} not found")

    return catalog_gpu


def _billing_handler(ctx: FakeCloudContext) -> Handler:
    async def billing(request: Request) -> Response:
        q = request.query_params
        bucket = q.get("bucketSize", "day")
        if bucket not in ("hour", "day", "week", "month", "year"):
            raise Problem(422, "invalid query", [f"bucketSize: unknown value {bucket!r}"])
        pod_id = q.get("podId")
        now = time.time()
        start = now - 30 * 86400
        records: list[dict[str, Any]] = []
        with ctx.state.lock:
            for pod in ctx.state.pods.values():
                if pod_id is not None and pod.id != pod_id:
                    continue
                # Billed for the time it ran (stops and restarts add up) at its price.
                gpu_amount = pod.billed_usd(now)
                records.append(
                    {
                        "startTime": _rfc3339(start),
                        "endTime": _rfc3339(now),
                        "podId": pod.id,
                        "totalAmount": gpu_amount,
                        "gpuAmount": gpu_amount,
                        "cpuAmount": 0.0,
                        "diskAmount": 0.0,
                    }
                )
        total = round(sum(r["totalAmount"] for r in records), 6)
        return JSONResponse(
            {
                "records": records,
                "metadata": {
                    "query": {
                        "startTime": _rfc3339(start),
                        "endTime": _rfc3339(now),
                        "bucketSize": bucket,
                        "podId": pod_id,
                    },
                    "recordCount": len(records),
                    "uniquePodCount": len({r["podId"] for r in records}),
                    "totals": {
                        "totalAmount": total,
                        "gpuAmount": total,
                        "cpuAmount": 0.0,
                        "diskAmount": 0.0,
                    },
                },
            }
        )

    return billing


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- templates, network volumes, serverless endpoints -------------------------------------


def _template_from(body: Any, new_id: str) -> dict[str, Any]:
    body = validated(body, CREATE_TEMPLATE, "CreateTemplateRequest")
    return {
        "args": "",
        "disk": 50,
        "ports": [],
        "env": {},
        "registry": None,
        "mounts": {},
        "serverless": False,
        "public": False,
        "category": "NVIDIA",
        "startSsh": True,
        "startJupyter": True,
        "allowedCudaVersions": [],
        **body,
        "id": new_id,
    }


def _volume_from(body: Any, new_id: str) -> dict[str, Any]:
    body = validated(body, CREATE_VOLUME, "CreateNetworkVolumeRequest")
    return {
        "id": new_id,
        "name": body["name"],
        "size": body["size"],
        "dataCenter": body["dataCenter"],
        "type": body.get("type", "STANDARD"),
    }


def _endpoint_from(body: Any, new_id: str) -> dict[str, Any]:
    body = validated(body, CREATE_ENDPOINT, "CreateEndpointRequest")
    if "image" not in body and "templateId" not in body:
        raise Problem(
            422,
            "CreateEndpointRequest: request validation failed",
            ["$.image: required unless templateId is set"],
        )
    scaling = body["scaling"]
    wanted = "queueDelay" if scaling["type"] == "QUEUE_DELAY" else "requestCount"
    if wanted not in scaling or len(scaling) != 2:
        raise Problem(
            422,
            "CreateEndpointRequest: request validation failed",
            [f"$.scaling: {scaling['type']} takes exactly type and {wanted}"],
        )
    gpu = body.get("gpu")
    out: dict[str, Any] = {
        "args": "",
        "disk": 20,
        "ports": [],
        "env": {},
        "registry": None,
        "image": "",
        "workers": {"min": 0, "max": 3, "idleTimeout": 5},
        "dataCenterIds": [],
        "networkVolumes": [],
        "timeout": 300_000,
        "flashboot": "OFF",
        "createdAt": iso(time.time()),
        **{k: v for k, v in body.items() if k not in ("templateId", "gpu")},
        "id": new_id,
    }
    out["workers"] = {"min": 0, "max": 3, **body.get("workers", {})}
    if gpu is not None:
        out["gpu"] = {"count": 1, "allowedCudaVersions": [], "minCudaVersion": None, **gpu}
    return out


def _crud_routes(
    ctx: FakeCloudContext,
    base: str,
    wrapper: str,
    label: str,
    build: Callable[[Any, str], dict[str, Any]],
    store: dict[str, Any],
) -> list[RouteSpec]:
    id_length = 8 if base == "/serverless" else 10

    async def create(request: Request) -> Response:
        item = build(await _body(request), ctx.state.new_short_id(id_length))
        with ctx.state.lock:
            store[item["id"]] = item
        return JSONResponse(item, status_code=201)

    async def list_all(request: Request) -> Response:
        with ctx.state.lock:
            return JSONResponse({wrapper: list(store.values())})

    async def get_one(request: Request) -> Response:
        with ctx.state.lock:
            item = store.get(request.path_params["item_id"])
        if item is None:
            raise Problem(404, f"{label} not found")
        return JSONResponse(item)

    async def delete(request: Request) -> Response:
        with ctx.state.lock:
            item = store.pop(request.path_params["item_id"], None)
        if item is None:
            raise Problem(404, f"{label} not found")
        return Response(status_code=204)

    return [
        (["POST"], base, create, False),
        (["GET"], base, list_all, False),
        (["GET"], base + "/{item_id}", get_one, False),
        (["DELETE"], base + "/{item_id}", delete, False),
    ]


__all__ = [
    "CREATE_POD",
    "PROBLEM_JSON",
    "REST_PREFIX",
    "Problem",
    "build_routes",
    "check",
    "gpu_type_json",
    "problem",
    "validate_pod_create",
    "validated",
]
