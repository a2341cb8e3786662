"""atlas_tasks.quotas on one process: limits, admission, release, correction, spend, prices.

Runs against the real redis-server of the ``redis_client`` fixture (the scripts use
Redis ``TIME`` and real Lua). The cross-process race is tests/integration/
test_quota_admission.py.
"""

from __future__ import annotations

import logging
import pickle
import threading
from datetime import UTC, datetime
from typing import cast

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atlas_tasks import quotas
from atlas_tasks.config import reset_settings
from atlas_tasks.contrib._web import status_for
from atlas_tasks.errors import AtlasError, QuotaExceeded, ValidationError
from atlas_tasks.quotas.store import (
    SPEND_RETENTION_S,
    Limits,
    QuotaStore,
    Reservation,
    reservation_key,
    spend_key,
    usage_key,
)
from atlas_tasks.specs import GpuType


@pytest.fixture(autouse=True, params=["untagged", "tagged"])
def layout(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test in both key layouts: one Redis (names as before) and the tagged one a
    Redis Cluster needs (every quota key in the ``{quota}`` slot)."""
    if request.param == "tagged":
        monkeypatch.setenv("ATLAS_REDIS_SHARDS", "16")
        reset_settings()
    return str(request.param)


@pytest.fixture
def store(redis_client: redis.Redis) -> QuotaStore:
    return QuotaStore(redis_client)


def _refusal(excinfo: pytest.ExceptionInfo[QuotaExceeded]) -> tuple[object, ...]:
    e = excinfo.value
    return (e.scope, e.scope_id, e.limit_name, e.usage, e.limit, e.requested)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("scope", ["users", "", "USER", None, 1])
def test_bad_scope_is_a_validation_error_naming_scope(
    scope: object, redis_client: redis.Redis
) -> None:
    with pytest.raises(ValidationError) as info:
        quotas.set_limits(scope, "u1", max_sessions=1, client=redis_client)  # type: ignore[arg-type]
    assert info.value.field == "scope"
    with pytest.raises(ValidationError):
        quotas.usage(scope, "u1", client=redis_client)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_sessions": -1}, "max_sessions"),
        ({"max_sessions": 1.5}, "max_sessions"),
        ({"max_sessions": True}, "max_sessions"),
        ({"max_hourly_usd": -0.01}, "max_hourly_usd"),
        ({"max_hourly_usd": float("nan")}, "max_hourly_usd"),
        ({"max_hourly_usd": "10"}, "max_hourly_usd"),
        ({"monthly_usd": -5}, "monthly_usd"),
        ({"monthly_usd": float("inf")}, "monthly_usd"),
        ({"monthly_usd": 1e12}, "monthly_usd"),
    ],
)
def test_bad_limits_are_refused_naming_the_field(
    kwargs: dict[str, object], field: str, redis_client: redis.Redis
) -> None:
    with pytest.raises(ValidationError) as info:
        quotas.set_limits("user", "u1", client=redis_client, **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert str(info.value).startswith(f"[atlas] validation: {field}:")
    assert quotas.get_limits("user", "u1", client=redis_client) == Limits()


@pytest.mark.parametrize("bad", ["", "a b", "tab\tid", "x" * 201, None, 1.5])
def test_bad_ids_are_refused(bad: object, redis_client: redis.Redis) -> None:
    with pytest.raises(ValidationError) as info:
        quotas.set_limits("tenant", bad, max_sessions=1, client=redis_client)  # type: ignore[arg-type]
    assert info.value.field == "id"
    if bad is not None:  # None is "no user" for admission
        with pytest.raises(ValidationError) as info:
            quotas.admit("s1", user_id=bad, client=redis_client)  # type: ignore[arg-type]
        assert info.value.field == "user_id"
    assert redis_client.keys("atlas:*") == []


def test_bad_admission_arguments(redis_client: redis.Redis) -> None:
    with pytest.raises(ValidationError) as info:
        quotas.admit("s1", user_id="u1", hourly_usd=-1, client=redis_client)
    assert info.value.field == "hourly_usd"
    with pytest.raises(ValidationError) as info:
        quotas.admit("", user_id="u1", client=redis_client)
    assert info.value.field == "session_id"
    for call in (
        lambda: quotas.release("", client=redis_client),
        lambda: quotas.correct("", 1.0, client=redis_client),
    ):
        with pytest.raises(ValidationError) as info:
            call()
        assert info.value.field == "session_id"
    with pytest.raises(ValidationError) as info:
        quotas.correct("s1", -2, client=redis_client)
    assert info.value.field == "real_hourly_usd"
    with pytest.raises(ValidationError) as info:
        quotas.record_spend(-1, user_id="u1", client=redis_client)
    assert info.value.field == "usd"
    assert redis_client.keys("atlas:*") == []


# --------------------------------------------------------------------------- limits


def test_limits_round_trip_and_replace(redis_client: redis.Redis) -> None:
    assert quotas.get_limits("user", "u1", client=redis_client) == Limits()
    set_to = quotas.set_limits(
        "user", "u1", max_sessions=3, max_hourly_usd=12.5, monthly_usd=400, client=redis_client
    )
    assert set_to == Limits(max_sessions=3, max_hourly_usd=12.5, monthly_usd=400.0)
    assert quotas.get_limits("user", "u1", client=redis_client) == set_to
    # Replace, not patch: a limit left None is removed.
    quotas.set_limits("user", "u1", max_hourly_usd=2, client=redis_client)
    assert quotas.get_limits("user", "u1", client=redis_client) == Limits(max_hourly_usd=2.0)
    quotas.set_limits("user", "u1", client=redis_client)
    assert quotas.get_limits("user", "u1", client=redis_client) == Limits()
    # The tenant of the same id is another scope; int ids (Django pks) are accepted.
    quotas.set_limits("tenant", 7, max_sessions=0, client=redis_client)
    assert quotas.get_limits("tenant", "7", client=redis_client).max_sessions == 0
    assert quotas.get_limits("user", 7, client=redis_client) == Limits()


@given(
    max_sessions=st.none() | st.integers(0, 10**6),
    hourly=st.none() | st.integers(0, 10**12),
    monthly=st.none() | st.integers(0, 10**14),
)
def test_limits_hash_round_trip(
    max_sessions: int | None, hourly: int | None, monthly: int | None
) -> None:
    limits = Limits.build(
        max_sessions=max_sessions,
        max_hourly_usd=None if hourly is None else hourly / 1e6,
        monthly_usd=None if monthly is None else monthly / 1e6,
    )
    assert Limits.from_hash(limits.to_hash()) == limits


def test_reservation_hash_round_trip() -> None:
    res = Reservation("s1", "u1", None, 2.49, False, 1_700_000_000_000, None)
    assert Reservation.from_hash(res.to_hash()) == res
    res2 = Reservation("s2", None, "t", 0.0, True, 5, 6)
    assert Reservation.from_hash(res2.to_hash()) == res2


# --------------------------------------------------------------------------- admission


def test_max_sessions_admits_up_to_the_limit(redis_client: redis.Redis) -> None:
    quotas.set_limits("user", "u1", max_sessions=2, client=redis_client)
    quotas.admit("s1", user_id="u1", hourly_usd=1, client=redis_client)
    quotas.admit("s2", user_id="u1", hourly_usd=1, client=redis_client)
    with pytest.raises(QuotaExceeded) as info:
        quotas.admit("s3", user_id="u1", hourly_usd=1, client=redis_client)
    assert _refusal(info) == ("user", "u1", "max_sessions", 2.0, 2.0, 1.0)
    assert info.value.kind == "quota_exceeded"
    assert isinstance(info.value, AtlasError)
    assert "max_sessions" in str(info.value) and "2 live sessions, limit 2" in str(info.value)
    assert redis_client.hexists(reservation_key("s3"), "s3") == 0
    assert quotas.usage("user", "u1", client=redis_client).sessions == 2
    # Another user is not affected.
    quotas.admit("s4", user_id="u2", client=redis_client)


def test_max_hourly_usd_counts_the_requested_price(redis_client: redis.Redis) -> None:
    quotas.set_limits("user", "u1", max_hourly_usd=10, client=redis_client)
    for sid in ("a", "b", "c"):
        quotas.admit(sid, user_id="u1", hourly_usd=3, client=redis_client)
    with pytest.raises(QuotaExceeded) as info:
        quotas.admit("d", user_id="u1", hourly_usd=3, client=redis_client)
    assert _refusal(info) == ("user", "u1", "max_hourly_usd", 9.0, 10.0, 3.0)
    assert "9.00 USD/h committed + 3.00 USD/h requested > limit 10.00 USD/h" in str(info.value)
    # Exactly up to the limit is fine.
    quotas.admit("e", user_id="u1", hourly_usd=1, client=redis_client)
    assert quotas.usage("user", "u1", client=redis_client).hourly_usd == 10.0


def test_monthly_budget_keeps_one_hour_of_headroom(redis_client: redis.Redis) -> None:
    quotas.set_limits("tenant", "acme", monthly_usd=10, client=redis_client)
    quotas.record_spend(2.5, tenant_id="acme", client=redis_client)
    quotas.admit("a", tenant_id="acme", hourly_usd=3, client=redis_client)  # 2.5 + 3 <= 10
    quotas.admit("b", tenant_id="acme", hourly_usd=4, client=redis_client)  # 2.5 + 7 <= 10
    with pytest.raises(QuotaExceeded) as info:
        quotas.admit("c", tenant_id="acme", hourly_usd=1, client=redis_client)  # 2.5 + 8 > 10
    assert _refusal(info) == ("tenant", "acme", "monthly_usd", 2.5, 10.0, 8.0)
    assert "monthly_usd" in str(info.value) and "budget 10.00 USD" in str(info.value)
    # A spent budget refuses even a session without a price.
    quotas.release("a", client=redis_client)
    quotas.release("b", client=redis_client)
    quotas.record_spend(7.5, tenant_id="acme", client=redis_client)
    with pytest.raises(QuotaExceeded) as info:
        quotas.admit("d", tenant_id="acme", client=redis_client)
    assert info.value.limit_name == "monthly_usd" and info.value.usage == 10.0


def test_a_refusal_by_the_tenant_reserves_nothing_for_the_user(
    redis_client: redis.Redis,
) -> None:
    quotas.set_limits("user", "u1", max_sessions=5, client=redis_client)
    quotas.set_limits("tenant", "t1", max_hourly_usd=4, client=redis_client)
    quotas.admit("s1", user_id="u1", tenant_id="t1", hourly_usd=3, client=redis_client)
    before = redis_client.hgetall(usage_key("user", "u1"))
    with pytest.raises(QuotaExceeded) as info:
        quotas.admit("s2", user_id="u1", tenant_id="t1", hourly_usd=3, client=redis_client)
    assert (info.value.scope, info.value.limit_name) == ("tenant", "max_hourly_usd")
    assert redis_client.hgetall(usage_key("user", "u1")) == before
    assert quotas.usage("user", "u1", client=redis_client).sessions == 1
    assert redis_client.hexists(reservation_key("s2"), "s2") == 0


def test_user_limits_are_checked_before_the_tenant(redis_client: redis.Redis) -> None:
    quotas.set_limits("user", "u1", max_sessions=0, client=redis_client)
    quotas.set_limits("tenant", "t1", max_sessions=0, client=redis_client)
    with pytest.raises(QuotaExceeded) as info:
        quotas.admit("s1", user_id="u1", tenant_id="t1", client=redis_client)
    assert info.value.scope == "user"


def test_no_limits_and_no_scopes_admit(redis_client: redis.Redis) -> None:
    res = quotas.admit("s1", hourly_usd=100, client=redis_client)
    assert (res.user_id, res.tenant_id, res.hourly_usd) == (None, None, 100.0)
    assert quotas.release("s1", client=redis_client) == res


def test_readmitting_a_session_reserves_nothing_more(store: QuotaStore) -> None:
    first = store.try_admit("s1", user_id="u1", tenant_id="t1", hourly_usd=2)
    again = store.try_admit("s1", user_id="u1", tenant_id="t1", hourly_usd=2)
    assert first.admitted and not first.already_reserved
    assert again.admitted and again.already_reserved
    assert again.reservation == first.reservation
    assert store.usage("user", "u1").sessions == 1
    assert store.usage("tenant", "t1").hourly_usd == 2.0


def test_try_admit_returns_the_refusal_instead_of_raising(store: QuotaStore) -> None:
    store.set_limits("user", "u1", Limits(max_sessions=0))
    admission = store.try_admit("s1", user_id="u1")
    assert not admission.admitted and admission.reservation is None
    assert admission.refusal is not None and admission.refusal.limit_name == "max_sessions"
    assert isinstance(admission.refusal.error(), QuotaExceeded)


def test_quota_exceeded_travels_with_its_facts(redis_client: redis.Redis) -> None:
    quotas.set_limits("user", "u1", max_hourly_usd=1, client=redis_client)
    with pytest.raises(QuotaExceeded) as info:
        quotas.admit("s1", user_id="u1", hourly_usd=2.5, client=redis_client)
    err = info.value
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is QuotaExceeded
    assert _refusal(info) == (
        back.scope,
        back.scope_id,
        back.limit_name,
        back.usage,
        back.limit,
        back.requested,
    )
    assert str(back) == str(err)
    rebuilt = AtlasError.from_dict(err.to_dict())
    assert isinstance(rebuilt, QuotaExceeded) and rebuilt.limit == 1.0
    assert AtlasError("x", kind="quota_exceeded").limit_name is None  # type: ignore[attr-defined]
    assert status_for(err) == 429


# --------------------------------------------------------------------------- release / correct


def test_release_is_idempotent_and_never_negative(redis_client: redis.Redis) -> None:
    quotas.admit("s1", user_id="u1", tenant_id="t1", hourly_usd=1.5, client=redis_client)
    quotas.admit("s2", user_id="u1", tenant_id="t1", hourly_usd=2, client=redis_client)
    released = quotas.release("s1", client=redis_client)
    assert released is not None and released.hourly_usd == 1.5
    for _ in range(3):
        assert quotas.release("s1", client=redis_client) is None
    assert quotas.release("never-admitted", client=redis_client) is None
    use = quotas.usage("user", "u1", client=redis_client)
    assert (use.sessions, use.hourly_usd) == (1, 2.0)
    quotas.release("s2", client=redis_client)
    quotas.release("s2", client=redis_client)
    for scope, ident in (("user", "u1"), ("tenant", "t1")):
        use = quotas.usage(scope, ident, client=redis_client)  # type: ignore[arg-type]
        assert (use.sessions, use.hourly_usd) == (0, 0.0)
    assert QuotaStore(redis_client).reservations() == []


def test_release_gives_room_back(redis_client: redis.Redis) -> None:
    quotas.set_limits("user", "u1", max_sessions=1, client=redis_client)
    quotas.admit("s1", user_id="u1", client=redis_client)
    with pytest.raises(QuotaExceeded):
        quotas.admit("s2", user_id="u1", client=redis_client)
    quotas.release("s1", client=redis_client)
    quotas.admit("s2", user_id="u1", client=redis_client)


def test_release_clamps_at_zero_when_usage_was_lost(redis_client: redis.Redis) -> None:
    quotas.admit("s1", user_id="u1", hourly_usd=3, client=redis_client)
    redis_client.delete(usage_key("user", "u1"))  # e.g. evicted or edited by hand
    quotas.release("s1", client=redis_client)
    use = quotas.usage("user", "u1", client=redis_client)
    assert (use.sessions, use.hourly_usd) == (0, 0.0)


def test_correct_moves_the_committed_price(redis_client: redis.Redis) -> None:
    quotas.set_limits("tenant", "t1", max_hourly_usd=5, client=redis_client)
    quotas.admit("s1", user_id="u1", tenant_id="t1", hourly_usd=2, client=redis_client)
    res = quotas.correct("s1", 4.75, client=redis_client)
    assert res is not None and res.hourly_usd == 4.75 and res.corrected_at_ms is not None
    assert quotas.usage("user", "u1", client=redis_client).hourly_usd == 4.75
    assert quotas.usage("tenant", "t1", client=redis_client).hourly_usd == 4.75
    # Corrected down, and above the limit: correct never refuses (the pod already runs),
    # but the next admission sees the real usage.
    quotas.correct("s1", 1.0, client=redis_client)
    assert quotas.usage("tenant", "t1", client=redis_client).hourly_usd == 1.0
    quotas.correct("s1", 6.0, client=redis_client)
    with pytest.raises(QuotaExceeded) as info:
        quotas.admit("s2", tenant_id="t1", hourly_usd=0, client=redis_client)
    assert info.value.usage == 6.0
    released = quotas.release("s1", client=redis_client)
    assert released is not None and released.hourly_usd == 6.0
    assert quotas.usage("tenant", "t1", client=redis_client).hourly_usd == 0.0
    # A correction after the release reserves nothing again.
    assert quotas.correct("s1", 3.0, client=redis_client) is None
    assert quotas.usage("tenant", "t1", client=redis_client).hourly_usd == 0.0
    assert redis_client.hexists(reservation_key("s1"), "s1") == 0


def test_unknown_price_admits_with_zero_committed_and_says_so(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import atlas_tasks.quotas.store as quota_store_module

    monkeypatch.setattr(quota_store_module, "_no_price_warned", threading.Event())
    quotas.set_limits("user", "u1", max_sessions=2, max_hourly_usd=1, client=redis_client)
    with caplog.at_level(logging.WARNING, logger="atlas_tasks.quotas.store"):
        res = quotas.admit("s1", user_id="u1", hourly_usd=None, client=redis_client)
        quotas.admit("s2", user_id="u1", hourly_usd=None, client=redis_client)
    assert res.price_known is False and res.hourly_usd == 0.0
    assert "without a catalog price" in caplog.text and "s1" in caplog.text
    assert "s2" not in caplog.text  # once per process at WARNING, then DEBUG
    use = quotas.usage("user", "u1", client=redis_client)
    assert (use.sessions, use.hourly_usd) == (2, 0.0)
    with pytest.raises(QuotaExceeded):  # they still count as sessions
        quotas.admit("s3", user_id="u1", client=redis_client)
    quotas.release("s2", client=redis_client)
    fixed = quotas.correct("s1", 0.8, client=redis_client)
    assert fixed is not None and fixed.price_known is True
    assert quotas.usage("user", "u1", client=redis_client).hourly_usd == 0.8


def test_reservations_lists_the_live_ones_oldest_first(store: QuotaStore) -> None:
    for sid in ("s1", "s2", "s3"):
        store.try_admit(sid, user_id="u1", hourly_usd=1)
    store.release("s2")
    assert [r.session_id for r in store.reservations()] == ["s1", "s3"]
    assert store.reservation("s2") is None
    live = store.reservation("s3")
    assert live is not None and live.user_id == "u1"


# --------------------------------------------------------------------------- spend / months


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.integers(min_value=0, max_value=4_102_444_799))  # 1970 .. 2099
def test_month_of_a_timestamp_matches_the_calendar(store: QuotaStore, unix_s: int) -> None:
    month, next_start = store.month_at(unix_s)
    moment = datetime.fromtimestamp(unix_s, UTC)
    assert month == f"{moment.year:04d}-{moment.month:02d}"
    first_of_next = datetime(moment.year + moment.month // 12, moment.month % 12 + 1, 1, tzinfo=UTC)
    assert next_start == int(first_of_next.timestamp())


@pytest.mark.parametrize(
    ("stamp", "month"),
    [
        ("2024-02-29T23:59:59", "2024-02"),
        ("2024-03-01T00:00:00", "2024-03"),
        ("2026-12-31T23:59:59", "2026-12"),
        ("2027-01-01T00:00:00", "2027-01"),
        ("2100-02-28T12:00:00", "2100-02"),
    ],
)
def test_month_boundaries(store: QuotaStore, stamp: str, month: str) -> None:
    unix_s = int(datetime.fromisoformat(stamp).replace(tzinfo=UTC).timestamp())
    assert store.month_at(unix_s)[0] == month


def _redis_month(client: redis.Redis) -> tuple[str, int]:
    now_s, _ = client.time()
    return QuotaStore(client).month_at(now_s)


def test_record_spend_uses_a_month_key_with_a_ttl(redis_client: redis.Redis) -> None:
    month, next_start = _redis_month(redis_client)
    totals = quotas.record_spend(1.25, user_id="u1", tenant_id="t1", client=redis_client)
    assert totals == {"user": 1.25, "tenant": 1.25}
    totals = quotas.record_spend(0.5, user_id="u1", client=redis_client)
    assert totals == {"user": 1.75}
    key = spend_key("user", "u1", month)
    assert redis_client.get(key) == "1750000"
    assert redis_client.expiretime(key) == next_start + SPEND_RETENTION_S
    use = quotas.usage("user", "u1", client=redis_client)
    assert (use.month, use.month_to_date_usd) == (month, 1.75)
    assert quotas.record_spend(1, client=redis_client) == {}


def test_a_new_month_starts_from_zero(redis_client: redis.Redis) -> None:
    # Last month's spend lives under last month's key: this month's usage ignores it.
    month, _ = _redis_month(redis_client)
    year, mon = map(int, month.split("-"))
    previous = f"{year - (mon == 1):04d}-{(mon - 2) % 12 + 1:02d}"
    redis_client.set(spend_key("tenant", "t1", previous), 999_000_000)
    quotas.set_limits("tenant", "t1", monthly_usd=10, client=redis_client)
    assert quotas.usage("tenant", "t1", client=redis_client).month_to_date_usd == 0.0
    quotas.admit("s1", tenant_id="t1", hourly_usd=9, client=redis_client)


# --------------------------------------------------------------------------- prices


def _gpu(id: str, canonical: str | None, price: float | None, spot: float | None = None) -> GpuType:
    return GpuType(
        id=id,
        provider="runpod",
        canonical=canonical,
        lowest_price_per_hour=price,
        spot_price_per_hour=spot,
    )


def test_prices_are_cached_per_provider_and_gpu(redis_client: redis.Redis) -> None:
    catalog = [
        _gpu("NVIDIA H100 80GB HBM3", "h100", 2.99, 1.99),
        _gpu("NVIDIA H100 PCIe", "h100", 2.39),  # same canonical: the higher price is kept
        _gpu("NVIDIA A40", "a40", 0.44, None),
        _gpu("Mystery", None, None),
    ]
    # h100, h100:spot, both ids (one with :spot), a40 and its id: 7 prices
    assert quotas.refresh_prices("runpod", catalog, client=redis_client) == 7
    q = quotas.quote("runpod", "h100", 2, client=redis_client)
    assert (q.hourly_usd, q.per_gpu_usd) == (5.98, 2.99) and q.refreshed_at_ms
    assert quotas.quote("runpod", "H100", spot=True, client=redis_client).hourly_usd == 1.99
    assert quotas.quote("runpod", "nvidia h100 pcie", client=redis_client).hourly_usd == 2.39
    assert quotas.quote("runpod", "a40", 3, client=redis_client).hourly_usd == pytest.approx(1.32)
    assert quotas.quote("runpod", "a40", spot=True, client=redis_client).hourly_usd is None
    assert quotas.quote("runpod", "mystery", client=redis_client).hourly_usd is None
    assert quotas.quote("vast", "h100", client=redis_client) == quotas.Quote(None, None, None)
    # A refresh replaces the catalog; an empty one keeps the cache.
    quotas.refresh_prices("runpod", [_gpu("NVIDIA A40", "a40", 0.5)], client=redis_client)
    assert quotas.quote("runpod", "h100", client=redis_client).hourly_usd is None
    assert quotas.refresh_prices("runpod", [], client=redis_client) == 0
    assert quotas.quote("runpod", "a40", client=redis_client).hourly_usd == 0.5
    with pytest.raises(ValidationError):
        quotas.quote("runpod", "a40", -1, client=redis_client)


def test_a_quote_feeds_admission(redis_client: redis.Redis) -> None:
    quotas.refresh_prices("runpod", [_gpu("NVIDIA A100", "a100_80g", 1.64)], client=redis_client)
    quotas.set_limits("user", "u1", max_hourly_usd=4, client=redis_client)
    price = quotas.quote("runpod", "a100_80g", 2, client=redis_client).hourly_usd
    quotas.admit("s1", user_id="u1", hourly_usd=price, client=redis_client)
    with pytest.raises(QuotaExceeded):
        quotas.admit("s2", user_id="u1", hourly_usd=price, client=redis_client)


# --------------------------------------------------------------------------- property


_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("admit"),
            st.integers(0, 7),
            st.sampled_from(["u1", "u2", None]),
            st.sampled_from(["t1", None]),
            st.none() | st.integers(0, 5_000_000),
        ),
        st.tuples(st.just("release"), st.integers(0, 7)),
        st.tuples(st.just("correct"), st.integers(0, 7), st.integers(0, 5_000_000)),
    ),
    max_size=40,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=_ops, max_sessions=st.integers(0, 4), max_hourly=st.integers(0, 12_000_000))
def test_usage_always_equals_the_sum_of_live_reservations(
    redis_client: redis.Redis,
    ops: list[tuple[object, ...]],
    max_sessions: int,
    max_hourly: int,
) -> None:
    redis_client.flushdb()
    store = QuotaStore(redis_client)
    store.set_limits("user", "u1", Limits(max_sessions=max_sessions))
    store.set_limits("tenant", "t1", Limits(max_hourly_usd=max_hourly / 1e6))
    for op in ops:
        sid = f"s{op[1]}"
        if op[0] == "admit":
            user, tenant, micros = cast(tuple[str | None, str | None, int | None], op[2:])
            store.try_admit(
                sid,
                user_id=user,
                tenant_id=tenant,
                hourly_usd=None if micros is None else micros / 1e6,
            )
        elif op[0] == "release":
            store.release(sid)
        else:
            store.correct(sid, cast(int, op[2]) / 1e6)
        live = store.reservations()
        for scope, ident in (("user", "u1"), ("user", "u2"), ("tenant", "t1")):
            mine = [r for r in live if (r.user_id if scope == "user" else r.tenant_id) == ident]
            use = store.usage(scope, ident)  # type: ignore[arg-type]
            assert use.sessions == len(mine) >= 0
            assert round(use.hourly_usd * 1e6) == sum(round(r.hourly_usd * 1e6) for r in mine)
        # The limits hold for what admission decided (correct may exceed max_hourly).
        assert store.usage("user", "u1").sessions <= max_sessions
