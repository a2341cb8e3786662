"""Hostile input: every malformed request is an ``AtlasError`` (kind ``validation`` naming
the field), never a ``TypeError``, a pydantic error or a silently wrong value.

``orchestrator.spawn`` runs against a Redis on a closed port: junk must fail validation
before Redis is touched, and anything that passes validation then fails as a
``TransportError``, so *every* outcome is an ``AtlasError``. ``atlas.spawn_compute`` runs
on the in-memory mock provider, where valid input succeeds.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import atlas_tasks as atlas
from atlas_tasks import orchestrator
from atlas_tasks.config import reset_settings
from atlas_tasks.errors import AtlasError, ValidationError
from atlas_tasks.providers.mock import MockProvider
from atlas_tasks.redis_conn import reset_redis_clients
from atlas_tasks.sealing import generate_key
from atlas_tasks.specs import MAX_IDLE_TTL_MS, ComputeRequest, build_compute_request
from atlas_tasks.testing.localstack import free_port

IMAGE = "ghcr.io/acme/infer:latest"


class _Opaque:
    """Not JSON, not a number, not a string."""


def _deep(n: int) -> Any:
    value: Any = 1
    for _ in range(n):
        value = [value]
    return value


#: (fields, field the error must name). Each row was a TypeError, a pydantic
#: serialisation error, a silently accepted value or a leak before the fix.
HOSTILE: list[tuple[dict[str, Any], str]] = [
    ({"ports": 5}, "ports"),
    ({"ports": [None]}, "ports"),
    ({"ports": "8000"}, "ports"),
    ({"ports": {"8000": "http"}}, "ports"),
    ({"ports": [(8000, 5)]}, "ports"),
    ({"ports": [(8000, "http", "x")]}, "ports"),
    ({"ports": [{"internal": None}]}, "ports"),
    ({"region_hints": 5}, "region_hints"),
    ({"region_hints": [1]}, "region_hints"),
    ({"region_hints": object()}, "region_hints"),
    ({"provider_opts": {"x": object()}}, "provider_opts"),
    ({"provider_opts": {"x": math.nan}}, "provider_opts"),
    ({"provider_opts": {1: "x"}}, "provider_opts"),
    ({"provider_opts": {"x": _deep(5000)}}, "provider_opts"),
    ({"provider_opts": ["name", "x"]}, "provider_opts"),
    ({"provider_opts": {"name": "mine"}}, "provider_opts.name"),
    ({"provider_opts": {"label": "mine"}}, "provider_opts.label"),
    ({"provider_opts": {"env": {"A": "1"}}}, "provider_opts.env"),
    ({"provider_opts": {"user_data": "#cloud-config"}}, "provider_opts.user_data"),
    ({"provider_opts": {"config": {"env": {"A": "1"}}}}, "provider_opts.config.env"),
    ({"idle_ttl_ms": True}, "idle_ttl_ms"),
    ({"idle_ttl_ms": 1.5}, "idle_ttl_ms"),
    ({"idle_ttl_ms": "60000"}, "idle_ttl_ms"),
    ({"idle_ttl_ms": MAX_IDLE_TTL_MS + 1}, "idle_ttl_ms"),
    ({"idle_ttl_ms": 10**40}, "idle_ttl_ms"),
    ({"gpu_count": True}, "gpu_count"),
    ({"gpu_count": 2.0}, "gpu_count"),
    ({"volume_gb": False}, "volume_gb"),
    ({"volume_gb": "20"}, "volume_gb"),
    ({"container_disk_gb": True}, "container_disk_gb"),
    ({"env": {"A": None}}, "env"),
    ({"env": {"A": {"b": 1}}}, "env"),
    ({"env": {"A": True}}, "env"),
    ({"env": {1: "x"}}, "env"),
    ({"env": "A=1"}, "env"),
    ({"gpu": 5}, "gpu"),
    ({"name": 5}, "name"),
    ({"auth": None}, "auth"),
]


@pytest.fixture
def dead_redis(monkeypatch: pytest.MonkeyPatch) -> str:
    """Settings pointing at a closed port, with a secret key so spawn gets that far."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    monkeypatch.setenv("ATLAS_REDIS_URL", url)
    monkeypatch.setenv("ATLAS_SECRET_KEY", generate_key())
    monkeypatch.setenv("ATLAS_DEFAULT_PROVIDER", "mock")
    reset_settings()
    reset_redis_clients()
    return url


