"""The Vast.ai HTTP client, built lazily from a :class:`ProviderContext`.

Base URL, first set wins: ``context.base_url`` (per call) > settings ``vast_base_url``
(``ATLAS_VAST_BASE_URL``).

Auth: ``Authorization: Bearer <key>`` only. vast.py also appends ``?api_key=<key>`` to
every URL; we do not, because a key in the URL ends up in proxy and access logs, in
``httpx`` exception texts and in our own request hooks, while the header never leaves
the request. (The HTTP layer would redact it from hooks, but not from servers' logs.)

Every answer is checked for ``{"success": false}`` (Vast refuses with HTTP 200 at times)
and error bodies are refined with :func:`.translate.refine_error`. 429s are retried by
the shared layer, honouring ``Retry-After`` (vast.py backs off from 0.15 s; the shared
1 s, 2 s, 4 s schedule is gentler on Vast's limits).
"""

from __future__ import annotations

from collections.abc import Callable

from atlas_tasks.providers.base import ProviderContext
from atlas_tasks.providers.common import RefiningClient
from atlas_tasks.providers.vast import translate

MISSING_KEY = "Vast.ai API key missing: pass api_key=..., or set ATLAS_VAST_API_KEY or VAST_API_KEY"


class VastClient(RefiningClient):
    """One pooled :class:`HttpClient` for Vast's API, with refusal checking: failures go
    through :func:`.translate.refine_error` (Vast's no-such-object codes become
    ``NotFoundError`` whatever the HTTP status; other failures carry Vast's ``msg``), and
    every answer through :func:`.translate.check_success`.

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
            configured_base_url=lambda settings: settings.vast_base_url,
            refine=translate.refine_error,
            check=translate.check_success,
        )


__all__ = ["MISSING_KEY", "VastClient"]
