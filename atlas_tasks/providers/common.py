"""What every HTTP provider's client does the same way: lazy, pooled, keyed clients.

Each HTTP provider (RunPod, Fly Machines, Lambda Labs, Vast) builds its
:class:`~atlas_tasks.providers.http.HttpClient`\\ s the same way, and this module is the
one place that does it:

* the main API's base URL: ``context.base_url`` (per call, ``get_provider(...,
  base_url=)``) wins over the provider's settings value (:func:`main_base_url`);
* the key is ``context.api_key`` (already resolved by the registry: argument > settings >
  native env var); a missing key raises ``UnauthorizedError`` on the first *call*, not at
  construction, so building a provider for introspection (``capabilities()``, ``repr``)
  needs no key;
* one pooled client per API name, built once under a lock and shared by every thread;
* backoff sleeps and jitter are late-bound, so replacing ``provider.sleep`` or
  ``provider.rand`` after first use (tests) still applies.

:class:`ClientPool` does this for any number of APIs (RunPod has three, Fly one);
:class:`RefiningClient` is the one-API client that also refines error bodies and checks
answers (Lambda Labs, Vast). On the provider side, :class:`HttpProvider` holds the
replaceable ``sleep`` its clients back off through, and :class:`SingleApiProvider` is the
shape of the providers built on one :class:`RefiningClient`.

Example::

    pool = ClientPool(ctx, provider="vast", missing_key="Vast.ai API key missing: ...",
                      base_url=lambda api: main_base_url(ctx, ctx.settings.vast_base_url),
                      sleep=lambda s: provider.sleep(s))
    api = pool.get("management")   # an HttpClient, built now, shared from then on
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from atlas_tasks.config import AtlasSettings
from atlas_tasks.errors import AtlasError, UnauthorizedError
from atlas_tasks.providers.base import Provider, ProviderContext
from atlas_tasks.providers.http import ApiResponse, HttpClient


def bearer(key: str) -> str:
    """The ``Authorization`` header value ``Bearer <key>``."""
    return f"Bearer {key}"


def main_base_url(context: ProviderContext, configured: str) -> str:
    """The main API's base URL: ``context.base_url`` if set, else ``configured`` (the
    provider's settings value)."""
    return context.base_url or configured


