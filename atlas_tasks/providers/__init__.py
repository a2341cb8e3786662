"""Cloud providers behind one contract, resolved by name through a lazy registry."""

from atlas_tasks.providers.base import (
    Provider,
    ProviderContext,
    RequestHook,
    RequestInfo,
    StubProvider,
)
from atlas_tasks.providers.registry import (
    BUILTIN_PROVIDERS,
    clear_provider_cache,
    get_provider,
    known_providers,
    provider_class,
    register_provider,
)

__all__ = [
    "BUILTIN_PROVIDERS",
    "Provider",
    "ProviderContext",
    "RequestHook",
    "RequestInfo",
    "StubProvider",
    "clear_provider_cache",
    "get_provider",
    "known_providers",
    "provider_class",
    "register_provider",
]
