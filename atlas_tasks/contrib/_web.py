"""The framework-neutral half of the Django app and the Flask extension.

Both integrations are thin adapters over this module: it reads their settings (split
into :func:`atlas_tasks.config.configure` overrides and web options), resolves session
**presets** (the browser names one; it never picks an image or a GPU), checks
**ownership** (a session belongs to the user who opened it; anyone else is told 404, as
if it did not exist, so ids cannot be probed), maps :class:`AtlasError` kinds to HTTP
statuses, and formats **Server-Sent Events** with their stream id, resuming after a
``Last-Event-ID`` without loss or duplicate.
"""

from __future__ import annotations

import hmac
import importlib
import json
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from atlas_tasks import client, events
from atlas_tasks.config import check_setting_names, configure
from atlas_tasks.errors import AtlasError, NotFoundError, ValidationError
from atlas_tasks.sessions.records import ENDED_STATUSES, SessionStatus
from atlas_tasks.sessions.store import SessionInfo

#: Keys of ``settings.ATLAS`` / ``app.config["ATLAS_*"]`` that belong to the web layer,
#: not to :class:`~atlas_tasks.config.AtlasSettings`.
WEB_KEYS = frozenset({"SESSION_PRESETS", "OWNER", "VIEWS", "SSE_KEEPALIVE_S"})

#: HTTP status of each error kind; any other kind is 502 (the cloud or a worker failed).
STATUS_BY_KIND: dict[str, int] = {
    "validation": 422,
    "not_found": 404,
    "unauthorized": 401,
    "forbidden": 403,
    "quota_exceeded": 429,
    "rate_limited": 429,
    "transport": 503,
    "timeout": 504,
}

#: Events after which a session's SSE stream ends.
TERMINAL_STATUSES = ENDED_STATUSES

#: Preset fields passed to :func:`atlas_tasks.client.spawn` besides ComputeRequest fields.
_SPAWN_KWARGS = frozenset({"provider", "api_key", "base_url"})


def status_for(exc: AtlasError) -> int:
    """The HTTP status of an error (see :data:`STATUS_BY_KIND`)."""
    return STATUS_BY_KIND.get(exc.kind, 502)


def error_body(exc: AtlasError) -> dict[str, Any]:
    """The JSON body of an error answer: ``{"error": kind, "message": ...}``."""
    return {"error": exc.kind, "message": exc.message}


@dataclass
class WebOptions:
    """The web layer's options (the rest of ``ATLAS`` goes to ``configure``).

    Attributes:
        presets: preset name -> spawn arguments (``gpu``, ``image``, ``ports``, ``auth``,
            ``idle_ttl_ms``, ``provider``...).
        owner: ``request -> owner id`` (or ``None`` for anonymous); ``None`` means the
            framework's default (Django ``request.user.pk``, Flask-Login ``current_user``).
        views: Django only: ``"sync"`` (WSGI) or ``"async"`` (ASGI) views.
        keepalive_s: an SSE comment is sent after this long without an event, so
            proxies keep the stream open.
    """

    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    owner: Callable[[Any], Any] | None = None
    views: str = "sync"
    keepalive_s: float = 15.0


def load_callable(value: Any, name: str) -> Callable[[Any], Any]:
    """A callable given as itself or as a dotted path (``"myapp.auth.owner_of"``)."""
    if callable(value):
        return cast(Callable[[Any], Any], value)
    if isinstance(value, str) and "." in value:
        module, _, attr = value.rpartition(".")
        try:
            found = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ValidationError(f"{name}: cannot import {value!r}: {exc}", field=name) from None
        if callable(found):
            return cast(Callable[[Any], Any], found)
    raise ValidationError(f"{name}: must be a callable or a dotted path to one", field=name)


