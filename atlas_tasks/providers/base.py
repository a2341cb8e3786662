"""The provider contract every cloud implements.

A provider is a synchronous object built from a :class:`ProviderContext` (API key, base
URLs, timeouts, an optional httpx transport for tests). It never touches Redis or Celery.

Implementers override the abstract methods; the optional ones (stop/start, serverless
jobs, the GPU catalog) default to raising ``AtlasError(kind="unsupported")``.
``spawn_compute`` is a template method: it handles ``auth`` (bearer token or signed-URL
secret injected into the pod env) and then calls :meth:`Provider.create_compute`, so a
provider never has to mint secrets itself. ``list_compute`` is one too: it checks the
filters, reads :meth:`Provider.list_all_compute` and filters the answer, so a provider
only reads its account (one that filters server-side overrides ``list_compute`` itself).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx

from atlas_tasks.auth.tokens import new_signing_secret, signing_env, token_from_raw
from atlas_tasks.config import AtlasSettings, get_settings
from atlas_tasks.errors import NotFoundError, UnsupportedError, validation_error
from atlas_tasks.providers.ratelimit import RateLimit
from atlas_tasks.specs import (
    AuthHandle,
    Capability,
    Compute,
    ComputeRequest,
    ComputeStatus,
    GpuType,
    Job,
    JobRequest,
    JobStatus,
    canonical_gpu,
)


@dataclass(frozen=True)
class RequestInfo:
    """What the per-request hook receives after every HTTP attempt.

    Attributes:
        provider: provider name.
        api: ``management``, ``runtime``, ``logs``...
        method: HTTP method.
        url: full URL with its query; atlas's own providers never put an API key in a URL,
            and any ``api_key=`` query value is redacted anyway.
        status: HTTP status, or ``None`` for a transport failure.
        duration_s: wall time of this attempt.
        attempt: 1 for the first try, 2 for the first retry...
        error: the transport exception's text when ``status`` is ``None``.
        rate_limit: the quota state the answer's ``RateLimit``/``RateLimit-Policy``
            headers reported (RunPod REST v2 sends them on every answer), else ``None``.
    """

    provider: str
    api: str
    method: str
    url: str
    status: int | None
    duration_s: float
    attempt: int
    error: str | None = None
    rate_limit: RateLimit | None = None


RequestHook = Callable[[RequestInfo], None]


@dataclass(frozen=True)
class ProviderContext:
    """Everything a provider needs to make calls (ExAtlas's ``ctx``).

    Attributes:
        api_key: resolved key (argument > settings > native env var); ``None`` if absent.
        base_url: overrides the provider's main API base (per call or from settings).
        settings: settings used for defaults (other base URLs, timeouts, retries).
        transport: an httpx transport, e.g. ``httpx.MockTransport`` in unit tests.
        hooks: callables run after every HTTP attempt (logging, metrics, tests).
        options: provider-specific extras (``runtime_url``, ``ssh_key_name``...).
    """

    api_key: str | None = field(default=None, repr=False)
    base_url: str | None = None
    settings: AtlasSettings = field(default_factory=get_settings)
    transport: httpx.BaseTransport | None = None
    hooks: tuple[RequestHook, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)


class Provider(abc.ABC):
    """Abstract cloud provider. Subclasses set ``name`` and ``CAPABILITIES``."""

    name: ClassVar[str] = "abstract"
    CAPABILITIES: ClassVar[frozenset[Capability]] = frozenset()

    def __init__(self, context: ProviderContext | None = None) -> None:
        self.context = context or ProviderContext()

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:  # noqa: B027 - optional hook: providers without a pool keep it
        """Release pooled connections. Safe to call twice."""

    def __enter__(self) -> Provider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ capabilities
    @classmethod
    def capabilities(cls) -> frozenset[str]:
        """Optional features this provider supports, as plain strings."""
        return frozenset(str(c) for c in cls.CAPABILITIES)

    # ------------------------------------------------------------------ compute
    def spawn_compute(self, request: ComputeRequest, *, secret: str | None = None) -> Compute:
        """Create a resource, handling ``request.auth`` first.

        Args:
            request: what to create.
            secret: a pre-minted raw bearer token or signing secret to inject instead of
                minting a new one (the orchestrator mints in the caller so the token is
                known before the pod exists).

        Returns:
            The new Compute; for ``auth="bearer"`` its ``auth`` carries the raw token once.
        """
        handle: AuthHandle | None = None
        env = dict(request.env)
        if request.auth == "bearer":
            minted = token_from_raw(secret) if secret else None
            if minted is None:
                from atlas_tasks.auth.tokens import mint_token

                minted = mint_token()
            env.update(minted.env)
            handle = AuthHandle(
                scheme="bearer", token=minted.token, hash=minted.hash, header=minted.header
            )
        elif request.auth == "signed_url":
            signing = secret or new_signing_secret()
            env.update(signing_env(signing))
            # The secret is handed back as the token: the caller needs it to sign URLs.
            handle = AuthHandle(scheme="signed_url", token=signing)
        if env != request.env:
            request = request.model_copy(update={"env": env})
        compute = self.create_compute(request)
        if handle is not None:
            compute = compute.model_copy(update={"auth": handle})
        return compute

    @abc.abstractmethod
    def create_compute(self, request: ComputeRequest) -> Compute:
        """Provider-native create. ``request.env`` already holds any auth secret.

        Must not retry a create blindly: after a 5xx or timeout look the resource up by
        ``request.name`` first (a cloud may have created it and still failed the answer).
        """

    @abc.abstractmethod
    def get_compute(self, compute_id: str) -> Compute:
        """Current state of one resource; ``NotFoundError`` when unknown."""

    def list_compute(
        self,
        *,
        status: str | ComputeStatus | None = None,
        name: str | None = None,
        region: str | None = None,
        gpu: str | None = None,
    ) -> list[Compute]:
        """Resources of this account, filtered (AND of the given filters).

        A template method: the filters are checked first (before any call), then
        :meth:`list_all_compute` reads the account and the answer is filtered here, since
        no supported cloud filters these fields server-side. A provider whose cloud does
        may override this method instead.

        Raises:
            ValidationError: ``status`` or ``gpu`` is not a known value.
        """
        wanted = status_filter(status, provider=self.name)
        wanted_gpu = canonical_gpu(gpu) if gpu else None
        return filter_computes(
            self.list_all_compute(region=region),
            status=wanted,
            name=name,
            region=region,
            gpu=wanted_gpu,
        )

    def list_all_compute(self, *, region: str | None = None) -> Iterable[Compute]:
        """Every resource of this account, in the order :meth:`list_compute` reports them.

        ``region`` is only a hint for a cloud that can narrow by region server-side: the
        answer is filtered again. Every provider implements this or :meth:`list_compute`.
        """
        raise self.unsupported("list_compute")

    def find_compute_by_name(self, name: str) -> Compute | None:
        """The live (not terminated) resource with exactly this name, if any."""
        for compute in self.list_compute(name=name):
            if compute.name == name and compute.status != ComputeStatus.TERMINATED:
                return compute
        return None

    def stop(self, compute_id: str) -> None:
        """Pause a resource, keeping its disk."""
        raise self.unsupported("stop")

    def start(self, compute_id: str) -> None:
        """Resume a stopped resource."""
        raise self.unsupported("start")

    @abc.abstractmethod
    def terminate(self, compute_id: str) -> None:
        """Destroy a resource. Unknown ids raise ``NotFoundError``."""

    # ------------------------------------------------------------------ jobs
    def run_job(self, request: JobRequest) -> Job:
        """Submit a serverless job (``mode="sync"`` waits up to ``timeout_ms``)."""
        raise self.unsupported("run_job")

    def get_job(self, job_id: str, *, endpoint: str) -> Job:
        """Status (and output when done) of a job."""
        raise self.unsupported("get_job")

    def cancel_job(self, job_id: str, *, endpoint: str) -> None:
        """Cancel a queued or running job."""
        raise self.unsupported("cancel_job")

    def stream_job(self, job_id: str, *, endpoint: str) -> Iterator[Any]:
        """Partial outputs of a job as they arrive."""
        raise self.unsupported("stream_job")

    def read_job_stream(self, job_id: str, *, endpoint: str) -> tuple[JobStatus | None, list[Any]]:
        """One non-blocking read of a streaming job: ``(status or None, new chunks)``.

        Unlike :meth:`stream_job` (a blocking iterator that sleeps between reads) this is
        what a worker's poll iteration may call. Chunks are handed out once. Providers
        that implement it declare ``Capability.JOB_STREAM_READS``.
        """
        raise self.unsupported("read_job_stream")

    # ------------------------------------------------------------------ catalog
    def list_gpu_types(self) -> list[GpuType]:
        """GPU catalog with prices and stock."""
        raise self.unsupported("list_gpu_types")

    # ------------------------------------------------------------------ helpers
    def unsupported(self, operation: str) -> UnsupportedError:
        """The error for an operation this provider does not implement."""
        return UnsupportedError(f"{self.name} does not support {operation}", provider=self.name)

    def not_found(self, what: str) -> NotFoundError:
        """The error for an unknown id."""
        return NotFoundError(f"no {what}", provider=self.name, status=404)


def status_filter(
    status: str | ComputeStatus | None, *, provider: str | None = None
) -> ComputeStatus | None:
    """The :class:`ComputeStatus` a ``list_compute(status=...)`` filter asks for.

    Accepts a member or its value in any case; ``None`` means no filter.

    Raises:
        ValidationError: field ``status``, listing the known values, for anything else.
    """
    if status is None:
        return None
    try:
        return ComputeStatus(str(status).lower())
    except ValueError:
        known = ", ".join(s.value for s in ComputeStatus)
        raise validation_error(
            "status", f"unknown status {status!r}; known: {known}", provider=provider
        ) from None


def filter_computes(
    computes: Iterable[Compute],
    *,
    status: ComputeStatus | None = None,
    name: str | None = None,
    region: str | None = None,
    gpu: str | None = None,
) -> list[Compute]:
    """The computes matching every given filter (the AND of ``list_compute``'s filters).

    Args:
        computes: candidates, in the order to keep.
        status: wanted status (see :func:`status_filter`), or ``None``.
        name: exact name, or ``None``.
        region: exact region, or ``None``.
        gpu: canonical GPU name (already normalised by ``canonical_gpu``), or ``None``.
    """
    return [
        c
        for c in computes
        if (status is None or c.status == status)
        and (name is None or c.name == name)
        and (region is None or c.region == region)
        and (gpu is None or c.gpu_type == gpu)
    ]


class StubProvider(Provider):
    """An honest placeholder: every operation raises ``unsupported`` and says so."""

    def _stub(self, operation: str) -> UnsupportedError:
        return UnsupportedError(
            f"{self.name} provider is not implemented yet ({operation})", provider=self.name
        )

    def create_compute(self, request: ComputeRequest) -> Compute:
        """Not implemented yet: raises ``UnsupportedError``."""
        raise self._stub("spawn_compute")

    def get_compute(self, compute_id: str) -> Compute:
        """Not implemented yet: raises ``UnsupportedError``."""
        raise self._stub("get_compute")

    def list_compute(self, **filters: Any) -> list[Compute]:
        """Not implemented yet: raises ``UnsupportedError``."""
        raise self._stub("list_compute")

    def terminate(self, compute_id: str) -> None:
        """Not implemented yet: raises ``UnsupportedError``."""
        raise self._stub("terminate")

    def unsupported(self, operation: str) -> UnsupportedError:
        """The error for an operation this stub provider does not implement."""
        return self._stub(operation)


__all__ = [
    "Provider",
    "ProviderContext",
    "RequestHook",
    "RequestInfo",
    "StubProvider",
    "filter_computes",
    "status_filter",
]
