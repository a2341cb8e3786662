"""The helpers every provider shares: client pool, duplicate-safe create, list filters,
wire-value coercion."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from atlas_tasks.config import AtlasSettings
from atlas_tasks.errors import (
    AtlasError,
    NotFoundError,
    ProviderError,
    TransportError,
    UnauthorizedError,
    ValidationError,
)
from atlas_tasks.providers.base import ProviderContext, filter_computes, status_filter
from atlas_tasks.providers.common import ClientPool, RefiningClient, main_base_url
from atlas_tasks.providers.http import create_once, mark_maybe_created
from atlas_tasks.providers.translate_common import (
    as_dict,
    as_float,
    as_int,
    drop_none,
    iso_datetime,
    malformed,
    object_with_id,
    str_or_none,
    stripped_or_none,
    tcp_port,
)
from atlas_tasks.specs import Compute, ComputeStatus


def _context(
    handler: httpx.MockTransport | None = None,
    *,
    key: str | None = "k-1",
    base_url: str | None = None,
) -> ProviderContext:
    return ProviderContext(
        api_key=key,
        base_url=base_url,
        transport=handler,
        settings=AtlasSettings(http_max_retries=0),
    )


# --------------------------------------------------------------------------- ClientPool
def test_pool_builds_lazily_once_and_raises_unauthorized_without_key() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    pool = ClientPool(
        _context(httpx.MockTransport(handler)),
        provider="p",
        missing_key="no key",
        base_url=lambda api: f"https://{api}.example.test",
        sleep=lambda s: None,
        authorization=lambda k: f"Token {k}",
    )
    client = pool.get("rest")
    assert pool.get("rest") is client
    assert client.base_url == "https://rest.example.test"
    client.call("GET", "/x")
    assert seen[0].headers["Authorization"] == "Token k-1"
    assert "k-1" not in repr(pool)
    pool.close()
    assert pool.get("rest") is not client  # rebuilt after close

    keyless = ClientPool(
        _context(key=None),
        provider="p",
        missing_key="no key here",
        base_url=lambda api: "https://x.test",
        sleep=lambda s: None,
    )
    with pytest.raises(UnauthorizedError, match="no key here") as info:
        keyless.get("rest")
    assert info.value.provider == "p"


def test_main_base_url_prefers_the_context() -> None:
    assert main_base_url(_context(base_url="https://ctx.test"), "https://set.test") == (
        "https://ctx.test"
    )
    assert main_base_url(_context(), "https://set.test") == "https://set.test"


def test_refining_client_refines_and_checks() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/missing"):
            return httpx.Response(400, json={"code": "gone"})
        return httpx.Response(200, json={"success": request.url.path.endswith("/good")})

    def refine(err: AtlasError) -> AtlasError:
        return NotFoundError("refined", provider="p") if err.status == 400 else err

    def check(data: object, status: int) -> None:
        if isinstance(data, dict) and data.get("success") is False:
            raise ProviderError(f"refused with {status}", provider="p")

    client = RefiningClient(
        _context(httpx.MockTransport(handler), base_url="https://b.test"),
        lambda s: None,
        provider="p",
        missing_key="no key",
        configured_base_url=lambda settings: "https://unused.test",
        refine=refine,
        check=check,
    )
    assert client.base_url == "https://b.test"
    assert client.call("GET", "/good").data == {"success": True}
    with pytest.raises(NotFoundError, match="refined") as info:
        client.call("GET", "/missing")
    assert isinstance(info.value.__cause__, AtlasError)
    with pytest.raises(ProviderError, match="refused with 200"):
        client.call("GET", "/bad")


def test_refining_client_reraises_unrefined_errors_as_they_are() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": "nope"})

    client = RefiningClient(
        _context(httpx.MockTransport(handler)),
        lambda s: None,
        provider="p",
        missing_key="x",
        configured_base_url=lambda settings: "https://x.test",
        refine=lambda err: err,
    )
    with pytest.raises(NotFoundError) as info:
        client.call("GET", "/thing")
    assert info.value.__cause__ is None


# --------------------------------------------------------------------------- create_once
def _maybe_created() -> AtlasError:
    return mark_maybe_created(TransportError("read timeout", provider="p"))


def _compute(name: str = "job-1") -> Compute:
    return Compute(id="c-1", provider="p", name=name)


def test_create_once_returns_what_it_finds_after_a_maybe_created_failure() -> None:
    sleeps: list[float] = []
    calls: list[str] = []

    def create() -> str:
        calls.append("create")
        raise _maybe_created()

    found = create_once(
        create,
        name="job-1",
        find_by_name=lambda n: _compute(n),
        max_retries=3,
        sleep=sleeps.append,
        backoff=lambda a: a * 10.0,
        label="p",
    )
    assert isinstance(found, Compute) and found.id == "c-1"
    assert calls == ["create"] and sleeps == [10.0]


def test_create_once_creates_again_up_to_max_retries_then_raises() -> None:
    sleeps: list[float] = []
    attempts = 0

    def create() -> str:
        nonlocal attempts
        attempts += 1
        raise _maybe_created()

    with pytest.raises(TransportError, match="read timeout"):
        create_once(
            create,
            name="job-1",
            find_by_name=lambda n: None,
            max_retries=2,
            sleep=sleeps.append,
            backoff=float,
            label="p",
        )
    assert attempts == 3 and sleeps == [1.0, 2.0, 3.0]

    outcomes: list[str | AtlasError] = [_maybe_created(), "new-id"]

    def flaky() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, AtlasError):
            raise outcome
        return outcome

    assert (
        create_once(
            flaky,
            name="job-1",
            find_by_name=lambda n: None,
            max_retries=1,
            sleep=lambda s: None,
            backoff=float,
            label="p",
        )
        == "new-id"
    )


def test_create_once_never_retries_without_a_name_or_for_definite_failures() -> None:
    lookups: list[str] = []

    def find(name: str) -> Compute | None:
        lookups.append(name)
        return None

    def maybe() -> str:
        raise _maybe_created()

    def refused() -> str:
        raise ValidationError("gpu: bad", field="gpu")

    with pytest.raises(TransportError):
        create_once(
            maybe,
            name=None,
            find_by_name=find,
            max_retries=5,
            sleep=lambda s: None,
            backoff=float,
            label="p",
        )
    with pytest.raises(ValidationError):
        create_once(
            refused,
            name="job-1",
            find_by_name=find,
            max_retries=5,
            sleep=lambda s: None,
            backoff=float,
            label="p",
        )
    assert lookups == []


def test_create_once_raises_the_create_error_when_the_lookup_fails() -> None:
    def maybe() -> str:
        raise _maybe_created()

    def broken_lookup(name: str) -> Compute | None:
        raise ProviderError("list failed", provider="p")

    with pytest.raises(TransportError) as info:
        create_once(
            maybe,
            name="job-1",
            find_by_name=broken_lookup,
            max_retries=5,
            sleep=lambda s: None,
            backoff=float,
            label="p",
        )
    assert isinstance(info.value.__cause__, ProviderError)


def test_create_once_logs_ids_with_id_of(caplog: pytest.LogCaptureFixture) -> None:
    def maybe() -> dict[str, str]:
        raise _maybe_created()

    with caplog.at_level("INFO", logger="atlas_tasks.providers.http"):
        found = create_once(
            maybe,
            name="m",
            find_by_name=lambda n: {"id": "m-7"},
            max_retries=1,
            sleep=lambda s: None,
            backoff=float,
            label="fly",
            kind="machine",
            id_of=lambda m: m.get("id"),
        )
    assert found == {"id": "m-7"}
    assert "fly: create of 'm' failed" in caplog.text and "the machine exists: m-7" in caplog.text


# --------------------------------------------------------------------------- list filters
def test_status_filter_and_filter_computes() -> None:
    assert status_filter(None) is None
    assert status_filter("RUNNING") is ComputeStatus.RUNNING
    with pytest.raises(ValidationError, match="unknown status 'up'; known: ") as info:
        status_filter("up", provider="p")
    assert info.value.field == "status" and info.value.provider == "p"

    computes = [
        Compute(
            id="1",
            provider="p",
            name="a",
            region="eu",
            gpu_type="h100",
            status=ComputeStatus.RUNNING,
        ),
        Compute(
            id="2",
            provider="p",
            name="a",
            region="us",
            gpu_type="h100",
            status=ComputeStatus.STOPPED,
        ),
        Compute(
            id="3",
            provider="p",
            name="b",
            region="eu",
            gpu_type="a100_80g",
            status=ComputeStatus.RUNNING,
        ),
    ]
    assert [c.id for c in filter_computes(computes)] == ["1", "2", "3"]
    assert [c.id for c in filter_computes(computes, name="a")] == ["1", "2"]
    assert [c.id for c in filter_computes(computes, name="a", region="eu")] == ["1"]
    assert [
        c.id for c in filter_computes(iter(computes), status=ComputeStatus.RUNNING, gpu="a100_80g")
    ] == ["3"]


# --------------------------------------------------------------------------- translate
def test_value_coercion() -> None:
    assert as_dict({"a": 1}) == {"a": 1} and as_dict([1]) == {}
    assert str_or_none(" x ") == " x " and str_or_none("") is None and str_or_none(3) is None
    assert stripped_or_none(" x ") == "x" and stripped_or_none("  ") is None
    assert as_int(True) is None and as_int(4.0) == 4 and as_int(4.5) is None
    assert as_int(" 12 ") == 12 and as_int("x") is None and as_int("12", strings=False) is None
    assert as_float(False) is None and as_float(2) == 2.0 and as_float(" 1.5") == 1.5
    assert as_float("n/a") is None and as_float(None) is None
    assert drop_none({"a": None, "b": 0}) == {"b": 0}


def test_iso_datetime_and_ports_and_errors() -> None:
    assert iso_datetime("2024-01-02T03:04:05") == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert iso_datetime("2024-01-02T03:04:05+00:00") == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert iso_datetime("yesterday") is None
    port = tcp_port(22, 10022, "1.2.3.4")
    assert (port.protocol, port.url) == ("tcp", "tcp://1.2.3.4:10022")
    assert tcp_port(22, None, "1.2.3.4").url is None and tcp_port(22, 22, None).url is None
    err = malformed("p", "pod is odd", [1])
    assert err.message == "malformed answer: pod is odd" and err.raw == {"body": [1]}
    assert object_with_id("p", {"id": "x", "k": 1}, "pod") == ({"id": "x", "k": 1}, "x")
    with pytest.raises(ProviderError, match="malformed answer: pod is not a JSON object"):
        object_with_id("p", "nope", "pod")
    with pytest.raises(ProviderError, match="malformed answer: pod has no id"):
        object_with_id("p", {"id": ""}, "pod")
