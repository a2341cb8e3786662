"""``atlas.quotas.refresh_prices``: beat caches the GPU catalog prices quota admission
charges against (see :func:`atlas_tasks.quotas.refresh_configured_prices`).

Idempotent and cheap to skip: a missed run only leaves the cached prices older, and a
provider whose catalog cannot be listed keeps its previous prices.
"""

from __future__ import annotations

import logging

from celery import shared_task

from atlas_tasks import constants as C
from atlas_tasks.deps import Dependencies
from atlas_tasks.quotas import refresh_configured_prices, release_orphaned_reservations

log = logging.getLogger(__name__)


@shared_task(name=C.TASK_QUOTA_REFRESH_PRICES, ignore_result=True)
def refresh_prices() -> dict[str, object]:
    """Refresh every configured provider's cached catalog prices (returns the counts),
    then release reservations whose session record is gone (a spawn that died between
    admission and recording its session)."""
    deps = Dependencies.default()
    prices = refresh_configured_prices(deps)
    released = release_orphaned_reservations(deps.redis)
    if released:
        log.warning(
            "released %d quota reservation(s) of sessions that were never recorded: %s",
            len(released),
            ", ".join(released[:20]),
        )
    log.info("quota price refresh: %s", prices)
    return {"prices": prices, "released_reservations": released}
