"""The session routes, as sync views (WSGI) and async views (ASGI).

=========================  ======  ==========================================================
``sessions/``              POST    open a session from a preset → 201 ``{session, token, status}``
``sessions/``              GET     the requesting user's sessions, newest first
``sessions/<id>/``         GET     info
``sessions/<id>/``         DELETE  stop → 202
``sessions/<id>/touch/``   POST    heartbeat → 204
``sessions/<id>/events/``  GET     Server-Sent Events: replay then live; ``Last-Event-ID``
                                   resumes after that event; ends after terminated/failed
=========================  ======  ==========================================================

A session belongs to the user who opened it (``request.user.pk``, or
``ATLAS["OWNER"]``); another user gets 404 on every route, an anonymous one 403 (as
Django's ``PermissionDenied``). Errors are JSON ``{"error": kind, "message"}``.

CSRF: these are ordinary Django views, so ``CsrfViewMiddleware`` protects POST and DELETE:
a browser using session auth sends the ``X-CSRFToken`` header (from the ``csrftoken``
cookie), exactly as for any other Django form or fetch. Nothing here is ``csrf_exempt``.

``ATLAS["VIEWS"] = "async"`` serves async views (for ASGI); the SSE route streams from an
async iterator under ASGI whichever flavour is chosen, so no thread waits on a stream.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    JsonResponse,
    StreamingHttpResponse,
)

from atlas_tasks import client
from atlas_tasks.contrib import _web
from atlas_tasks.contrib.django.apps import options
from atlas_tasks.errors import AtlasError
from atlas_tasks.sessions.store import SessionInfo

View = Callable[..., HttpResponse]
AsyncView = Callable[..., Awaitable[HttpResponse]]


class _Anonymous(Exception):
    """No owner for this request (not logged in)."""


class _NotAllowed(Exception):
    """The route does not serve this HTTP method."""

    def __init__(self, methods: tuple[str, ...]) -> None:
        super().__init__(*methods)
        self.methods = list(methods)


def _error_response(exc: Exception) -> HttpResponse:
    """The response for what a view raised (see :func:`_json_errors`)."""
    if isinstance(exc, _Anonymous):
        return JsonResponse(
            {"error": "forbidden", "message": "authentication required"}, status=403
        )
    if isinstance(exc, _NotAllowed):
        return HttpResponseNotAllowed(exc.methods)
    assert isinstance(exc, AtlasError)
    return JsonResponse(_web.error_body(exc), status=_web.status_for(exc))


#: What a view may raise to be answered by :func:`_error_response`.
_ANSWERED = (_Anonymous, _NotAllowed, AtlasError)


def _owner_of(request: HttpRequest) -> Any:
    custom = options().owner
    if custom is not None:
        owner = custom(request)
    else:
        user = request.user
        owner = user.pk if user.is_authenticated else None
    if owner is None:
        raise _Anonymous
    return owner


async def _aowner_of(request: HttpRequest) -> Any:
    custom = options().owner
    if custom is not None:
        owner = await sync_to_async(custom)(request)
    else:
        user = await request.auser()
        owner = user.pk if user.is_authenticated else None
    if owner is None:
        raise _Anonymous
    return owner


def _allow(request: HttpRequest, methods: tuple[str, ...]) -> None:
    if request.method not in methods:
        raise _NotAllowed(methods)


def _owned_session(request: HttpRequest, session_id: str, *methods: str) -> SessionInfo:
    """The session's info, after the checks in the order every session route makes them:
    an owner (else 403), an allowed method (else 405), the owner's session (else 404)."""
    owner = _owner_of(request)
    _allow(request, methods)
    return _web.owned_info(session_id, owner)


async def _aowned_session(request: HttpRequest, session_id: str, *methods: str) -> SessionInfo:
    """asyncio twin of :func:`_owned_session`."""
    owner = await _aowner_of(request)
    _allow(request, methods)
    return await _web.aowned_info(session_id, owner)


