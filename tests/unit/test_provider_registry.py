"""Provider registry: names, classes, instances, registration, honest stubs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

import atlas_tasks as atlas
from atlas_tasks.config import AtlasSettings
from atlas_tasks.errors import UnsupportedError, ValidationError
from atlas_tasks.providers import registry
from atlas_tasks.providers.base import Provider, ProviderContext, StubProvider
from atlas_tasks.providers.mock import MockProvider
from atlas_tasks.specs import Capability, Compute, ComputeRequest


class EchoProvider(Provider):
    """A minimal third-party provider."""

    name: ClassVar[str] = "echo"
    CAPABILITIES: ClassVar[frozenset[Capability]] = frozenset({Capability.SPOT})

    def create_compute(self, request: ComputeRequest) -> Compute:
        return Compute(id="echo-1", provider=self.name, name=request.name)

    def get_compute(self, compute_id: str) -> Compute:
        raise self.not_found(f"compute {compute_id}")

    def list_compute(self, **filters: Any) -> list[Compute]:
        return []

    def terminate(self, compute_id: str) -> None:
        raise self.not_found(f"compute {compute_id}")


@pytest.fixture
def restore_registry() -> Iterator[None]:
    saved = dict(registry._registry)
    yield
    registry._registry.clear()
    registry._registry.update(saved)
    registry.clear_provider_cache()


def test_builtin_names_are_known() -> None:
    assert {"runpod", "fly", "lambda_labs", "vast", "mock"} <= set(registry.known_providers())
    assert registry.known_providers() == sorted(registry.known_providers())


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(ValidationError) as info:
        atlas.get_provider("nimbus")
    assert info.value.field == "provider"
    message = str(info.value)
    for name in ("runpod", "fly", "lambda_labs", "vast", "mock"):
        assert name in message


def test_name_class_and_instance_are_accepted() -> None:
    by_name = atlas.get_provider("mock")
    assert isinstance(by_name, MockProvider)
    by_class = atlas.get_provider(MockProvider)
    assert isinstance(by_class, MockProvider)
    instance = MockProvider(ProviderContext())
    assert atlas.get_provider(instance) is instance


def test_instances_are_cached_per_context() -> None:
    assert atlas.get_provider("mock") is atlas.get_provider("mock")
    assert atlas.get_provider("mock", api_key="a") is not atlas.get_provider("mock", api_key="b")
    assert atlas.get_provider("mock", cache=False) is not atlas.get_provider("mock")


def test_options_reach_the_context() -> None:
    provider = atlas.get_provider("mock", base_url="http://x", latency_s=0)
    assert provider.context.base_url == "http://x"
    assert provider.context.options == {"latency_s": 0}


def test_register_provider_class(restore_registry: None) -> None:
    atlas.register_provider("echo", EchoProvider)
    assert "echo" in registry.known_providers()
    provider = atlas.get_provider("echo")
    assert isinstance(provider, EchoProvider)
    assert atlas.capabilities("echo") == frozenset({"spot"})
    assert atlas.spawn_compute(provider="echo", name="n").id == "echo-1"


def test_register_provider_dotted_path(restore_registry: None) -> None:
    atlas.register_provider("mock2", "atlas_tasks.providers.mock:MockProvider")
    assert registry.provider_class("mock2") is MockProvider


def test_register_provider_rejects_empty_name() -> None:
    with pytest.raises(ValidationError):
        atlas.register_provider("", EchoProvider)


def test_non_provider_is_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        atlas.get_provider(int)  # type: ignore[arg-type]
    assert info.value.field == "provider"


class DummyStub(StubProvider):
    name: ClassVar[str] = "dummy"


def _assert_stub_is_honest(provider: Provider) -> None:
    request = ComputeRequest(image="img")
    calls = [
        lambda: provider.spawn_compute(request),
        lambda: provider.get_compute("x"),
        lambda: provider.list_compute(),
        lambda: provider.terminate("x"),
        lambda: provider.stop("x"),
        lambda: provider.start("x"),
        lambda: provider.list_gpu_types(),
        lambda: provider.run_job(atlas.JobRequest(endpoint="e")),
    ]
    for call in calls:
        with pytest.raises(UnsupportedError) as info:
            call()
        assert info.value.kind == "unsupported"
        assert info.value.provider == provider.name
        assert f"{provider.name} provider is not implemented yet" in str(info.value)


def test_stub_answers_unsupported_clearly() -> None:
    _assert_stub_is_honest(DummyStub())


def test_builtin_stubs_answer_unsupported_clearly() -> None:
    # Providers still shipped as stubs must say so; implemented ones have their own tests.
    stubs = [
        n
        for n in ("fly", "lambda_labs", "vast")
        if issubclass(registry.provider_class(n), StubProvider)
    ]
    for name in stubs:
        _assert_stub_is_honest(atlas.get_provider(name))


def test_base_optional_operations_are_unsupported() -> None:
    provider = EchoProvider()
    for call in (
        lambda: provider.stop("x"),
        lambda: provider.start("x"),
        lambda: provider.list_gpu_types(),
        lambda: provider.get_job("j", endpoint="e"),
        lambda: provider.cancel_job("j", endpoint="e"),
        lambda: provider.stream_job("j", endpoint="e"),
        lambda: provider.run_job(atlas.JobRequest(endpoint="e")),
    ):
        with pytest.raises(UnsupportedError, match="echo does not support"):
            call()


class _Counted(MockProvider):
    """A mock provider that records being closed."""

    closed: ClassVar[list[str | None]] = []

    def close(self) -> None:
        type(self).closed.append(self.context.api_key)
        super().close()


def test_instance_cache_is_bounded_lru_and_closes_evicted() -> None:
    registry.clear_provider_cache()
    _Counted.closed.clear()
    settings = AtlasSettings(provider_cache_size=2)
    a = registry.get_provider(_Counted, api_key="a", settings=settings)
    b = registry.get_provider(_Counted, api_key="b", settings=settings)
    # Using "a" again makes "b" the least recently used one.
    assert registry.get_provider(_Counted, api_key="a", settings=settings) is a
    registry.get_provider(_Counted, api_key="c", settings=settings)
    assert _Counted.closed == ["b"]
    assert registry.get_provider(_Counted, api_key="a", settings=settings) is a
    rebuilt = registry.get_provider(_Counted, api_key="b", settings=settings)
    assert rebuilt is not b  # evicted: a fresh instance (and "c" goes now)
    assert _Counted.closed == ["b", "c"]
    registry.clear_provider_cache()
    assert sorted(k or "" for k in _Counted.closed[2:]) == ["a", "b"]
