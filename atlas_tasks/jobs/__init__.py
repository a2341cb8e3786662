"""Serverless inference jobs as Celery tasks.

One shape, like every feature package:

* :mod:`.client` — the caller side (``submit``, ``get``, ``handle``, ``cancel``,
  ``follow``, :class:`JobHandle`); it records and enqueues, never calls a provider;
* :mod:`.service` — the worker-side logic (submit once, poll single-flight), Celery-free;
* :mod:`.store` — the typed record (:class:`JobRecord`, :class:`JobStatus`) and its Lua.

Example (a Django view)::

    from atlas_tasks import jobs

    job = jobs.submit(endpoint="vllm-abc123", input={"prompt": "Hello"}, stream=True)
    for chunk in job.stream(timeout=120):   # replayed from the start, then live
        send_to_browser(chunk)
    jobs.get(job.id).status                 # "completed"
"""

from __future__ import annotations

from .client import (
    FINAL_EVENTS,
    JobCancelled,
    JobHandle,
    JobInfo,
    cancel,
    follow,
    get,
    handle,
    submit,
)
from .store import JobRecord, JobStatus

__all__ = [
    "FINAL_EVENTS",
    "JobCancelled",
    "JobHandle",
    "JobInfo",
    "JobRecord",
    "JobStatus",
    "cancel",
    "follow",
    "get",
    "handle",
    "submit",
]
