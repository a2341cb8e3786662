"""The quota store's key layout: untagged names unchanged, one ``{quota}`` slot when
tagged (checked by a spy on every script call and by a real one-node Redis Cluster that
refuses cross-slot scripts), the compact reservation buckets, reservations of the
previous layout, and the orphan sweep's ``live_sessions``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.commands.core import Script
from redis.crc import key_slot
from redis.exceptions import RedisClusterException

from atlas_tasks import quotas
from atlas_tasks.config import reset_settings
from atlas_tasks.errors import ValidationError
from atlas_tasks.quotas.store import (
    LUA_QUOTA_RELEASE,
    RESERVATION_BUCKETS,
    QuotaStore,
    Reservation,
    decode_reservation,
    encode_reservation,
    legacy_reservation_key,
    limits_key,
    prices_key,
    reservation_bucket,
    reservation_key,
    reservations_index_key,
    spend_key,
    usage_key,
    usage_key_halves,
)
from atlas_tasks.specs import GpuType
from tests.support.slots import single_node_cluster

SHARDS = "16"


@pytest.fixture
def tagged(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tagged (Redis Cluster) key layout for this test."""
    monkeypatch.setenv("ATLAS_REDIS_SHARDS", SHARDS)
    reset_settings()


def _all_key_names(namespace: str | None = None) -> list[str]:
    return [
        limits_key("user", "u1"),
        usage_key("tenant", "t1"),
        spend_key("user", "u1", "2026-11"),
        prices_key("runpod"),
        reservation_key("s1", namespace),
        reservations_index_key(namespace),
        legacy_reservation_key("s1", namespace),
        "x".join(usage_key_halves(namespace)),
    ]


# --------------------------------------------------------------------------- names


def test_untagged_names_are_the_previous_ones() -> None:
    assert limits_key("user", "u1") == "atlas:quota:user:u1:limits"
    assert usage_key("tenant", "t1") == "atlas:quota:tenant:t1:usage"
    assert spend_key("user", "u1", "2026-11") == "atlas:quota:user:u1:spend:2026-11"
    assert prices_key("runpod") == "atlas:quota:prices:runpod"
    assert reservations_index_key() == "atlas:quota:reservations"
    assert usage_key_halves() == ("atlas:quota:", ":usage")
    assert usage_key_halves("blue") == ("blue:quota:", ":usage")
    assert legacy_reservation_key("s1") == "atlas:quota:res:s1"
    # the new reservation bucket (a new name: no previous key is reused for it)
    assert reservation_key("s1") == f"atlas:quota:resv:{reservation_bucket('s1')}"
    assert reservation_key("s1", "blue").startswith("blue:quota:resv:")


def test_tagged_names_all_live_in_the_quota_slot(tagged: None) -> None:
    names = _all_key_names() + _all_key_names("blue")
    assert all("{quota}" in name for name in names), names
    assert reservations_index_key() == "atlas:{quota}:quota:reservations"
    assert {key_slot(n.encode()) for n in _all_key_names()} == {key_slot(b"{quota}")}
    # namespaces differ by name, not by slot (the tag is the same)
    assert reservation_key("s1", "blue") == reservation_key("s1").replace("atlas:", "blue:")
    assert reservations_index_key("blue") == "blue:{quota}:quota:reservations"


def test_buckets_spread_sessions_evenly() -> None:
    counts = [0] * RESERVATION_BUCKETS
    for i in range(50 * RESERVATION_BUCKETS):
        counts[reservation_bucket(f"{i:016x}")] += 1
    assert min(counts) > 20 and max(counts) < 90, (min(counts), max(counts))


@pytest.mark.parametrize(
    "res",
    [
        Reservation("s1", "u1", "t1", 2.49, True, 1_764_480_000_123),
        Reservation("s2", None, "acme", 0.0, False, 1),
        Reservation("s3", "7", None, 1234.5, True, 5, corrected_at_ms=1_764_480_000_999),
    ],
)
def test_the_compact_encoding_round_trips(res: Reservation) -> None:
    value = encode_reservation(
        round(res.hourly_usd * 1_000_000),
        res.price_known,
        res.user_id,
        res.tenant_id,
        res.corrected_at_ms,
    )
    assert len(value) < 50
    assert decode_reservation(res.session_id, value, res.admitted_at_ms) == res


