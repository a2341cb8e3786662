"""Settings of atlas_tasks, read from ``ATLAS_*`` environment variables.

Settings are read lazily through :func:`get_settings` (cached) and never at import time,
so a Django/Flask app can set the environment before first use. Tests build
``AtlasSettings(...)`` directly or call :func:`reset_settings` after changing the env.

Host frameworks push their own settings with :func:`configure` (Django's
``settings.ATLAS``, Flask's ``app.config["ATLAS_*"]``): those win over the environment,
and an unknown key is a validation error naming the closest real one.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError
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
    runpod_api_key: SecretStr | None = Field(
        default=None, description="RunPod API key (else `RUNPOD_API_KEY`)."
    )
    fly_api_token: SecretStr | None = Field(
        default=None,
        description="Fly.io API token (else `FLY_API_TOKEN`, then the Fly token chain).",
    )
    lambda_labs_api_key: SecretStr | None = Field(
        default=None, description="Lambda Labs API key (else `LAMBDA_LABS_API_KEY`)."
    )
    vast_api_key: SecretStr | None = Field(
        default=None, description="Vast.ai API key (else `VAST_API_KEY`)."
    )

    runpod_base_url: str = Field(
        default="https://api.runpod.io",
        description="RunPod REST API v2 root, without a version suffix (pods, GPU catalog, "
        "templates, network volumes, billing).",
    )
    runpod_runtime_url: str = Field(
        default="https://api.runpod.ai/v2",
        description="RunPod serverless runtime API (jobs: run, status, stream, cancel).",
    )
    fly_base_url: str = Field(default="https://api.machines.dev", description="Fly Machines API.")
    fly_app: str | None = Field(
        default=None,
        description="Fly app that Machines are created in "
        '(`provider="fly"`); required for Fly compute. A call may name another one with '
        "the provider option `app`.",
    )
    fly_org: str | None = Field(
        default=None,
        description="Fly organization slug, used when atlas creates an app "
        "(`FlyMachinesProvider.create_app`).",
    )
    fly_api_url: str = Field(default="https://api.fly.io", description="Fly platform API (logs).")
    # ---- Fly platform ops (atlas_tasks.fly): flyctl, logs streamer, token chain
    fly_executable: str = Field(
        default="fly",
        description="flyctl executable name or path, resolved on PATH "
        "(`flyctl` is tried when `fly` is absent).",
    )
    fly_config_file: str | None = Field(
        default=None,
        description="flyctl's config file read for `access_token` (default `~/.fly/config.yml`).",
    )
    fly_config_file_enabled: bool = Field(
        default=True, description="Read flyctl's config file in the Fly token chain."
    )
    fly_token_store: Literal["redis", "file", "memory"] = Field(
        default="redis",
        description="Durable store of resolved Fly tokens: `redis` "
        "(Fernet-sealed), `file` or `memory`.",
    )
    fly_token_dir: str | None = Field(
        default=None,
        description="Directory of the file token store "
        "(default `~/.atlas_tasks/fly-tokens`; mode 0700).",
    )
    fly_token_ttl_s: int = Field(
        default=24 * 3600,
        gt=0,
        description="Lifetime given to tokens read from config.yml or created by the CLI.",
    )
    fly_cli_timeout_s: float = Field(
        default=15.0, gt=0, description="Timeout of `fly tokens create readonly`."
    )
    fly_deploy_activity_timeout_s: float = Field(
        default=300.0, gt=0, description="`fly deploy` is killed after this long without output."
    )
    fly_deploy_max_timeout_s: float = Field(
        default=1800.0, gt=0, description="`fly deploy` is killed after this long in total."
    )
    fly_logs_poll_interval_s: float = Field(
        default=2.0, gt=0, description="Fly logs streamer: delay between polls."
    )
    fly_logs_timeout_s: float = Field(
        default=10.0, gt=0, description="Fly logs streamer: HTTP timeout of one poll."
    )
    fly_logs_slice_s: float = Field(
        default=20.0, gt=0, description="Fly logs streamer: run length of one task."
    )
    fly_logs_lease_s: float = Field(
        default=15.0,
        gt=0,
        description="Lease of an app's streamer lock (renewed on every "
        "poll); a dead streamer is replaced after this long.",
    )
    lambda_labs_base_url: str = Field(
        default="https://cloud.lambda.ai/api/v1", description="Lambda Labs API."
    )
    vast_base_url: str = Field(default="https://console.vast.ai/api/v0", description="Vast.ai API.")
    lambda_labs_ssh_key_name: str | None = Field(
        default=None,
        description="The one SSH key (by name, as registered with Lambda) "
        "every Lambda launch carries; Lambda requires exactly one. "
        '`provider_opts={"ssh_key_name": ...}` overrides it.',
    )

    http_timeout_s: float = Field(
        default=30.0, gt=0, description="Timeout of one provider HTTP request."
    )
    http_max_retries: int = Field(
        default=3,
        ge=0,
        description="Retries of idempotent provider requests on 429, 5xx "
        "and transport errors (creates are never blindly retried).",
    )
    http_max_backoff_s: float = Field(
        default=30.0,
        gt=0,
        description="Upper bound of one backoff sleep, also applied to Retry-After.",
    )
    # Bounded: a web process serving many users' own API keys must not keep a pool per key.
    provider_cache_size: int = Field(
        default=64,
        ge=1,
        description="Provider instances (one pooled HTTP client each, per "
        "provider, API key, base URL and settings) a process keeps; the least recently used "
        "beyond this is closed.",
    )

    # ---- fleet rate budget (atlas_tasks.providers.budget)
    rate_budget: bool = Field(
        default=False,
        description="Share one Redis token bucket per (provider, API-key "
        "fingerprint, HTTP API) across every worker and web process: each provider request "
        "takes a token first, a 429's Retry-After pauses the whole fleet, and terminates "
        "keep priority over spawns, spawns over catalog/list reads.",
    )
    rate_budget_per_minute: dict[str, float] = Field(
        default_factory=lambda: {
            "runpod": 60.0,
            "lambda_labs": 60.0,
            "vast": 60.0,
            "fly": 60.0,
            "default": 60.0,
        },
        description="Requests per minute of each provider's budget (JSON object; "
        "`default` for the others) until the provider sends a `RateLimit-Policy` header, "
        "which then sizes the bucket.",
    )
    rate_budget_burst: int | None = Field(
        default=None,
        ge=1,
        description="Largest budget bucket: requests a quiet fleet may "
        "send at once. Unset: the provider's smallest window quota (from "
        "`RateLimit-Policy`, else the per-minute rate).",
    )
    rate_budget_max_wait_s: float = Field(
        default=60.0,
        gt=0,
        description="Longest a request waits for a budget token before "
        "failing with `rate_limited`.",
    )
    rate_budget_in_process: bool = Field(
        default=False,
        description="Also budget providers built with an in-process httpx "
        "transport (unit tests' mock/ASGI transports); off, only real network calls are.",
    )

    mock_state: Literal["memory", "redis"] = Field(
        default="memory",
        description="Where the mock provider keeps its state: `memory` "
        "(one process) or `redis` (shared).",
    )

    # ---- redis / celery
    namespace: str = Field(
        default=constants.DEFAULT_NAMESPACE,
        description="Prefix of every Redis key, pub/sub channel, stream and redbeat key "
        "(`<namespace>:...`), of the broker queues when not `atlas` (`<namespace>.compute`"
        "...) and of the default pod-name prefix, so deployments sharing one Redis, broker "
        "and cloud account never see or reap each other's sessions and pods (README, "
        "Several deployments on one Redis). 1-32 of `a-z0-9_`, starting with a letter.",
    )
    redis_url: str = Field(
        default=constants.DEFAULT_REDIS_URL,
        description="Registry, events, and (unless overridden) broker and results: "
        "`redis://`, `rediss://`, Sentinel's `redis+sentinel://` or "
        "`redis+cluster://host:port[,host:port...]` (README, Production Redis).",
    )
    redis_shards: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="Slot-tagged shards of the session registry (deadlines, intents, "
        "sessions, cost meter indexes; each session's keys live in its shard's hash "
        "slot). Unset: 16 on Redis Cluster (`redis+cluster://`), none on one Redis or "
        "Sentinel (the untagged layout). Setting it on one Redis uses the tagged layout "
        "there too. Fixed for a deployment's life: a session is found by its shard "
        "(README, Redis Cluster).",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker (default: the Redis URL); e.g. `amqp://` for RabbitMQ.",
    )
    result_backend: str | None = Field(
        default=None, description="Celery result backend (default: the Redis URL)."
    )

    secret_key: SecretStr | None = Field(
        default=None,
        description="Fernet key (urlsafe base64, 32 bytes; "
        "`atlas-tasks keygen`) for secrets that travel through the broker. Required to "
        "spawn tracked sessions; the same on every node.",
    )

    # ---- serverless jobs
    job_result_ttl_ms: int = Field(
        default=constants.DEFAULT_JOB_RESULT_TTL_MS,
        gt=0,
        description="How long a finished job's record and output stay readable in Redis.",
    )

    # ---- orchestrator
    default_idle_ttl_ms: int = Field(
        default=constants.DEFAULT_IDLE_TTL_MS,
        gt=0,
        description="Idle TTL of a session when `spawn` gives none.",
    )
    min_idle_ttl_ms: int = Field(
        default=10_000,
        ge=1,
        description="Smallest idle_ttl_ms orchestrator.spawn accepts. A shorter idle clock "
        "would reap a session before its first heartbeat could arrive; lower it "
        "only for tests.",
    )
    default_max_lifetime_ms: int = Field(
        default=0,
        ge=0,
        description="Hard lifetime of a session when `spawn` gives no `max_lifetime_ms`: "
        "it ends (reason `max_lifetime`) this long after it was created, even "
        "while it is touched. 0 = no hard lifetime (the default).",
    )
    expiry_warning_ms: int = Field(
        default=60_000,
        ge=0,
        description='An `expiring` event (`{"in_ms": ...}`) goes out this long before a '
        "session's hard lifetime ends (0 = no warning).",
    )
    price_refresh_interval_ms: int = Field(
        default=15 * 60 * 1000,
        gt=0,
        description="Beat period of `atlas.quotas.refresh_prices`, which caches the GPU "
        "catalog prices quota admission charges against (from "
        "`list_gpu_types()` of `ATLAS_REAP_PROVIDERS` and "
        "`ATLAS_DEFAULT_PROVIDER`).",
    )
    stop_resend_ms: int = Field(
        default=30_000,
        ge=1_000,
        description="A stop_tracked() whose terminate made no progress for this long (its "
        "broker message may be lost) is re-sent by the reaper. Duplicates are "
        "harmless: terminate is fenced and idempotent.",
    )
    data_loss_grace_ms: int = Field(
        default=15 * 60 * 1000,
        ge=0,
        description="When Redis comes back without its data (the atlas:epoch key is gone "
        "while prefixed pods are running), the orphan reaper kills no prefixed "
        "pod for this long and adopts the pods named like sessions, so live "
        "users keep their pods. Keep it >= the longest heartbeat gap.",
    )
    metrics: bool = Field(
        default=True,
        description="Record Prometheus metrics into Redis (task outcomes, provider request "
        "latency); `false` turns recording off in this process (`atlas_tasks.metrics`).",
    )
    reap_interval_ms: int = Field(
        default=constants.DEFAULT_REAP_INTERVAL_MS,
        gt=0,
        description="Beat period of the reaper sweep.",
    )
    # ---- cost meter and GPU-idle reaping (issue 16)
    meter_interval_ms: int = Field(
        default=constants.DEFAULT_METER_INTERVAL_MS,
        ge=100,
        description="Period of the live cost meter: each running session gets a `cost` "
        "event and its spend is added to its user's and tenant's month-to-date total.",
    )
    billing_reconcile_interval_ms: int = Field(
        default=15 * 60 * 1000,
        ge=100,
        description="How often the meter is checked against providers that report billing "
        "(RunPod `GET /v2/billing/pods`): one `cost_drift` event per running session.",
    )
    gpu_idle_below_pct: float | None = Field(
        default=None,
        ge=0,
        le=100,
        description="GPU-idle reaping for every session (off when unset): a running session "
        "whose GPUs all stay below this utilisation (%) for `gpu_idle_window_ms` is "
        "terminated (reason `gpu_idle`), heartbeats or not. Spawn options override it.",
    )
    gpu_idle_window_ms: int | None = Field(
        default=None,
        gt=0,
        description="How long every GPU must stay below `gpu_idle_below_pct` before the "
        "session is reaped (off when unset).",
    )
    gpu_watch_interval_ms: int = Field(
        default=30_000,
        ge=100,
        description="How often the utilisation of opted-in running sessions is polled from "
        "their provider (one `get_compute` per session).",
    )
    reap_name_prefix: str = Field(
        default=constants.POD_NAME_PREFIX_DEFAULT,
        description="Safety switch: only pods "
        'named with this prefix are ever reaped as orphans (`""` disables orphan '
        "reaping). Unique per deployment sharing a cloud account. Unset: `<namespace>-` "
        "(`atlas-` by default).",
    )
    orphan_grace_ms: int = Field(
        default=constants.DEFAULT_ORPHAN_GRACE_MS,
        ge=0,
        description="An untracked prefixed pod younger than this is left alone.",
    )
    reap_providers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Providers whose pods the reaper lists for "
        "orphans: `runpod,vast` or a JSON list.",
    )
    orphan_scan_interval_ms: int = Field(
        default=30_000,
        gt=0,
        description="How often the reaper lists provider pods to "
        "find orphans (cluster-wide throttle; listing pods costs provider API calls).",
    )
    keyspace_events: bool = Field(
        default=True,
        description="Enable the keyspace-notification fast path of the "
        "idle clock (falls back to the reaper if `CONFIG SET` is refused).",
    )
    heartbeat_events: bool = Field(
        default=False,
        description="Publish a `heartbeat` event on every `touch()` "
        "(costs a PUBLISH and takes touch() off its one-key fast path).",
    )
    redis_max_connections: int = Field(
        default=1024,
        gt=0,
        description="Connections per Redis pool of a process (worker "
        "threads and terminate batches share it; redis-py raises past the limit).",
    )
    terminate_max_retries: int = Field(
        default=6,
        ge=0,
        description="Attempts of a terminate before `terminate_failed` "
        "(the reaper keeps retrying later).",
    )
    spawn_max_retries: int = Field(
        default=5,
        ge=0,
        description="Retries of a spawn on transient provider errors (429, 5xx, transport).",
    )
    spawn_stall_ms: int = Field(
        default=120_000,
        ge=2_000,
        description="A spawn whose intent saw no progress for "
        "this long is re-sent by the reaper (its message was lost); its lease is 3/4 of "
        "this, capped at 90 s.",
    )
    # Why a wait: a create the cloud finishes after the client gave up shows within
    # it, so the spawn adopts that pod instead of creating a second one.
    create_lookup_wait_ms: int = Field(
        default=15_000,
        ge=0,
        description="How long (ms) the by-name lookup after an ambiguous create failure "
        "(5xx, timeout, transport) keeps polling for a late-landing pod before "
        "concluding that none exists; 0 = a single lookup.",
    )
    spawn_time_limit_s: int = Field(
        default=300,
        gt=0,
        description="Hard time limit of one spawn attempt; must stay below the spawn intent TTL.",
    )
    visibility_timeout_s: int = Field(
        default=360,
        gt=0,
        description="Broker visibility timeout: an unacked "
        "spawn/terminate of a dead worker is redelivered after this. Must exceed "
        "`spawn_time_limit_s`.",
    )
    # Provider calls are I/O bound, so threads give the most concurrency per core.
    worker_pool: str = Field(
        default="threads", description="Celery pool of `python -m workers.worker` (and the demo)."
    )
    worker_concurrency: int = Field(
        default=128,
        gt=0,
        description="Celery concurrency of `python -m workers.worker` (and the demo).",
    )

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

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        # Keys, queue names and pod names are built from it: a short, safe token only.
        if not re.fullmatch(constants.NAMESPACE_REGEX, value):
            raise ValueError(constants.NAMESPACE_RULE)
        return value

    @model_validator(mode="after")
    def _namespace_pod_prefix(self) -> AtlasSettings:
        # The pod-name prefix follows the namespace unless it was set explicitly (an
        # explicit value, "" included, wins). Evaluated at construction: a model_copy
        # that changes only the namespace keeps the old prefix.
        if "reap_name_prefix" not in self.model_fields_set:
            self.reap_name_prefix = f"{self.namespace}-"
        return self

    @property
    def registry_shards(self) -> int:
        """Shards of the tagged registry layout; 0: the untagged layout (one Redis or
        Sentinel with ``ATLAS_REDIS_SHARDS`` unset)."""
        if self.redis_shards is not None:
            return self.redis_shards
        return (
            constants.CLUSTER_DEFAULT_SHARDS
            if self.redis_url.lower().startswith(constants.CLUSTER_URL_SCHEME)
            else 0
        )

    @property
    def effective_broker_url(self) -> str:
        """Broker URL: ``ATLAS_BROKER_URL`` or else ``ATLAS_REDIS_URL``."""
        return self.broker_url or self.redis_url

    @property
    def effective_result_backend(self) -> str:
        """Result backend: ``ATLAS_RESULT_BACKEND`` or else ``ATLAS_REDIS_URL``."""
        return self.result_backend or self.redis_url


#: Overrides given by :func:`configure` (field name -> value); they win over the env.
_overrides: dict[str, Any] = {}


def check_setting_names(names: Mapping[str, Any] | list[str], *, source: str = "ATLAS") -> None:
    """Raise a validation error naming the first unknown setting (and the closest one).

    Args:
        names: field names (lower case, as in :class:`AtlasSettings`).
        source: how the caller spells the container, for the message
            (``settings.ATLAS``, ``app.config``).
    """
    known = list(AtlasSettings.model_fields)
    for name in names:
        if name not in AtlasSettings.model_fields:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0].upper()!r}?" if close else ""
            raise ValidationError(
                f"{name.upper()}: unknown atlas setting in {source}{hint}", field=name.upper()
            )


def configure(**overrides: Any) -> None:
    """Set settings in code; they take precedence over ``ATLAS_*`` environment variables.

    Used by the Django app (``settings.ATLAS``) and the Flask extension
    (``app.config["ATLAS_*"]``). Keys are :class:`AtlasSettings` field names in either
    case (``redis_url`` or ``REDIS_URL``). Calling it again replaces the previous
    overrides; ``configure()`` clears them.

    Raises:
        ValidationError: an unknown key (the closest known one is suggested) or an
            invalid value (the field is named).
    """
    values = {k.lower(): v for k, v in overrides.items()}
    check_setting_names(values)
    try:
        AtlasSettings(**values)  # validate now, in the caller's stack, not at first use
    except PydanticValidationError as exc:
        errors = exc.errors()
        field = str(errors[0]["loc"][0]).upper() if errors and errors[0].get("loc") else None
        # The message names the field and the rule, never the value (it may be a secret).
        rule = errors[0].get("msg", "invalid value") if errors else "invalid value"
        raise ValidationError(f"{field or 'settings'}: {rule}", field=field) from None
    _overrides.clear()
    _overrides.update(values)
    get_settings.cache_clear()


def overrides() -> dict[str, Any]:
    """A copy of the settings set by :func:`configure`."""
    return dict(_overrides)


@lru_cache(maxsize=1)
def get_settings() -> AtlasSettings:
    """The process-wide settings: :func:`configure` overrides, then the environment."""
    return AtlasSettings(**_overrides)


def reset_settings() -> None:
    """Forget cached settings so the next :func:`get_settings` re-reads the environment
    (overrides given by :func:`configure` stay)."""
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
        'provider: no provider given; pass provider="runpod" (or fly, lambda_labs, vast, '
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
    "check_setting_names",
    "configure",
    "get_settings",
    "overrides",
    "reset_settings",
    "resolve_api_key",
    "resolve_provider_name",
]