class ClientPool:
    """A provider's :class:`HttpClient`\\ s, one per API name, each built on first use.

    Args:
        context: the provider context (key, transport, hooks, settings).
        provider: provider name, used in errors, hooks and logs.
        missing_key: the ``UnauthorizedError`` message when no key was resolved.
        base_url: the base URL of an API name; asked once, when that client is built.
        sleep: called for every backoff sleep (the provider passes its own, late-bound one).
        rand: jitter source in [0, 1) for retry backoff; ``None`` keeps the client's own.
        authorization: the ``Authorization`` header value for the key (default
            :func:`bearer`).
    """

    def __init__(
        self,
        context: ProviderContext,
        *,
        provider: str,
        missing_key: str,
        base_url: Callable[[str], str],
        sleep: Callable[[float], None],
        rand: Callable[[], float] | None = None,
        authorization: Callable[[str], str] = bearer,
    ) -> None:
        self.context = context
        self.provider = provider
        self._missing_key = missing_key
        self._base_url = base_url
        self._sleep = sleep
        self._rand = rand
        self._authorization = authorization
        self._clients: dict[str, HttpClient] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        # The context (and so the key) stays out.
        return f"ClientPool(provider={self.provider!r}, apis={sorted(self._clients)!r})"

    def get(self, api: str) -> HttpClient:
        """The client for ``api``, built on first use.

        Raises:
            UnauthorizedError: no API key was resolved.
        """
        client = self._clients.get(api)
        if client is not None:
            return client
        key = self.context.api_key
        if not key:
            raise UnauthorizedError(self._missing_key, provider=self.provider)
        with self._lock:
            client = self._clients.get(api)
            if client is None:
                client = HttpClient(
                    self.context,
                    provider=self.provider,
                    api=api,
                    base_url=self._base_url(api),
                    headers={"Authorization": self._authorization(key)},
                    # Late-bound so replacing provider.sleep after first use still applies.
                    sleep=lambda seconds: self._sleep(seconds),
                )
                if self._rand is not None:
                    client.rand = self._rand
                self._clients[api] = client
        return client

    def close(self) -> None:
        """Close every pooled client (safe to call twice; a later :meth:`get` rebuilds)."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()


class RefiningClient:
    """One pooled :class:`HttpClient` for a provider with a single API, plus error
    refinement (the shape of the Lambda Labs and Vast clients).

    Args:
        context: the provider context.
        sleep: called for every backoff sleep (the provider passes its own, replaceable one).
        provider: provider name.
        missing_key: the ``UnauthorizedError`` message when no key was resolved.
        configured_base_url: the provider's base URL setting, read from the settings.
        refine: turns a mapped HTTP error into the provider's better one, or returns it
            unchanged when it has nothing to add.
        check: called with the decoded body and status of every expected answer; raises
            when the provider refused in a success status (Vast answers ``{"success":
            false}`` with HTTP 200). ``None`` checks nothing.
    """

    def __init__(
        self,
        context: ProviderContext,
        sleep: Callable[[float], None],
        *,
        provider: str,
        missing_key: str,
        configured_base_url: Callable[[AtlasSettings], str],
        refine: Callable[[AtlasError], AtlasError],
        check: Callable[[Any, int], None] | None = None,
    ) -> None:
        self.context = context
        self._configured_base_url = configured_base_url
        self._refine = refine
        self._check = check
        self._pool = ClientPool(
            context,
            provider=provider,
            missing_key=missing_key,
            base_url=lambda _api: self.base_url,
            sleep=sleep,
        )

    @property
    def base_url(self) -> str:
        """The API base after the override order (see :func:`main_base_url`)."""
        return main_base_url(self.context, self._configured_base_url(self.context.settings))

    @property
    def http(self) -> HttpClient:
        """The pooled client, built on first use.

        Raises:
            UnauthorizedError: no API key was resolved.
        """
        return self._pool.get("management")

    def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        expect: Collection[int] = (200,),
        idempotent: bool | None = None,
    ) -> ApiResponse:
        """:meth:`HttpClient.call`, with a failure refined by the provider's ``refine``,
        then the answer passed to ``check`` (when given).

        An error ``refine`` returns unchanged is re-raised as it is; a refined one is
        raised from the original.

        Raises:
            AtlasError: as mapped by the HTTP layer, refined; or what ``check`` raises.
        """
        try:
            answer = self.http.call(
                method, path, json=json, params=params, expect=expect, idempotent=idempotent
            )
        except AtlasError as err:
            refined = self._refine(err)
            if refined is err:
                raise
            raise refined from err
        if self._check is not None:
            self._check(answer.data, answer.status)
        return answer

    def close(self) -> None:
        """Close the pooled client."""
        self._pool.close()


class HttpProvider(Provider):
    """A provider whose cloud is called through pooled :class:`HttpClient`\\ s.

    Attributes:
        sleep: every backoff sleep goes through it; replace it in tests.
    """

    def __init__(self, context: ProviderContext | None = None) -> None:
        super().__init__(context)
        self.sleep: Callable[[float], None] = time.sleep

    def late_sleep(self, seconds: float) -> None:
        """``self.sleep(seconds)`` with ``sleep`` looked up now: clients are handed this
        method, so replacing ``provider.sleep`` after construction (tests) still applies."""
        self.sleep(seconds)


class SingleApiProvider(HttpProvider):
    """An :class:`HttpProvider` with one API behind a :class:`RefiningClient` (Lambda Labs,
    Vast): the client is built by :meth:`make_client`, shows in ``repr`` by its base URL
    only (never the key), and is closed by :meth:`close`.

    Attributes:
        client: the provider's client.
    """

    def __init__(self, context: ProviderContext | None = None) -> None:
        super().__init__(context)
        self.client = self.make_client()

    @abc.abstractmethod
    def make_client(self) -> RefiningClient:
        """The provider's client, backing off through :meth:`late_sleep`."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.client.base_url!r})"

    def close(self) -> None:
        """Close the pooled HTTP client."""
        self.client.close()


__all__ = [
    "ClientPool",
    "HttpProvider",
    "RefiningClient",
    "SingleApiProvider",
    "bearer",
    "main_base_url",
]