# --------------------------------------------------------------------------- slots


class ScriptSpy:
    """Every quota script call's KEYS, and the keys it builds from ARGV prefixes."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def record(self, keys: list[Any], args: list[Any]) -> None:
        built = [str(k) for k in keys]
        prefix, suffix = usage_key_halves()
        # usage keys built from the halves; spend keys from prefixes (KEYS) + a month;
        # the previous layout's reservation from the bucket key's name
        built += [prefix + "user:anyone" + suffix, prefix + "tenant:anyone" + suffix]
        built += [str(k) + "2026-11" for k in keys if str(k).endswith(":spend:")]
        built += [str(k).rsplit("resv:", 1)[0] + "res:anyone" for k in keys if "resv:" in str(k)]
        self.calls.append(built)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> ScriptSpy:
    spy = ScriptSpy()
    original = Script.__call__

    def call(self: Script, keys: Any = None, args: Any = None, client: Any = None) -> Any:
        spy.record(list(keys or []), list(args or []))
        return original(self, keys=keys, args=args, client=client)

    monkeypatch.setattr(Script, "__call__", call)
    return spy


def _exercise(store: QuotaStore) -> None:
    """Every quota script at least once (plus the plain reads), in the current layout."""
    store.set_limits("user", "u1", quotas.Limits.build(max_sessions=5, monthly_usd=100))
    store.set_limits("tenant", "t1", quotas.Limits.build(max_hourly_usd=50))
    store.refresh_prices(
        "runpod",
        [GpuType(id="H100", provider="runpod", canonical="h100", lowest_price_per_hour=2.0)],
    )
    assert store.quote("runpod", "h100", 2).hourly_usd == 4.0
    store.record_spend(1.5, user_id="u1", tenant_id="t1")
    for sid in ("a", "b", "c"):
        assert store.try_admit(sid, user_id="u1", tenant_id="t1", hourly_usd=4.0).admitted
    assert store.try_admit("a", user_id="u1", tenant_id="t1", hourly_usd=4.0).already_reserved
    store.set_limits("user", "u2", quotas.Limits.build(max_sessions=0))
    assert store.try_admit("z", user_id="u2", hourly_usd=1.0).refusal is not None
    corrected = store.correct("a", 3.0)
    assert corrected is not None and corrected.hourly_usd == 3.0
    assert [r.session_id for r in store.reservations()] == ["a", "b", "c"]
    assert store.release("b") is not None
    assert store.release("b") is None
    assert store.try_admit("d", user_id="u1", tenant_id="t1", hourly_usd=4.0).admitted
    assert [r is not None for r in store.release_many(["d", "b"])] == [True, False]
    released = store.release_orphaned(live_sessions=lambda ids: {"a"}, older_than_ms=0)
    assert released == ["c"]
    use = store.usage("user", "u1")
    assert (use.sessions, use.hourly_usd, use.month_to_date_usd) == (1, 3.0, 1.5)
    assert store.usage("tenant", "t1").sessions == 1
    assert store.month_at(1_764_480_000)[0] == "2025-11"


def test_every_quota_script_gets_keys_of_one_slot(
    tagged: None, spy: ScriptSpy, redis_client: redis.Redis
) -> None:
    _exercise(QuotaStore(redis_client))
    assert len(spy.calls) >= 10
    quota_slot = key_slot(b"{quota}")
    for keys in spy.calls:
        assert {key_slot(k.encode()) for k in keys} <= {quota_slot}, keys


def test_the_same_scripts_span_slots_untagged(spy: ScriptSpy, redis_client: redis.Redis) -> None:
    """The spy can fail: untagged, a script's keys fall in many slots."""
    _exercise(QuotaStore(redis_client))
    slots = {key_slot(k.encode()) for keys in spy.calls for k in keys}
    assert len(slots) > 1


