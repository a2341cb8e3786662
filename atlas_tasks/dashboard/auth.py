"""Access control of the standalone ops page: token check, login cookie, CSRF tokens.

Framework-neutral (no Starlette here) so it can be tested on its own:

* The access token (``ATLAS_DASHBOARD_TOKEN``) is only ever compared, in constant time,
  as SHA-256 digests; it is never echoed into a page, a cookie or a log.
* A login yields a cookie ``<payload>.<mac>``: the payload carries the operator name, a
  fresh random CSRF token and an expiry, the MAC is HMAC-SHA256 under a key derived from
  the access token. Changing the token therefore logs everybody out, and the cookie holds
  nothing that would let one recover the token.
* Every action must carry the login's CSRF token (``X-CSRF-Token`` header). Bearer-token
  clients (scripts) have no login: they fetch a signed CSRF token bound to their operator
  name from ``GET /api/csrf`` first. Both checks are constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass

from atlas_tasks.errors import ValidationError

#: What an operator name may look like (it is shown in the page and stored in events).
OPERATOR_RE = re.compile(r"[\w.@+ -]{1,64}")
#: Name of the login cookie.
COOKIE_NAME = "atlas_dashboard"
#: Header carrying the CSRF token of an action.
CSRF_HEADER = "X-CSRF-Token"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def token_fingerprint(token: str) -> str:
    """Short SHA-256 fingerprint of a token (safe to show: tells operators which token
    the server runs with, without revealing it)."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def valid_operator(name: str) -> str:
    """``name`` stripped, if it is an acceptable operator name.

    Raises:
        ValidationError: empty, too long, or with characters outside ``[\\w.@+ -]``.
    """
    name = (name or "").strip()
    if not OPERATOR_RE.fullmatch(name):
        raise ValidationError(
            "operator: 1-64 letters, digits, spaces or . @ + - _", field="operator"
        )
    return name


@dataclass(frozen=True)
class Principal:
    """Who is calling: the operator's name, how they authenticated, their CSRF token
    (``None`` for bearer clients, whose CSRF tokens are signed instead of stored)."""

    operator: str
    via: str  # "cookie" or "bearer"
    csrf: str | None = None


class DashboardAuth:
    """Checks the access token and issues/validates login cookies and CSRF tokens.

    Args:
        token: the access token; ``None`` only for ``--insecure-localhost`` (then any
            operator name logs in, and a random per-process key signs cookies).
        ttl_s: lifetime of a login cookie and of a bearer CSRF token.
    """

    def __init__(self, token: str | None, *, ttl_s: int = 12 * 3600) -> None:
        self.insecure = token is None
        self._digest = hashlib.sha256(token.encode()).digest() if token else None
        # Derived, not the token itself: a leaked cookie key would not be the token.
        seed = token.encode() if token else secrets.token_bytes(32)
        self._key = hmac.new(seed, b"atlas-dashboard-cookie-v1", hashlib.sha256).digest()
        self.ttl_s = ttl_s

    # ------------------------------------------------------------------ token
    def check_token(self, candidate: str | None) -> bool:
        """Whether ``candidate`` is the access token (constant time; always True when
        running insecure)."""
        if self._digest is None:
            return True
        given = hashlib.sha256((candidate or "").encode()).digest()
        return hmac.compare_digest(given, self._digest)

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    # ------------------------------------------------------------------ cookie logins
    def issue_login(self, operator: str, *, now: float | None = None) -> tuple[str, str]:
        """A new login for ``operator``: ``(cookie value, CSRF token)``."""
        csrf = secrets.token_urlsafe(32)
        expires = int((now if now is not None else time.time()) + self.ttl_s)
        payload = _b64(json.dumps({"op": operator, "csrf": csrf, "exp": expires}).encode())
        return f"{payload}.{self._mac(payload)}", csrf

    def read_login(self, cookie: str | None, *, now: float | None = None) -> Principal | None:
        """The principal of a login cookie, or ``None`` (missing, forged or expired)."""
        if not cookie or "." not in cookie:
            return None
        payload, _, mac = cookie.rpartition(".")
        if not hmac.compare_digest(mac.encode(), self._mac(payload).encode()):
            return None
        try:
            data = json.loads(_unb64(payload))
            operator, csrf, expires = str(data["op"]), str(data["csrf"]), int(data["exp"])
        except (ValueError, KeyError, TypeError):
            return None
        if expires < (now if now is not None else time.time()):
            return None
        return Principal(operator=operator, via="cookie", csrf=csrf)

    # ------------------------------------------------------------------ CSRF
    def bearer_csrf(self, operator: str, *, now: float | None = None) -> str:
        """A signed CSRF token for a bearer client acting as ``operator``."""
        expires = int((now if now is not None else time.time()) + self.ttl_s)
        body = f"{expires}"
        return f"{body}.{self._mac(f'csrf|{operator}|{body}')}"

    def check_csrf(
        self, principal: Principal, candidate: str | None, *, now: float | None = None
    ) -> bool:
        """Whether ``candidate`` is the CSRF token of ``principal`` (constant time)."""
        if not candidate:
            return False
        if principal.csrf is not None:
            return hmac.compare_digest(candidate.encode(), principal.csrf.encode())
        body, _, mac = candidate.partition(".")
        expected = self._mac(f"csrf|{principal.operator}|{body}")
        if not hmac.compare_digest(mac.encode(), expected.encode()):
            return False
        try:
            return int(body) >= (now if now is not None else time.time())
        except ValueError:
            return False


__all__ = [
    "COOKIE_NAME",
    "CSRF_HEADER",
    "DashboardAuth",
    "OPERATOR_RE",
    "Principal",
    "token_fingerprint",
    "valid_operator",
]