def apply_settings(values: Mapping[str, Any], *, source: str, prefix: str = "") -> WebOptions:
    """Split a framework's atlas settings, ``configure()`` the core ones, return the rest.

    Args:
        values: upper-case keys (without ``prefix``) -> values.
        source: how the user spells the container, for error messages.
        prefix: the key prefix in error messages (``ATLAS_`` for Flask).

    Raises:
        ValidationError: an unknown key (closest suggested), a bad value or bad presets.
    """
    core: dict[str, Any] = {}
    web: dict[str, Any] = {}
    for key, value in values.items():
        (web if key.upper() in WEB_KEYS else core)[key.upper()] = value
    try:
        check_setting_names([k.lower() for k in core], source=source)
    except ValidationError as exc:
        # name the key as the user wrote it (ATLAS_REDIS_ULR in Flask)
        raise ValidationError(f"{prefix}{exc.message}", field=f"{prefix}{exc.field}") from None
    configure(**core)
    options = WebOptions(presets=check_presets(web.get("SESSION_PRESETS") or {}))
    if web.get("OWNER") is not None:
        options.owner = load_callable(web["OWNER"], f"{prefix}OWNER")
    views = web.get("VIEWS", "sync")
    if views not in ("sync", "async"):
        raise ValidationError(f"{prefix}VIEWS: must be 'sync' or 'async'", field=f"{prefix}VIEWS")
    options.views = views
    options.keepalive_s = float(web.get("SSE_KEEPALIVE_S", 15.0))
    return options


def check_presets(presets: Any) -> dict[str, dict[str, Any]]:
    """Validate ``SESSION_PRESETS``: a mapping of names to mappings of spawn arguments."""
    if not isinstance(presets, Mapping):
        raise ValidationError(
            "SESSION_PRESETS: must be a mapping of name -> spawn options", field="SESSION_PRESETS"
        )
    out: dict[str, dict[str, Any]] = {}
    for name, preset in presets.items():
        if not isinstance(preset, Mapping):
            raise ValidationError(
                f"SESSION_PRESETS.{name}: must be a mapping", field=f"SESSION_PRESETS.{name}"
            )
        if "user_id" in preset:
            raise ValidationError(
                f"SESSION_PRESETS.{name}.user_id: the owner is the "
                "requesting user, not a preset field",
                field=f"SESSION_PRESETS.{name}.user_id",
            )
        out[str(name)] = dict(preset)
    return out


def parse_open_body(raw: bytes) -> str:
    """The preset name of a ``POST sessions/`` body (``{"preset": "default"}``; an empty
    body means ``default``). Any other key is refused: the browser never picks an image,
    a GPU or a provider."""
    if not raw.strip():
        return "default"
    try:
        body = json.loads(raw)
    except ValueError:
        raise ValidationError(
            'body: must be JSON like {"preset": "default"}', field="body"
        ) from None
    if not isinstance(body, dict):
        raise ValidationError("body: must be a JSON object", field="body")
    extra = sorted(set(body) - {"preset"})
    if extra:
        raise ValidationError(
            f'{extra[0]}: not accepted; pick a server-side preset with {{"preset": name}}',
            field=extra[0],
        )
    preset = body.get("preset", "default")
    if not isinstance(preset, str):
        raise ValidationError("preset: must be a string", field="preset")
    return preset


def spawn_arguments(options: WebOptions, preset: str, owner: Any) -> dict[str, Any]:
    """Keyword arguments of :func:`atlas_tasks.client.spawn` for ``preset`` and ``owner``.

    Raises:
        ValidationError: unknown preset (422), naming the known ones.
    """
    try:
        chosen = options.presets[preset]
    except KeyError:
        known = ", ".join(sorted(options.presets)) or "none configured"
        raise ValidationError(
            f"preset: unknown preset {preset!r} (known: {known})", field="preset"
        ) from None
    return {**chosen, "user_id": owner}


def same_owner(session_owner: Any, owner: Any) -> bool:
    """Whether ``owner`` opened the session. Compared as JSON in constant time, so the
    check neither depends on types (``7`` vs ``"7"`` differ on purpose) nor leaks timing."""
    if owner is None:
        return False
    a = json.dumps(session_owner, sort_keys=True, default=str).encode()
    b = json.dumps(owner, sort_keys=True, default=str).encode()
    return hmac.compare_digest(a, b)


def not_found(session_id: str) -> NotFoundError:
    """What another user's session looks like: the same as an unknown one."""
    return cast(
        NotFoundError, AtlasError(f"session {session_id!r} is not tracked", kind="not_found")
    )


def owned_info(session_id: str, owner: Any) -> SessionInfo:
    """The session's info if ``owner`` opened it; else :func:`not_found`."""
    try:
        info = client.info(session_id)
    except AtlasError as exc:
        if exc.kind == "not_found":
            raise not_found(session_id) from None
        raise
    if not same_owner(info.user_id, owner):
        raise not_found(session_id)
    return info


