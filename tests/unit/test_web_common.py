"""The framework-neutral web layer (atlas_tasks.contrib._web), config overrides and the
async caller API's Redis-failure mapping."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from atlas_tasks import orchestrator
from atlas_tasks.config import configure, get_settings, overrides, reset_settings
from atlas_tasks.contrib import _web
from atlas_tasks.errors import AtlasError, TransportError, ValidationError
from atlas_tasks.events import Event
from atlas_tasks.redis_conn import reset_redis_clients
from atlas_tasks.testing.localstack import free_port


@pytest.fixture(autouse=True)
def _no_overrides() -> Iterator[None]:
    configure()
    yield
    configure()


def test_configure_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAS_DEFAULT_PROVIDER", "vast")
    reset_settings()
    assert get_settings().default_provider == "vast"
    configure(DEFAULT_PROVIDER="runpod")
    assert get_settings().default_provider == "runpod"
    assert overrides() == {"default_provider": "runpod"}
    configure()
    assert get_settings().default_provider == "vast"


def test_configure_names_a_typo_and_the_closest_key() -> None:
    with pytest.raises(ValidationError) as caught:
        configure(DEFUALT_PROVIDER="runpod")
    assert caught.value.field == "DEFUALT_PROVIDER"
    assert "did you mean 'DEFAULT_PROVIDER'" in (caught.value.message or "")


def test_configure_names_a_bad_value_without_echoing_it() -> None:
    with pytest.raises(ValidationError) as caught:
        configure(reap_interval_ms="soon-ish-secret")
    assert caught.value.field == "REAP_INTERVAL_MS"
    assert "soon-ish-secret" not in (caught.value.message or "")


def test_apply_settings_splits_web_keys_and_prefixes_flask_names() -> None:
    options = _web.apply_settings(
        {
            "REDIS_URL": "redis://h:1/0",
            "SESSION_PRESETS": {"default": {"gpu": "h100"}},
            "OWNER": "operator.attrgetter",
        },
        source="settings.ATLAS",
    )
    assert get_settings().redis_url == "redis://h:1/0"
    assert options.presets == {"default": {"gpu": "h100"}} and callable(options.owner)
    with pytest.raises(ValidationError) as caught:
        _web.apply_settings({"REDIS_ULR": "x"}, source="app.config", prefix="ATLAS_")
    assert caught.value.field == "ATLAS_REDIS_ULR" and "REDIS_URL" in (caught.value.message or "")
    with pytest.raises(ValidationError, match="OWNER"):
        _web.apply_settings({"OWNER": "no.such.module.fn"}, source="settings.ATLAS")
    with pytest.raises(ValidationError, match="user_id"):
        _web.check_presets({"default": {"user_id": 1}})


def test_open_body_accepts_only_a_preset_name() -> None:
    assert _web.parse_open_body(b"") == "default"
    assert _web.parse_open_body(b'{"preset": "big"}') == "big"
    for raw, field in (
        (b'{"gpu": "h100"}', "gpu"),
        (b"[1]", "body"),
        (b"{", "body"),
        (b'{"preset": 3}', "preset"),
    ):
        with pytest.raises(ValidationError) as caught:
            _web.parse_open_body(raw)
        assert caught.value.field == field
    options = _web.WebOptions(presets={"default": {"gpu": "h100"}})
    assert _web.spawn_arguments(options, "default", 7) == {"gpu": "h100", "user_id": 7}
    with pytest.raises(ValidationError, match="unknown preset 'x'.*default"):
        _web.spawn_arguments(options, "x", 7)


def test_error_map_and_owner_comparison() -> None:
    # quota_exceeded comes with atlas_tasks.quotas (its own branch): mapped already
    assert _web.STATUS_BY_KIND["quota_exceeded"] == 429
    cases = {
        "validation": 422,
        "not_found": 404,
        "rate_limited": 429,
        "transport": 503,
        "provider": 502,
        "unknown": 502,
    }
    for kind, status in cases.items():
        exc = AtlasError("m", kind=kind)
        assert _web.status_for(exc) == status
        assert _web.error_body(exc) == {"error": exc.kind, "message": "m"}
    assert _web.same_owner(7, 7) and not _web.same_owner(7, "7")
    assert not _web.same_owner(7, 8) and not _web.same_owner(None, None)


def test_sse_format_and_last_event_id() -> None:
    text = _web.sse_format(
        Event(session_id="s", type="status", data={"status": "running"}, id="17-0")
    )
    assert text.startswith("id: 17-0\nevent: status\ndata: {") and text.endswith("\n\n")
    assert _web.last_event_id(None) is None and _web.last_event_id("17-3") == "17-3"
    with pytest.raises(ValidationError, match="Last-Event-ID"):
        _web.last_event_id("17")


def test_async_client_maps_redis_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAS_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    reset_settings()
    reset_redis_clients()

    async def calls() -> list[str]:
        kinds: list[str] = []
        for call in (
            orchestrator.ainfo("x"),
            orchestrator.atouch("x"),
            orchestrator.alist_sessions("u"),
        ):
            try:
                await call
            except TransportError as exc:
                kinds.append(exc.kind)
        return kinds

    assert asyncio.run(calls()) == ["transport"] * 3
    with pytest.raises(TransportError):
        orchestrator.list_sessions("u")
    reset_settings()
    reset_redis_clients()


def test_sse_streams_open_with_a_comment_before_any_redis_read() -> None:
    # A WSGI server sends the headers with the first body bytes: a stream resumed at its
    # end must still answer 200 at once, not after the first keepalive (15 s).
    assert next(_web.sse_stream("no-such-session", "17-0")) == _web.SSE_OPEN

    async def first() -> str:
        return await _web.asse_stream("no-such-session", "17-0").__anext__()

    assert asyncio.run(first()) == _web.SSE_OPEN
    assert _web.SSE_OPEN.startswith(":") and _web.SSE_OPEN.endswith("\n\n")
