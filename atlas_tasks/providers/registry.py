"""Lazy name → provider registry.

Built-in providers are named by dotted path and imported on first use, so importing
atlas_tasks never pulls in every cloud's code. Outside code adds its own with
:func:`register_provider`. :func:`get_provider` also accepts a Provider class or instance.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import threading
from collections import OrderedDict
from typing import Any

import httpx

from atlas_tasks.config import AtlasSettings, get_settings, resolve_api_key, resolve_provider_name
from atlas_tasks.errors import UnsupportedError, ValidationError
from atlas_tasks.providers.base import Provider, ProviderContext, RequestHook

#: Built-in providers: name → "module:Class".
BUILTIN_PROVIDERS: dict[str, str] = {
    "runpod": "atlas_tasks.providers.runpod:RunPodProvider",
    "fly": "atlas_tasks.providers.fly_machines:FlyMachinesProvider",
    "lambda_labs": "atlas_tasks.providers.lambda_labs:LambdaLabsProvider",
    "vast": "atlas_tasks.providers.vast:VastProvider",
    "mock": "atlas_tasks.providers.mock:MockProvider",
}

logger = logging.getLogger(__name__)

_registry: dict[str, str | type[Provider]] = dict(BUILTIN_PROVIDERS)
_lock = threading.Lock()
#: Cached instances, least recently used first (bounded by ``ATLAS_PROVIDER_CACHE_SIZE``:
#: a web process serving many users' own API keys must not keep a pool per key forever).
_instances: OrderedDict[tuple[str, str, str, int], Provider] = OrderedDict()


def register_provider(name: str, target: str | type[Provider]) -> None:
    """Make ``name`` resolve to a Provider class (or a ``"module:Class"`` path)."""
    if not name or not isinstance(name, str):
        raise ValidationError(
            "provider: a registered name must be a non-empty string", field="provider"
        )
    with _lock:
        _registry[name] = target
        for key in [k for k in _instances if k[0] == name]:
            _instances.pop(key).close()


def known_providers() -> list[str]:
    """Registered provider names, sorted."""
    return sorted(_registry)


def provider_class(name: str) -> type[Provider]:
    """The Provider class registered under ``name`` (imported on first use).

    Raises:
        ValidationError: field ``provider``, listing the known names.
    """
    target = _registry.get(name)
    if target is None:
        raise ValidationError(
            f"provider: unknown provider {name!r}; known: {', '.join(known_providers())}",
            field="provider",
        )
    if isinstance(target, str):
        module_name, _, attr = target.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise UnsupportedError(
                f"provider {name!r} could not be loaded from {target}: {exc}", provider=name
            ) from exc
        with _lock:
            _registry[name] = cls
        return cls  # type: ignore[no-any-return]
    return target


#: Hooks every provider built by :func:`get_provider` runs after each HTTP attempt, on top
#: of the call's own (the metrics recorder installs one; see :func:`add_default_hook`).
_default_hooks: list[RequestHook] = []


def add_default_hook(hook: RequestHook) -> None:
    """Run ``hook`` after every HTTP attempt of providers built from now on (idempotent).

    Cached instances built earlier are dropped, so the next call picks the hook up.
    """
    with _lock:
        if hook in _default_hooks:
            return
        _default_hooks.append(hook)
    clear_provider_cache()


def get_provider(
    provider: str | type[Provider] | Provider | None = None,
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    settings: AtlasSettings | None = None,
    transport: httpx.BaseTransport | None = None,
    hooks: tuple[RequestHook, ...] = (),
    cache: bool = True,
    **options: Any,
) -> Provider:
    """Resolve a provider (argument > ``ATLAS_DEFAULT_PROVIDER``) and build or reuse it.

    Instances are cached per (name, key fingerprint, base URL, settings) so a worker keeps
    one pooled HTTP client per provider context instead of one per call. The cache keeps
    the ``settings.provider_cache_size`` most recently used instances; the least recently
    used one beyond that is closed (its pool reopens if a holder uses it again).
    """
    resolved = resolve_provider_name(provider, settings)
    if isinstance(resolved, Provider):
        return resolved
    cls = resolved if isinstance(resolved, type) else provider_class(str(resolved))
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise ValidationError(f"provider: {resolved!r} is not a Provider", field="provider")
    settings = settings or get_settings()
    key = resolve_api_key(cls.name, api_key, settings)
    context = ProviderContext(
        api_key=key,
        base_url=base_url,
        settings=settings,
        transport=transport,
        hooks=(*hooks, *_default_hooks),
        options=dict(options),
    )
    if not cache or transport is not None or hooks or options:
        return cls(context)
    fingerprint = hashlib.sha256((key or "").encode()).hexdigest()[:16]
    cache_key = (cls.name, fingerprint, base_url or "", id(settings))
    evicted: list[Provider] = []
    with _lock:
        instance = _instances.get(cache_key)
        if instance is None:
            instance = cls(context)
            _instances[cache_key] = instance
            while len(_instances) > settings.provider_cache_size:
                evicted.append(_instances.popitem(last=False)[1])
        else:
            _instances.move_to_end(cache_key)
    # Closed outside the lock: closing a pool may block on its connections.
    for old in evicted:
        logger.debug("provider cache full: closing the least recently used %r", old)
        old.close()
    return instance


def clear_provider_cache() -> None:
    """Close and forget cached provider instances (tests, settings changes)."""
    with _lock:
        for instance in _instances.values():
            instance.close()
        _instances.clear()


__all__ = [
    "BUILTIN_PROVIDERS",
    "add_default_hook",
    "clear_provider_cache",
    "get_provider",
    "known_providers",
    "provider_class",
    "register_provider",
]
