"""Client of Fly's logs API (the endpoint flyctl uses; documented in "logs API options").

``GET {ATLAS_FLY_API_URL}/api/v1/apps/{app}/logs?next_token=&region=&instance=`` with
``Authorization: Bearer <token>`` answers a JSON:API document::

    {"data": [{"id": "...", "type": "logs",
               "attributes": {"timestamp": "...", "message": "...", "level": "info",
                              "instance": "<machine id>", "region": "cdg", "meta": {...}}}],
     "meta": {"next_token": "<ns unix timestamp>"}}

``next_token`` is the cursor: pass it back to get only newer entries. Without it Fly
returns the latest entries (up to 100 from the last 24 h). ExAtlas called
``api.machines.dev/v1/apps/<app>/logs`` with ``start_time`` and parsed NDJSON; that is
not Fly's documented API (``start_time`` is deprecated), so this client follows Fly.

Retries: none at the HTTP level (a poller calls again in two seconds anyway). The one
retry is after a 401: the token is refreshed through the token chain (which skips the
rejected token) and the request is sent **once** more; a second 401 is raised as is.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from atlas_tasks.config import AtlasSettings, get_settings
from atlas_tasks.errors import ProviderError, UnauthorizedError
from atlas_tasks.fly.token_storage import check_app
from atlas_tasks.fly.tokens import FlyTokens, default_tokens
from atlas_tasks.providers.base import ProviderContext
from atlas_tasks.providers.http import HttpClient

log = logging.getLogger(__name__)

#: Path of the logs endpoint below ``ATLAS_FLY_API_URL``.
LOGS_PATH = "/api/v1/apps/{app}/logs"


class LogEntry(BaseModel):
    """One log line of a Fly app (a JSON:API ``data`` item, flattened)."""

    model_config = ConfigDict(frozen=True)

    id: str | None = None
    timestamp: str
    message: str
    level: str | None = None
    instance: str | None = None
    region: str | None = None
    app: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class LogPage:
    """One answer: the entries (oldest first) and the cursor for the next call."""

    entries: list[LogEntry] = field(default_factory=list)
    next_token: str | None = None


def parse_logs_document(body: Any, app: str | None = None) -> LogPage:
    """Entries and ``meta.next_token`` of a JSON:API logs document.

    Items without a string ``timestamp`` and ``message`` are skipped (logged at DEBUG).

    Raises:
        ProviderError: the body is not a JSON:API document with a ``data`` list.
    """
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise ProviderError(
            "malformed logs document: no data list", provider="fly", raw=str(body)[:200]
        )
    entries: list[LogEntry] = []
    for item in body["data"]:
        attrs = item.get("attributes") if isinstance(item, dict) else None
        if (
            not isinstance(attrs, dict)
            or not isinstance(attrs.get("timestamp"), str)
            or not isinstance(attrs.get("message"), str)
        ):
            log.debug("skipping a malformed log item of %s", app)
            continue
        meta = attrs.get("meta")
        entries.append(
            LogEntry(
                id=str(item["id"]) if item.get("id") is not None else None,
                timestamp=attrs["timestamp"],
                message=attrs["message"],
                level=_opt_str(attrs.get("level")),
                instance=_opt_str(attrs.get("instance")),
                region=_opt_str(attrs.get("region")),
                app=app,
                meta=meta if isinstance(meta, dict) else {},
            )
        )
    meta = body.get("meta")
    token = meta.get("next_token") if isinstance(meta, dict) else None
    return LogPage(entries=entries, next_token=str(token) if token not in (None, "") else None)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


class LogsClient:
    """Fetches pages of an app's logs with a token from the chain.

    Args:
        tokens: token chain (default: the process-wide one).
        settings: settings (``fly_api_url``, ``fly_logs_timeout_s``).
        base_url: overrides ``ATLAS_FLY_API_URL``.
        transport: httpx transport (``httpx.MockTransport`` in unit tests).
    """

    def __init__(
        self,
        *,
        tokens: FlyTokens | None = None,
        settings: AtlasSettings | None = None,
        base_url: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self._tokens = tokens
        self.base_url = (base_url or self.settings.fly_api_url).rstrip("/")
        self._context = ProviderContext(settings=self.settings, transport=transport)
        # app -> (token fingerprint, client): one pooled client per app and token, so
        # apps with different tokens polled by one worker never swap each other's client.
        self._http: dict[str, tuple[str, HttpClient]] = {}
        self._lock = threading.Lock()

    @property
    def tokens(self) -> FlyTokens:
        """The token chain in use."""
        return self._tokens or default_tokens()

    def close(self) -> None:
        """Close pooled connections."""
        with self._lock:
            clients, self._http = list(self._http.values()), {}
        for _, client in clients:
            client.close()

    def fetch(
        self,
        app: str,
        *,
        next_token: str | None = None,
        region: str | None = None,
        instance: str | None = None,
    ) -> LogPage:
        """One page of ``app``'s logs newer than ``next_token``.

        Raises:
            UnauthorizedError: no token, or still 401 after one refresh.
            AtlasError: other HTTP statuses (by kind), ``transport`` when no answer,
                ``provider`` for a malformed document.
        """
        check_app(app)
        params = {"next_token": next_token, "region": region, "instance": instance}
        token = self.tokens.get(app)
        try:
            body = self._get(app, token, params)
        except UnauthorizedError:
            log.info("fly logs of %s: 401, refreshing the token and retrying once", app)
            token = self.tokens.refresh(app, token)
            body = self._get(app, token, params)
        page = parse_logs_document(body, app)
        log.debug("fly logs of %s: %d entries", app, len(page.entries))
        return page

    def _get(self, app: str, token: str, params: dict[str, Any]) -> Any:
        return (
            self._client_for(app, token)
            .call("GET", LOGS_PATH.format(app=app), params=params, max_retries=0)
            .data
        )

    def _client_for(self, app: str, token: str) -> HttpClient:
        # Headers are fixed per HttpClient: a refreshed token gets a new client.
        fingerprint = hashlib.sha256(token.encode()).hexdigest()
        with self._lock:
            current = self._http.get(app)
            if current is not None and current[0] == fingerprint:
                return current[1]
            client = HttpClient(
                self._context,
                provider="fly",
                api="logs",
                base_url=self.base_url,
                headers={"Authorization": f"Bearer {token}"},
                max_retries=0,
                timeout_s=self.settings.fly_logs_timeout_s,
            )
            self._http[app] = (fingerprint, client)
        if current is not None:
            current[1].close()
        return client


__all__ = ["LOGS_PATH", "LogEntry", "LogPage", "LogsClient", "parse_logs_document"]
