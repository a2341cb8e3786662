"""Fly's logs API in the fake cloud, plus its test controls.

``GET /fly/api/v1/apps/{app}/logs?next_token=&region=&instance=`` answers Fly's JSON:API
document (``data[].attributes{timestamp,message,level,instance,region,meta}``,
``meta.next_token``). Entries of an app are an append-only sequence with strictly
increasing nanosecond timestamps; ``next_token`` is the timestamp of the last entry
returned, so passing it back yields only newer entries. Without ``next_token`` the last
100 entries are returned (Fly's default "latest logs"). With no new entry, the token
comes back unchanged.

Auth: ``Authorization: Bearer <token>``; accepted tokens are the fake's API keys unless
rotated through the admin endpoint (a wrong token → 401 ``{"error": "..."}``). Script
faults of the fake cloud apply (``match`` paths like ``GET /apps/*/logs``, ``api``
``fly_logs``).

Test controls (no auth)::

    POST   /_admin/fly/logs/{app}   {"entries": [{"message", "level"?, "region"?,
                                     "instance"?}], "count": N}  → append (count = N
                                     generated "line i" entries)
    GET    /_admin/fly/logs/{app}   → {"total", "requests", "unauthorized", "max_inflight",
                                       "next_tokens": [...last 50 tokens received]}
    POST   /_admin/fly/logs-auth    {"tokens": ["t1", ...]} (null: the fake's API keys),
                                    {"latency_s": 0.05} slows every logs request down
    DELETE /_admin/fly/logs         forget every app's logs, counters and auth changes

Tests in the same process use :func:`fly_logs_state` instead.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from atlas_tasks.testing.fakecloud.common import BadRequest, FakeCloudContext, error, json_body

#: URL prefix of the Fly logs API (stands in for ``https://api.fly.io``).
FLY_API_PREFIX = "/fly"

#: Entries returned per page (Fly returns at most 100).
PAGE_SIZE = 100


@dataclass
class AppLogs:
    """One app's log sequence and request counters."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    unauthorized: int = 0
    inflight: int = 0
    max_inflight: int = 0
    next_tokens: deque[str | None] = field(default_factory=lambda: deque(maxlen=50))


class FlyLogsState:
    """Every app's logs, the accepted tokens and the latency knob (thread-safe)."""

    def __init__(self, default_tokens: frozenset[str]) -> None:
        self.lock = threading.Lock()
        self.default_tokens = default_tokens
        self.tokens: set[str] | None = None
        self.latency_s = 0.0
        self.apps: dict[str, AppLogs] = {}
        self._last_ts = 0
        self._seq = 0

    def reset(self) -> None:
        """Forget every app, counter and auth change."""
        with self.lock:
            self.apps.clear()
            self.tokens = None
            self.latency_s = 0.0

    def set_tokens(self, tokens: list[str] | None) -> None:
        """Accept only ``tokens`` from now on (``None``: the fake's API keys again)."""
        with self.lock:
            self.tokens = None if tokens is None else set(tokens)

    def accepts(self, token: str | None) -> bool:
        """Whether ``token`` is valid right now."""
        with self.lock:
            valid = self.default_tokens if self.tokens is None else self.tokens
            return token is not None and token in valid

    def app(self, name: str) -> AppLogs:
        """The app's record (created empty). Caller holds ``lock``."""
        record = self.apps.get(name)
        if record is None:
            record = self.apps[name] = AppLogs()
        return record

    def append(self, app: str, items: list[dict[str, Any]]) -> int:
        """Append entries (``message`` required); returns the app's total."""
        with self.lock:
            record = self.app(app)
            for item in items:
                self._last_ts = max(self._last_ts + 1, time.time_ns())
                self._seq += 1
                record.entries.append(
                    {
                        "id": f"log-{self._seq}",
                        "ts": self._last_ts,
                        "message": str(item["message"]),
                        "level": str(item.get("level", "info")),
                        "region": str(item.get("region", "cdg")),
                        "instance": str(item.get("instance", "148e21ea7e5189")),
                    }
                )
            return len(record.entries)

    def generate(self, app: str, count: int, start: int | None = None) -> int:
        """Append ``count`` entries ``line <i>`` numbered after the existing ones."""
        with self.lock:
            first = len(self.app(app).entries) + 1 if start is None else start
        return self.append(app, [{"message": f"line {first + i}"} for i in range(count)])

    def page(
        self, app: str, next_token: str | None, region: str | None, instance: str | None
    ) -> dict[str, Any]:
        """The JSON:API document for one request."""
        with self.lock:
            record = self.app(app)
            entries = [
                e
                for e in record.entries
                if (region is None or e["region"] == region)
                and (instance is None or e["instance"] == instance)
            ]
            if next_token:
                after = int(next_token)
                chosen = [e for e in entries if e["ts"] > after][:PAGE_SIZE]
            else:
                chosen = entries[-PAGE_SIZE:]
            if chosen:
                token: str = str(chosen[-1]["ts"])
            elif next_token:
                token = next_token
            else:
                token = str(entries[-1]["ts"]) if entries else ""
        return {
            "data": [_item(app, e) for e in chosen],
            "meta": {"next_token": token},
        }

    def stats(self, app: str) -> dict[str, Any]:
        """Counters of one app (``GET /_admin/fly/logs/{app}``)."""
        with self.lock:
            record = self.app(app)
            return {
                "total": len(record.entries),
                "requests": record.requests,
                "unauthorized": record.unauthorized,
                "max_inflight": record.max_inflight,
                "next_tokens": list(record.next_tokens),
            }


