"""Run a provider's real HTTP traffic through a :class:`SpecChecker`.

Providers build their own pooled httpx clients (``providers/http.py``); the one hook a
test has is ``ProviderContext.transport``. :class:`CheckedTransport` is a real loopback
transport that validates every exchange (request and answer) before handing the answer
back, so nothing the provider sends or the fake cloud answers escapes the definition.
"""

from __future__ import annotations

import httpx

from tests.contract.spec_check import SpecChecker


class CheckedTransport(httpx.BaseTransport):
    """An ``httpx.HTTPTransport`` that passes each exchange to ``checker.check``."""

    def __init__(self, checker: SpecChecker) -> None:
        self.checker = checker
        self._inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send, read the whole answer, check the exchange, return the answer."""
        response = self._inner.handle_request(request)
        response.read()
        self.checker.check(request, response)
        return response

    def close(self) -> None:
        """Close the underlying connection pool."""
        self._inner.close()


def checked_client(base_url: str, checker: SpecChecker, api_key: str) -> httpx.Client:
    """A plain client (the way an official client would call) whose traffic is checked."""
    return httpx.Client(
        base_url=base_url,
        event_hooks=checker.event_hooks(),
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=10.0,
    )
