"""Quotas and budgets per user and per tenant, admitted atomically in Redis.

The model::

    limits  (set by the operator)      max_sessions, max_hourly_usd, monthly_usd per
                                       user and per tenant; None = no limit
    usage   (kept by admission)        live sessions and committed USD/h = the sums of
                                       the live reservations; month-to-date USD spent
    reservation (one per session)      what its admission took: 1 session + its USD/h,
                                       on its user and on its tenant

* **Admission** (:func:`admit`) is one Lua script: it checks the user's and the tenant's
  three limits and, only if all of them allow it, reserves one session and the request's
  USD per hour on both, together. Otherwise it reserves nothing and raises
  :class:`QuotaExceeded` naming the limit, the usage and the limit. So 50 concurrent
  admissions from any number of processes against ``max_sessions=3`` admit exactly 3.
* **Committed USD/h** of a session starts as the catalog price of the requested GPU ×
  count (:func:`quote`, from the price cache :func:`refresh_prices` fills) and is
  :func:`correct`-ed to the pod's real ``cost_per_hour`` once it runs. A GPU with no
  cached price is admitted with 0 USD/h committed (the session still counts against
  ``max_sessions`` and an exhausted monthly budget still refuses it), with a warning in
  the log and ``Reservation.price_known=False``, until :func:`correct` sets the real
  price. Refusing would block every GPU the catalog has not priced yet; the estimate being
  0 is visible and short-lived.
* **Monthly budget**: a session is admitted only while the month's spend plus one more
  hour of every live session, the new one included, fits in ``monthly_usd`` (a one-hour
  headroom: atlas does not start what the budget cannot pay an hour of). The spend itself
  is added by :func:`record_spend` (the live cost meter calls it); months are UTC by Redis
  ``TIME`` and each has its own key, so a new month starts from zero by itself.
* **Release** (:func:`release`) gives a session's reservation back and is idempotent: the
  reservation is a receipt deleted in the same script, so a double release, or a release
  after a crash and a retry, never drives usage below zero.

When each call happens: ``orchestrator.spawn(..., user_id=, tenant_id=)`` calls
:func:`admit` before anything is recorded or enqueued (price = :func:`quote` of the
requested GPU × ``gpu_count``); a refusal raises :class:`QuotaExceeded` and leaves
nothing behind. Every end of a session (idle, stop, max lifetime, spawn failure, an
orphaned intent the reaper resolves, an adopted pod's terminate) releases the
reservation *in the same Lua step* that marks the session terminated or failed (the
session store's ``finish_terminate`` / ``fail_spawn`` embed :data:`LUA_QUOTA_RELEASE`),
so a worker dying between the two cannot leak it. In the tagged key layout (Redis
Cluster) the quota keys live in their own ``{quota}`` slot, so the session store calls
:func:`release` right after the end step instead, and
:func:`release_orphaned_reservations` releases what a worker dying in between left:
reservations whose session is gone *or ended*. The session becoming ``running``
calls :func:`correct` with the pod's ``cost_per_hour``. Beat runs
``atlas.quotas.refresh_prices`` (:func:`refresh_configured_prices`) every
``ATLAS_PRICE_REFRESH_INTERVAL_MS``.

Every function takes an optional ``client`` (a ``decode_responses=True`` Redis client);
by default it uses the process's Redis (``ATLAS_REDIS_URL``). The store, its records, its
keys and its Lua are in :mod:`atlas_tasks.quotas.store`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import redis

from atlas_tasks.errors import QuotaExceeded
from atlas_tasks.quotas.store import (
    LUA_QUOTA_RELEASE,
    SCOPES,
    Admission,
    LimitName,
    Limits,
    QuotaStore,
    Quote,
    Refusal,
    Reservation,
    Scope,
    Usage,
)
from atlas_tasks.specs import GpuType

if TYPE_CHECKING:
    from atlas_tasks.config import AtlasSettings
    from atlas_tasks.deps import Dependencies

log = logging.getLogger(__name__)


def quota_store(client: redis.Redis | None = None) -> QuotaStore:
    """A :class:`QuotaStore` on ``client`` (default: the process's Redis)."""
    if client is None:
        from atlas_tasks.deps import Dependencies

        client = Dependencies.default().redis
    return QuotaStore(client)


def set_limits(
    scope: Scope,
    id: str | int,
    *,
    max_sessions: int | None = None,
    max_hourly_usd: float | None = None,
    monthly_usd: float | None = None,
    client: redis.Redis | None = None,
) -> Limits:
    """Set a user's or tenant's limits, replacing the previous ones.

    Args:
        scope: ``"user"`` or ``"tenant"``.
        id: the user or tenant id.
        max_sessions: most sessions alive at once (``None``: no limit).
        max_hourly_usd: most USD per hour committed by its live sessions together.
        monthly_usd: the calendar month's budget in USD (UTC months).
        client: Redis client (default: the process's).

    Returns:
        The limits now in force. A limit left ``None`` is removed. Live sessions are
        never stopped by a lower limit; it refuses the next admissions.

    Raises:
        ValidationError: a bad scope, id or negative/non-numeric limit (the field named).
    """
    limits = Limits.build(
        max_sessions=max_sessions, max_hourly_usd=max_hourly_usd, monthly_usd=monthly_usd
    )
    quota_store(client).set_limits(scope, id, limits)
    return limits


def get_limits(scope: Scope, id: str | int, *, client: redis.Redis | None = None) -> Limits:
    """A user's or tenant's limits (every field ``None`` when none were set)."""
    return quota_store(client).get_limits(scope, id)


def usage(scope: Scope, id: str | int, *, client: redis.Redis | None = None) -> Usage:
    """A user's or tenant's live sessions, committed USD per hour and month-to-date USD."""
    return quota_store(client).usage(scope, id)


def admit(
    session_id: str,
    *,
    user_id: str | int | None = None,
    tenant_id: str | int | None = None,
    hourly_usd: float | None = None,
    client: redis.Redis | None = None,
) -> Reservation:
    """Admit a session against its user's and tenant's limits, reserving atomically.

    Args:
        session_id: the session to reserve for (the reservation's key).
        user_id: the user it counts against (``None``: none).
        tenant_id: the tenant it counts against (``None``: none).
        hourly_usd: its price per hour (e.g. ``quote(...).hourly_usd``); ``None`` when
            unknown: admitted with 0 USD/h committed, see the module docstring.
        client: Redis client (default: the process's).

    Returns:
        The session's reservation (the existing one if it was already admitted).

    Raises:
        QuotaExceeded: a limit refused; nothing was reserved.
        ValidationError: bad ids or a negative price.
    """
    admission = quota_store(client).try_admit(
        session_id, user_id=user_id, tenant_id=tenant_id, hourly_usd=hourly_usd
    )
    if admission.refusal is not None:
        raise admission.refusal.error()
    assert admission.reservation is not None  # admitted ⇔ reservation (Admission's contract)
    return admission.reservation


def release(session_id: str, *, client: redis.Redis | None = None) -> Reservation | None:
    """Give back a session's reservation; idempotent (``None`` if it held none)."""
    return quota_store(client).release(session_id)


def correct(
    session_id: str, real_hourly_usd: float, *, client: redis.Redis | None = None
) -> Reservation | None:
    """Set a live session's committed USD/h to its pod's real ``cost_per_hour``."""
    return quota_store(client).correct(session_id, real_hourly_usd)


def record_spend(
    usd: float,
    *,
    user_id: str | int | None = None,
    tenant_id: str | int | None = None,
    client: redis.Redis | None = None,
) -> dict[Scope, float]:
    """Add spent USD to this month's total of a user and/or tenant; returns the totals."""
    return quota_store(client).record_spend(usd, user_id=user_id, tenant_id=tenant_id)


def refresh_prices(
    provider_name: str, gpu_types: Iterable[GpuType], *, client: redis.Redis | None = None
) -> int:
    """Cache a provider's catalog prices (from ``Provider.list_gpu_types()``).

    Returns how many prices were stored; see :meth:`QuotaStore.refresh_prices`.
    """
    return quota_store(client).refresh_prices(provider_name, gpu_types)


def price_providers(settings: AtlasSettings) -> list[str]:
    """The providers whose catalog prices the beat task caches: ``ATLAS_REAP_PROVIDERS``
    and ``ATLAS_DEFAULT_PROVIDER`` (the providers a deployment spawns on), in order."""
    names = list(settings.reap_providers)
    if settings.default_provider and settings.default_provider not in names:
        names.append(settings.default_provider)
    return names


def refresh_configured_prices(deps: Dependencies | None = None) -> dict[str, int | str]:
    """Refresh the price cache from every configured provider's ``list_gpu_types()``.

    What ``atlas.quotas.refresh_prices`` runs. A provider whose listing fails keeps its
    cached prices (logged; the others are still refreshed).

    Returns:
        Per provider: the number of prices stored, or the error's text.
    """
    if deps is None:
        from atlas_tasks.deps import Dependencies

        deps = Dependencies.default()
    store = QuotaStore(deps.redis)
    out: dict[str, int | str] = {}
    for name in price_providers(deps.settings):
        try:
            out[name] = store.refresh_prices(name, deps.providers(name).list_gpu_types())
        except Exception as exc:  # one provider's outage must not stop the others
            log.warning("price refresh of %s failed: %s: %s", name, type(exc).__name__, exc)
            out[name] = f"{type(exc).__name__}: {exc}"
    return out


def release_orphaned_reservations(
    client: redis.Redis | None = None,
    *,
    live_sessions: Callable[[list[str]], set[str]] | None = None,
) -> list[str]:
    """Release reservations older than a minute whose session is gone or ended; returns
    their session ids. Run by ``atlas.quotas.refresh_prices`` (see
    :meth:`QuotaStore.release_orphaned`).

    Args:
        client: Redis client (default: the process's).
        live_sessions: which of a list of session ids have a record that has not ended
            (``SessionStore.live_ids``). Required in the tagged key layout (Redis
            Cluster); without it, the untagged layout checks that each session's record
            exists inside the release script.
    """
    from atlas_tasks.constants import SESSION_KEY
    from atlas_tasks.keyspace_names import keyspace

    store = quota_store(client)
    if live_sessions is not None:
        return store.release_orphaned(live_sessions=live_sessions)
    return store.release_orphaned(keyspace().key(SESSION_KEY).format(id=""))


def quote(
    provider_name: str,
    gpu: str,
    gpu_count: int = 1,
    *,
    spot: bool = False,
    client: redis.Redis | None = None,
) -> Quote:
    """The cached hourly price of ``gpu_count`` × ``gpu`` (``hourly_usd=None``: unknown)."""
    return quota_store(client).quote(provider_name, gpu, gpu_count, spot=spot)


__all__ = [
    "LUA_QUOTA_RELEASE",
    "SCOPES",
    "Admission",
    "LimitName",
    "Limits",
    "QuotaExceeded",
    "QuotaStore",
    "Quote",
    "Refusal",
    "Reservation",
    "Scope",
    "Usage",
    "admit",
    "correct",
    "get_limits",
    "price_providers",
    "quota_store",
    "quote",
    "record_spend",
    "refresh_configured_prices",
    "refresh_prices",
    "release",
    "release_orphaned_reservations",
    "set_limits",
    "usage",
]
