"""Loopback test controls under ``/_admin`` (no provider auth, no faults).

``GET  /_admin/health``            → ``{"ok": true}`` (readiness probe)
``GET  /_admin/state``             → live and terminated pods with per-pod call counts,
                                      totals, faults injected by type, per-endpoint job counters,
                                      and Fly apps/machines under ``fly``
``POST /_admin/reset``             → forget all pods/jobs/counters; faults back to start-up
``GET  /_admin/faults``            → the live fault settings (script with remaining counts)
``POST /_admin/faults``            → merge settings, e.g. ``{"latency_s": 1}`` or
                                      ``{"script": [{"match": "POST /pods", "status": 500,
                                      "after_create": true}]}`` (``script`` replaces the script)
``DELETE /_admin/faults``          → no faults at all
``POST /_admin/pods/{id}/age``     → ``{"seconds": N}`` backdates the pod's creation and
                                      ``lastStartedAt`` by N seconds (orphan-grace tests)
``POST /_admin/pods/{id}/gpu``     → ``{"util": 3, "memoryUtil": 10}`` (a number for every
                                      GPU or a list per GPU) pins the pod's RunPod v2
                                      ``runtime.gpus``; ``{"util": null}`` unpins
``GET|POST /_admin/rate-limit``    → the per-key quota ``{"per_minute": 60 | null}`` (see
                                      ``ratelimit``), its 429 and usage counts
``GET  /_admin/holds``             → every hold gate: ``{name: {"waiting", "passed",
                                      "released"}}`` (script rules with ``hold``)
``POST /_admin/holds/{name}/release`` → open a gate: held calls go on

``/_admin/state`` also has ``creates_by_name``: successful creates per requested name
(RunPod/Fly/Lambda ``name``, Vast ``label``), counted even when a fault replaced the answer.
"""

from __future__ import annotations

from typing import Any

import pydantic
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from atlas_tasks.testing.fakecloud.common import BadRequest, FakeCloudContext, error, json_body
from atlas_tasks.testing.fakecloud.providers import PROVIDERS, age_pod, provider_named

ADMIN_PREFIX = "/_admin"


def snapshot(ctx: FakeCloudContext) -> dict[str, Any]:
    """Everything ``GET /_admin/state`` returns (also ``FakeCloud.state()``): RunPod's block
    at the top level, the shared fault and quota counters, then every other provider's
    block under its name (see :mod:`.providers`)."""
    result: dict[str, Any] = {}
    nested: dict[str, Any] = {}
    for provider in PROVIDERS:
        block = provider.snapshot(ctx)
        if block is None:
            continue
        if provider.snapshot_key is None:
            result.update(block)
        else:
            nested[provider.snapshot_key] = block
    result["faults_injected"] = ctx.faults.counters_snapshot()
    result["creates_by_name"] = ctx.faults.creates_snapshot()
    result["holds"] = ctx.faults.holds_snapshot()
    result["rate_limit"] = ctx.limiter.snapshot()
    result.update(nested)
    return result


def reset(ctx: FakeCloudContext) -> None:
    """What ``POST /_admin/reset`` does: every provider's state, faults and quota windows."""
    for provider in PROVIDERS:
        provider.reset(ctx)
    ctx.faults.reset()
    ctx.limiter.reset()


def age(ctx: FakeCloudContext, provider: str, resource_id: str, seconds: float) -> bool:
    """Backdate a resource of ``provider`` by ``seconds``; False if the id is unknown.

    Raises:
        KeyError: unknown provider name.
    """
    return provider_named(provider).age(ctx, resource_id, seconds)


def _per_gpu(value: Any, count: int, field: str) -> list[int] | None:
    """``value`` (a number, a list of numbers or None) as one 0..100 figure per GPU."""
    if value is None:
        return None
    values = value if isinstance(value, list) else [value] * count
    if not values or any(
        isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 100 for v in values
    ):
        raise BadRequest(f"{field}: a number 0..100 or a list of them (one per GPU)")
    return [int(round(v)) for v in values]