@pytest.fixture(scope="module")
def cluster_node(redis_server: Any) -> Iterator[int]:
    """A one-node Redis Cluster owning every slot: it refuses a script whose KEYS span
    slots (CROSSSLOT), as a real cluster does. (``redis_server``: skip/fail like every
    Redis test when redis-server is missing.)"""
    with single_node_cluster() as url:
        port = redis.Redis.from_url(url).connection_pool.connection_kwargs["port"]
        yield int(port)


def _node_client(kind: str, port: int) -> Any:
    # "cluster": redis-py's cluster client (it refuses a multi-slot call before sending);
    # "plain": a plain client on the node, so the server's own CROSSSLOT check decides.
    if kind == "cluster":
        return redis.RedisCluster(host="127.0.0.1", port=port, decode_responses=True)
    return redis.Redis(port=port, decode_responses=True)


@pytest.mark.parametrize("kind", ["cluster", "plain"])
def test_the_quota_store_runs_on_a_real_cluster_node(
    kind: str, tagged: None, cluster_node: int
) -> None:
    client = _node_client(kind, cluster_node)
    try:
        client.flushall()
        _exercise(QuotaStore(client))
    finally:
        client.close()


@pytest.mark.parametrize("kind", ["cluster", "plain"])
def test_the_cluster_node_refuses_cross_slot_scripts(kind: str, cluster_node: int) -> None:
    """The check can fail: the untagged layout's admission spans slots."""
    client = _node_client(kind, cluster_node)
    try:
        client.flushall()
        with pytest.raises((redis.RedisError, RedisClusterException), match="slot"):
            QuotaStore(client).try_admit("a", user_id="u1", tenant_id="t1")
    finally:
        client.close()


# --------------------------------------------------------------------------- orphan sweep


@pytest.mark.parametrize("layout", ["untagged", "tagged"])
def test_release_orphaned_releases_what_live_sessions_does_not_list(
    layout: str, monkeypatch: pytest.MonkeyPatch, redis_client: redis.Redis
) -> None:
    if layout == "tagged":
        monkeypatch.setenv("ATLAS_REDIS_SHARDS", SHARDS)
        reset_settings()
    store = QuotaStore(redis_client)
    for sid in ("live", "ended", "gone"):
        store.try_admit(sid, user_id="u1", tenant_id="t1", hourly_usd=1.0)
    asked: list[list[str]] = []

    def live_sessions(ids: list[str]) -> set[str]:
        asked.append(ids)
        return {"live"}  # "ended": terminated but not released; "gone": no record

    # young reservations are not even looked at
    assert store.release_orphaned(live_sessions=live_sessions) == []
    assert asked == []
    assert sorted(store.release_orphaned(live_sessions=live_sessions, older_than_ms=0)) == [
        "ended",
        "gone",
    ]
    assert sorted(asked[0]) == ["ended", "gone", "live"]
    assert [r.session_id for r in store.reservations()] == ["live"]
    for scope, ident in (("user", "u1"), ("tenant", "t1")):
        use = store.usage(scope, ident)  # type: ignore[arg-type]
        assert (use.sessions, use.hourly_usd) == (1, 1.0)
    assert store.release_orphaned(live_sessions=live_sessions, older_than_ms=0) == []


def test_release_orphaned_racing_the_sessions_own_release_gives_back_once(
    tagged: None, redis_client: redis.Redis
) -> None:
    store = QuotaStore(redis_client)
    store.try_admit("s1", user_id="u1", hourly_usd=2.0)
    store.try_admit("s2", user_id="u1", hourly_usd=2.0)

    def live_sessions(ids: list[str]) -> set[str]:
        # the session store releases s1 itself between the sweep's read and its release
        assert store.release("s1") is not None
        return set()

    assert store.release_orphaned(live_sessions=live_sessions, older_than_ms=0) == ["s2"]
    use = store.usage("user", "u1")
    assert (use.sessions, use.hourly_usd) == (0, 0.0)


def test_release_orphaned_tagged_needs_live_sessions(
    tagged: None, redis_client: redis.Redis
) -> None:
    store = QuotaStore(redis_client)
    with pytest.raises(ValidationError) as info:
        store.release_orphaned("atlas:session:")
    assert info.value.field == "live_sessions"
    with pytest.raises(ValidationError):
        store.release_orphaned()


