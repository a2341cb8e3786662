"""The Django app config: reads ``settings.ATLAS`` once, at startup."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.conf import settings

from atlas_tasks.contrib._web import WebOptions, apply_settings

_options: WebOptions | None = None


def load_options() -> WebOptions:
    """Read ``settings.ATLAS``: the core keys become :func:`atlas_tasks.config.configure`
    overrides (they win over ``ATLAS_*`` environment variables), the web keys
    (``SESSION_PRESETS``, ``OWNER``, ``VIEWS``, ``SSE_KEEPALIVE_S``) are returned.

    Raises:
        ValidationError: an unknown key (the closest one is suggested) or a bad value.
    """
    global _options
    values: Any = getattr(settings, "ATLAS", {}) or {}
    _options = apply_settings(values, source="settings.ATLAS")
    return _options


def options() -> WebOptions:
    """The options read at startup (read now if the app was not set up yet)."""
    return _options if _options is not None else load_options()


class AtlasTasksConfig(AppConfig):
    """``atlas_tasks.contrib.django``: settings, session routes, ``manage.py atlas``."""

    name = "atlas_tasks.contrib.django"
    label = "atlas_tasks"
    verbose_name = "atlas_tasks"

    def ready(self) -> None:
        """Apply ``settings.ATLAS`` before any request or worker uses the settings."""
        load_options()
