"""What a quota reservation costs in Redis memory, against the previous layout's cost,
measured on the real redis-server (``used_memory`` before and after 10,000 of each).

The previous layout spent a hash key per session (about 410 B with its index entry);
the bucket layout spends a field of a listpack-encoded bucket hash plus the index entry
(about 196 B). The test keeps the new cost under 60 % of the old one, so a change that
brings back a key per session (or a fat encoding) fails it.
"""

from __future__ import annotations

import secrets

import redis

from atlas_tasks.quotas.store import (
    QuotaStore,
    legacy_reservation_key,
    reservations_index_key,
)

N = 10_000
USERS = 100


def _used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def test_a_reservation_costs_well_under_the_previous_layout(redis_client: redis.Redis) -> None:
    store = QuotaStore(redis_client)
    users = [f"user-{i}" for i in range(USERS)]
    for user in users:  # the usage hashes are per user, not per reservation
        store.try_admit("warm-up", user_id=user, tenant_id="acme", hourly_usd=2.49)
        store.release("warm-up")

    base = _used(redis_client)
    ids = [secrets.token_hex(8) for _ in range(N)]
    for i, sid in enumerate(ids):
        store.try_admit(sid, user_id=users[i % USERS], tenant_id="acme", hourly_usd=2.49)
    new = (_used(redis_client) - base) / N
    assert len(store.reservations(limit=N)) == N
    for sid in ids:
        assert store.release(sid) is not None

    # The previous layout's writes for as many sessions (what its admission script did).
    base = _used(redis_client)
    with redis_client.pipeline(transaction=False) as pipe:
        for i, sid in enumerate(ids):
            pipe.hset(
                legacy_reservation_key(sid),
                mapping={
                    "session_id": sid,
                    "hourly_micros": "2490000",
                    "price_known": "1",
                    "admitted_ms": str(1_764_480_000_000 + i),
                    "user_id": users[i % USERS],
                    "tenant_id": "acme",
                },
            )
            pipe.zadd(reservations_index_key(), {sid: 1_764_480_000_000 + i})
        pipe.execute()
    old = (_used(redis_client) - base) / N

    print(f"bytes per reservation: {new:.1f} (buckets) vs {old:.1f} (a hash per session)")
    assert new < 0.6 * old, (new, old)
