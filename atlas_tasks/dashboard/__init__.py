"""The ops page: a live table of every tracked session with Touch, Stop and Terminate,
each session's event timeline, untracked provider pods, and the reaper's health.

* :mod:`~atlas_tasks.dashboard.service` — what the page reads and does (no web framework).
* :mod:`~atlas_tasks.dashboard.app` — the standalone Starlette app behind
  ``atlas-tasks dashboard --port N`` (access token ``ATLAS_DASHBOARD_TOKEN``).
* :mod:`~atlas_tasks.dashboard.django_urls` — a Django URLconf (staff users only).
* :mod:`~atlas_tasks.dashboard.flask` — a Flask blueprint factory (guarded by a callable).

Importing this package imports none of Starlette, Django or Flask.
"""

from __future__ import annotations

from atlas_tasks.dashboard.settings import DashboardSettings

__all__ = ["DashboardSettings"]
