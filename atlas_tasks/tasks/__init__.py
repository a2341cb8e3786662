"""Thin Celery tasks: each one calls one service method (sessions, jobs, fly).

Task modules never import :mod:`atlas_tasks.celery_app`; they use ``shared_task`` so the
app that loads them (workers, tests) owns them. Names are stable: see
:mod:`atlas_tasks.constants` (``atlas.compute.spawn``...).
"""

from __future__ import annotations