def _json_errors(view: View) -> View:
    """Answer a missing owner, a refused method and any AtlasError as JSON / 405."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except _ANSWERED as exc:
            return _error_response(exc)

    return wrapper


def _ajson_errors(view: AsyncView) -> AsyncView:
    """asyncio twin of :func:`_json_errors`."""

    @functools.wraps(view)
    async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return await view(request, *args, **kwargs)
        except _ANSWERED as exc:
            return _error_response(exc)

    return wrapper


def _sse_response(request: HttpRequest, session_id: str) -> StreamingHttpResponse:
    after = _web.last_event_id(request.headers.get("Last-Event-ID"))
    keepalive = options().keepalive_s
    # Under ASGI an async iterator is streamed on the event loop (a sync one would be
    # buffered whole by Django); under WSGI the sync iterator holds the worker thread.
    stream: Any = (
        _web.asse_stream(session_id, after, keepalive)
        if isinstance(request, ASGIRequest)
        else _web.sse_stream(session_id, after, keepalive)
    )
    response = StreamingHttpResponse(stream, content_type="text/event-stream")
    for key, value in _web.SSE_HEADERS.items():
        response[key] = value
    return response


# ------------------------------------------------------------------------ sync views
@_json_errors
def sessions(request: HttpRequest) -> HttpResponse:
    """``POST``: open a session from a preset; ``GET``: the user's sessions."""
    owner = _owner_of(request)
    if request.method == "POST":
        preset = _web.parse_open_body(request.body)
        session = client.spawn(**_web.spawn_arguments(options(), preset, owner))
        return JsonResponse(_web.open_body(session), status=201)
    if request.method == "GET":
        infos = client.list_sessions(owner)
        return JsonResponse({"sessions": [_web.info_body(i) for i in infos]})
    return HttpResponseNotAllowed(["GET", "POST"])


@_json_errors
def session(request: HttpRequest, session_id: str) -> HttpResponse:
    """``GET``: info; ``DELETE``: stop (202)."""
    info = _owned_session(request, session_id, "GET", "DELETE")
    if request.method == "GET":
        return JsonResponse(_web.info_body(info))
    client.stop_tracked(session_id)
    return JsonResponse({"session": session_id, "status": "stopping"}, status=202)


@_json_errors
def touch(request: HttpRequest, session_id: str) -> HttpResponse:
    """``POST``: heartbeat (204)."""
    _owned_session(request, session_id, "POST")
    client.touch(session_id)
    return HttpResponse(status=204)


@_json_errors
def session_events(request: HttpRequest, session_id: str) -> HttpResponse:
    """``GET``: Server-Sent Events of the session."""
    _owned_session(request, session_id, "GET")
    return _sse_response(request, session_id)


# ----------------------------------------------------------------------- async views
@_ajson_errors
async def asessions(request: HttpRequest) -> HttpResponse:
    """Async twin of :func:`sessions`."""
    owner = await _aowner_of(request)
    if request.method == "POST":
        preset = _web.parse_open_body(request.body)
        session = await client.aspawn(**_web.spawn_arguments(options(), preset, owner))
        return JsonResponse(_web.open_body(session), status=201)
    if request.method == "GET":
        infos = await client.alist_sessions(owner)
        return JsonResponse({"sessions": [_web.info_body(i) for i in infos]})
    return HttpResponseNotAllowed(["GET", "POST"])


@_ajson_errors
async def asession(request: HttpRequest, session_id: str) -> HttpResponse:
    """Async twin of :func:`session`."""
    info = await _aowned_session(request, session_id, "GET", "DELETE")
    if request.method == "GET":
        return JsonResponse(_web.info_body(info))
    await client.astop_tracked(session_id)
    return JsonResponse({"session": session_id, "status": "stopping"}, status=202)


@_ajson_errors
async def atouch(request: HttpRequest, session_id: str) -> HttpResponse:
    """Async twin of :func:`touch`."""
    await _aowned_session(request, session_id, "POST")
    await client.atouch(session_id)
    return HttpResponse(status=204)


@_ajson_errors
async def asession_events(request: HttpRequest, session_id: str) -> HttpResponse:
    """Async twin of :func:`session_events`."""
    await _aowned_session(request, session_id, "GET")
    return _sse_response(request, session_id)
