"""Settings of the fake cloud: behaviour knobs and the fault-injection plan.

Two models. :class:`FakeCloudConfig` is fixed when the server starts (keys, boot and job
timings, result TTLs). :class:`FaultSettings` can be changed at run time through
``POST /_admin/faults`` and is reset to its start-up value by ``POST /_admin/reset``.
:func:`split_options` lets callers pass both flat (``FakeCloud(latency_s=1, run_time_s=0.1)``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: The API key the fake accepts when none is configured.
DEFAULT_API_KEY = "fake-key"


class ScriptRule(BaseModel):
    """One deterministic fault: "the next ``times`` calls matching ``match`` answer ``status``".

    ``match`` is ``"METHOD PATH"``; PATH is an fnmatch glob compared with the path below
    the API prefix (``/pods``, ``/pods/*``, ``/<endpoint>/run``) and with the
    full path (``/runpod/v2/pods``). METHOD may be ``*``. Examples::

        {"match": "POST /pods", "status": 500, "after_create": true, "times": 1}
        {"match": "DELETE /pods/*", "status": 429, "retry_after": 2, "times": 3}
        {"match": "GET /pods/*", "latency_s": 2.0, "times": 1}          # slow, not failed
        {"match": "POST /pods", "latency_after_s": 5}     # created, answered too late
        {"match": "POST /pods", "hold": "create"}         # waits for a release
    """

    model_config = ConfigDict(extra="forbid")

    match: str
    #: HTTP status to answer; None with ``latency_s`` set means "only slow this call down".
    status: int | None = Field(default=None, ge=100, le=599)
    #: Run the real handler first (a pod IS created), then replace its answer with ``status``.
    after_create: bool = False
    #: How many matching calls this rule fires for; None = forever.
    times: int | None = Field(default=1, ge=1)
    #: Extra delay for matching calls, on top of the global ``latency_s``.
    latency_s: float = Field(default=0.0, ge=0)
    #: Seconds in the ``Retry-After`` header (429/503); default: the global ``retry_after_s``.
    retry_after: int | None = Field(default=None, ge=0)
    #: JSON body to send; default ``{"error": <reason phrase>}``.
    body: Any = None
    #: Restrict to one API: ``rest`` (RunPod REST v2), ``runtime`` (RunPod serverless)...
    api: str | None = None
    #: Hold matching calls at a named gate until a test releases it
    #: (``POST /_admin/holds/{name}/release`` or ``FakeCloud.release(name)``): the exact
    #: step of an interleaving. ``hold_after_handler`` holds the *answer* after the handler
    #: ran (the pod exists; the client waits), else the call waits before the handler.
    hold: str | None = Field(default=None, min_length=1)
    hold_after_handler: bool = False
    #: A held call goes on by itself after this long (a forgotten gate never hangs a test).
    hold_timeout_s: float = Field(default=60.0, gt=0)
    #: Run the handler first, then wait this long before answering: a create that happened
    #: but whose answer arrives after the client's read timeout.
    latency_after_s: float = Field(default=0.0, ge=0)

    @field_validator("match")
    @classmethod
    def _check_match(cls, value: str) -> str:
        parts = value.split(None, 1)
        if len(parts) != 2 or not parts[1].startswith("/"):
            raise ValueError('match must look like "POST /pods" (METHOD then a /path glob)')
        return f"{parts[0].upper()} {parts[1]}"


class FaultSettings(BaseModel):
    """Random and scripted faults applied to every provider call (never to ``/_admin``).

    Order per call: latency, then auth, then the first matching script rule, then one random
    draw choosing 429 (``rate_limit_rate``), 5xx (``error_rate``) or pass, then for
    ``POST /pods`` a second draw for ``create_500_after_create_rate``.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    latency_s: float = Field(default=0.0, ge=0)
    error_rate: float = Field(default=0.0, ge=0, le=1)
    #: Statuses picked (uniformly) for ``error_rate`` hits. 502 comes with an HTML body, as a
    #: load balancer in front of a real API would send.
    error_statuses: list[int] = Field(default_factory=lambda: [500, 502, 503])
    rate_limit_rate: float = Field(default=0.0, ge=0, le=1)
    #: ``Retry-After`` seconds sent with 429 (and 503).
    retry_after_s: int = Field(default=1, ge=0)
    create_500_after_create_rate: float = Field(default=0.0, ge=0, le=1)
    seed: int | None = None
    script: list[ScriptRule] = Field(default_factory=list)

    @field_validator("error_statuses")
    @classmethod
    def _check_statuses(cls, value: list[int]) -> list[int]:
        if not value or any(s < 500 or s > 599 for s in value):
            raise ValueError("error_statuses must be a non-empty list of 5xx codes")
        return value


class FakeCloudConfig(BaseModel):
    """Start-up behaviour of the fake cloud (all times in seconds).

    Attributes:
        api_keys: keys accepted as ``Authorization: Bearer <key>``.
        boot_delay_s: after create/start a RunPod pod is ``PROVISIONING`` then ``STARTING``
            (no ``runtime``: no public ports yet) for this long, like a real pod pulling its
            image, then ``RUNNING``.
        queue_delay_s / run_time_s: serverless jobs sit IN_QUEUE, then IN_PROGRESS, this long.
        result_ttl_s / runsync_result_ttl_s: how long a finished job stays readable
            (RunPod: 30 min for /run, 1 min for /runsync); after that /status answers 404.
        job_ttl_s: default lifetime of a job from submission (RunPod: 24 h; ``policy.ttl``).
        runsync_default_wait_ms: how long /runsync blocks without ``?wait=`` (RunPod: 90 s).
        strict_gpu_types: reject a ``gpu.id`` RunPod does not offer (400), as
            the real API does.
        strict_fields: reject unknown top-level fields in create bodies.
        rate_limit_per_minute: requests per minute each API key may send to each provider
            API before a 429 with ``Retry-After`` (``None``: never refused; see
            :mod:`.ratelimit`). ``POST /_admin/rate-limit`` changes it at run time.
        faults: the fault plan at start-up (and after ``/_admin/reset``).
    """

    model_config = ConfigDict(extra="forbid")

    api_keys: frozenset[str] = frozenset({DEFAULT_API_KEY})
    boot_delay_s: float = Field(default=0.0, ge=0)
    queue_delay_s: float = Field(default=0.2, ge=0)
    run_time_s: float = Field(default=0.5, ge=0)
    result_ttl_s: float = Field(default=30 * 60.0, gt=0)
    runsync_result_ttl_s: float = Field(default=60.0, gt=0)
    job_ttl_s: float = Field(default=24 * 3600.0, gt=0)
    runsync_default_wait_ms: int = Field(default=90_000, ge=0)
    idle_workers: int = Field(default=1, ge=0)
    strict_gpu_types: bool = True
    strict_fields: bool = True
    rate_limit_per_minute: int | None = Field(default=None, ge=1)
    faults: FaultSettings = Field(default_factory=FaultSettings)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys(cls, value: object) -> object:
        # A single key is the common case; accept it bare.
        if isinstance(value, str):
            return frozenset({value})
        return value

    @property
    def api_key(self) -> str:
        """One accepted key (the default one if configured), for clients under test."""
        if DEFAULT_API_KEY in self.api_keys:
            return DEFAULT_API_KEY
        return sorted(self.api_keys)[0]


_CONFIG_FIELDS = set(FakeCloudConfig.model_fields) - {"faults"}
_FAULT_FIELDS = set(FaultSettings.model_fields)


def split_options(**options: Any) -> FakeCloudConfig:
    """Build a :class:`FakeCloudConfig` from flat keyword options.

    Config fields and fault fields may be mixed (``latency_s=1, run_time_s=0.1``); ``api_key``
    (one key) is accepted as an alias of ``api_keys``. Unknown names raise ``TypeError``.
    """
    config: dict[str, Any] = {}
    faults: dict[str, Any] = {}
    for name, value in options.items():
        if name == "api_key":
            config["api_keys"] = value
        elif name in _CONFIG_FIELDS:
            config[name] = value
        elif name in _FAULT_FIELDS:
            faults[name] = value
        elif name == "faults" and isinstance(value, (dict, FaultSettings)):
            base = value.model_dump() if isinstance(value, FaultSettings) else dict(value)
            faults = {**base, **faults}
        else:
            raise TypeError(f"unknown fake cloud option {name!r}")
    return FakeCloudConfig(**config, faults=FaultSettings(**faults))
