"""The error tree: HTTP status mapping, message extraction, str(), catching, pickling."""

from __future__ import annotations

import importlib
import pickle

import pytest

import atlas_tasks as atlas
from atlas_tasks.errors import (
    ERROR_KINDS,
    AtlasError,
    AtlasTimeoutError,
    ForbiddenError,
    NotFoundError,
    NotTracked,
    ProviderError,
    QuotaExceeded,
    RateLimitedError,
    TransportError,
    UnauthorizedError,
    UnknownError,
    UnsupportedError,
    ValidationError,
    error_from_response,
    extract_message,
    validation_error,
)

SUBCLASSES = {
    "unauthorized": UnauthorizedError,
    "forbidden": ForbiddenError,
    "not_found": NotFoundError,
    "rate_limited": RateLimitedError,
    "timeout": AtlasTimeoutError,
    "unsupported": UnsupportedError,
    "validation": ValidationError,
    "provider": ProviderError,
    "transport": TransportError,
    "quota_exceeded": QuotaExceeded,
    "unknown": UnknownError,
}

#: Error classes that belong to one feature module rather than ``import atlas_tasks``.
FEATURE_ERRORS: dict[type[AtlasError], str] = {QuotaExceeded: "atlas_tasks.quotas"}


@pytest.mark.parametrize(
    ("status", "kind", "cls"),
    [
        (401, "unauthorized", UnauthorizedError),
        (403, "forbidden", ForbiddenError),
        (404, "not_found", NotFoundError),
        (408, "timeout", AtlasTimeoutError),
        (429, "rate_limited", RateLimitedError),
        (400, "provider", ProviderError),
        (409, "provider", ProviderError),
        (422, "provider", ProviderError),
        (500, "provider", ProviderError),
        (502, "provider", ProviderError),
        (503, "provider", ProviderError),
        (599, "provider", ProviderError),
        (302, "unknown", UnknownError),
        (200, "unknown", UnknownError),
        (201, "unknown", UnknownError),
        (100, "unknown", UnknownError),
    ],
)
def test_status_maps_to_kind(status: int, kind: str, cls: type[AtlasError]) -> None:
    err = error_from_response(status, {"error": "boom"}, "runpod")
    assert err.kind == kind
    assert type(err) is cls
    assert err.status == status
    assert err.provider == "runpod"
    assert err.message == "boom"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"error": {"message": "nested message"}}, "nested message"),
        ({"error": "bad key"}, "bad key"),
        ({"message": "top message"}, "top message"),
        ({"errors": [{"message": "first of list"}, {"message": "second"}]}, "first of list"),
        ("a bare string", "a bare string"),
        (b"bytes body", "bytes body"),
        ('{"error": "json text"}', "json text"),
        ({"msg": "vast style"}, "vast style"),
        ({"errors": [{"detail": "json api"}]}, "json api"),
    ],
)
def test_message_extraction(body: object, message: str) -> None:
    assert extract_message(body) == message
    assert error_from_response(500, body, "runpod").message == message


def test_message_extraction_order_prefers_error_message() -> None:
    body = {"error": {"message": "a"}, "message": "b", "errors": [{"message": "c"}]}
    assert extract_message(body) == "a"
    assert extract_message({"error": "x", "message": "y"}) == "x"
    assert extract_message({"message": "y", "errors": [{"message": "z"}]}) == "y"


@pytest.mark.parametrize("body", [None, {}, {"unrelated": 1}, [], "", {"errors": []}])
def test_missing_message_falls_back_to_status(body: object) -> None:
    assert extract_message(body) is None
    err = error_from_response(503, body, "runpod")
    assert err.message == "unexpected HTTP 503"


def test_str_format() -> None:
    err = error_from_response(401, {"error": "bad key"}, "runpod")
    assert str(err) == "[runpod] unauthorized (HTTP 401): bad key"
    assert str(AtlasError("oops", kind="validation")) == "[atlas] validation: oops"
    assert str(AtlasError(kind="unknown")) == "[atlas] unknown: no message"
    assert "bad key" in repr(err) and "UnauthorizedError" in repr(err)


@pytest.mark.parametrize("kind", ERROR_KINDS)
def test_catch_by_kind_or_subclass(kind: str) -> None:
    cls = SUBCLASSES[kind]
    with pytest.raises(cls):
        raise AtlasError("x", kind=kind)
    with pytest.raises(AtlasError) as info:
        raise cls("x")
    assert info.value.kind == kind
    assert isinstance(AtlasError("x", kind=kind), cls)


def test_error_classes_are_exported_at_top_level() -> None:
    assert atlas.AtlasError is AtlasError
    for cls in SUBCLASSES.values():
        if cls in FEATURE_ERRORS:
            module = importlib.import_module(FEATURE_ERRORS[cls])
            assert getattr(module, cls.__name__) is cls
            continue
        assert getattr(atlas, cls.__name__) is cls


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown error kind"):
        AtlasError("x", kind="nope")


def test_not_tracked_is_a_not_found() -> None:
    err = NotTracked("session s1")
    assert isinstance(err, NotFoundError)
    assert err.kind == "not_found"


@pytest.mark.parametrize("kind", ERROR_KINDS)
def test_pickle_round_trip(kind: str) -> None:
    err = AtlasError("msg", kind=kind, provider="runpod", status=418, raw={"secret": "x"})
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert (back.kind, back.provider, back.status, back.message) == (kind, "runpod", 418, "msg")
    assert str(back) == str(err)
    assert back.raw is None  # raw may hold provider secrets; it does not travel


def test_to_dict_round_trip() -> None:
    err = error_from_response(429, {"message": "slow down"}, "fly")
    assert AtlasError.from_dict(err.to_dict()).to_dict() == err.to_dict()
    assert isinstance(AtlasError.from_dict(err.to_dict()), RateLimitedError)


def test_validation_error_names_the_field() -> None:
    err = validation_error("gpu_count", "must be >= 1")
    assert isinstance(err, ValidationError)
    assert err.field == "gpu_count"
    assert err.kind == "validation"
    assert str(err) == "[atlas] validation: gpu_count: must be >= 1"