def test_release_orphaned_reservations_passes_live_sessions(
    tagged: None, redis_client: redis.Redis
) -> None:
    quotas.admit("s1", user_id="u1", client=redis_client)
    quotas.admit("s2", user_id="u1", client=redis_client)
    QuotaStore(redis_client).release_orphaned(live_sessions=lambda ids: set(ids), older_than_ms=0)
    assert len(QuotaStore(redis_client).reservations()) == 2
    # the module function's default age (a minute) leaves these young ones alone
    assert quotas.release_orphaned_reservations(redis_client, live_sessions=lambda ids: set()) == []


def test_the_beat_task_sweeps_with_the_session_stores_live_ids(
    tagged: None, monkeypatch: pytest.MonkeyPatch, redis_client: redis.Redis
) -> None:
    from atlas_tasks.sessions import store as session_store
    from atlas_tasks.tasks import quotas as task

    class Deps:
        redis = redis_client

    calls: list[list[str]] = []

    class Store:
        def live_ids(self, ids: list[str]) -> set[str]:
            calls.append(ids)
            return set()

    monkeypatch.setattr(session_store, "store_for", lambda client: Store())
    live = task.live_sessions_of(Deps())  # type: ignore[arg-type]
    assert live is not None and live(["x"]) == set() and calls == [["x"]]
    monkeypatch.delenv("ATLAS_REDIS_SHARDS")
    reset_settings()
    assert task.live_sessions_of(Deps()) is None  # type: ignore[arg-type]


# --------------------------------------------------------------------------- previous layout


def _legacy_admit(client: redis.Redis, sid: str, user: str, tenant: str, micros: int) -> None:
    """What the previous layout's admission script left behind."""
    client.hset(
        legacy_reservation_key(sid),
        mapping={
            "session_id": sid,
            "hourly_micros": str(micros),
            "price_known": "1",
            "admitted_ms": "1000",
            "user_id": user,
            "tenant_id": tenant,
        },
    )
    client.zadd(reservations_index_key(), {sid: 1000})
    for key in (usage_key("user", user), usage_key("tenant", tenant)):
        client.hincrby(key, "sessions", 1)
        client.hincrby(key, "hourly_micros", micros)


@pytest.mark.parametrize("layout", ["untagged", "tagged"])
def test_reservations_of_the_previous_layout_are_read_corrected_and_released(
    layout: str, monkeypatch: pytest.MonkeyPatch, redis_client: redis.Redis
) -> None:
    if layout == "tagged":
        monkeypatch.setenv("ATLAS_REDIS_SHARDS", SHARDS)
        reset_settings()
    store = QuotaStore(redis_client)
    _legacy_admit(redis_client, "old1", "u1", "t1", 2_000_000)
    _legacy_admit(redis_client, "old2", "u1", "t1", 2_000_000)
    store.try_admit("new1", user_id="u1", tenant_id="t1", hourly_usd=1.0)
    old = store.reservation("old1")
    assert old is not None and (old.user_id, old.hourly_usd, old.admitted_at_ms) == (
        "u1",
        2.0,
        1000,
    )
    assert [r.session_id for r in store.reservations()] == ["old1", "old2", "new1"]
    assert store.try_admit("old1", user_id="u1", hourly_usd=9.0).already_reserved
    # a correction moves it into its bucket
    assert store.correct("old2", 5.0) is not None
    assert redis_client.exists(legacy_reservation_key("old2")) == 0
    assert redis_client.hexists(reservation_key("old2"), "old2")
    assert store.usage("user", "u1").hourly_usd == 8.0
    released = store.release("old1")
    assert released is not None and released.hourly_usd == 2.0
    assert store.release("old1") is None
    assert redis_client.exists(legacy_reservation_key("old1")) == 0
    for sid in ("old2", "new1"):
        assert store.release(sid) is not None
    for scope, ident in (("user", "u1"), ("tenant", "t1")):
        use = store.usage(scope, ident)  # type: ignore[arg-type]
        assert (use.sessions, use.hourly_usd) == (0, 0.0)
    assert redis_client.zcard(reservations_index_key()) == 0