async def aowned_info(session_id: str, owner: Any) -> SessionInfo:
    """asyncio twin of :func:`owned_info`."""
    try:
        info = await client.ainfo(session_id)
    except AtlasError as exc:
        if exc.kind == "not_found":
            raise not_found(session_id) from None
        raise
    if not same_owner(info.user_id, owner):
        raise not_found(session_id)
    return info


def info_body(info: SessionInfo) -> dict[str, Any]:
    """The JSON of ``GET sessions/<id>/`` (the record holds no secret, only a hash)."""
    return info.model_dump(mode="json")


def open_body(session: client.Session, status: str = SessionStatus.SPAWNING) -> dict[str, Any]:
    """The JSON of ``POST sessions/``: the raw token, shown here once."""
    return {"session": session.id, "token": session.token, "status": status}


# ------------------------------------------------------------------- Server-Sent Events
def sse_format(event: events.Event) -> str:
    """One SSE message: ``id:`` is the event's stream id (so the browser's
    ``Last-Event-ID`` resumes after it), ``event:`` its type, ``data:`` the JSON."""
    lines = []
    if event.id:
        lines.append(f"id: {event.id}")
    lines.append(f"event: {event.type}")
    payload = {
        "session_id": event.session_id,
        "type": event.type,
        "data": event.data,
        "ts": event.ts,
    }
    lines.append(f"data: {json.dumps(payload, default=str)}")
    return "\n".join(lines) + "\n\n"


#: Sent after ``keepalive_s`` without an event (an SSE comment; browsers ignore it).
SSE_KEEPALIVE = ": keepalive\n\n"

#: Sent first, at once: a WSGI server sends the response headers only with the first body
#: bytes, so a stream resumed at its end (``Last-Event-ID`` of the last event) would
#: otherwise leave the browser without even a 200 until the first keepalive.
SSE_OPEN = ": open\n\n"

#: Response headers of an SSE answer (no proxy buffering, no caching).
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def last_event_id(header: str | None) -> str | None:
    """A ``Last-Event-ID`` header if it is a stream id (``<ms>-<seq>``), else ``None``.

    Raises:
        ValidationError: a malformed id (it would otherwise silently replay everything).
    """
    if not header:
        return None
    ms, dash, seq = header.strip().partition("-")
    if not (ms.isdigit() and dash and seq.isdigit()):
        raise ValidationError(
            "Last-Event-ID: must be a stream id like 1700000000000-0", field="Last-Event-ID"
        )
    return header.strip()


def _is_terminal(event: events.Event) -> bool:
    return event.type == "status" and event.data.get("status") in TERMINAL_STATUSES


def sse_stream(session_id: str, after: str | None, keepalive_s: float = 15.0) -> Iterator[str]:
    """Replay then follow a session's events as SSE text, ending after ``terminated`` /
    ``failed``. Sends a keepalive comment every ``keepalive_s`` of silence."""
    yield SSE_OPEN
    cursor = after
    while True:
        got_any = False
        for event in events.subscribe(session_id, after=cursor, replay=True, timeout=keepalive_s):
            got_any = True
            if event.id:
                cursor = event.id
            yield sse_format(event)
            if _is_terminal(event):
                return
        if not got_any:
            yield SSE_KEEPALIVE


async def asse_stream(
    session_id: str, after: str | None, keepalive_s: float = 15.0
) -> AsyncIterator[str]:
    """asyncio twin of :func:`sse_stream` (no thread is held while the stream idles)."""
    yield SSE_OPEN
    cursor = after
    while True:
        got_any = False
        async for event in events.asubscribe(
            session_id, after=cursor, replay=True, timeout=keepalive_s
        ):
            got_any = True
            if event.id:
                cursor = event.id
            yield sse_format(event)
            if _is_terminal(event):
                return
        if not got_any:
            yield SSE_KEEPALIVE


__all__ = [
    "SSE_HEADERS",
    "SSE_KEEPALIVE",
    "SSE_OPEN",
    "STATUS_BY_KIND",
    "TERMINAL_STATUSES",
    "WEB_KEYS",
    "WebOptions",
    "aowned_info",
    "apply_settings",
    "asse_stream",
    "check_presets",
    "error_body",
    "info_body",
    "last_event_id",
    "load_callable",
    "not_found",
    "open_body",
    "owned_info",
    "parse_open_body",
    "same_owner",
    "spawn_arguments",
    "sse_format",
    "sse_stream",
    "status_for",
]
