"""What Flower (and ``celery inspect``, and worker logs) show of an atlas task's arguments.

Celery records ``argsrepr``/``kwargsrepr`` in the task message and in its events; Flower
shows them as the task's args and kwargs. Every enqueue site of a spawn or terminate
builds them here, so the rule is in one place:

* **Context, yes**: session id, user id, provider, GPU, reason, compute id, pod name.
* **Secrets, never**: the sealed spawn payload (request + bearer token or signing secret),
  tokens, API keys. They are replaced by ``'<sealed>'``; nothing here ever receives a
  secret, and every value is cut to :data:`MAX_VALUE_CHARS` so a hostile ``user_id`` cannot
  flood the event stream.

Each helper returns the keyword arguments for ``apply_async``/``send_task``::

    app.send_task(C.TASK_SPAWN, args=[sid, sealed], **task_reprs.spawn(sid, ...))

:data:`SECRET_ARGS` names the positional arguments of each task that must never be shown;
the Celery app applies :func:`redacted` to any message of those tasks sent without
reprs (:class:`atlas_tasks.celery_app.AtlasCelery`), so a call site that forgets the
helper still leaks nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from atlas_tasks import constants as C

#: Longest value shown for one context field (user ids are caller-chosen JSON).
MAX_VALUE_CHARS = 64
#: Session ids shown for a terminate batch; the rest are counted.
MAX_BATCH_IDS = 5
#: What stands in for the sealed spawn payload.
SEALED = "<sealed>"
#: What stands in for a serverless job's request (its input is the caller's data).
REQUEST = "<request>"

#: Positions of the arguments never shown, by task: the sealed spawn payload (request +
#: bearer token or signing secret) and a job's request (input, possibly credentials).
SECRET_ARGS: Mapping[str, Mapping[int, str]] = {
    C.TASK_SPAWN: {1: SEALED},
    C.TASK_JOB_RUN: {1: REQUEST},
}


def _short(value: Any) -> Any:
    """A JSON-ish scalar cut to :data:`MAX_VALUE_CHARS` (non-scalars become their JSON)."""
    if value is None or isinstance(value, bool | int | float):
        return value
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 1] + "…"


def _context(**fields: Any) -> str:
    # Empty fields are dropped: Flower's column stays readable.
    return repr({k: _short(v) for k, v in fields.items() if v not in (None, "")})


def spawn(
    session_id: str,
    *,
    provider: str | None = None,
    gpu: str | None = None,
    user_id: Any = None,
    reason: str | None = None,
) -> dict[str, str]:
    """Reprs of ``atlas.compute.spawn(session_id, sealed)``: the payload stays hidden."""
    return {
        "argsrepr": repr((session_id, SEALED)),
        "kwargsrepr": _context(
            session=session_id, user_id=user_id, provider=provider, gpu=gpu, reason=reason
        ),
    }


def terminate(session_id: str, reason: str, *, provider: str | None = None) -> dict[str, str]:
    """Reprs of ``atlas.compute.terminate(session_id, reason)``."""
    return {
        "argsrepr": repr((session_id, reason)),
        "kwargsrepr": _context(session=session_id, reason=reason, provider=provider),
    }


def terminate_batch(session_ids: list[str], reason: str) -> dict[str, str]:
    """Reprs of ``atlas.compute.terminate_batch(session_ids, reason)``: the first
    :data:`MAX_BATCH_IDS` ids and how many more."""
    shown: list[str] = list(session_ids[:MAX_BATCH_IDS])
    if len(session_ids) > MAX_BATCH_IDS:
        shown.append(f"+{len(session_ids) - MAX_BATCH_IDS} more")
    return {
        "argsrepr": repr((shown, reason)),
        "kwargsrepr": _context(sessions=len(session_ids), reason=reason),
    }


def terminate_orphan(provider: str, compute_id: str, pod_name: str | None) -> dict[str, str]:
    """Reprs of ``atlas.compute.terminate_orphan(provider, compute_id, pod_name)``."""
    return {
        "argsrepr": repr((provider, compute_id, pod_name)),
        "kwargsrepr": _context(
            reason="orphan", provider=provider, compute_id=compute_id, pod_name=pod_name
        ),
    }


def job_run(job_id: str) -> dict[str, str]:
    """Reprs of ``atlas.jobs.run(job_id, request)``: the request stays hidden."""
    return {"argsrepr": repr((job_id, REQUEST)), "kwargsrepr": _context(job=job_id)}


def redacted(task_name: str, args: Sequence[Any] | None) -> dict[str, str]:
    """Reprs of any atlas task message: its :data:`SECRET_ARGS` replaced, every other
    value cut to :data:`MAX_VALUE_CHARS`. Empty for a task without secret arguments
    (Celery's own reprs are then safe)."""
    secret = SECRET_ARGS.get(task_name)
    if not secret:
        return {}
    shown = tuple(secret.get(i, _short(value)) for i, value in enumerate(args or ()))
    return {"argsrepr": repr(shown), "kwargsrepr": "{}"}


__all__ = [
    "MAX_BATCH_IDS",
    "MAX_VALUE_CHARS",
    "REQUEST",
    "SEALED",
    "SECRET_ARGS",
    "job_run",
    "redacted",
    "spawn",
    "terminate",
    "terminate_batch",
    "terminate_orphan",
]
