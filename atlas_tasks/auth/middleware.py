"""Pod-side auth: ASGI and WSGI middleware that admit a request only with a valid credential.

The orchestrator injects secrets into each pod it spawns; this module is the pod's half::

    ATLAS_PRESHARED_KEY   raw bearer token      ->  Authorization: Bearer <token>
    ATLAS_SIGNING_SECRET  signed-URL secret     ->  ?exp=...&sig=... (see signed_url)

A request passes when it carries either credential and it checks out; otherwise it gets
``401`` with ``WWW-Authenticate: Bearer`` and a small JSON body such as
``{"error": "unauthorized", "reason": "expired"}``. Paths in ``exempt_paths`` (exact
matches, e.g. ``/health``) always pass. With no secret configured at all, every other
request is refused (fail closed) and a warning is logged once, at construction.

Use with Starlette/FastAPI (put ``CORSMiddleware`` *outside* it so browser preflights,
which never carry credentials, are answered before the auth check)::

    app = Starlette(routes=..., middleware=[
        Middleware(CORSMiddleware, allow_origins=["https://app.example"],
                   allow_headers=["authorization", "content-type"]),
        Middleware(BearerOrSignedUrlMiddleware, exempt_paths=["/health"]),
    ])

or with Flask/Django (WSGI)::

    app.wsgi_app = WSGIBearerOrSignedUrlMiddleware(app.wsgi_app, exempt_paths=["/health"])
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Generic, TypeVar
from urllib.parse import quote, quote_from_bytes
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from atlas_tasks.auth.signed_url import InvalidSignedUrl, verify_request_target
from atlas_tasks.constants import PRESHARED_KEY_ENV, SIGNING_SECRET_ENV
from atlas_tasks.errors import validation_error

logger = logging.getLogger("atlas_tasks.auth")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: WebSocket close code sent when a handshake is refused (RFC 6455 "policy violation").
WS_CLOSE_POLICY_VIOLATION = 1008
#: ``WWW-Authenticate`` value of every 401.
WWW_AUTHENTICATE = 'Bearer realm="atlas"'

# Characters an ASGI server may leave bare in a path we must re-encode ourselves.
_PATH_SAFE = "/!$&'()*+,;=:@-._~"


class PodAuthenticator:
    """The decision shared by both middlewares: admit, or say why not.

    Args:
        preshared_key: the bearer token pods accept. ``None`` reads
            ``ATLAS_PRESHARED_KEY`` now; ``""`` disables bearer auth.
        signing_secret: the signed-URL secret. ``None`` reads ``ATLAS_SIGNING_SECRET``
            now; ``""`` disables signed URLs.
        exempt_paths: paths (exact match) that need no credential, e.g. ``"/health"``.
        now: clock used for signed-URL expiry (tests); defaults to :func:`time.time`.
    """

    def __init__(
        self,
        *,
        preshared_key: str | bytes | None = None,
        signing_secret: str | bytes | None = None,
        exempt_paths: Iterable[str] = (),
        now: Callable[[], float] | None = None,
    ) -> None:
        if preshared_key is None:
            preshared_key = os.environ.get(PRESHARED_KEY_ENV)
        if signing_secret is None:
            signing_secret = os.environ.get(SIGNING_SECRET_ENV)
        key = _as_bytes(preshared_key, "preshared_key")
        secret = _as_bytes(signing_secret, "signing_secret")
        # Only a digest of the bearer key is kept: comparing digests is constant time
        # whatever the candidate's length, and the raw key never sits on this object.
        self._key_digest = hashlib.sha256(key).digest() if key else None
        self._signing_secret = secret or None
        self._now = now
        if isinstance(exempt_paths, str | bytes):
            raise validation_error("exempt_paths", "must be an iterable of paths, not one str")
        self.exempt_paths = frozenset(exempt_paths)
        if not self.configured:
            logger.warning(
                "pod auth: neither %s nor %s is set; refusing every request except %s",
                PRESHARED_KEY_ENV,
                SIGNING_SECRET_ENV,
                sorted(self.exempt_paths) or "none",
            )

    @property
    def configured(self) -> bool:
        """True when at least one credential kind can succeed."""
        return self._key_digest is not None or self._signing_secret is not None

    @property
    def bearer_enabled(self) -> bool:
        """True when a preshared bearer key is configured."""
        return self._key_digest is not None

    @property
    def signed_urls_enabled(self) -> bool:
        """True when a signing secret is configured."""
        return self._signing_secret is not None

    def __repr__(self) -> str:
        return (
            f"PodAuthenticator(bearer={self.bearer_enabled}, "
            f"signed_urls={self.signed_urls_enabled}, exempt_paths={sorted(self.exempt_paths)})"
        )

    def deny_reason(
        self, path: str, authorization: bytes | None, raw_path: bytes, query: bytes
    ) -> str | None:
        """``None`` to admit the request, else a short reason for the 401 body.

        Args:
            path: decoded path, matched against ``exempt_paths``.
            authorization: the raw ``Authorization`` header, if any.
            raw_path: the percent-encoded path as received.
            query: the raw query string as received.
        """
        if path in self.exempt_paths:
            return None
        if not self.configured:
            return "not_configured"
        token = _bearer_token(authorization)
        if token is not None and self._key_digest is not None:
            if hmac.compare_digest(hashlib.sha256(token).digest(), self._key_digest):
                return None
        reason = "invalid_token" if token is not None else "missing_credentials"
        if self._signing_secret is not None and _has_signature(query):
            try:
                now = self._now() if self._now is not None else None
                verify_request_target(raw_path, query, secret=self._signing_secret, now=now)
            except InvalidSignedUrl as exc:
                # A bearer token that was sent and failed is the more useful reason.
                return reason if token is not None else exc.reason
            return None
        return reason


_App = TypeVar("_App")


class _PodAuthMiddleware(Generic[_App]):
    """What both middlewares share: the wrapped app and one :class:`PodAuthenticator`.

    Args:
        app: the application to protect.
        preshared_key, signing_secret, exempt_paths, now: see :class:`PodAuthenticator`.
    """

    def __init__(
        self,
        app: _App,
        *,
        preshared_key: str | bytes | None = None,
        signing_secret: str | bytes | None = None,
        exempt_paths: Iterable[str] = (),
        now: Callable[[], float] | None = None,
    ) -> None:
        self.app = app
        self.auth = PodAuthenticator(
            preshared_key=preshared_key,
            signing_secret=signing_secret,
            exempt_paths=exempt_paths,
            now=now,
        )


class BearerOrSignedUrlMiddleware(_PodAuthMiddleware[ASGIApp]):
    """ASGI middleware: admit HTTP and WebSocket requests with a bearer token or signed URL.

    Non-HTTP scopes (``lifespan``) pass straight through. A refused HTTP request gets a
    401 JSON answer; a refused WebSocket handshake is closed with code 1008.

    Args:
        app: the ASGI application to protect.
        preshared_key, signing_secret, exempt_paths, now: see :class:`PodAuthenticator`.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the token or signature; call the app, or answer 401 (WebSocket: close 1008)."""
        kind = scope.get("type")
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope.get("path") or "/"
        authorization = None
        for name, value in scope.get("headers") or ():
            if name.lower() == b"authorization":
                authorization = value
                break
        try:
            raw_path = scope.get("raw_path") or quote(path, safe=_PATH_SAFE).encode("ascii")
            query = scope.get("query_string") or b""
            reason = self.auth.deny_reason(path, authorization, raw_path, query)
        except UnicodeEncodeError:
            reason = "malformed"  # a path with lone surrogates: refuse rather than guess
        if reason is None:
            await self.app(scope, receive, send)
            return
        logger.debug("pod auth: refused %s %s (%s)", kind, path, reason)
        if kind == "websocket":
            # Closing before accept makes the server reject the handshake (HTTP 403).
            await send({"type": "websocket.close", "code": WS_CLOSE_POLICY_VIOLATION})
            return
        body = _body(reason)
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (name.lower().encode("ascii"), value.encode("ascii"))
                    for name, value in _refusal_headers(body)
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class WSGIBearerOrSignedUrlMiddleware(_PodAuthMiddleware[WSGIApplication]):
    """WSGI middleware (Flask, Django): same rules as :class:`BearerOrSignedUrlMiddleware`.

    Args:
        app: the WSGI application to protect.
        preshared_key, signing_secret, exempt_paths, now: see :class:`PodAuthenticator`.
    """

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Check the request's token or signature, then call the wrapped app or answer 401."""
        path = (environ.get("SCRIPT_NAME") or "") + (environ.get("PATH_INFO") or "")
        path = path or "/"
        header = environ.get("HTTP_AUTHORIZATION")
        try:
            # PEP 3333: PATH_INFO is already unquoted and QUERY_STRING is raw, both as
            # latin-1 "bytes in str"; re-encode to recover what was on the wire.
            raw_path = quote_from_bytes(path.encode("latin-1"), safe=_PATH_SAFE).encode("ascii")
            query = str(environ.get("QUERY_STRING") or "").encode("latin-1")
            authorization = header.encode("latin-1") if isinstance(header, str) else None
            reason = self.auth.deny_reason(path, authorization, raw_path, query)
        except UnicodeEncodeError:
            reason = "malformed"  # not PEP 3333 strings; refuse rather than guess
        if reason is None:
            return self.app(environ, start_response)
        logger.debug("pod auth: refused %s (%s)", path, reason)
        body = _body(reason)
        start_response("401 Unauthorized", _refusal_headers(body))
        return [body]


