"""Plumbing shared by every provider route: auth, fault injection, counting, JSON bodies.

:func:`provider_route` wraps a plain async handler so that each call is counted per route,
authenticated, delayed and possibly failed according to the :class:`FaultInjector`, before
(or, for "500 after create", after) the handler runs.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from atlas_tasks.testing.fakecloud.config import FakeCloudConfig
from atlas_tasks.testing.fakecloud.faults import FaultInjector, fault_response
from atlas_tasks.testing.fakecloud.ratelimit import KeyRateLimiter
from atlas_tasks.testing.fakecloud.state import CloudState

Handler = Callable[[Request], Awaitable[Response]]

#: One row of a provider's route table: ``(methods, path, handler, creates)``.
RouteSpec = tuple[list[str], str, Handler, bool]

_State = TypeVar("_State")


@dataclass
class FakeCloudContext:
    """Everything a route needs; one per app (``app.state.fakecloud``)."""

    config: FakeCloudConfig
    state: CloudState
    faults: FaultInjector
    jobs: Any  # runpod_runtime.JobStore; typed loosely to keep this module import-light
    #: Per-key request quota (see :mod:`.ratelimit`); unenforced unless configured.
    limiter: KeyRateLimiter = field(default_factory=KeyRateLimiter)


class BadRequest(Exception):
    """Raised by handlers for a 400; the message becomes ``{"error": message}``."""


def error(status: int, message: str) -> JSONResponse:
    """``{"error": message}`` with ``status`` (RunPod's error body shape)."""
    return JSONResponse({"error": message}, status_code=status)


async def json_body(request: Request, *, default: Any = None) -> Any:
    """The decoded JSON body; ``default`` when empty.

    Raises:
        BadRequest: when the body is not valid JSON.
    """
    raw = await request.body()
    if not raw.strip():
        return default
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"invalid JSON body: {exc.msg}") from exc
    except UnicodeDecodeError as exc:
        raise BadRequest("invalid JSON body: not UTF-8") from exc


def context_state(
    ctx: FakeCloudContext, attr: str, factory: Callable[[], _State], kind: type[_State]
) -> _State:
    """A provider's state kept on ``ctx`` under ``attr``, created by ``factory`` on first use
    (``setdefault``, so two first calls racing still share one)."""
    current = ctx.__dict__.get(attr)
    if current is None:
        current = ctx.__dict__.setdefault(attr, factory())
    assert isinstance(current, kind)
    return current


async def json_body_or(
    request: Request, invalid: Callable[[str], JSONResponse]
) -> tuple[Any, JSONResponse | None]:
    """``(decoded body, None)``, or ``(None, invalid(reason))`` when the body is empty or
    not JSON: for APIs whose 400s have their own body shape (Lambda, Vast)."""
    raw = await request.body()
    if not raw.strip():
        return None, invalid("request body is required")
    try:
        return json.loads(raw), None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, invalid("request body is not valid JSON")


def number_field(body: Any, key: str) -> float | None:
    """``body[key]`` as a float when ``body`` is an object and the value a number (not a
    bool), else ``None``."""
    value = body.get(key) if isinstance(body, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _presented_key(request: Request, api: str) -> str | None:
    header = request.headers.get("authorization", "").strip()
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    # The serverless docs' curl sends the bare key; RunPod accepts it there.
    if header and api == "runtime":
        return header
    return None


def _unauthorized(api: str, message: str) -> JSONResponse:
    if api == "rest":  # RunPod REST v2 answers RFC 9457 problems
        return JSONResponse(
            {"title": "Unauthorized", "status": 401, "detail": message},
            status_code=401,
            media_type="application/problem+json",
        )
    return error(401, message)


def provider_route(
    ctx: FakeCloudContext,
    api: str,
    prefix: str,
    path: str,
    methods: list[str],
    handler: Handler,
    *,
    create: bool = False,
) -> Route:
    """A Starlette route at ``prefix + path`` running ``handler`` behind auth and faults.

    Args:
        api: ``rest`` (RunPod REST v2), ``runtime`` or another provider's name (auth
            flavour; script rules' ``api``).
        create: the call creates a resource (eligible for random 500-after-create).
    """
    template = f"{prefix}{path}"

    async def endpoint(request: Request) -> Response:
        full = request.url.path
        rel = full[len(prefix) :] or "/"
        with ctx.state.lock:
            ctx.state.routes[f"{request.method} {template}"] += 1
            ctx.state.totals["requests"] += 1
        key = _presented_key(request, api)
        if key is None or key not in ctx.config.api_keys:
            with ctx.state.lock:
                ctx.state.totals["unauthorized"] += 1
            return _unauthorized(api, "missing api key" if key is None else "invalid api key")
        verdict = ctx.limiter.take(api, key, time.time())
        if not verdict.allowed:
            with ctx.state.lock:
                ctx.state.totals["rate_limited"] += 1
            refused = fault_response(429, retry_after=verdict.reset_s, api=api)
            if api == "rest":
                refused.headers.update(verdict.headers())
            return refused
        response = await _answer(ctx, request, api, rel, full, handler, create=create)
        if api == "rest" and "RateLimit" not in response.headers:
            # RunPod REST v2 sends the live quota on every authenticated answer; an
            # injected 429 keeps the exhausted state its fault answer already carries.
            response.headers.update(verdict.headers())
        return response

    return Route(template, endpoint, methods=methods)


async def _answer(
    ctx: FakeCloudContext,
    request: Request,
    api: str,
    rel: str,
    full: str,
    handler: Handler,
    *,
    create: bool,
) -> Response:
    """The answer of an authenticated, admitted call: faults, then the handler."""
    plan = ctx.faults.plan(request.method, api, rel, full, create=create)
    if plan.delay_s > 0 or plan.hold is not None:
        # The cloud has the whole request before it is slow: read (and cache) the body
        # now, so a client that times out meanwhile still gets its create made late,
        # as a real API that finishes a create after the client gave up does.
        await request.body()
    if plan.delay_s > 0:
        await asyncio.sleep(plan.delay_s)
    if plan.hold is not None and not plan.hold_after:
        await ctx.faults.wait_at(plan.hold, plan.hold_timeout_s)
    if plan.now is not None:
        return plan.now
    try:
        response = await handler(request)
    except BadRequest as exc:
        response = error(400, str(exc))
    if create and 200 <= response.status_code < 300:
        ctx.faults.count_create(await _created_name(request))
    if plan.hold is not None and plan.hold_after:
        await ctx.faults.wait_at(plan.hold, plan.hold_timeout_s)
    if plan.delay_after_s > 0:
        await asyncio.sleep(plan.delay_after_s)
    if plan.after is not None and 200 <= response.status_code < 300:
        if plan.after_random:
            ctx.faults.count_after_create()
        return plan.after
    return response


async def _created_name(request: Request) -> str | None:
    """The name a create asked for (``name``; Vast calls it ``label``), for the counts."""
    try:
        body = json.loads(await request.body() or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict):
        return None
    name = body.get("name") or body.get("label")
    return name if isinstance(name, str) else None


def provider_routes(
    ctx: FakeCloudContext, api: str, prefix: str, specs: Iterable[RouteSpec]
) -> list[Route]:
    """:func:`provider_route` for every ``(methods, path, handler, creates)`` row."""
    return [
        provider_route(ctx, api, prefix, path, methods, handler, create=creates)
        for methods, path, handler, creates in specs
    ]
