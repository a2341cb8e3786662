"""The stateless SDK: one synchronous provider call per function, re-exported at top level.

::

    import atlas_tasks as atlas

    compute = atlas.spawn_compute(provider="mock", gpu="h100", image="img:latest",
                                  ports=[(8000, "http")], auth="bearer")
    compute.auth.token        # the raw bearer token, returned this once
    atlas.terminate(compute.id, provider="mock")

Every function validates its input (``AtlasError(kind="validation")`` naming the field),
resolves the provider (argument > ``ATLAS_DEFAULT_PROVIDER`` > a clear error) and its API
key (argument > settings > the provider's own env var), then makes one provider call.
Nothing is remembered between calls; for tracked, idle-reaped sessions use the
orchestrator instead.

Errors: providers raise :class:`~atlas_tasks.errors.AtlasError`. Anything else escaping a
provider (a bug, an unparseable body) is wrapped so callers only ever have to catch
``AtlasError``; the original exception stays chained as ``__cause__`` and in ``raw``.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterator
from typing import Any, Literal, Protocol, TypeVar

import pydantic

from atlas_tasks.config import resolve_provider_name
from atlas_tasks.errors import (
    AtlasError,
    AtlasTimeoutError,
    ProviderError,
    UnknownError,
    validation_error,
)
from atlas_tasks.providers.base import Provider, status_filter
from atlas_tasks.providers.registry import get_provider, provider_class
from atlas_tasks.specs import (
    Compute,
    ComputeRequest,
    ComputeStatus,
    GpuType,
    Job,
    JobRequest,
    build_compute_request,
    build_job_request,
)

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
F = TypeVar("F", bound=Callable[..., Any])

ProviderArg = str | type[Provider] | Provider | None


def _provider(provider: ProviderArg, api_key: str | None, base_url: str | None) -> Provider:
    return get_provider(provider, api_key=api_key, base_url=base_url)


def _on_provider(
    provider: ProviderArg,
    api_key: str | None,
    base_url: str | None,
    op: Callable[[Provider], T],
) -> T:
    """Resolve the provider, then run ``op`` on it through :func:`_call`."""
    p = _provider(provider, api_key, base_url)
    return _call(p, lambda: op(p))


def _require_id(value: object, field: str = "id") -> str:
    if not isinstance(value, str) or not value.strip():
        raise validation_error(field, f"must be a non-empty string, got {value!r}")
    return value


def _require_job_ids(job_id: object, endpoint: object) -> tuple[str, str]:
    """The checked job id and endpoint (fields ``id`` and ``endpoint``), in that order."""
    return _require_id(job_id), _require_id(endpoint, "endpoint")


def _call(provider: Provider, fn: Callable[[], T]) -> T:
    """Run one provider call, turning non-Atlas exceptions into AtlasError."""
    try:
        return fn()
    except AtlasError:
        raise
    except pydantic.ValidationError as exc:
        # A provider failed to build a spec from the cloud's answer: a malformed body.
        raise ProviderError(
            f"malformed provider response: {exc.errors()[0].get('msg', exc)}",
            provider=provider.name,
            raw=exc,
        ) from exc
    except Exception as exc:
        raise UnknownError(f"{type(exc).__name__}: {exc}", provider=provider.name, raw=exc) from exc


_END = object()


def _guarded_iter(provider: Provider, items: Iterator[Any]) -> Iterator[Any]:
    # next() with a sentinel, because a StopIteration must end the loop, not be wrapped.
    while True:
        item = _call(provider, lambda: next(items, _END))
        if item is _END:
            return
        yield item


def _call_with_deadline(provider: Provider, fn: Callable[[], T], timeout_s: float) -> T:
    """Run ``fn`` but give up after ``timeout_s`` with ``AtlasError(kind="timeout")``.

    The call runs in a daemon thread so the caller's deadline holds even when the provider
    (or the network) ignores its own; the abandoned call finishes or times out on its own
    HTTP timeout in the background and its result is dropped.
    """
    outcome: dict[str, Any] = {}
    done = threading.Event()
    ctx = contextvars.copy_context()

    def target() -> None:
        try:
            outcome["value"] = ctx.run(_call, provider, fn)
        except BaseException as exc:  # re-raised in the caller's thread below
            outcome["error"] = exc
        finally:
            done.set()

    thread = threading.Thread(target=target, name=f"atlas-sync-job-{provider.name}", daemon=True)
    thread.start()
    if not done.wait(timeout_s):
        raise AtlasTimeoutError(
            f"sync job did not finish within {int(timeout_s * 1000)} ms",
            provider=provider.name,
        )
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- per-id calls
# get_compute/stop/start/terminate (by compute id) and get_job/cancel_job/stream_job (by
# job id on an endpoint) differ only in the provider method they call, so each family is
# built by one factory: the id check, provider resolution and error wrapping live once.
# The Protocols give type checkers the public signatures; the built functions carry the
# same signatures at runtime (help(), inspect.signature) plus their own name and docstring.


class _ComputeCall(Protocol[T_co]):
    """``fn(id, *, provider=None, api_key=None, base_url=None)``: one call on a compute."""

    def __call__(
        self,
        id: str,
        *,
        provider: ProviderArg = None,
        api_key: str | None = None,
        base_url: str | None = None,
    ) -> T_co: ...


class _JobCall(Protocol[T_co]):
    """``fn(id, *, endpoint, provider=None, api_key=None, base_url=None)``: one job call."""

    def __call__(
        self,
        id: str,
        *,
        endpoint: str,
        provider: ProviderArg = None,
        api_key: str | None = None,
        base_url: str | None = None,
    ) -> T_co: ...


def _named(fn: F, name: str, returns: str, doc: str) -> F:
    # The return annotation as a def would have it (a string: annotations are postponed).
    fn.__name__ = fn.__qualname__ = name
    fn.__annotations__ = {**fn.__annotations__, "return": returns}
    fn.__doc__ = doc
    return fn


def _compute_call(
    name: str, returns: str, op: Callable[[Provider, str], T], doc: str
) -> _ComputeCall[T]:
    """The public function ``name``: check the id, then ``op(provider, id)`` guarded."""

    def call(
        id: str,
        *,
        provider: ProviderArg = None,
        api_key: str | None = None,
        base_url: str | None = None,
    ) -> T:
        compute_id = _require_id(id)
        return _on_provider(provider, api_key, base_url, lambda p: op(p, compute_id))

    return _named(call, name, returns, doc)


def _job_call(
    name: str, returns: str, op: Callable[[Provider, str, str], T], doc: str
) -> _JobCall[T]:
    """The public function ``name``: check id and endpoint, then ``op(provider, id,
    endpoint)`` guarded."""

    def call(
        id: str,
        *,
        endpoint: str,
        provider: ProviderArg = None,
        api_key: str | None = None,
        base_url: str | None = None,
    ) -> T:
        job_id, checked_endpoint = _require_job_ids(id, endpoint)
        return _on_provider(provider, api_key, base_url, lambda p: op(p, job_id, checked_endpoint))

    return _named(call, name, returns, doc)


# --------------------------------------------------------------------------- compute


def spawn_compute(
    request: ComputeRequest | dict[str, Any] | None = None,
    *,
    provider: ProviderArg = None,
    api_key: str | None = None,
    base_url: str | None = None,
    **fields: Any,
) -> Compute:
    """Create a compute resource.

    Args:
        request: a :class:`ComputeRequest` or dict; ``fields`` are merged over it.
        provider: name (``"runpod"``, ``"mock"``...), Provider class or instance.
        api_key: per-call API key (wins over settings and env vars).
        base_url: override the provider's API base URL.
        **fields: ComputeRequest fields (``gpu``, ``image``, ``ports``, ``auth``...).

    Returns:
        The new Compute. With ``auth="bearer"`` its ``auth.token`` is the raw token,
        also injected into the pod as ``ATLAS_PRESHARED_KEY``; it is returned only here.
        With ``auth="signed_url"`` a fresh ``ATLAS_SIGNING_SECRET`` is injected and
        returned in ``auth.token`` so the caller can sign URLs.

    Raises:
        ValidationError: a bad field (named in ``.field``) or no provider.
        AtlasError: whatever the provider reports.
    """
    req = build_compute_request(request, **fields)
    return _on_provider(provider, api_key, base_url, lambda p: p.spawn_compute(req))


get_compute = _compute_call(
    "get_compute",
    "Compute",
    lambda p, compute_id: p.get_compute(compute_id),
    """Current state of one resource.

    Raises:
        NotFoundError: unknown id.
    """,
)


def list_compute(
    *,
    provider: ProviderArg = None,
    status: str | ComputeStatus | None = None,
    name: str | None = None,
    region: str | None = None,
    gpu: str | None = None,
    api_key: str | None = None,
    base_url: str | None = None,
) -> list[Compute]:
    """Resources of the account, filtered by the AND of the given filters."""
    wanted = status_filter(status)
    return _on_provider(
        provider,
        api_key,
        base_url,
        lambda p: p.list_compute(status=wanted, name=name, region=region, gpu=gpu),
    )


stop = _compute_call(
    "stop",
    "None",
    lambda p, compute_id: p.stop(compute_id),
    """Pause a resource, keeping its disk (``unsupported`` on some providers).""",
)

start = _compute_call(
    "start",
    "None",
    lambda p, compute_id: p.start(compute_id),
    """Resume a stopped resource (``unsupported`` on some providers).""",
)

terminate = _compute_call(
    "terminate",
    "None",
    lambda p, compute_id: p.terminate(compute_id),
    """Destroy a resource.

    Raises:
        NotFoundError: unknown id (callers wanting idempotence may treat it as done).
    """,
)


# --------------------------------------------------------------------------- jobs


def run_job(
    request: JobRequest | dict[str, Any] | None = None,
    *,
    provider: ProviderArg = None,
    endpoint: str | None = None,
    input: Any = None,
    mode: Literal["async", "sync"] | None = None,
    timeout_ms: int | None = None,
    webhook: str | None = None,
    policy: dict[str, Any] | None = None,
    api_key: str | None = None,
    base_url: str | None = None,
) -> Job:
    """Submit a serverless job.

    Args:
        request: a :class:`JobRequest` or dict; the keyword arguments given override it.
        endpoint: serverless endpoint id (required here or in ``request``).
        input: the job's input payload.
        mode: ``"async"`` (default; returns the queued job) or ``"sync"`` (waits for it).
        timeout_ms: sync mode's hard deadline (default 90 s).
        webhook: URL the provider calls when the job finishes.
        policy: provider execution policy (e.g. RunPod ``executionTimeout``, ``ttl``).

    Raises:
        AtlasTimeoutError: sync mode and the call took longer than ``timeout_ms``. The
            SDK enforces this itself, whatever the provider or network does.
        ValidationError: a bad field, e.g. a missing ``endpoint``.
    """
    req = build_job_request(
        request,
        endpoint=endpoint,
        input=input,
        mode=mode,
        timeout_ms=timeout_ms,
        webhook=webhook,
        policy=policy,
    )
    p = _provider(provider, api_key, base_url)
    if req.mode == "sync":
        return _call_with_deadline(p, lambda: p.run_job(req), req.timeout_ms / 1000)
    return _call(p, lambda: p.run_job(req))


get_job = _job_call(
    "get_job",
    "Job",
    lambda p, job_id, endpoint: p.get_job(job_id, endpoint=endpoint),
    """Status (and output when finished) of a job on ``endpoint``.""",
)

cancel_job = _job_call(
    "cancel_job",
    "None",
    lambda p, job_id, endpoint: p.cancel_job(job_id, endpoint=endpoint),
    """Cancel a queued or running job.""",
)

stream_job = _job_call(
    "stream_job",
    "Iterator[Any]",
    # The provider's iterator is built inside the guarded call; each later next() is
    # guarded on its own by _guarded_iter (a generator: calling it runs nothing yet).
    lambda p, job_id, endpoint: _guarded_iter(p, iter(p.stream_job(job_id, endpoint=endpoint))),
    """Partial outputs of a job as they arrive (a plain iterator).""",
)


# --------------------------------------------------------------------------- catalog


def list_gpu_types(
    *,
    provider: ProviderArg = None,
    api_key: str | None = None,
    base_url: str | None = None,
) -> list[GpuType]:
    """The provider's GPU catalog with prices and stock."""
    return _on_provider(provider, api_key, base_url, lambda p: p.list_gpu_types())


def capabilities(provider: ProviderArg = None) -> frozenset[str]:
    """Optional features of a provider (``"spot"``, ``"serverless"``...), no API key needed."""
    resolved = resolve_provider_name(provider)
    if isinstance(resolved, Provider):
        return resolved.capabilities()
    if isinstance(resolved, type) and issubclass(resolved, Provider):
        return resolved.capabilities()
    return provider_class(str(resolved)).capabilities()


__all__ = [
    "cancel_job",
    "capabilities",
    "get_compute",
    "get_job",
    "get_provider",
    "list_compute",
    "list_gpu_types",
    "run_job",
    "spawn_compute",
    "start",
    "stop",
    "stream_job",
    "terminate",
]
