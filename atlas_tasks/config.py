"""Settings of atlas_tasks, read from ``ATLAS_*`` environment variables.

Settings are read lazily through :func:`get_settings` (cached) and never at import time,
so a Django/Flask app can set the environment before first use. Tests build
``AtlasSettings(...)`` directly or call :func:`reset_settings` after changing the env.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from atlas_tasks import constants
from atlas_tasks.errors import ValidationError


class AtlasSettings(BaseSettings):
    """Every knob of atlas_tasks. Env var = ``ATLAS_`` + the upper-cased field name."""

    model_config = SettingsConfigDict(env_prefix="ATLAS_", extra="ignore")

    # ---- providers
    default_provider: str | None = Field(
        default=None, description="Provider used when a call names none."
    )
    runpod_api_key: SecretStr | None = None
    fly_api_token: SecretStr | None = None
    lambda_labs_api_key: SecretStr | None = None
    vast_api_key: SecretStr | None = None

    runpod_base_url: str = "https://rest.runpod.io/v1"
    runpod_runtime_url: str = "https://api.runpod.ai/v2"
    runpod_graphql_url: str = "https://api.runpod.io/graphql"
    fly_base_url: str = "https://api.machines.dev"
    #: Fly app that Machines are created in (``provider="fly"``); required for Fly compute.
    #: A call may name another one with the provider option ``app``.
    fly_app: str | None = None
    #: Fly organization slug, used when atlas creates an app (``FlyMachinesProvider.create_app``).
    fly_org: str | None = None
    fly_api_url: str = "https://api.fly.io"
    # ---- Fly platform ops (atlas_tasks.fly): flyctl, logs streamer, token chain
    #: flyctl executable name or path, resolved on PATH ("flyctl" is tried when "fly" is absent).
    fly_executable: str = "fly"
    #: flyctl's config file read for ``access_token`` (default ``~/.fly/config.yml``).
    fly_config_file: str | None = None
    fly_config_file_enabled: bool = True
    #: Durable store of resolved Fly tokens: "redis" (Fernet-sealed), "file" or "memory".
    fly_token_store: Literal["redis", "file", "memory"] = "redis"
    #: Directory of the file token store (default ``~/.atlas_tasks/fly-tokens``; mode 0700).
    fly_token_dir: str | None = None
    #: Lifetime given to tokens read from config.yml or created by the CLI.
    fly_token_ttl_s: int = Field(default=24 * 3600, gt=0)
    #: Timeout of ``fly tokens create readonly``.
    fly_cli_timeout_s: float = Field(default=15.0, gt=0)
    #: ``fly deploy``: killed after this long without output / after this long in total.
    fly_deploy_activity_timeout_s: float = Field(default=300.0, gt=0)
    fly_deploy_max_timeout_s: float = Field(default=1800.0, gt=0)
    #: Logs streamer: delay between polls, HTTP timeout of one poll, run length of one task.
    fly_logs_poll_interval_s: float = Field(default=2.0, gt=0)
    fly_logs_timeout_s: float = Field(default=10.0, gt=0)
    fly_logs_slice_s: float = Field(default=20.0, gt=0)
    #: Lease of an app's streamer lock (renewed on every poll); a dead streamer is
    #: replaced after this long.
    fly_logs_lease_s: float = Field(default=15.0, gt=0)
    lambda_labs_base_url: str = "https://cloud.lambdalabs.com/api/v1"
    vast_base_url: str = "https://console.vast.ai/api/v0"
    #: The one SSH key (by name, as registered with Lambda) every Lambda launch carries;
    #: Lambda requires exactly one. ``provider_opts={"ssh_key_name": ...}`` overrides it.
    lambda_labs_ssh_key_name: str | None = None

    http_timeout_s: float = Field(default=30.0, gt=0)
    http_max_retries: int = Field(default=3, ge=0)
    #: Upper bound of one backoff sleep, also applied to Retry-After.
    http_max_backoff_s: float = Field(default=30.0, gt=0)

    #: Where the mock provider keeps its state: "memory" (one process) or "redis" (shared).
    mock_state: Literal["memory", "redis"] = "memory"

    # ---- redis / celery
    redis_url: str = constants.DEFAULT_REDIS_URL
    broker_url: str | None = None
    result_backend: str | None = None

    #: Fernet key (urlsafe base64, 32 bytes) for secrets that travel through the broker.
    secret_key: SecretStr | None = None

    # ---- serverless jobs
    #: How long a finished job's record and output stay readable in Redis.
    job_result_ttl_ms: int = Field(default=constants.DEFAULT_JOB_RESULT_TTL_MS, gt=0)

    # ---- orchestrator
    default_idle_ttl_ms: int = Field(default=constants.DEFAULT_IDLE_TTL_MS, gt=0)
    reap_interval_ms: int = Field(default=constants.DEFAULT_REAP_INTERVAL_MS, gt=0)
    reap_name_prefix: str = constants.POD_NAME_PREFIX_DEFAULT
    orphan_grace_ms: int = Field(default=constants.DEFAULT_ORPHAN_GRACE_MS, ge=0)
    #: Providers whose pods the reaper lists for orphans: "runpod,vast" or a JSON list.
    reap_providers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: How often the reaper lists provider pods to find orphans (cluster-wide throttle).
    #: Separate from reap_interval_ms because listing pods costs provider API calls.
    orphan_scan_interval_ms: int = Field(default=30_000, gt=0)
    #: Enable the keyspace-notification fast path (falls back to the reaper if refused).
    keyspace_events: bool = True
    #: Publish a ``heartbeat`` event on every touch(). Off by default: it costs a PUBLISH
    #: and takes touch() off its one-key fast path (see bench/RESULTS.md).
    heartbeat_events: bool = False
    #: Connections per Redis pool of a process. Worker threads and the terminate batches'
    #: own threads share it; redis-py raises past the limit, so it is sized generously.
    redis_max_connections: int = Field(default=1024, gt=0)
    #: Attempts of a terminate before ``terminate_failed`` (the reaper keeps retrying later).
    terminate_max_retries: int = Field(default=6, ge=0)
    #: Retries of a spawn on transient provider errors (429, 5xx, transport).
    spawn_max_retries: int = Field(default=5, ge=0)
    #: A spawn whose intent saw no progress for this long is re-sent by the reaper (its
    #: message was lost); its lease is 3/4 of this, capped at 90 s.
    spawn_stall_ms: int = Field(default=120_000, ge=2_000)
    #: After a create that may have made a pod (5xx, read timeout, reset), the name lookup
    #: keeps polling this long before it concludes "no pod": a create the cloud finishes
    #: after the client gave up shows within it, so the spawn adopts it instead of
    #: creating a second pod. Also bounds the by-name cleanup after such a create.
    create_lookup_wait_ms: int = Field(
        default=15_000, ge=0,
        description="How long (ms) the by-name lookup after an ambiguous create failure "
                    "(5xx, timeout, transport) keeps polling for a late-landing pod before "
                    "concluding that none exists; 0 = a single lookup.")
    #: Hard time limit of one spawn attempt; must stay below the spawn intent TTL.
    spawn_time_limit_s: int = Field(default=300, gt=0)
    #: Broker visibility timeout: an unacked spawn/terminate of a dead worker is redelivered
    #: after this. Must exceed the longest late-acked task (spawn_time_limit_s).
    visibility_timeout_s: int = Field(default=360, gt=0)
    #: Celery worker pool and concurrency used by ``atlas-tasks worker`` and the demo.
    #: Provider calls are I/O bound, so threads give the most concurrency per core.
    worker_pool: str = "threads"
    worker_concurrency: int = Field(default=128, gt=0)

    @field_validator("reap_providers", mode="before")
    @classmethod
    def _split_providers(cls, value: object) -> object:
        # Accept "runpod,mock" as well as JSON lists in the environment.
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [p.strip() for p in text.split(",") if p.strip()]
        return value

    @property
    def effective_broker_url(self) -> str:
        """Broker URL: ``ATLAS_BROKER_URL`` or else ``ATLAS_REDIS_URL``."""
        return self.broker_url or self.redis_url

    @property
    def effective_result_backend(self) -> str:
        """Result backend: ``ATLAS_RESULT_BACKEND`` or else ``ATLAS_REDIS_URL``."""
        return self.result_backend or self.redis_url


@lru_cache(maxsize=1)
def get_settings() -> AtlasSettings:
    """The process-wide settings, read from the environment on first call."""
    return AtlasSettings()


def reset_settings() -> None:
    """Forget cached settings so the next :func:`get_settings` re-reads the environment."""
    get_settings.cache_clear()


def resolve_provider_name(provider: object | None, settings: AtlasSettings | None = None) -> object:
    """Provider resolution: argument > ``ATLAS_DEFAULT_PROVIDER`` > a clear error.

    Returns the argument untouched when it is a provider class or instance.
    """
    if provider is not None and provider != "":
        return provider
    settings = settings or get_settings()
    if settings.default_provider:
        return settings.default_provider
    raise ValidationError(
        "provider: no provider given; pass provider=\"runpod\" (or fly, lambda_labs, vast, "
        "mock) or set ATLAS_DEFAULT_PROVIDER",
        field="provider",
    )


def resolve_api_key(
    provider: str, api_key: str | SecretStr | None = None, settings: AtlasSettings | None = None
) -> str | None:
    """API key resolution: argument > settings (``ATLAS_<PROVIDER>_API_KEY``) > native env var.

    Args:
        provider: registry name (``runpod``, ``fly``, ``lambda_labs``, ``vast``...).
        api_key: per-call key, wins when given.
    """
    if isinstance(api_key, SecretStr):
        api_key = api_key.get_secret_value()
    if api_key:
        return api_key
    settings = settings or get_settings()
    field = {"fly": "fly_api_token"}.get(provider, f"{provider}_api_key")
    configured = getattr(settings, field, None)
    if isinstance(configured, SecretStr) and configured.get_secret_value():
        return configured.get_secret_value()
    env_name = constants.PROVIDER_KEY_ENV.get(provider)
    if env_name and os.environ.get(env_name):
        return os.environ[env_name]
    return None


__all__ = [
    "AtlasSettings",
    "get_settings",
    "reset_settings",
    "resolve_api_key",
    "resolve_provider_name",
]
