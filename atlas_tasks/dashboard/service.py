"""What the ops page shows and does, independent of any web framework.

The Starlette app (:mod:`atlas_tasks.dashboard.app`), the Django URLconf
(:mod:`atlas_tasks.dashboard.django_urls`) and the Flask blueprint
(:mod:`atlas_tasks.dashboard.flask`) are thin adapters over :class:`DashboardService`
(reads and actions) and :class:`LiveTable` (the diffs that keep the table live).

Reads go to Redis only (the registry, the event streams, the reaper's keys), except the
orphan listing, which asks each provider of ``ATLAS_REAP_PROVIDERS`` for its pods, like
the reaper's orphan scan does. Actions never call a provider: Touch and Stop are the
caller API (``orchestrator.touch`` / ``stop_tracked``), Terminate enqueues
``atlas.compute.terminate`` (reason ``operator``) so the pod ends through the same fenced,
confirmed path as every other terminate, and an orphan's Terminate enqueues
``atlas.compute.terminate_orphan``. Each accepted action is recorded as an
``operator_action`` event naming the operator on the session's event stream.

Nothing returned here holds a secret: rows are built field by field from the record
(never the token hash, the sealed API key or the base URL), and event data shown in a
timeline has secret-looking keys redacted.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, cast

import redis

from atlas_tasks import client as orchestrator
from atlas_tasks import constants as C
from atlas_tasks import events
from atlas_tasks.config import AtlasSettings, get_settings
from atlas_tasks.errors import ForbiddenError, NotTracked, ValidationError
from atlas_tasks.keyspace_names import Keyspace, keyspace
from atlas_tasks.redis_conn import get_redis
from atlas_tasks.redis_lua import decode_json as _json
from atlas_tasks.sessions.reaper import DATA_LOSS_GRACE_KEY, ORPHAN_FIRST_SEEN_KEY
from atlas_tasks.sessions.records import SessionRecord
from atlas_tasks.sessions.store import Keys, SessionStore, store_for
from atlas_tasks.tasks.reaper import LAST_SWEEP_KEY, SWEEP_STATS_KEY

log = logging.getLogger(__name__)

#: Event type recorded for every operator action (data: operator, action, ...).
OPERATOR_ACTION_EVENT = "operator_action"
#: Reason of an operator's Terminate (shows in the ``terminating`` event).
OPERATOR_REASON = "operator"
#: Task that terminates an untracked prefixed pod (see :mod:`atlas_tasks.tasks.compute`).
TASK_TERMINATE_ORPHAN = C.TASK_TERMINATE_ORPHAN
#: Session ids are 16 hex chars; anything else in a URL is refused before touching Redis.
SESSION_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: Keys whose values a timeline never shows (matched case-insensitively, as substrings).
SECRET_KEY_PARTS = (
    "token",
    "secret",
    "password",
    "api_key",
    "apikey",
    "authorization",
    "sealed",
    "preshared",
)
#: Seconds a health snapshot is reused (many open pages share one set of Redis reads).
HEALTH_CACHE_S = 2.0
#: Row fields that change continuously (or jitter by a millisecond per read) and are
#: therefore not compared when diffing; the page recomputes them every second.
_VOLATILE = frozenset({"accrued_usd", "last_activity_ms", "deadline_ms"})
#: A deadline that moved by more than this was re-armed (a touch), not read jitter.
_DEADLINE_TOLERANCE_MS = 400

SendTask = Callable[..., Any]


@dataclass
class SessionRow:
    """One row of the live table (all times are Redis time, ms since the epoch)."""

    id: str
    status: str
    user: str
    provider: str
    gpu: str
    pod_name: str
    compute_id: str
    idle_ttl_ms: int
    last_activity_ms: int | None
    #: When the idle clock runs out (``None`` while spawning or once ended).
    deadline_ms: int | None
    created_at_ms: int | None
    running_at_ms: int | None
    ended_at_ms: int | None
    cost_per_hour: float | None
    #: ``cost_per_hour`` × running time so far; ``None`` when the record has no cost.
    accrued_usd: float | None
    url: str
    reason: str
    stop_requested: bool
    last_error: str
    #: False once the session left the tracked set (it lingers, greyed out, a while).
    tracked: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return asdict(self)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _user(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def _error_text(value: Any) -> str:
    if isinstance(value, dict):
        return f"{value.get('kind', 'error')}: {value.get('message') or ''}".strip()
    return ""


def row_from_record(record: SessionRecord, pttl: int, now_ms: int, tracked: bool) -> SessionRow:
    """Build a table row from a session record and its idle key's PTTL (ms)."""
    compute = record.compute or {}
    if not isinstance(compute, dict):
        compute = {}
    idle_ttl_ms = record.idle_ttl_ms
    deadline = now_ms + pttl if pttl > 0 else None
    if deadline is not None and idle_ttl_ms:
        # touch()'s fast path only re-arms the idle key: the key's PTTL is the truth.
        last_activity: int | None = deadline - idle_ttl_ms
    else:
        last_activity = record.last_activity_ms
    url = ""
    for port in compute.get("ports") or []:
        if isinstance(port, dict) and port.get("url") and port.get("protocol", "http") == "http":
            url = str(port["url"])
            break
    cost = compute.get("cost_per_hour")
    cost_per_hour = float(cost) if isinstance(cost, int | float) and cost > 0 else None
    running_at = record.running_at_ms
    ended_at = record.ended_at_ms
    accrued = None
    if cost_per_hour is not None and running_at is not None:
        end = ended_at or now_ms
        accrued = round(cost_per_hour * max(0, end - running_at) / 3_600_000, 6)
    return SessionRow(
        id=record.id,
        status=str(record.status) if record.status else "unknown",
        user=_user(record.user_id),
        provider=record.provider,
        gpu=record.gpu or str(compute.get("gpu_type") or ""),
        pod_name=record.pod_name or "",
        compute_id=record.compute_id or "",
        idle_ttl_ms=idle_ttl_ms,
        last_activity_ms=last_activity,
        deadline_ms=deadline,
        created_at_ms=record.created_at_ms,
        running_at_ms=running_at,
        ended_at_ms=ended_at,
        cost_per_hour=cost_per_hour,
        accrued_usd=accrued,
        url=url,
        reason=record.reason or record.stop_reason or "",
        stop_requested=bool(record.stop_requested_at_ms),
        last_error=_error_text(record.last_error or record.error),
        tracked=tracked,
    )


