"""S3-style HMAC-SHA256 signed URLs, for clients that cannot send headers (``<video src>``).

A signed URL carries two extra query parameters::

    https://pod-8000.proxy.runpod.net/stream?session=42&exp=1767225600&sig=9f86d0...

``exp`` is the expiry in Unix seconds (the URL is valid while ``now < exp``) and ``sig``
is the lowercase hex HMAC-SHA256, under the pod's signing secret, of::

    ATLAS-HMAC-SHA256 \\n <canonical path> \\n <canonical query> \\n <exp>

* **Canonical path**: the path percent-decoded to bytes, then re-encoded with only
  unreserved characters and ``/`` left bare; an empty path is ``/``. So ``/a b``,
  ``/a%20b`` and ``/%61%20b`` sign alike, exactly as a server routes them alike.
* **Canonical query**: every ``name=value`` pair except ``sig`` (``exp`` included),
  ``+`` read as a space, percent-decoded to bytes, re-encoded the same way, sorted, joined
  with ``&``. Parameter order, ``%7E`` vs ``~`` and ``+`` vs ``%20`` do not matter; any
  change of a decoded name or value does.

The scheme, host, port and fragment are *not* signed: a pod behind a cloud proxy sees
another host and scheme than the browser, and each pod has its own secret, so a URL signed
for one pod is useless on another.

:func:`verify_url` checks the URL a client holds; :func:`verify_request_target` checks the
path and query string a server received (what the pod-side middleware uses). Neither ever
raises anything but :class:`InvalidSignedUrl` for a bad URL, whatever the input.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import time
from typing import Literal
from urllib.parse import quote_from_bytes, unquote_to_bytes, urlsplit, urlunsplit

from atlas_tasks.errors import UnauthorizedError, validation_error

InvalidReason = Literal["expired", "bad_signature", "malformed"]

#: Query parameter carrying the expiry (Unix seconds).
EXP_PARAM = "exp"
#: Query parameter carrying the hex HMAC-SHA256.
SIG_PARAM = "sig"
#: Default lifetime of a signed URL, in seconds.
DEFAULT_EXPIRES_IN = 3600
#: Schemes a signed URL may use (ws/wss so browsers can open signed WebSockets).
SIGNABLE_SCHEMES = frozenset({"http", "https", "ws", "wss"})

# Versioned prefix so a future canonical form can never collide with this one.
_ALGORITHM = b"ATLAS-HMAC-SHA256"
# Twelve digits reach the year 33658; anything longer is garbage, not a date.
_EXP_RE = re.compile(rb"[0-9]{1,12}")
_SIG_RE = re.compile(rb"[0-9a-fA-F]{64}")


class InvalidSignedUrl(UnauthorizedError):  # noqa: N818 - public name fixed by DESIGN.md
    """A signed URL was rejected.

    Attributes:
        reason: ``"expired"`` (genuine but past ``exp``), ``"bad_signature"`` (tampered,
            or signed with another secret) or ``"malformed"`` (not a signed URL at all).
    """

    def __init__(self, reason: InvalidReason, message: str | None = None) -> None:
        self.reason: InvalidReason = reason
        # The message never includes the URL: its sig is a credential in its own right.
        super().__init__(message or f"signed URL rejected: {reason}")

    def __repr__(self) -> str:
        return f"InvalidSignedUrl(reason={self.reason!r}, message={self.message!r})"

    def __reduce__(self) -> tuple[type[InvalidSignedUrl], tuple[InvalidReason, str | None]]:
        # AtlasError pickles through to_dict(), which would drop ``reason``.
        return (InvalidSignedUrl, (self.reason, self.message))


def sign_url(
    url: str,
    *,
    secret: str | bytes,
    expires_in: int | float = DEFAULT_EXPIRES_IN,
    now: int | float | None = None,
) -> str:
    """Return ``url`` with ``exp`` and ``sig`` query parameters appended.

    Any ``exp``/``sig`` already in ``url`` are dropped first, so re-signing refreshes.
    The rest of the URL (query order, fragment) is kept as given.

    Args:
        url: absolute ``http``/``https``/``ws``/``wss`` URL with a host.
        secret: the pod's signing secret (``ATLAS_SIGNING_SECRET``), str or bytes.
        expires_in: lifetime in seconds (> 0).
        now: Unix time to count from (tests); defaults to :func:`time.time`.

    Raises:
        ValidationError: ``url``, ``secret``, ``expires_in`` or ``now`` is unusable.

    Example::

        sign_url("https://pod/stream?q=1", secret="s3cret", expires_in=60, now=1000)
        # -> "https://pod/stream?q=1&exp=1060&sig=<64 hex digits>"
    """
    key = _secret_bytes(secret)
    if not isinstance(url, str):
        raise validation_error("url", f"must be a str, got {type(url).__name__}")
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
        raise validation_error("expires_in", "must be a number of seconds")
    if not math.isfinite(expires_in) or expires_in <= 0:
        raise validation_error("expires_in", "must be a positive, finite number of seconds")
    deadline = _now(now, field="now") + expires_in
    if not math.isfinite(deadline) or deadline >= 10**12:
        raise validation_error("expires_in", "expiry is too far in the future")
    if deadline < 0:
        raise validation_error("now", "expiry would be before 1970")
    exp = int(math.floor(deadline))
    try:
        parts = urlsplit(url)
        _check_scheme_and_host(parts.scheme, parts.netloc)
        raw_query = parts.query.encode("utf-8")
        kept = [seg for seg in raw_query.split(b"&") if seg and _param_name(seg) not in _OURS]
        query = b"&".join([*kept, b"exp=%d" % exp])
        sig = _signature(key, parts.path.encode("utf-8"), query, exp)
    except ValueError as exc:  # bad IPv6 literal, lone surrogates (UnicodeEncodeError)...
        raise validation_error("url", f"not a signable URL ({exc.__class__.__name__})") from exc
    new_query = query.decode("utf-8") + f"&{SIG_PARAM}={sig}"
    return urlunsplit((parts.scheme, parts.netloc, parts.path, new_query, parts.fragment))


def verify_url(url: object, *, secret: str | bytes, now: int | float | None = None) -> None:
    """Check a signed URL; return ``None`` when it is genuine and unexpired.

    Args:
        url: the URL as the client holds it. Anything but a ``str`` is malformed.
        secret: the signing secret, str or bytes.
        now: Unix time to check against (tests); defaults to :func:`time.time`.

    Raises:
        InvalidSignedUrl: with ``reason`` ``"malformed"``, ``"bad_signature"`` or
            ``"expired"``. Nothing else, for any ``url``.
        ValidationError: ``secret`` or ``now`` is unusable (a caller bug, not a bad URL).
    """
    key = _secret_bytes(secret)
    when = _now(now, field="now")
    if not isinstance(url, str):
        raise InvalidSignedUrl("malformed", "signed URL must be a str")
    try:
        parts = urlsplit(url)
        scheme, netloc = parts.scheme, parts.netloc
        path, query = parts.path.encode("utf-8"), parts.query.encode("utf-8")
    except ValueError as exc:  # UnicodeEncodeError (lone surrogates) is a ValueError too
        raise InvalidSignedUrl("malformed", "not a parseable URL") from exc
    if scheme.lower() not in SIGNABLE_SCHEMES or not netloc:
        raise InvalidSignedUrl("malformed", "signed URL must be absolute http(s) or ws(s)")
    _verify(key, path, query, when)


def verify_request_target(
    raw_path: str | bytes,
    query_string: str | bytes,
    *,
    secret: str | bytes,
    now: int | float | None = None,
) -> None:
    """Check the path and query a server received, e.g. ASGI ``raw_path``/``query_string``.

    Servers should use this rather than rebuild a URL from the ``Host`` header: a
    crafted ``Host`` containing ``/`` or ``?`` could otherwise move the path being checked
    away from the path being served.

    Args:
        raw_path: the path as sent (percent-encoded); str is encoded as UTF-8.
        query_string: the raw query without ``?``; str is encoded as UTF-8.
        secret: the signing secret.
        now: Unix time to check against; defaults to :func:`time.time`.

    Raises:
        InvalidSignedUrl: as :func:`verify_url`.
        ValidationError: ``secret`` or ``now`` is unusable.
    """
    key = _secret_bytes(secret)
    when = _now(now, field="now")
    try:
        path = raw_path.encode("utf-8") if isinstance(raw_path, str) else raw_path
        query = query_string.encode("utf-8") if isinstance(query_string, str) else query_string
    except ValueError as exc:
        raise InvalidSignedUrl("malformed", "path or query is not encodable") from exc
    if not isinstance(path, bytes) or not isinstance(query, bytes):
        raise InvalidSignedUrl("malformed", "path and query must be str or bytes")
    _verify(key, path, query, when)


# --------------------------------------------------------------------------- internals

_OURS = frozenset({EXP_PARAM.encode(), SIG_PARAM.encode()})


def _verify(key: bytes, path: bytes, query: bytes, now: float) -> None:
    exps: list[bytes] = []
    sigs: list[bytes] = []
    for seg in query.split(b"&"):
        name = _param_name(seg)
        if name == b"exp":
            exps.append(_param_value(seg))
        elif name == b"sig":
            sigs.append(_param_value(seg))
    if len(exps) != 1 or len(sigs) != 1:
        # Missing or repeated: two readers could disagree on which one counts.
        raise InvalidSignedUrl("malformed", "need exactly one exp and one sig parameter")
    if not _EXP_RE.fullmatch(exps[0]):
        raise InvalidSignedUrl("malformed", "exp must be Unix seconds")
    exp = int(exps[0])
    given = sigs[0]
    if not _SIG_RE.fullmatch(given):
        raise InvalidSignedUrl("bad_signature", "signature does not match")
    expected = _signature(key, path, query, exp).encode("ascii")
    # Signature before expiry: only a genuine URL may learn that it merely expired.
    if not hmac.compare_digest(expected, given.lower()):
        raise InvalidSignedUrl("bad_signature", "signature does not match")
    if now >= exp:
        raise InvalidSignedUrl("expired", "signed URL has expired")


def _signature(key: bytes, path: bytes, query: bytes, exp: int) -> str:
    message = b"\n".join([_ALGORITHM, _canonical_path(path), _canonical_query(query), b"%d" % exp])
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _canonical_path(path: bytes) -> bytes:
    decoded = unquote_to_bytes(path) or b"/"
    return quote_from_bytes(decoded, safe="/").encode("ascii")


def _canonical_query(query: bytes) -> bytes:
    pairs: list[tuple[bytes, bytes]] = []
    for seg in query.split(b"&"):
        if not seg or _param_name(seg) == b"sig":
            continue
        name, _, value = seg.partition(b"=")
        pairs.append((_canonical_component(name), _canonical_component(value)))
    pairs.sort()
    return b"&".join(name + b"=" + value for name, value in pairs)


def _canonical_component(raw: bytes) -> bytes:
    # Form encoding: '+' is a space; a literal plus arrives as %2B.
    return quote_from_bytes(unquote_to_bytes(raw.replace(b"+", b" ")), safe="").encode("ascii")


def _param_name(seg: bytes) -> bytes:
    return unquote_to_bytes(seg.partition(b"=")[0].replace(b"+", b" "))


def _param_value(seg: bytes) -> bytes:
    return unquote_to_bytes(seg.partition(b"=")[2].replace(b"+", b" "))


def _check_scheme_and_host(scheme: str, netloc: str) -> None:
    if scheme.lower() not in SIGNABLE_SCHEMES:
        raise validation_error("url", "must be an absolute http(s) or ws(s) URL")
    if not netloc:
        raise validation_error("url", "must include a host")


def _secret_bytes(secret: object) -> bytes:
    if isinstance(secret, str):
        try:
            key = secret.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise validation_error("secret", "is not valid text") from exc
    elif isinstance(secret, bytes | bytearray):
        key = bytes(secret)
    else:
        raise validation_error("secret", "must be str or bytes")
    if not key:
        raise validation_error("secret", "must not be empty")
    return key


def _now(now: object, *, field: str) -> float:
    if now is None:
        return time.time()
    if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
        raise validation_error(field, "must be a finite Unix time in seconds")
    return float(now)


__all__ = [
    "DEFAULT_EXPIRES_IN",
    "EXP_PARAM",
    "SIGNABLE_SCHEMES",
    "SIG_PARAM",
    "InvalidReason",
    "InvalidSignedUrl",
    "sign_url",
    "verify_request_target",
    "verify_url",
]
