"""``atlas.quotas.refresh_prices``: beat caches the GPU catalog prices quota admission
charges against (see :func:`atlas_tasks.quotas.refresh_configured_prices`), then releases
orphaned quota reservations.

Idempotent and cheap to skip: a missed run only leaves the cached prices older (and an
orphaned reservation held until the next run), and a provider whose catalog cannot be
listed keeps its previous prices.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery import shared_task

from atlas_tasks import constants as C
from atlas_tasks.deps import Dependencies
from atlas_tasks.keyspace_names import keyspace
from atlas_tasks.quotas import refresh_configured_prices, release_orphaned_reservations

log = logging.getLogger(__name__)


def live_sessions_of(deps: Dependencies) -> Callable[[list[str]], set[str]] | None:
    """How the orphan sweep learns which sessions are live: the session store's
    ``live_ids`` (records that exist and have not ended) in the tagged key layout, where
    the quota script cannot read session records; ``None`` in the untagged layout, where
    the release script checks each record itself, in the same step."""
    if not keyspace().tagged:
        return None
    from atlas_tasks.sessions.store import store_for

    return store_for(deps.redis).live_ids


@shared_task(name=C.TASK_QUOTA_REFRESH_PRICES, ignore_result=True)
def refresh_prices() -> dict[str, object]:
    """Refresh every configured provider's cached catalog prices (returns the counts),
    then release reservations whose session is gone (a spawn that died between admission
    and recording its session) or, in the tagged layout, ended without its release (a
    worker that died between the session's end and the release)."""
    deps = Dependencies.default()
    prices = refresh_configured_prices(deps)
    released: list[str] = []
    released = release_orphaned_reservations(deps.redis, live_sessions=live_sessions_of(deps))
    if released:
        log.warning(
            "released %d quota reservation(s) of sessions that are gone or ended: %s",
            len(released),
            ", ".join(released[:20]),
        )
    log.info("quota price refresh: %s", prices)
    return {"prices": prices, "released_reservations": released}