def _bearer_token(header: bytes | None) -> bytes | None:
    if not header:
        return None
    scheme, _, token = header.strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token:
        return None
    return token


def _has_signature(query: bytes) -> bool:
    # Only decides which reason a refusal reports ("missing_credentials" for a plain
    # request); it never admits anything, so a cheap look at literal names is enough.
    return any(seg.partition(b"=")[0] in (b"exp", b"sig") for seg in query.split(b"&"))


def _as_bytes(value: object, field: str) -> bytes:
    if value is None:
        return b""
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise validation_error(field, "is not valid text") from exc
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    raise validation_error(field, "must be str or bytes")


def _body(reason: str) -> bytes:
    return json.dumps({"error": "unauthorized", "reason": reason}).encode("utf-8")


def _refusal_headers(body: bytes) -> list[tuple[str, str]]:
    """The headers of a 401 carrying ``body`` (WSGI spelling; ASGI lower-cases them)."""
    return [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("WWW-Authenticate", WWW_AUTHENTICATE),
        ("Cache-Control", "no-store"),
    ]


__all__ = [
    "WS_CLOSE_POLICY_VIOLATION",
    "WWW_AUTHENTICATE",
    "BearerOrSignedUrlMiddleware",
    "PodAuthenticator",
    "WSGIBearerOrSignedUrlMiddleware",
]
