"""Config: provider and API-key resolution order, lazy settings, secrets kept secret."""

from __future__ import annotations

import pytest

import atlas_tasks as atlas
from atlas_tasks.config import (
    AtlasSettings,
    get_settings,
    reset_settings,
    resolve_api_key,
    resolve_provider_name,
)
from atlas_tasks.errors import ValidationError
from atlas_tasks.providers.mock import MockProvider

NATIVE_ENV = {
    "runpod": "RUNPOD_API_KEY",
    "fly": "FLY_API_TOKEN",
    "lambda_labs": "LAMBDA_LABS_API_KEY",
    "vast": "VAST_API_KEY",
}
SETTINGS_ENV = {
    "runpod": "ATLAS_RUNPOD_API_KEY",
    "fly": "ATLAS_FLY_API_TOKEN",
    "lambda_labs": "ATLAS_LAMBDA_LABS_API_KEY",
    "vast": "ATLAS_VAST_API_KEY",
}


def test_provider_argument_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAS_DEFAULT_PROVIDER", "runpod")
    reset_settings()
    assert resolve_provider_name("mock") == "mock"


def test_provider_falls_back_to_default_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAS_DEFAULT_PROVIDER", "mock")
    reset_settings()
    assert resolve_provider_name(None) == "mock"
    # and the SDK uses it
    compute = atlas.spawn_compute(image="img")
    assert compute.provider == "mock"


def test_no_provider_is_a_clear_error() -> None:
    with pytest.raises(ValidationError) as info:
        resolve_provider_name(None)
    assert info.value.field == "provider"
    assert "ATLAS_DEFAULT_PROVIDER" in str(info.value)
    with pytest.raises(ValidationError, match="ATLAS_DEFAULT_PROVIDER"):
        atlas.spawn_compute(image="img")


def test_provider_class_and_instance_pass_through() -> None:
    instance = MockProvider()
    assert resolve_provider_name(MockProvider) is MockProvider
    assert resolve_provider_name(instance) is instance


@pytest.mark.parametrize("provider", sorted(NATIVE_ENV))
def test_api_key_order(provider: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_api_key(provider) is None

    monkeypatch.setenv(NATIVE_ENV[provider], "from-native-env")
    reset_settings()
    assert resolve_api_key(provider) == "from-native-env"

    monkeypatch.setenv(SETTINGS_ENV[provider], "from-settings")
    reset_settings()
    assert resolve_api_key(provider) == "from-settings"

    assert resolve_api_key(provider, "from-argument") == "from-argument"


def test_api_key_from_explicit_settings_object(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNPOD_API_KEY", "native")
    settings = AtlasSettings(runpod_api_key="constructed")
    assert resolve_api_key("runpod", settings=settings) == "constructed"


def test_get_provider_gets_the_resolved_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAS_DEFAULT_PROVIDER", "mock")
    reset_settings()
    assert atlas.get_provider(api_key="k1").context.api_key == "k1"


def test_settings_are_lazy_and_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    first = get_settings()
    assert get_settings() is first
    monkeypatch.setenv("ATLAS_HTTP_TIMEOUT_S", "7.5")
    assert get_settings().http_timeout_s == first.http_timeout_s  # cached until reset
    reset_settings()
    assert get_settings().http_timeout_s == 7.5


def test_secrets_do_not_show_in_repr() -> None:
    settings = AtlasSettings(runpod_api_key="super-secret-key")
    assert "super-secret-key" not in repr(settings)
    assert "super-secret-key" not in str(settings.model_dump())


def test_invalid_setting_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAS_MOCK_STATE", "disk")
    reset_settings()
    with pytest.raises(Exception, match="mock_state"):
        get_settings()