def set_gpu_util(
    ctx: FakeCloudContext, pod_id: str, util: Any, memory_util: Any = None
) -> dict[str, Any] | None:
    """Pin a pod's per-GPU utilisation (``None`` unpins); None if the pod is unknown.

    Raises:
        BadRequest: a figure outside 0..100.
    """
    with ctx.state.lock:
        pod = ctx.state.pods.get(pod_id)
        if pod is None:
            return None
        pod.gpu_util = _per_gpu(util, pod.gpu_count, "util")
        pod.gpu_memory_util = _per_gpu(memory_util, pod.gpu_count, "memoryUtil")
        return pod.admin_view()


def build_routes(ctx: FakeCloudContext) -> list[Route]:
    """The admin routes, bound to ``ctx``."""

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def state(request: Request) -> Response:
        return JSONResponse(snapshot(ctx))

    async def do_reset(request: Request) -> Response:
        reset(ctx)
        return JSONResponse({"ok": True})

    async def get_faults(request: Request) -> Response:
        return JSONResponse(ctx.faults.snapshot())

    async def set_faults(request: Request) -> Response:
        try:
            changes = await json_body(request, default={})
        except BadRequest as exc:
            return error(400, str(exc))
        if not isinstance(changes, dict):
            return error(400, "body must be a JSON object of fault settings")
        try:
            ctx.faults.update(changes)
        except pydantic.ValidationError as exc:
            return error(400, f"invalid fault settings: {exc.errors(include_url=False)}")
        return JSONResponse(ctx.faults.snapshot())

    async def clear_faults(request: Request) -> Response:
        ctx.faults.clear()
        return JSONResponse(ctx.faults.snapshot())

    async def age(request: Request) -> Response:
        try:
            body = await json_body(request, default={})
        except BadRequest as exc:
            return error(400, str(exc))
        seconds = body.get("seconds") if isinstance(body, dict) else None
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            return error(400, 'seconds: required number, e.g. {"seconds": 600}')
        view = age_pod(ctx, request.path_params["pod_id"], float(seconds))
        if view is None:
            return error(404, "Pod not found.")
        return JSONResponse(view)

    async def gpu(request: Request) -> Response:
        try:
            body = await json_body(request, default={})
            if not isinstance(body, dict) or "util" not in body:
                raise BadRequest('util: required, e.g. {"util": 3} or {"util": [3, 5]}')
            view = set_gpu_util(
                ctx, request.path_params["pod_id"], body["util"], body.get("memoryUtil")
            )
        except BadRequest as exc:
            return error(400, str(exc))
        if view is None:
            return error(404, "Pod not found.")
        return JSONResponse(view)

    async def get_rate_limit(request: Request) -> Response:
        return JSONResponse(ctx.limiter.snapshot())

    async def set_rate_limit(request: Request) -> Response:
        try:
            body = await json_body(request, default={})
        except BadRequest as exc:
            return error(400, str(exc))
        quota = body.get("per_minute", "missing") if isinstance(body, dict) else "missing"
        if quota is not None and (
            isinstance(quota, bool) or not isinstance(quota, int) or quota < 1
        ):
            return error(400, 'per_minute: a positive integer or null, e.g. {"per_minute": 60}')
        ctx.limiter.set_quota(quota)
        return JSONResponse(ctx.limiter.snapshot())

    async def holds(request: Request) -> Response:
        return JSONResponse(ctx.faults.holds_snapshot())

    async def release(request: Request) -> Response:
        return JSONResponse(ctx.faults.release(request.path_params["name"]))

    p = ADMIN_PREFIX
    return [
        Route(f"{p}/health", health, methods=["GET"]),
        Route(f"{p}/state", state, methods=["GET"]),
        Route(f"{p}/reset", do_reset, methods=["POST"]),
        Route(f"{p}/faults", get_faults, methods=["GET"]),
        Route(f"{p}/faults", set_faults, methods=["POST"]),
        Route(f"{p}/faults", clear_faults, methods=["DELETE"]),
        Route(f"{p}/pods/{{pod_id}}/age", age, methods=["POST"]),
        Route(f"{p}/pods/{{pod_id}}/gpu", gpu, methods=["POST"]),
        Route(f"{p}/rate-limit", get_rate_limit, methods=["GET"]),
        Route(f"{p}/rate-limit", set_rate_limit, methods=["POST"]),
        Route(f"{p}/holds", holds, methods=["GET"]),
        Route(f"{p}/holds/{{name}}/release", release, methods=["POST"]),
    ]
