"""The Lambda Cloud HTTP client, built lazily from a :class:`ProviderContext`.

Base URL, first set wins: ``context.base_url`` (per call, ``get_provider(...,
base_url=)``) > settings ``lambda_labs_base_url`` (``ATLAS_LAMBDA_LABS_BASE_URL``).
Auth is ``Authorization: Bearer <key>``, which Lambda recommends over HTTP Basic.

Rate limits: Lambda allows about one request per second and one launch per 12 s, and
answers 429 beyond that. The shared :class:`HttpClient` retries 429 for every method
(a refused request did nothing, so even a launch is safe to resend), honouring
``Retry-After`` and otherwise backing off 1 s, 2 s, 4 s..., which fits both limits.

A missing key raises ``UnauthorizedError`` on the first call, not at construction, so
building the provider for introspection needs no key.
"""

from __future__ import annotations

from collections.abc import Callable

from atlas_tasks.providers.base import ProviderContext
from atlas_tasks.providers.common import RefiningClient
from atlas_tasks.providers.lambda_labs import translate

MISSING_KEY = (
    "Lambda Labs API key missing: pass api_key=..., or set ATLAS_LAMBDA_LABS_API_KEY or "
    "LAMBDA_LABS_API_KEY"
)


class LambdaClient(RefiningClient):
    """One pooled :class:`HttpClient` for Lambda's API, plus error refinement: every
    failure goes through :func:`.translate.refine_error`, which folds Lambda's
    ``error.code`` into the error.

    Args:
        context: the provider context.
        sleep: called for every backoff sleep (the provider passes its own, replaceable one).
    """

    def __init__(self, context: ProviderContext, sleep: Callable[[float], None]) -> None:
        super().__init__(
            context,
            sleep,
            provider=translate.PROVIDER,
            missing_key=MISSING_KEY,
            configured_base_url=lambda settings: settings.lambda_labs_base_url,
            refine=translate.refine_error,
        )


__all__ = ["MISSING_KEY", "LambdaClient"]
