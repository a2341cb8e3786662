"""Tracked GPU sessions: one feature package.

* :mod:`~atlas_tasks.sessions.records` — ``SessionStatus`` and the typed ``SessionRecord``.
* :mod:`~atlas_tasks.sessions.store` — the Redis records and their Lua (``SessionStore``).
* :mod:`~atlas_tasks.sessions.service` — worker-side spawn/terminate/cleanup, Celery-free.
* :mod:`~atlas_tasks.sessions.reaper` — the sweep's decisions, Celery-free.
* :mod:`~atlas_tasks.sessions.client` — the caller side (public as ``atlas_tasks.client``
  and ``atlas_tasks.orchestrator``).
* :mod:`~atlas_tasks.sessions.expiry_listener` — the Redis expiry-event fast path.

The thin Celery tasks are in :mod:`atlas_tasks.tasks.compute` and
:mod:`atlas_tasks.tasks.reaper`.
"""
