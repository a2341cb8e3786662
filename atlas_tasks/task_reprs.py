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
"""

from __future__ import annotations

import json
from typing import Any

#: Longest value shown for one context field (user ids are caller-chosen JSON).
MAX_VALUE_CHARS = 64
#: Session ids shown for a terminate batch; the rest are counted.
MAX_BATCH_IDS = 5
#: What stands in for the sealed spawn payload.
SEALED = "<sealed>"


def _short(value: Any) -> Any:
    """A JSON-ish scalar cut to :data:`MAX_VALUE_CHARS` (non-scalars become their JSON)."""
    if value is None or isinstance(value, bool | int | float):
        return value
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS - 1] + "…"


def _context(**fields: Any) -> str:
    # Empty fields are dropped: Flower's column stays readable.
    return repr({k: _short(v) for k, v in fields.items() if v not in (None, "")})


def spawn(session_id: str, *, provider: str | None = None, gpu: str | None = None,
          user_id: Any = None, reason: str | None = None) -> dict[str, str]:
    """Reprs of ``atlas.compute.spawn(session_id, sealed)``: the payload stays hidden."""
    return {"argsrepr": repr((session_id, SEALED)),
            "kwargsrepr": _context(session=session_id, user_id=user_id, provider=provider,
                                   gpu=gpu, reason=reason)}


def terminate(session_id: str, reason: str, *, provider: str | None = None) -> dict[str, str]:
    """Reprs of ``atlas.compute.terminate(session_id, reason)``."""
    return {"argsrepr": repr((session_id, reason)),
            "kwargsrepr": _context(session=session_id, reason=reason, provider=provider)}


def terminate_batch(session_ids: list[str], reason: str) -> dict[str, str]:
    """Reprs of ``atlas.compute.terminate_batch(session_ids, reason)``: the first
    :data:`MAX_BATCH_IDS` ids and how many more."""
    shown: list[str] = list(session_ids[:MAX_BATCH_IDS])
    if len(session_ids) > MAX_BATCH_IDS:
        shown.append(f"+{len(session_ids) - MAX_BATCH_IDS} more")
    return {"argsrepr": repr((shown, reason)),
            "kwargsrepr": _context(sessions=len(session_ids), reason=reason)}


def terminate_orphan(provider: str, compute_id: str, pod_name: str | None) -> dict[str, str]:
    """Reprs of ``atlas.compute.terminate_orphan(provider, compute_id, pod_name)``."""
    return {"argsrepr": repr((provider, compute_id, pod_name)),
            "kwargsrepr": _context(reason="orphan", provider=provider, compute_id=compute_id,
                                   pod_name=pod_name)}


__all__ = ["MAX_BATCH_IDS", "MAX_VALUE_CHARS", "SEALED", "spawn", "terminate",
           "terminate_batch", "terminate_orphan"]
