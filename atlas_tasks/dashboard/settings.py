"""Settings of the ops page, read from ``ATLAS_DASHBOARD_*`` environment variables.

Kept apart from :class:`atlas_tasks.config.AtlasSettings` on purpose: only the process
that serves the page needs them, and the token must never reach a worker's environment
dump. The page also reads the usual ``ATLAS_*`` settings (Redis URL, reap providers...)
through :func:`atlas_tasks.config.get_settings`.
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Shortest accepted access token: the page can stop and terminate every pod, so a
#: guessable token is refused at start rather than trusted.
MIN_TOKEN_LENGTH = 16


class DashboardSettings(BaseSettings):
    """Knobs of ``atlas-tasks dashboard``. Env var = ``ATLAS_DASHBOARD_`` + field name."""

    model_config = SettingsConfigDict(env_prefix="ATLAS_DASHBOARD_", extra="ignore")

    token: SecretStr | None = Field(
        default=None,
        description="Access token of the ops page (at least 16 characters), "
        "sent as `Authorization: Bearer ...` or entered once in the login form. Without it "
        "the server refuses to start, unless `--insecure-localhost`.",
    )
    session_ttl_s: int = Field(
        default=12 * 3600,
        gt=0,
        description="Lifetime of a login cookie (and of a bearer client's CSRF token).",
    )
    cookie_secure: bool = Field(
        default=False,
        description="Mark the login cookie `Secure` (set it when the page "
        "is served over HTTPS, e.g. behind a TLS proxy).",
    )
    operator_header: str = Field(
        default="X-Atlas-Operator",
        description="Header naming the operator of a "
        "bearer-token request (recorded in `operator_action` events).",
    )
    poll_interval_ms: int = Field(
        default=500,
        ge=100,
        le=1000,
        description="How often the live table re-reads the "
        "registry (session events wake it sooner); at most 1000 ms.",
    )
    linger_ms: int = Field(
        default=60_000,
        ge=0,
        description="How long an ended session stays in the table "
        "(greyed out) after it left the registry's tracked set.",
    )
    scan_limit: int = Field(
        default=20_000,
        gt=0,
        description="Most Redis keys one health refresh SCANs to find "
        "jobs and deploys in flight (beyond it the lists are marked partial).",
    )


__all__ = ["MIN_TOKEN_LENGTH", "DashboardSettings"]
