"""The web-node side of a transient GPU session, as a small ASGI app.

Any number of these can run behind a load balancer: every route is a Redis round trip or
an enqueue, and the session state lives in Redis, so any node serves any session.

    POST   /sessions               → spawn; returns {"session", "token"} (token shown once)
    POST   /sessions/{id}/touch    → heartbeat from the browser (204; 404 once it ended)
    GET    /sessions/{id}          → info (status, pod URL, last activity)
    GET    /sessions/{id}/events   → Server-Sent Events: replay, then live (reconnect-safe:
                                     the browser's Last-Event-ID resumes after that event)
    DELETE /sessions/{id}          → stop (202)

Run it next to a worker and beat (``make demo`` shows the whole cluster)::

    ATLAS_SECRET_KEY=... ATLAS_DEFAULT_PROVIDER=runpod uvicorn examples.web_node:app

The same calls in a Django view (sync)::

    def open_session(request):
        s = orchestrator.spawn(gpu="h100", image=IMAGE, ports=[(8000, "http")],
                               auth="bearer", user_id=request.user.id)
        return JsonResponse({"session": s.id, "token": s.token})

    def touch(request, session_id):
        orchestrator.touch(session_id)   # raises NotTracked → return 404
        return HttpResponse(status=204)

Authenticate your own users in front of these routes (not shown): a session id is not a
credential, and anyone who can touch a session keeps a paid pod alive.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from atlas_tasks import AtlasError, events, orchestrator
from atlas_tasks.errors import NotTracked

IMAGE = "ghcr.io/acme/realtime-inference:latest"


def _error(exc: AtlasError) -> JSONResponse:
    status = {"not_found": 404, "validation": 422}.get(exc.kind, 502)
    return JSONResponse({"error": exc.kind, "message": exc.message}, status_code=status)


async def open_session(request: Request) -> Response:
    body: dict[str, Any] = await request.json() if await request.body() else {}
    try:
        s = orchestrator.spawn(
            gpu=body.get("gpu", "h100"),
            image=body.get("image", IMAGE),
            ports=[(8000, "http")],
            auth="bearer",
            user_id=body.get("user_id"),
            idle_ttl_ms=body.get("idle_ttl_ms"),
        )
    except AtlasError as exc:
        return _error(exc)
    return JSONResponse({"session": s.id, "token": s.token}, status_code=201)


async def touch(request: Request) -> Response:
    try:
        orchestrator.touch(request.path_params["id"])
    except NotTracked as exc:
        return _error(exc)
    return Response(status_code=204)


async def info(request: Request) -> Response:
    try:
        data = orchestrator.info(request.path_params["id"])
    except NotTracked as exc:
        return _error(exc)
    return JSONResponse(data.model_dump(mode="json"))


async def stop(request: Request) -> Response:
    try:
        orchestrator.stop_tracked(request.path_params["id"])
    except NotTracked as exc:
        return _error(exc)
    return Response(status_code=202)


async def stream_events(request: Request) -> Response:
    session_id = request.path_params["id"]
    after = request.headers.get("last-event-id") or None

    async def sse() -> AsyncIterator[str]:
        async for event in events.asubscribe(
            session_id, after=after, timeout=300, until=("terminated", "failed")
        ):
            yield f"id: {event.id or ''}\nevent: {event.type}\ndata: {json.dumps(event.data)}\n\n"

    return StreamingResponse(
        sse(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
    )


app = Starlette(
    routes=[
        Route("/sessions", open_session, methods=["POST"]),
        Route("/sessions/{id}", info, methods=["GET"]),
        Route("/sessions/{id}", stop, methods=["DELETE"]),
        Route("/sessions/{id}/touch", touch, methods=["POST"]),
        Route("/sessions/{id}/events", stream_events, methods=["GET"]),
    ]
)