def redact(value: Any) -> Any:
    """``value`` with the values of secret-looking keys replaced by ``"[redacted]"``."""
    if isinstance(value, dict):
        return {
            k: "[redacted]" if any(p in str(k).lower() for p in SECRET_KEY_PARTS) else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def check_session_id(session_id: str) -> str:
    """``session_id`` if it looks like one.

    Raises:
        ValidationError: anything else (never reaches Redis).
    """
    if not SESSION_ID_RE.fullmatch(session_id or ""):
        raise ValidationError("session_id: not a session id", field="session_id")
    return session_id


def _covers(raw: dict[str, str], pod_id: str) -> bool:
    # The reaper's rule (SessionRecord.covers_pod): a live record whose pod is this one
    # or not known yet covers the pod.
    record = SessionRecord.from_hash(raw)
    return record is not None and record.covers_pod(pod_id)


def _default_send_task(name: str, args: list[Any]) -> None:
    from atlas_tasks.celery_app import get_app

    get_app().send_task(name, args=args)  # routed by the app's task_routes


class DashboardService:
    """Reads and actions of the ops page.

    Args:
        settings: atlas settings (default: :func:`get_settings`, read per call so the
            environment may change between tests).
        send_task: ``send_task(name, args)`` (default: the Celery app's, queue
            ``compute``); injected in tests.
        scan_limit: most Redis keys a health refresh SCANs for jobs and deploys.
    """

    def __init__(
        self,
        *,
        settings: AtlasSettings | None = None,
        send_task: SendTask | None = None,
        scan_limit: int = 20_000,
    ) -> None:
        self._settings = settings
        self._send_task = send_task or _default_send_task
        self.scan_limit = scan_limit
        self._health_lock = threading.Lock()
        self._health_cache: tuple[float, dict[str, Any]] | None = None

    @property
    def settings(self) -> AtlasSettings:
        """The atlas settings in use."""
        return self._settings or get_settings()

    @property
    def ks(self) -> Keyspace:
        """The deployment's namespace: every key below is read in it."""
        return keyspace(self.settings.namespace)

    @property
    def r(self) -> redis.Redis:
        """The registry's Redis client (decoded responses)."""
        return get_redis(self.settings.redis_url)

    @property
    def _store(self) -> SessionStore:
        return store_for(self.r, namespace=self.ks.namespace)

    # ------------------------------------------------------------------ sessions
    def tracked_ids(self) -> set[str]:
        """Every tracked session id of the cluster."""
        return set(self._store.list_ids())

    def tracked_among(self, session_ids: Iterable[str]) -> set[str]:
        """Which of ``session_ids`` are tracked (one round trip)."""
        ids = list(session_ids)
        if not ids:
            return set()
        flags = self._store.tracked_flags(ids)
        return {sid for sid, flag in zip(ids, flags, strict=True) if flag}

    def rows(self, session_ids: Iterable[str], tracked: set[str]) -> tuple[int, list[SessionRow]]:
        """``(Redis now in ms, rows)`` of the given sessions (unknown ones are skipped)."""
        ids = list(session_ids)
        seconds, micros = self.r.time()  # not pipelined: a cluster pipeline refuses TIME
        with self.r.pipeline(transaction=False) as pipe:
            for session_id in ids:
                pipe.hgetall(Keys(session_id, self.ks).record)
                pipe.pttl(Keys(session_id, self.ks).alive)
            out: list[Any] = pipe.execute() if ids else []
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        rows = []
        for i, session_id in enumerate(ids):
            record, pttl = SessionRecord.from_hash(out[2 * i]), out[2 * i + 1]
            if record is not None and record.id:
                rows.append(row_from_record(record, int(pttl), now_ms, session_id in tracked))
        return now_ms, rows

    def sessions(self) -> dict[str, Any]:
        """Every tracked session as JSON rows: ``{"now_ms", "rows"}``."""
        tracked = self.tracked_ids()
        now_ms, rows = self.rows(sorted(tracked), tracked)
        return {"now_ms": now_ms, "rows": [row.as_dict() for row in rows]}

    def timeline(self, session_id: str) -> dict[str, Any]:
        """The session's recorded events, oldest first, secrets redacted."""
        check_session_id(session_id)
        recorded = events.history(session_id)
        return {
            "session_id": session_id,
            "events": [
                {"id": e.id, "type": e.type, "ts": e.ts, "data": redact(e.data)} for e in recorded
            ],
        }

    # ------------------------------------------------------------------ actions
    def _record(self, topic_id: str, operator: str, action: str, **data: Any) -> None:
        events.publish(
            topic_id, OPERATOR_ACTION_EVENT, {"operator": operator, "action": action, **data}
        )
        log.info("dashboard: %s by operator %r on %s %s", action, operator, topic_id, data or "")

    def touch(self, session_id: str, operator: str) -> dict[str, Any]:
        """Re-arm the session's idle clock (``orchestrator.touch``).

        Raises:
            NotTracked: unknown, terminating or ended session.
        """
        orchestrator.touch(check_session_id(session_id))
        self._record(session_id, operator, "touch")
        return {"ok": True, "action": "touch", "session_id": session_id}

    def stop(self, session_id: str, operator: str) -> dict[str, Any]:
        """Stop the session (``orchestrator.stop_tracked``: durable, then enqueued).

        Raises:
            NotTracked: unknown session.
        """
        orchestrator.stop_tracked(check_session_id(session_id))
        self._record(session_id, operator, "stop")
        return {"ok": True, "action": "stop", "session_id": session_id}

    def terminate(self, session_id: str, operator: str) -> dict[str, Any]:
        """End the session's pod now through the fenced terminate path.

        The stop is first recorded in the registry (so the reaper re-sends it if the
        broker loses the message), then ``atlas.compute.terminate`` is enqueued with
        reason ``operator``; a worker takes the session's fence, deletes the pod and
        confirms it. No provider is called from here.

        Raises:
            NotTracked: unknown or untracked session.
        """
        check_session_id(session_id)
        reg = store_for(self.r, namespace=self.ks.namespace)
        verdict = reg.request_stop(session_id, OPERATOR_REASON, self.settings.stop_resend_ms)
        if verdict in ("terminated", "failed"):
            return {
                "ok": True,
                "action": "terminate",
                "session_id": session_id,
                "note": f"already {verdict}",
            }
        if verdict != "ok":
            raise NotTracked(f"session {session_id!r} is not tracked")
        self._send_task(C.TASK_TERMINATE, [session_id, OPERATOR_REASON])
        self._record(session_id, operator, "terminate")
        return {"ok": True, "action": "terminate", "session_id": session_id}

    # ------------------------------------------------------------------ orphans
    def orphans(self) -> dict[str, Any]:
        """Provider pods that no session tracks (``ATLAS_REAP_PROVIDERS``), with ages.

        Lists each provider like the reaper's orphan scan does (one provider call each).
        A pod is ``orphan`` when it carries the name prefix (the reaper terminates it once
        older than ``ATLAS_ORPHAN_GRACE_MS``) and ``foreign`` otherwise (never touched).
        A provider that fails to list is reported in ``errors``.
        """
        from atlas_tasks.providers import get_provider

        settings = self.settings
        prefix = settings.reap_name_prefix
        r = self.r
        now_ms = store_for(r, namespace=self.ks.namespace).now_ms()
        intents = set(cast(list[str], r.zrange(self.ks.key(C.INTENTS_KEY), 0, -1)))
        first_seen = cast(dict[str, str], r.hgetall(self.ks.key(ORPHAN_FIRST_SEEN_KEY)))
        pods: list[dict[str, Any]] = []
        errors: list[str] = []
        for provider_name in settings.reap_providers:
            try:
                listed = list(get_provider(provider_name).list_compute())
            except Exception as exc:  # one failing provider must not hide the others
                errors.append(f"{provider_name}: {type(exc).__name__}: {exc}")
                continue
            for pod in listed:
                if str(pod.status) == "terminated":
                    continue
                name = pod.name or ""
                ours = bool(prefix) and name.startswith(prefix)
                if ours:
                    session_id = name[len(prefix) :]
                    if session_id in intents or _covers(
                        cast(dict[str, str], r.hgetall(Keys(session_id, self.ks).record)), pod.id
                    ):
                        continue
                if pod.created_at is not None:
                    age_ms: int | None = now_ms - int(pod.created_at.timestamp() * 1000)
                elif pod.id in first_seen:
                    age_ms = now_ms - int(first_seen[pod.id])
                else:
                    age_ms = None
                pods.append(
                    {
                        "provider": provider_name,
                        "id": pod.id,
                        "name": name,
                        "status": str(pod.status),
                        "age_ms": age_ms,
                        "kind": "orphan" if ours else "foreign",
                        "in_grace": ours and (age_ms is None or age_ms < settings.orphan_grace_ms),
                        "terminable": ours,
                    }
                )
        return {
            "now_ms": now_ms,
            "prefix": prefix,
            "grace_ms": settings.orphan_grace_ms,
            "providers": list(settings.reap_providers),
            "errors": errors,
            "pods": pods,
            "data_loss_grace": bool(r.exists(self.ks.key(DATA_LOSS_GRACE_KEY))),
        }

    def terminate_orphan(
        self, provider_name: str, compute_id: str, operator: str
    ) -> dict[str, Any]:
        """Enqueue ``atlas.compute.terminate_orphan`` for an untracked prefixed pod.

        The pod is looked up again first (one provider call): only a live pod whose name
        carries the prefix and that no session or spawn intent covers is accepted.

        Raises:
            ValidationError: the provider is not one of ``ATLAS_REAP_PROVIDERS``.
            NotFoundError: the provider has no such pod.
            ForbiddenError: the pod is not ours (no prefix) or a session tracks it.
        """
        from atlas_tasks.providers import get_provider

        settings = self.settings
        if provider_name not in settings.reap_providers:
            raise ValidationError(
                f"provider: {provider_name!r} is not in ATLAS_REAP_PROVIDERS", field="provider"
            )
        if not compute_id or len(compute_id) > 200:
            raise ValidationError("compute_id: missing or too long", field="compute_id")
        pod = get_provider(provider_name).get_compute(compute_id)
        prefix = settings.reap_name_prefix
        name = pod.name or ""
        if not prefix or not name.startswith(prefix):
            raise ForbiddenError(
                f"pod {compute_id} does not carry the prefix {prefix!r}: "
                "atlas never terminates foreign pods"
            )
        session_id = name[len(prefix) :]
        r = self.r
        if r.zscore(self.ks.key(C.INTENTS_KEY), session_id) is not None or _covers(
            cast(dict[str, str], r.hgetall(Keys(session_id, self.ks).record)), pod.id
        ):
            raise ForbiddenError(
                f"pod {compute_id} belongs to tracked session {session_id}: "
                "terminate the session instead"
            )
        self._send_task(TASK_TERMINATE_ORPHAN, [provider_name, pod.id, name])
        topic = session_id if SESSION_ID_RE.fullmatch(session_id) else pod.id
        self._record(topic, operator, "terminate_orphan", provider=provider_name, compute_id=pod.id)
        return {"ok": True, "action": "terminate_orphan", "compute_id": pod.id}

    # ------------------------------------------------------------------ health
    def health(self) -> dict[str, Any]:
        """Reaper health and work in flight (cached for :data:`HEALTH_CACHE_S`)."""
        with self._health_lock:
            cached = self._health_cache
            if cached is not None and time.monotonic() - cached[0] < HEALTH_CACHE_S:
                return cached[1]
            value = self._health()
            self._health_cache = (time.monotonic(), value)
            return value

    def _health(self) -> dict[str, Any]:
        r = self.r
        seconds, micros = r.time()  # not pipelined: a cluster pipeline refuses TIME
        with r.pipeline(transaction=False) as pipe:
            pipe.get(self.ks.key(LAST_SWEEP_KEY))
            pipe.hgetall(self.ks.key(SWEEP_STATS_KEY))
            pipe.exists(self.ks.key(DATA_LOSS_GRACE_KEY))
            last, stats, grace = pipe.execute()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        store = self._store
        counts = store.index_counts(now_ms)
        intents, stops, due = counts.intents, counts.stops, counts.due
        tracked = store.list_ids()
        retries = store.count_failing_terminates(tracked)
        last_sweep = _json(last)
        interval = self.settings.reap_interval_ms
        age = (
            now_ms - int(last_sweep["at_ms"])
            if isinstance(last_sweep, dict) and "at_ms" in last_sweep
            else None
        )
        jobs, jobs_partial = self._jobs_in_flight()
        deploys, deploys_partial = self._deploys_in_flight(now_ms)
        return {
            "now_ms": now_ms,
            "reap_interval_ms": interval,
            "last_sweep": last_sweep,
            "last_sweep_age_ms": age,
            # Beat sends a sweep every interval: five missed in a row means no beat or no
            # worker on the maintenance queue.
            "reaper_ok": age is not None and age <= max(5 * interval, 10_000),
            "stats": {k: int(v) for k, v in cast(dict[str, str], stats).items()},
            "tracked_sessions": len(tracked),
            "due_sessions": due,
            "open_intents": int(intents),
            "pending_stops": int(stops),
            "terminate_retries": retries,
            "orphans_reaped": int(cast(dict[str, str], stats).get("orphans", 0)),
            "data_loss_grace": bool(grace),
            "jobs_in_flight": jobs,
            "deploys_in_flight": deploys,
            "partial": jobs_partial or deploys_partial,
        }

    def _scan(self, pattern: str) -> tuple[list[str], bool]:
        """Keys matching ``pattern``, examining at most ``scan_limit`` keys."""
        found: list[str] = []
        if self.ks.tagged:
            # a cluster's SCAN is per node: scan_iter walks every primary (the scanned
            # groups each live in one slot, so it is one node's keys that match)
            for key in self.r.scan_iter(match=pattern, count=1000):
                found.append(str(key))
                if len(found) >= self.scan_limit:
                    return found, True
            return found, False
        cursor, examined = 0, 0
        while True:
            cursor, keys = self.r.scan(cursor=cursor, match=pattern, count=1000)
            found.extend(str(k) for k in keys)
            examined += 1000
            if cursor == 0:
                return found, False
            if examined >= self.scan_limit:
                return found, True

    def _jobs_in_flight(self) -> tuple[list[dict[str, Any]], bool]:
        from atlas_tasks.jobs.store import TERMINAL_STATUSES, JobStore, job_key_pattern

        keys, partial = self._scan(job_key_pattern(self.ks.namespace))
        if not keys:
            return [], partial
        jobs = [
            {
                "id": job.id,
                "status": str(job.status),
                "provider": job.provider,
                "endpoint": job.endpoint,
                "created_at_ms": job.created_at_ms,
            }
            for job in JobStore(self.r).summaries(keys)
            if job.status not in TERMINAL_STATUSES
        ]
        jobs.sort(key=lambda j: j["created_at_ms"] or 0)
        return jobs[:50], partial

    def _deploys_in_flight(self, now_ms: int) -> tuple[list[dict[str, Any]], bool]:
        _, prefix = events.topic_keys("", "deploy", namespace=self.ks.namespace)
        keys, partial = self._scan(prefix + "*")
        if not keys:
            return [], partial
        with self.r.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.xrange(key, "-", "+", count=1)
                pipe.xrevrange(key, "+", "-", count=1)
            answers = pipe.execute()
        deploys = []
        for i, key in enumerate(keys):
            first, last = answers[2 * i], answers[2 * i + 1]
            if not last:
                continue
            last_event = _json(last[0][1].get("e")) or {}
            if last_event.get("type") == "exit":
                continue
            started = int(str(first[0][0]).split("-")[0]) if first else None
            last_ms = int(str(last[0][0]).split("-")[0])
            deploys.append(
                {
                    "ticket": key[len(prefix) :],
                    "started_at_ms": started,
                    "last_event_ms": last_ms,
                    "silent_ms": now_ms - last_ms,
                    "last_type": last_event.get("type"),
                }
            )
        return deploys[:50], partial


class LiveTable:
    """The table's state as one viewer (or one server-wide feed) last saw it, turned into
    diffs: call :meth:`refresh` repeatedly; it answers what changed since the last call.

    Sessions that leave the tracked set are re-read once more (so the viewer sees them
    end as ``terminated`` or ``failed``), then kept greyed out for ``linger_ms``.
    """

    def __init__(self, service: DashboardService, *, linger_ms: int = 60_000) -> None:
        self.service = service
        self.linger_ms = linger_ms
        self.rows: dict[str, dict[str, Any]] = {}
        self._left_at: dict[str, float] = {}
        self.now_ms = 0

    def snapshot(self) -> dict[str, Any]:
        """The current rows (after a refresh): ``{"now_ms", "rows"}``."""
        return {"now_ms": self.now_ms, "rows": list(self.rows.values())}

    def refresh(self, only: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Re-read the registry; the changes as ``{"op": "upsert", "row": {...}}`` and
        ``{"op": "remove", "id": ...}``.

        ``only``: re-read just these sessions (the ones an event was published for)
        instead of every tracked one; ids without a record are ignored.
        """
        if only is not None:
            return self._refresh_some(set(only))
        tracked = self.service.tracked_ids()
        now = time.monotonic()
        for session_id in self.rows:
            if session_id not in tracked:
                self._left_at.setdefault(session_id, now)
        lingering = {
            sid for sid, left in self._left_at.items() if now - left < self.linger_ms / 1000
        }
        self.now_ms, rows = self.service.rows(sorted(tracked | lingering), tracked)
        fresh = {row.id: row.as_dict() for row in rows}
        changes: list[dict[str, Any]] = []
        for session_id in list(self.rows):
            if session_id not in fresh:
                del self.rows[session_id]
                self._left_at.pop(session_id, None)
                changes.append({"op": "remove", "id": session_id})
        for session_id, row in fresh.items():
            if session_id in tracked:
                self._left_at.pop(session_id, None)
            if _changed(self.rows.get(session_id), row):
                changes.append({"op": "upsert", "row": row})
            self.rows[session_id] = row
        return changes

    def _refresh_some(self, ids: set[str]) -> list[dict[str, Any]]:
        ids = {i for i in ids if SESSION_ID_RE.fullmatch(i)}
        if not ids:
            return []
        tracked = self.service.tracked_among(ids)
        self.now_ms, rows = self.service.rows(sorted(ids), tracked)
        changes: list[dict[str, Any]] = []
        now = time.monotonic()
        for row in rows:
            data = row.as_dict()
            if not row.tracked:
                if row.id not in self.rows:
                    continue  # ended before this table ever showed it (or not a session)
                self._left_at.setdefault(row.id, now)
            else:
                self._left_at.pop(row.id, None)
            if _changed(self.rows.get(row.id), data):
                changes.append({"op": "upsert", "row": data})
            self.rows[row.id] = data
        return changes


def _changed(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    if old is None:
        return True
    for key, value in new.items():
        if key in _VOLATILE:
            continue
        if old.get(key) != value:
            return True
    before, after = old.get("deadline_ms"), new.get("deadline_ms")
    if (before is None) != (after is None):
        return True
    return before is not None and after is not None and abs(before - after) > _DEADLINE_TOLERANCE_MS


__all__ = [
    "OPERATOR_ACTION_EVENT",
    "OPERATOR_REASON",
    "DashboardService",
    "LiveTable",
    "SessionRow",
    "check_session_id",
    "redact",
    "row_from_record",
]
