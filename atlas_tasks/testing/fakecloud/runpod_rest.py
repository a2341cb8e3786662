"""RunPod REST v1 (``https://rest.runpod.io/v1``) served under ``/runpod/v1``.

Pods get the full treatment (validation like the real API, v1 ``Pod`` bodies, the real
status codes: 201 create, 204 delete, 404 ``{"error": "Pod not found."}``); templates,
network volumes and endpoints get minimal CRUD with the spec's statuses (POST → 200).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from atlas_tasks.testing.fakecloud.catalog import V1_GPU_TYPE_IDS
from atlas_tasks.testing.fakecloud.common import (
    BadRequest,
    FakeCloudContext,
    Handler,
    RouteSpec,
    error,
    json_body,
    provider_routes,
)
from atlas_tasks.testing.fakecloud.state import Pod, iso

REST_PREFIX = "/runpod/v1"

_PORT_RE = re.compile(r"^(\d{1,5})/(http|tcp)$")

# PodCreateInput field → expected JSON type ("enum" types list their values).
_POD_FIELDS: dict[str, Any] = {
    "allowedCudaVersions": "str_list",
    "cloudType": ("SECURE", "COMMUNITY"),
    "computeType": ("GPU", "CPU"),
    "containerDiskInGb": "int",
    "containerRegistryAuthId": "str",
    "countryCodes": "str_list",
    "cpuFlavorIds": "str_list",
    "cpuFlavorPriority": ("availability", "custom"),
    "dataCenterIds": "str_list",
    "dataCenterPriority": ("availability", "custom"),
    "dockerEntrypoint": "str_list",
    "dockerStartCmd": "str_list",
    "env": "env",
    "globalNetworking": "bool",
    "gpuCount": "int",
    "gpuTypeIds": "str_list",
    "gpuTypePriority": ("availability", "custom"),
    "imageName": "str",
    "interruptible": "bool",
    "locked": "bool",
    "minDiskBandwidthMBps": "number",
    "minDownloadMbps": "number",
    "minRAMPerGPU": "int",
    "minUploadMbps": "number",
    "minVCPUPerGPU": "int",
    "name": "str",
    "networkVolumeId": "str",
    "ports": "ports",
    "supportPublicIp": "bool",
    "templateId": "str",
    "vcpuCount": "int",
    "volumeInGb": "int",
    "volumeMountPath": "str",
}

_POD_STATUSES = ("RUNNING", "EXITED", "TERMINATED")


def _check_type(name: str, value: Any, kind: Any) -> None:
    """Raise BadRequest unless ``value`` has the JSON type ``kind`` wants."""
    if isinstance(kind, tuple):
        if value not in kind:
            raise BadRequest(f"{name}: must be one of {', '.join(kind)} (got {value!r})")
        return
    ok: bool
    if kind == "str":
        ok = isinstance(value, str)
        want = "a string"
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
        want = "an integer"
    elif kind == "number":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        want = "a number"
    elif kind == "bool":
        ok = isinstance(value, bool)
        want = "a boolean"
    elif kind == "str_list":
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        want = "an array of strings"
    elif kind == "env":
        ok = isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        )
        want = 'an object of string values, e.g. {"ENV_VAR": "value"}'
    elif kind == "ports":
        ok = isinstance(value, list) and all(
            isinstance(p, str) and _valid_port(p) for p in value
        )
        want = 'an array of "<port>/<http|tcp>" strings, e.g. ["8888/http", "22/tcp"]'
    else:  # pragma: no cover - table typo
        raise AssertionError(kind)
    if not ok:
        raise BadRequest(f"{name}: must be {want} (got {value!r})")


def _valid_port(spec: str) -> bool:
    match = _PORT_RE.match(spec)
    return match is not None and 1 <= int(match.group(1)) <= 65535


def validate_pod_create(body: Any, ctx: FakeCloudContext) -> dict[str, Any]:
    """Check a PodCreateInput the way the v1 API does; return it (defaults not filled).

    Raises:
        BadRequest: naming the first offending field.
    """
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object (PodCreateInput)")
    for name, value in body.items():
        kind = _POD_FIELDS.get(name)
        if kind is None:
            if ctx.config.strict_fields:
                raise BadRequest(f"{name}: unknown field in PodCreateInput")
            continue
        _check_type(name, value, kind)
    if "gpuCount" in body and body["gpuCount"] < 1:
        raise BadRequest(f"gpuCount: must be >= 1 (got {body['gpuCount']})")
    for name in ("containerDiskInGb", "volumeInGb", "vcpuCount"):
        if name in body and body[name] < 0:
            raise BadRequest(f"{name}: must be >= 0")
    if ctx.config.strict_gpu_types:
        for gpu in body.get("gpuTypeIds", []):
            if gpu not in V1_GPU_TYPE_IDS:
                raise BadRequest(f"gpuTypeIds: {gpu!r} is not a valid GPU type id")
    if not body.get("imageName") and not body.get("templateId"):
        raise BadRequest("imageName: required unless templateId is given")
    return body


def _multi(request: Request, name: str) -> list[str]:
    # Array query params arrive as repeated keys (gpuTypeId=a&gpuTypeId=b) or name[].
    return request.query_params.getlist(name) + request.query_params.getlist(f"{name}[]")


def build_routes(ctx: FakeCloudContext) -> list[Route]:
    """All REST v1 routes, bound to ``ctx``."""
    state = ctx.state

    def not_found_pod() -> JSONResponse:
        return error(404, "Pod not found.")

    async def create_pod(request: Request) -> Response:
        body = validate_pod_create(await json_body(request), ctx)
        template_id = body.get("templateId")
        if template_id and not body.get("imageName"):
            template = state.templates.get(template_id)
            image = template["imageName"] if template else f"runpod/template-{template_id}"
            body = {**body, "imageName": image}
        pod = state.create_pod(body, boot_delay_s=ctx.config.boot_delay_s)
        return JSONResponse(pod.to_v1(time.time()), status_code=201)

    async def list_pods(request: Request) -> Response:
        q = request.query_params
        status = q.get("desiredStatus")
        if status is not None and status not in _POD_STATUSES:
            raise BadRequest(f"desiredStatus: must be one of {', '.join(_POD_STATUSES)}")
        gpus, dcs = _multi(request, "gpuTypeId"), _multi(request, "dataCenterId")
        now = time.time()
        with state.lock:
            state.totals["lists"] += 1
            result = []
            for pod in state.pods.values():
                # RunPod drops terminated pods from the list, even when asked for them.
                if pod.desired_status == "TERMINATED":
                    continue
                if status and pod.desired_status != status:
                    continue
                if q.get("name") is not None and pod.name != q["name"]:
                    continue
                if q.get("id") is not None and pod.id != q["id"]:
                    continue
                if q.get("imageName") is not None and pod.image != q["imageName"]:
                    continue
                if q.get("templateId") is not None and pod.template_id != q["templateId"]:
                    continue
                if q.get("computeType") is not None and pod.compute_type != q["computeType"]:
                    continue
                if gpus and pod.gpu_type_id not in gpus:
                    continue
                if dcs and pod.data_center_id not in dcs:
                    continue
                result.append(pod.to_v1(now))
        return JSONResponse(result)

    async def get_pod(request: Request) -> Response:
        pod_id = request.path_params["pod_id"]
        state.count_pod_call(pod_id, "gets")
        pod = state.live_pod(pod_id)
        if pod is None:
            return not_found_pod()
        return JSONResponse(pod.to_v1(time.time()))

    def pod_action(calls: str, change: Callable[[Pod], None], status_code: int) -> Handler:
        """A ``/pods/{pod_id}[/verb]`` handler: count the call as ``calls``, then, under the
        state lock, 404 for an unknown or terminated pod, else ``change`` it and answer an
        empty ``status_code``."""

        async def handler(request: Request) -> Response:
            pod_id = request.path_params["pod_id"]
            state.count_pod_call(pod_id, calls)
            with state.lock:
                pod = state.live_pod(pod_id)
                if pod is None:
                    return not_found_pod()
                change(pod)
            return Response(status_code=status_code)

        return handler

    def stop(pod: Pod) -> None:
        if pod.desired_status != "EXITED":
            pod.desired_status = "EXITED"
            pod.last_status_change = f"Exited by user: {iso(time.time())}"

    def start(pod: Pod) -> None:
        if pod.desired_status != "RUNNING":
            now = time.time()
            pod.desired_status = "RUNNING"
            pod.last_started_at = now
            pod.boot_until = now + ctx.config.boot_delay_s
            pod.last_status_change = f"Resumed by user: {iso(now)}"

    def delete(pod: Pod) -> None:
        pod.desired_status = "TERMINATED"
        pod.last_status_change = f"Terminated by user: {iso(time.time())}"
        pod.calls["deletes"] += 1
        state.totals["deletes"] += 1

    routes: list[RouteSpec] = [
        (["POST"], "/pods", create_pod, True),
        (["GET"], "/pods", list_pods, False),
        (["GET"], "/pods/{pod_id}", get_pod, False),
        (["POST"], "/pods/{pod_id}/stop", pod_action("stops", stop, 200), False),
        (["POST"], "/pods/{pod_id}/start", pod_action("starts", start, 200), False),
        (["DELETE"], "/pods/{pod_id}", pod_action("delete_calls", delete, 204), False),
    ]
    out = provider_routes(ctx, "rest", REST_PREFIX, routes)
    out += _crud_routes(ctx, "templates", "Template", _template_from, state.templates)
    out += _crud_routes(ctx, "networkvolumes", "Network volume", _volume_from, state.volumes)
    out += _crud_routes(ctx, "endpoints", "Endpoint", _endpoint_from, state.endpoints)
    return out


# ---- templates, network volumes, endpoints (minimal CRUD) -------------------------------


def _require(body: Any, fields: dict[str, str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    for name, kind in fields.items():
        if name not in body:
            raise BadRequest(f"{name}: required")
        _check_type(name, body[name], kind)
    return body


def _template_from(body: Any, new_id: str) -> dict[str, Any]:
    body = _require(body, {"name": "str", "imageName": "str"})
    for name, kind in (("env", "env"), ("ports", "ports"), ("isServerless", "bool")):
        if name in body:
            _check_type(name, body[name], kind)
    return {
        "category": "NVIDIA", "containerDiskInGb": 50, "dockerEntrypoint": [],
        "dockerStartCmd": [], "env": {}, "isPublic": False, "isRunpod": False,
        "isServerless": False, "ports": [], "readme": "", "volumeInGb": 20,
        "volumeMountPath": "/workspace", **body, "id": new_id,
    }


def _volume_from(body: Any, new_id: str) -> dict[str, Any]:
    body = _require(body, {"name": "str", "size": "int", "dataCenterId": "str"})
    if not 1 <= body["size"] <= 4000:
        raise BadRequest("size: must be between 1 and 4000 (GB)")
    return {"id": new_id, "name": body["name"], "size": body["size"],
            "dataCenterId": body["dataCenterId"]}


def _endpoint_from(body: Any, new_id: str) -> dict[str, Any]:
    body = _require(body, {"templateId": "str"})
    for name, kind in (("gpuTypeIds", "str_list"), ("workersMin", "int"),
                       ("workersMax", "int"), ("name", "str")):
        if name in body:
            _check_type(name, body[name], kind)
    return {
        "computeType": "GPU", "gpuCount": 1, "gpuTypeIds": ["NVIDIA GeForce RTX 4090"],
        "idleTimeout": 5, "name": f"endpoint-{new_id}", "scalerType": "QUEUE_DELAY",
        "scalerValue": 4, "workersMax": 3, "workersMin": 0, "executionTimeoutMs": 600_000,
        "createdAt": iso(time.time()), **body, "id": new_id,
    }


def _crud_routes(
    ctx: FakeCloudContext, resource: str, label: str, build: Any, store: dict[str, Any]
) -> list[Route]:
    id_length = 14 if resource == "endpoints" else 10

    async def create(request: Request) -> Response:
        item = build(await json_body(request), ctx.state.new_short_id(id_length))
        with ctx.state.lock:
            store[item["id"]] = item
        return JSONResponse(item, status_code=200)

    async def list_all(request: Request) -> Response:
        with ctx.state.lock:
            return JSONResponse(list(store.values()))

    async def get_one(request: Request) -> Response:
        with ctx.state.lock:
            item = store.get(request.path_params["item_id"])
        if item is None:
            return error(404, f"{label} not found.")
        return JSONResponse(item)

    async def delete(request: Request) -> Response:
        with ctx.state.lock:
            item = store.pop(request.path_params["item_id"], None)
        if item is None:
            return error(404, f"{label} not found.")
        return Response(status_code=204)

    base = f"/{resource}"
    return provider_routes(ctx, "rest", REST_PREFIX, [
        (["POST"], base, create, False),
        (["GET"], base, list_all, False),
        (["GET"], base + "/{item_id}", get_one, False),
        (["DELETE"], base + "/{item_id}", delete, False),
    ])
