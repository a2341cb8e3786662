"""The typed session record and its statuses.

A session's record is a Redis hash (``atlas:session:{id}``) written partly by the caller
(at spawn) and partly by the store's Lua scripts. :class:`SessionRecord` is its one typed
view: :meth:`SessionRecord.from_hash` reads a hash, :meth:`SessionRecord.to_hash` writes
one (the rq ``Job.to_dict``/``restore`` idea). Outside :mod:`atlas_tasks.sessions.store`
nothing reads a record field by its string name.

Field names are the hash's field names, so a record written by an older version reads the
same. Optional fields are ``None`` when the hash does not have them; :meth:`to_hash` leaves
those out, so a record costs in Redis exactly what it holds.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, fields
from enum import StrEnum
from string import Template
from typing import Any

from atlas_tasks.redis_lua import decode_json

#: What :func:`new_session_id` makes (16 hex characters): the reaper adopts only pods named
#: ``<prefix><such an id>`` after a data loss.
SESSION_ID_RE = re.compile(r"[0-9a-f]{16}")


def new_session_id() -> str:
    """A fresh session id (64 random bits, hex): the key of every session call."""
    return secrets.token_hex(8)


class SessionStatus(StrEnum):
    """Where a tracked session is in its life (the record's ``status`` field)."""

    #: Recorded; a worker is creating (or about to create) its pod.
    SPAWNING = "spawning"
    #: The pod is up and the idle clock runs.
    RUNNING = "running"
    #: A stop or the idle clock claimed it; its pod is being terminated.
    TERMINATING = "terminating"
    #: Ended: the pod is gone (or never existed).
    TERMINATED = "terminated"
    #: Ended: the spawn gave up (the record's ``error`` says why).
    FAILED = "failed"


#: ``reason`` of a session ended because its idle clock ran out.
IDLE_REASON = "idle_timeout"
#: ``reason`` of a session ended at its hard lifetime (``max_lifetime_ms``).
MAX_LIFETIME_REASON = "max_lifetime"

#: Statuses of a session that still has (or may get) a pod the registry tracks.
LIVE_STATUSES = frozenset(
    {SessionStatus.SPAWNING, SessionStatus.RUNNING, SessionStatus.TERMINATING}
)
#: Statuses of an ended session.
ENDED_STATUSES = frozenset({SessionStatus.TERMINATED, SessionStatus.FAILED})


def lua_with_statuses(source: str) -> str:
    """``source`` with ``$SPAWNING``, ``$RUNNING``... replaced by the quoted Lua string of
    that status, so no script hand-types a status (done once, at import)."""
    return Template(source).substitute({s.name: f"'{s.value}'" for s in SessionStatus})


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _flag(value: str | None) -> bool:
    return value == "1"


def _status(value: str | None) -> SessionStatus | None:
    try:
        return SessionStatus(value) if value else None
    except ValueError:
        return None


@dataclass(slots=True)
class SessionRecord:
    """One session's record, typed. See :mod:`atlas_tasks.sessions.store` for who writes
    which field and when.

    Text fields written empty at spawn (``label``, ``base_url``...) stay ``""`` so the hash
    round-trips unchanged; ``None`` means the hash lacks the field.
    """

    id: str
    provider: str = ""
    status: SessionStatus | None = None
    pod_name: str | None = None
    #: The caller's ``name`` for the pod (the real pod name is ``pod_name``).
    label: str | None = None
    #: The caller's user id (any JSON value; stored as JSON).
    user_id: Any = None
    idle_ttl_ms: int = 0
    auth: str = "none"
    #: SHA-256 of the bearer token (never the token).
    token_hash: str | None = None
    base_url: str | None = None
    gpu: str | None = None
    image: str | None = None
    #: The per-call API key, Fernet-sealed.
    api_key_sealed: str | None = None
    #: The sealed spawn payload, kept only while the spawn is in flight (for re-sends).
    spawn_sealed: str | None = None
    compute_id: str | None = None
    #: The public compute (no secret, no raw body) once the pod runs.
    compute: dict[str, Any] | None = None
    reason: str | None = None
    error: dict[str, Any] | None = None
    last_error: dict[str, Any] | None = None
    created_at_ms: int | None = None
    last_activity_ms: int | None = None
    running_at_ms: int | None = None
    terminating_at_ms: int | None = None
    ended_at_ms: int | None = None
    spawn_attempts: int | None = None
    create_attempts: int | None = None
    #: A create request left and its outcome is unknown: a pod may exist by name.
    create_unsettled: bool = False
    spawn_resends: int | None = None
    #: A by-name cleanup of a pod that may exist is owed (see the cleanups index).
    cleanup_pending: bool = False
    cleanup_attempts: int | None = None
    cleanup_error: dict[str, Any] | None = None
    cleanup_done_at_ms: int | None = None
    stop_requested_at_ms: int | None = None
    stop_reason: str | None = None
    stop_resends: int | None = None
    #: Re-created from its pod after a Redis data loss.
    adopted: bool = False
    #: The caller's tenant (quotas and budgets are kept per user and per tenant).
    tenant_id: str | None = None
    #: Hard lifetime: the session ends this long after it was created, touched or not.
    max_lifetime_ms: int | None = None
    #: Its hard deadline (creation + ``max_lifetime_ms``, Redis time), written at create.
    expires_at_ms: int | None = None
    #: When its ``expiring`` event is due; removed once the event went out.
    expiry_warn_at_ms: int | None = None
    #: GPU-idle reaping (opt-in): ended when every GPU stays below this utilisation (%)...
    gpu_idle_below_pct: float | None = None
    #: ... for this long, heartbeats or not.
    gpu_idle_window_ms: int | None = None

    # ------------------------------------------------------------------ codec
    @classmethod
    def from_hash(cls, data: dict[str, str]) -> SessionRecord | None:
        """The record of a raw hash (``HGETALL``); ``None`` for an empty hash (missing)."""
        if not data:
            return None
        g = data.get
        return cls(
            id=g("id", ""),
            provider=g("provider", ""),
            status=_status(g("status")),
            pod_name=g("pod_name"),
            label=g("label"),
            user_id=decode_json(g("user_id")),
            idle_ttl_ms=_int(g("idle_ttl_ms")) or 0,
            auth=g("auth", "none"),
            token_hash=g("token_hash"),
            base_url=g("base_url"),
            gpu=g("gpu"),
            image=g("image"),
            api_key_sealed=g("api_key_sealed"),
            spawn_sealed=g("spawn_sealed"),
            compute_id=g("compute_id"),
            compute=decode_json(g("compute")),
            reason=g("reason"),
            error=decode_json(g("error")),
            last_error=decode_json(g("last_error")),
            created_at_ms=_int(g("created_at_ms")),
            last_activity_ms=_int(g("last_activity_ms")),
            running_at_ms=_int(g("running_at_ms")),
            terminating_at_ms=_int(g("terminating_at_ms")),
            ended_at_ms=_int(g("ended_at_ms")),
            spawn_attempts=_int(g("spawn_attempts")),
            create_attempts=_int(g("create_attempts")),
            create_unsettled=_flag(g("create_unsettled")),
            spawn_resends=_int(g("spawn_resends")),
            cleanup_pending=_flag(g("cleanup_pending")),
            cleanup_attempts=_int(g("cleanup_attempts")),
            cleanup_error=decode_json(g("cleanup_error")),
            cleanup_done_at_ms=_int(g("cleanup_done_at_ms")),
            stop_requested_at_ms=_int(g("stop_requested_at_ms")),
            stop_reason=g("stop_reason"),
            stop_resends=_int(g("stop_resends")),
            adopted=_flag(g("adopted")),
            tenant_id=g("tenant_id"),
            max_lifetime_ms=_int(g("max_lifetime_ms")),
            expires_at_ms=_int(g("expires_at_ms")),
            expiry_warn_at_ms=_int(g("expiry_warn_at_ms")),
            gpu_idle_below_pct=_float(g("gpu_idle_below_pct")),
            gpu_idle_window_ms=_int(g("gpu_idle_window_ms")),
        )

    def to_hash(self) -> dict[str, str]:
        """The hash fields of this record (``None`` fields and false flags left out)."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "user_id":
                out["user_id"] = json.dumps(value)
            elif value is None or value is False:
                continue
            elif value is True:
                out[f.name] = "1"
            elif isinstance(value, dict):
                out[f.name] = json.dumps(value)
            else:
                out[f.name] = str(value)
        return out

    # ------------------------------------------------------------------ views
    @property
    def ended(self) -> bool:
        """Whether the session ended (terminated or failed)."""
        return self.status in ENDED_STATUSES

    @property
    def live(self) -> bool:
        """Whether the session is spawning, running or terminating."""
        return self.status in LIVE_STATUSES

    def covers_pod(self, pod_id: str) -> bool:
        """Whether this record tracks the pod ``pod_id`` (the orphan scan's rule): a live
        record whose pod is this one, or whose pod is not recorded yet."""
        return self.live and self.compute_id in (None, "", pod_id)

    def __repr__(self) -> str:  # the sealed fields are not secrets, but say nothing anyway
        return (
            f"SessionRecord(id={self.id!r}, provider={self.provider!r}, "
            f"status={self.status!s}, compute_id={self.compute_id!r})"
        )


__all__ = [
    "ENDED_STATUSES",
    "IDLE_REASON",
    "LIVE_STATUSES",
    "MAX_LIFETIME_REASON",
    "SESSION_ID_RE",
    "SessionRecord",
    "SessionStatus",
    "lua_with_statuses",
    "new_session_id",
]
