"""RunPod's two HTTP APIs, built lazily from a :class:`ProviderContext`.

==============  ==========================================  =====================================
API             base URL (first set wins)                   used for
==============  ==========================================  =====================================
``management``  ``context.base_url`` > settings             REST v2 (``/v2/...``): pods, GPU
                ``runpod_base_url``                         catalog, templates, network
                (default ``https://api.runpod.io``)         volumes, serverless endpoints
``runtime``     ``options["runtime_url"]`` > settings       serverless jobs, ``<base>/<endpoint>``
                ``runpod_runtime_url``                      (``https://api.runpod.ai/v2``)
==============  ==========================================  =====================================

Both send ``Authorization: Bearer <key>``. The management base URL is the API's root: paths
carry their ``/v2`` themselves, as in RunPod's definition.

A missing key raises ``UnauthorizedError`` on the first call, not at construction, so
``RunPodProvider.capabilities()`` and building a provider for introspection need no key.
"""

from __future__ import annotations

from collections.abc import Callable

from atlas_tasks.providers.base import ProviderContext
from atlas_tasks.providers.common import ClientPool, main_base_url
from atlas_tasks.providers.http import HttpClient

PROVIDER = "runpod"

MISSING_KEY = (
    "RunPod API key missing: pass api_key=..., or set ATLAS_RUNPOD_API_KEY or RUNPOD_API_KEY"
)


class RunPodClients:
    """Holder of the ``management`` and ``runtime`` :class:`HttpClient`\\ s.

    Args:
        context: the provider context.
        sleep: called for every backoff sleep (the provider passes its own, replaceable one).
        rand: jitter source in [0, 1) for retry backoff (likewise).
    """

    def __init__(
        self,
        context: ProviderContext,
        sleep: Callable[[float], None],
        rand: Callable[[], float] | None = None,
    ) -> None:
        self.context = context
        self._pool = ClientPool(
            context,
            provider=PROVIDER,
            missing_key=MISSING_KEY,
            base_url=self.base_url,
            sleep=sleep,
            rand=rand,
        )

    def base_url(self, api: str) -> str:
        """The base URL of ``api`` after applying the override order."""
        settings = self.context.settings
        options = self.context.options
        if api == "management":
            return main_base_url(self.context, settings.runpod_base_url)
        if api == "runtime":
            return str(options.get("runtime_url") or settings.runpod_runtime_url)
        raise ValueError(f"unknown RunPod API {api!r}")

    def get(self, api: str) -> HttpClient:
        """The client for ``api``, built on first use.

        Raises:
            UnauthorizedError: no API key was resolved.
        """
        return self._pool.get(api)

    @property
    def management(self) -> HttpClient:
        """REST v2 client."""
        return self.get("management")

    @property
    def runtime(self) -> HttpClient:
        """Serverless runtime client."""
        return self.get("runtime")

    def close(self) -> None:
        """Close every pooled client."""
        self._pool.close()


__all__ = ["MISSING_KEY", "RunPodClients"]