@pytest.mark.parametrize(("fields", "field"), HOSTILE)
def test_hostile_request_field_is_a_named_validation_error(
    fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        build_compute_request(image=IMAGE, **fields)
    assert info.value.kind == "validation"
    assert info.value.field == field
    assert field in str(info.value)


@pytest.mark.parametrize(("fields", "field"), HOSTILE)
def test_hostile_spawn_fails_validation_before_redis(
    dead_redis: str, fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        orchestrator.spawn(provider="mock", image=IMAGE, **fields)
    assert info.value.field == field


@pytest.mark.parametrize(("fields", "field"), HOSTILE)
def test_hostile_spawn_compute_is_a_validation_error(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        atlas.spawn_compute(provider="mock", image=IMAGE, **fields)
    assert info.value.field == field


def test_reserved_provider_opts_point_at_the_real_field() -> None:
    with pytest.raises(ValidationError, match=r"provider_opts\.name: .*name="):
        build_compute_request(image=IMAGE, provider_opts={"name": "x"})
    with pytest.raises(ValidationError, match=r"provider_opts\.env: .*env="):
        build_compute_request(image=IMAGE, provider_opts={"env": {}})
    # Unreserved options still pass through.
    req = build_compute_request(
        image=IMAGE, provider_opts={"supportPublicIp": True, "config": {"auto_destroy": True}}
    )
    assert req.provider_opts["config"] == {"auto_destroy": True}


def test_a_request_dict_with_junk_keys_is_a_validation_error() -> None:
    with pytest.raises(ValidationError):
        build_compute_request({1: "x"})  # type: ignore[dict-item]
    with pytest.raises(ValidationError):
        build_compute_request(5)  # type: ignore[arg-type]


@pytest.mark.parametrize("ttl", [1, 900, 9_999])
def test_spawn_rejects_idle_ttl_below_the_minimum(dead_redis: str, ttl: int) -> None:
    with pytest.raises(ValidationError, match="ATLAS_MIN_IDLE_TTL_MS") as info:
        orchestrator.spawn(provider="mock", image=IMAGE, idle_ttl_ms=ttl)
    assert info.value.field == "idle_ttl_ms"


def test_spawn_rejects_junk_side_arguments(dead_redis: str) -> None:
    for kwargs, field in (
        ({"user_id": _Opaque()}, "user_id"),
        ({"user_id": _deep(5000)}, "user_id"),
        ({"api_key": 5}, "api_key"),
        ({"base_url": ["x"]}, "base_url"),
    ):
        with pytest.raises(ValidationError) as info:
            orchestrator.spawn(provider="mock", image=IMAGE, **kwargs)
        assert info.value.field == field


def test_valid_input_past_validation_reaches_redis_as_a_transport_error(dead_redis: str) -> None:
    # The other side of the table: the same call with sane fields fails only because
    # Redis is down, and that too is an AtlasError.
    with pytest.raises(AtlasError) as info:
        orchestrator.spawn(provider="mock", image=IMAGE, idle_ttl_ms=60_000)
    assert info.value.kind == "transport"


# ---------------------------------------------------------------- property-based

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.binary(max_size=4),
    st.builds(_Opaque),
)
_junk = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), inner, max_size=3),
    ),
    max_leaves=8,
)
_field_names = st.sampled_from(sorted(ComputeRequest.model_fields) + ["gpus", "imageName"])
_fields = st.dictionaries(_field_names, _junk, min_size=1, max_size=4)


def _only_atlas_errors(call: Any) -> None:
    try:
        call()
    except AtlasError:
        pass
    except Exception as exc:  # the property: nothing else escapes
        raise AssertionError(f"{type(exc).__name__} escaped: {exc}") from exc


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(fields=_fields)
def test_orchestrator_spawn_only_raises_atlas_errors(
    dead_redis: str, fields: dict[str, Any]
) -> None:
    _only_atlas_errors(lambda: orchestrator.spawn(provider="mock", **fields))


@settings(max_examples=300, deadline=None)
@given(fields=_fields)
def test_spawn_compute_only_raises_atlas_errors(fields: dict[str, Any]) -> None:
    _only_atlas_errors(lambda: atlas.spawn_compute(provider="mock", **fields))
    MockProvider.reset()


@pytest.mark.parametrize(
    ("provider", "fields", "field"),
    [
        ("fly", {"gpu": "h100"}, "gpu"),  # Fly sells a10, a100s and l40s only
        ("lambda_labs", {"gpu": "l4"}, "gpu"),
        ("vast", {"gpu": "mi300x"}, "gpu"),
        ("lambda_labs", {"gpu": "h100", "gpu_count": 3}, "gpu_count"),  # sizes 1, 2, 4, 8
    ],
)
def test_spawn_refuses_a_gpu_the_provider_does_not_sell_before_redis(
    dead_redis: str,
    monkeypatch: pytest.MonkeyPatch,
    provider: str,
    fields: dict[str, Any],
    field: str,
) -> None:
    # spawn_compute refused these; spawn accepted the session and let the worker fail it
    # (found by running orchestrator.spawn(provider="fly", gpu="h100") on a live Redis).
    # Against a dead Redis the refusal must come first, as a validation error.
    with pytest.raises(ValidationError) as info:
        orchestrator.spawn(provider=provider, image=IMAGE, idle_ttl_ms=60_000, **fields)
    assert info.value.field == field and info.value.kind == "validation"
    assert provider in str(info.value)
    monkeypatch.setenv("ATLAS_LAMBDA_LABS_SSH_KEY_NAME", "k")  # Lambda checks it first
    reset_settings()
    with pytest.raises(ValidationError) as direct:
        atlas.spawn_compute(provider=provider, image=IMAGE, api_key="k", **fields)
    assert direct.value.field == field