def _item(app: str, entry: dict[str, Any]) -> dict[str, Any]:
    ts = entry["ts"]
    stamp = datetime.fromtimestamp(ts // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return {
        "id": entry["id"],
        "type": "logs",
        "attributes": {
            "timestamp": f"{stamp}.{ts % 1_000_000_000:09d}Z",
            "message": entry["message"],
            "level": entry["level"],
            "instance": entry["instance"],
            "region": entry["region"],
            "meta": {"event": {"provider": "app"}, "app": app},
        },
    }


_ATTR = "_fly_logs"


def fly_logs_state(ctx: FakeCloudContext) -> FlyLogsState:
    """The logs state attached to a fake cloud context (created on first use).

    It lives on the context (not in ``CloudState``) so this module stays self-contained.
    """
    state = getattr(ctx, _ATTR, None)
    if not isinstance(state, FlyLogsState):
        state = FlyLogsState(frozenset(ctx.config.api_keys))
        setattr(ctx, _ATTR, state)
    return state


def build_routes(ctx: FakeCloudContext) -> list[Route]:
    """The logs endpoint and its ``/_admin/fly`` controls."""
    state = fly_logs_state(ctx)

    async def logs(request: Request) -> Response:
        app = request.path_params["app"]
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else None
        with state.lock:
            record = state.app(app)
            record.requests += 1
            record.next_tokens.append(request.query_params.get("next_token"))
        if not state.accepts(token):
            with state.lock:
                record.unauthorized += 1
            return error(401, "missing token" if token is None else "invalid token")
        rel = f"/apps/{app}/logs"
        plan = ctx.faults.plan("GET", "fly_logs", rel, request.url.path, create=False)
        with state.lock:
            record.inflight += 1
            record.max_inflight = max(record.max_inflight, record.inflight)
        try:
            delay = plan.delay_s + state.latency_s
            if delay > 0:
                await asyncio.sleep(delay)
            if plan.now is not None:
                return plan.now
            next_token = request.query_params.get("next_token") or None
            if next_token is not None and not next_token.isdigit():
                return error(400, "next_token must be a nanosecond timestamp")
            body = state.page(
                app,
                next_token,
                request.query_params.get("region") or None,
                request.query_params.get("instance") or None,
            )
            return JSONResponse(body)
        finally:
            with state.lock:
                record.inflight -= 1

    async def admin_app(request: Request) -> Response:
        app = request.path_params["app"]
        if request.method == "GET":
            return JSONResponse(state.stats(app))
        try:
            body = await json_body(request, default={}) or {}
            items = body.get("entries") or []
            if not isinstance(items, list) or any(
                not isinstance(i, dict) or "message" not in i for i in items
            ):
                raise BadRequest("entries: a list of objects with a message")
            total = state.append(app, items) if items else state.stats(app)["total"]
            count = int(body.get("count") or 0)
            if count:
                total = state.generate(app, count)
        except (BadRequest, ValueError, TypeError) as exc:
            return error(400, str(exc))
        return JSONResponse({"appended": len(items) + count, "total": total})

    async def admin_auth(request: Request) -> Response:
        try:
            body = await json_body(request, default={}) or {}
        except BadRequest as exc:
            return error(400, str(exc))
        if "tokens" in body:
            tokens = body["tokens"]
            if tokens is not None and (
                not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens)
            ):
                return error(400, "tokens: a list of strings or null")
            state.set_tokens(tokens)
        if "latency_s" in body:
            state.latency_s = max(0.0, float(body["latency_s"]))
        return JSONResponse({"ok": True})

    async def admin_reset(request: Request) -> Response:
        state.reset()
        return JSONResponse({"ok": True})

    return [
        Route(f"{FLY_API_PREFIX}/api/v1/apps/{{app}}/logs", logs, methods=["GET"]),
        Route("/_admin/fly/logs/{app}", admin_app, methods=["GET", "POST"]),
        Route("/_admin/fly/logs-auth", admin_auth, methods=["POST"]),
        Route("/_admin/fly/logs", admin_reset, methods=["DELETE"]),
    ]


__all__ = [
    "FLY_API_PREFIX",
    "PAGE_SIZE",
    "AppLogs",
    "FlyLogsState",
    "build_routes",
    "fly_logs_state",
]