def test_the_exported_release_function_keeps_its_signature(redis_client: redis.Redis) -> None:
    """The session store embeds LUA_QUOTA_RELEASE and calls it with these five values."""
    QuotaStore(redis_client).try_admit("s1", user_id="u1", hourly_usd=1.0)
    script = redis_client.register_script(
        LUA_QUOTA_RELEASE
        + "return quota_release(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3]) and 1 or 0"
    )
    args = ["s1", *usage_key_halves("atlas")]
    keys = [reservation_key("s1", "atlas"), reservations_index_key("atlas")]
    assert script(keys=keys, args=args) == 1
    assert script(keys=keys, args=args) == 0
    assert QuotaStore(redis_client).usage("user", "u1").sessions == 0


@pytest.mark.parametrize("layout", ["untagged", "tagged"])
def test_a_store_of_another_namespace_keeps_to_its_keys(
    layout: str, monkeypatch: pytest.MonkeyPatch, redis_client: redis.Redis
) -> None:
    """The session store of a namespace releases through ``QuotaStore(client,
    namespace=...)`` (tagged layout): it must not touch the settings' namespace."""
    if layout == "tagged":
        monkeypatch.setenv("ATLAS_REDIS_SHARDS", SHARDS)
        reset_settings()
    blue = QuotaStore(redis_client, namespace="blue")
    _exercise(blue)
    assert redis_client.keys("atlas:*") == []
    assert all(str(k).startswith("blue:") for k in redis_client.keys("*"))
    assert QuotaStore(redis_client).reservation("a") is None
    released = blue.release("a")
    assert released is not None and released.user_id == "u1"
    assert blue.usage("user", "u1").sessions == 0


@pytest.mark.parametrize("layout", ["untagged", "tagged"])
def test_release_many_releases_each_once_in_one_round_trip(
    layout: str, monkeypatch: pytest.MonkeyPatch, redis_client: redis.Redis
) -> None:
    if layout == "tagged":
        monkeypatch.setenv("ATLAS_REDIS_SHARDS", SHARDS)
        reset_settings()
    store = QuotaStore(redis_client)
    for sid in ("a", "b", "c"):
        store.try_admit(sid, user_id="u1", tenant_id="t1", hourly_usd=1.5)
    out = store.release_many(["a", "x", "c", "a"])
    assert [r.session_id if r else None for r in out] == ["a", None, "c", None]
    assert out[0] is not None and (out[0].user_id, out[0].hourly_usd) == ("u1", 1.5)
    use = store.usage("tenant", "t1")
    assert (use.sessions, use.hourly_usd) == (1, 1.5)
    assert store.release_many([]) == []
    with pytest.raises(ValidationError):
        store.release_many(["b", ""])
    assert store.reservation("b") is not None  # a bad id releases nothing


@pytest.mark.parametrize("layout", ["untagged", "tagged"])
def test_release_orphaned_pages_past_the_oldest_live_sessions(
    layout: str, monkeypatch: pytest.MonkeyPatch, redis_client: redis.Redis
) -> None:
    """More live sessions than a page: the orphans behind them are found too."""
    if layout == "tagged":
        monkeypatch.setenv("ATLAS_REDIS_SHARDS", SHARDS)
        reset_settings()
    store = QuotaStore(redis_client)
    ids = [f"s{i}" for i in range(7)]
    for i, sid in enumerate(ids):
        store.try_admit(sid, user_id="u1", hourly_usd=1.0)
        redis_client.zadd(reservations_index_key(), {sid: 1000 + i})  # admission order
    live = {"s0", "s1", "s2", "s4"}
    pages: list[list[str]] = []

    def live_sessions(page: list[str]) -> set[str]:
        pages.append(page)
        return live & set(page)

    released = store.release_orphaned(live_sessions=live_sessions, older_than_ms=0, limit=2)
    assert released == ["s3", "s5", "s6"]
    assert [r.session_id for r in store.reservations()] == ["s0", "s1", "s2", "s4"]
    assert store.usage("user", "u1").sessions == 4
    assert sorted(i for page in pages for i in page) == sorted(ids)
