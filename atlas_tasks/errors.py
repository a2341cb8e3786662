"""The error tree of atlas_tasks.

Every failure a caller can see is an :class:`AtlasError`. Its ``kind`` says what went
wrong, and each kind also has its own subclass, so callers can catch either way::

    AtlasError                      kind=...        (root; .provider .status .message .raw)
    ├── UnauthorizedError           "unauthorized"  HTTP 401, missing API key
    ├── ForbiddenError              "forbidden"     HTTP 403
    ├── NotFoundError               "not_found"     HTTP 404, unknown id
    │   └── NotTracked              "not_found"     session id unknown to the registry
    ├── RateLimitedError            "rate_limited"  HTTP 429 (after retries)
    ├── AtlasTimeoutError           "timeout"       HTTP 408, client-side deadlines
    ├── UnsupportedError            "unsupported"   provider lacks the operation
    ├── ValidationError             "validation"    bad input; the field is named
    ├── ProviderError               "provider"      any other 4xx/5xx, malformed bodies
    ├── TransportError              "transport"     connection refused/reset, timeouts on the wire
    ├── QuotaExceeded               "quota_exceeded" a user/tenant quota or budget refused
    │                                               (atlas_tasks.quotas; HTTP 429 on the web)
    └── UnknownError                "unknown"       anything else (e.g. an unexpected 2xx)

``AtlasError(kind="validation", message=...)`` builds the matching subclass, so
``except ValidationError`` catches it too. Failures are mapped to this tree in two
places only: :func:`error_from_response` for HTTP answers and the providers' HTTP layer
for transport exceptions.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal, cast

ErrorKind = Literal[
    "unauthorized",
    "forbidden",
    "not_found",
    "rate_limited",
    "timeout",
    "unsupported",
    "validation",
    "provider",
    "transport",
    "quota_exceeded",
    "unknown",
]

#: Every kind, in the order of the docs.
ERROR_KINDS: tuple[ErrorKind, ...] = (
    "unauthorized",
    "forbidden",
    "not_found",
    "rate_limited",
    "timeout",
    "unsupported",
    "validation",
    "provider",
    "transport",
    "quota_exceeded",
    "unknown",
)

_SUBCLASS_BY_KIND: dict[str, type[AtlasError]] = {}


class AtlasError(Exception):
    """Root of every atlas_tasks error.

    Args:
        message: human-readable explanation (never contains a secret).
        kind: one of :data:`ERROR_KINDS`; defaults to the subclass's own kind.
        provider: provider name the error came from (``None`` for atlas itself).
        status: HTTP status, when there was one.
        raw: the provider's decoded body or the original exception, for debugging.
    """

    default_kind: ClassVar[ErrorKind] = "unknown"

    def __new__(cls, *args: Any, kind: str | None = None, **kwargs: Any) -> AtlasError:
        # ``AtlasError(kind="not_found")`` returns a NotFoundError so both catch styles work.
        target: type[AtlasError] = cls
        if kind is not None and cls is AtlasError:
            target = _SUBCLASS_BY_KIND.get(kind, cls)
        return Exception.__new__(target)

    def __init__(
        self,
        message: str | None = None,
        *,
        kind: str | None = None,
        provider: str | None = None,
        status: int | None = None,
        raw: Any = None,
    ) -> None:
        resolved = kind or self.default_kind
        if resolved not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {resolved!r}; known: {', '.join(ERROR_KINDS)}")
        self.kind: ErrorKind = resolved  # checked against ERROR_KINDS just above
        self.provider = provider
        self.status = status
        self.message = message
        self.raw = raw
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.provider or "atlas"
        http = f" (HTTP {self.status})" if self.status is not None else ""
        return f"[{where}] {self.kind}{http}: {self.message or 'no message'}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(kind={self.kind!r}, provider={self.provider!r}, "
            f"status={self.status!r}, message={self.message!r})"
        )

    def __reduce__(self) -> Any:
        # Keep kind/provider/status across pickling (multiprocessing, some result backends).
        return (_rebuild_error, (self.to_dict(),))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe description (``raw`` is dropped: it may hold provider secrets)."""
        data: dict[str, Any] = {
            "kind": self.kind,
            "provider": self.provider,
            "status": self.status,
            "message": self.message,
        }
        if getattr(self, "field", None):
            data["field"] = self.field  # type: ignore[attr-defined]  # ValidationError only
        if isinstance(self, QuotaExceeded):
            data["quota"] = self.quota_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AtlasError:
        """Rebuild an error produced by :meth:`to_dict` (e.g. carried in a task result)."""
        kind = str(data.get("kind") or "unknown")
        if kind not in ERROR_KINDS:
            kind = "unknown"
        error = AtlasError(
            data.get("message"),
            kind=kind,
            provider=data.get("provider"),
            status=data.get("status"),
        )
        if isinstance(error, ValidationError):
            error.field = data.get("field")
        if isinstance(error, QuotaExceeded) and isinstance(data.get("quota"), dict):
            error._restore_quota(data["quota"])
        return error


def _rebuild_error(data: dict[str, Any]) -> AtlasError:
    return AtlasError.from_dict(data)


class UnauthorizedError(AtlasError):
    """The credentials were missing or rejected (HTTP 401)."""

    default_kind = "unauthorized"


class ForbiddenError(AtlasError):
    """The credentials are valid but not allowed to do this (HTTP 403)."""

    default_kind = "forbidden"


class NotFoundError(AtlasError):
    """The resource does not exist (HTTP 404 or an unknown id)."""

    default_kind = "not_found"


class NotTracked(NotFoundError):
    """The session id is not (or no longer) in the session registry."""


class RateLimitedError(AtlasError):
    """The provider kept answering 429 after the retries allowed."""

    default_kind = "rate_limited"


class AtlasTimeoutError(AtlasError):
    """A deadline passed: HTTP 408, a sync job's hard timeout, ``Session.wait``."""

    default_kind = "timeout"


class UnsupportedError(AtlasError):
    """The provider does not implement this operation."""

    default_kind = "unsupported"


class ValidationError(AtlasError):
    """Bad input; the message names the offending field.

    Attributes:
        field: dotted name of the offending field, when known.
    """

    default_kind = "validation"

    def __init__(self, message: str | None = None, *, field: str | None = None, **kw: Any) -> None:
        self.field = field
        super().__init__(message, **kw)


class ProviderError(AtlasError):
    """The provider failed (other 4xx/5xx, or a body we cannot understand)."""

    default_kind = "provider"


class TransportError(AtlasError):
    """The request never got a usable HTTP answer (refused, reset, timed out on the wire)."""

    default_kind = "transport"


class QuotaExceeded(AtlasError):
    """A user or tenant quota refused an admission (:mod:`atlas_tasks.quotas`).

    Nothing was reserved. The message names the limit, the usage and the limit; the same
    facts are attributes, for callers that build their own answer.

    Attributes:
        scope: ``"user"`` or ``"tenant"``: whose limit refused.
        scope_id: the user or tenant id.
        limit_name: ``"max_sessions"``, ``"max_hourly_usd"`` or ``"monthly_usd"``.
        usage: the current value of the limited quantity: live sessions, committed USD per
            hour, or USD spent this month.
        limit: the limit's value (same unit as ``usage``).
        requested: what the refused admission would have added (1 session, or its USD per
            hour; for ``monthly_usd``, the live sessions' committed USD per hour plus the
            new one's, i.e. one more hour of everything).
    """

    default_kind = "quota_exceeded"

    def __init__(
        self,
        message: str | None = None,
        *,
        scope: str | None = None,
        scope_id: str | None = None,
        limit_name: str | None = None,
        usage: float | None = None,
        limit: float | None = None,
        requested: float | None = None,
        **kw: Any,
    ) -> None:
        self.scope = scope
        self.scope_id = scope_id
        self.limit_name = limit_name
        self.usage = usage
        self.limit = limit
        self.requested = requested
        super().__init__(message, **kw)

    def quota_dict(self) -> dict[str, Any]:
        """The quota facts as a JSON-safe dict (carried by :meth:`to_dict` and pickling)."""
        return {
            "scope": self.scope,
            "scope_id": self.scope_id,
            "limit_name": self.limit_name,
            "usage": self.usage,
            "limit": self.limit,
            "requested": self.requested,
        }

    def _restore_quota(self, data: dict[str, Any]) -> None:
        for name in ("scope", "scope_id", "limit_name", "usage", "limit", "requested"):
            setattr(self, name, data.get(name))


class UnknownError(AtlasError):
    """Anything that fits no other kind, e.g. an unexpected 2xx status."""

    default_kind = "unknown"


for _cls in (
    UnauthorizedError,
    ForbiddenError,
    NotFoundError,
    RateLimitedError,
    AtlasTimeoutError,
    UnsupportedError,
    ValidationError,
    ProviderError,
    TransportError,
    QuotaExceeded,
    UnknownError,
):
    _SUBCLASS_BY_KIND[_cls.default_kind] = _cls


_STATUS_KINDS: dict[int, ErrorKind] = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    408: "timeout",
    429: "rate_limited",
}


def kind_for_status(status: int) -> ErrorKind:
    """Map an HTTP status to an error kind (401/403/404/408/429, 4xx/5xx → provider)."""
    if status in _STATUS_KINDS:
        return _STATUS_KINDS[status]
    if 400 <= status <= 599:
        return "provider"
    return "unknown"


def extract_message(body: Any) -> str | None:
    """Find the human message in a provider error body.

    Tried in order: ``error.message``, ``error`` (string), ``message``, ``msg`` (Vast),
    ``errors[0].message``, ``errors[0].detail`` (JSON:API), a bare string body.
    Bytes and JSON strings are decoded first.
    """
    if isinstance(body, bytes | bytearray):
        body = body.decode("utf-8", errors="replace")
    if isinstance(body, str):
        stripped = body.strip()
        if stripped.startswith(("{", "[")):
            try:
                body = json.loads(stripped)
            except ValueError:
                return stripped[:500] or None
        else:
            return stripped[:500] or None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return cast(str, err["message"])
        if isinstance(err, str) and err:
            return err
        for key in ("message", "msg", "detail"):
            if isinstance(body.get(key), str) and body[key]:
                return cast(str, body[key])
        errors = body.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
            for key in ("message", "detail", "title"):
                if isinstance(first.get(key), str):
                    return cast(str, first[key])
    return None


def error_from_response(status: int, body: Any, provider: str | None) -> AtlasError:
    """Build the :class:`AtlasError` for an HTTP answer the caller did not expect.

    Args:
        status: HTTP status code.
        body: decoded JSON, text or bytes of the response body.
        provider: provider name, shown in ``str(err)``.
    """
    kind = kind_for_status(status)
    message = extract_message(body) or f"unexpected HTTP {status}"
    return AtlasError(message, kind=kind, provider=provider, status=status, raw=body)


def validation_error(field: str, message: str, *, provider: str | None = None) -> ValidationError:
    """A :class:`ValidationError` whose message starts with the field's name."""
    return ValidationError(f"{field}: {message}", field=field, provider=provider)


#: Error kinds worth retrying: the next attempt may well succeed.
TRANSIENT_KINDS = frozenset({"rate_limited", "transport", "provider", "timeout", "unknown"})


def is_transient(error: BaseException) -> bool:
    """Whether a retry could help (429, 5xx, transport, timeouts; not 4xx validation/auth).

    The one retry classification of provider errors (spawn, terminate, orphan terminate
    and job polling share it)."""
    if isinstance(error, AtlasError):
        if error.kind == "provider" and error.status is not None and 400 <= error.status < 500:
            return False
        return error.kind in TRANSIENT_KINDS
    return False


__all__ = [
    "ERROR_KINDS",
    "TRANSIENT_KINDS",
    "AtlasError",
    "AtlasTimeoutError",
    "ErrorKind",
    "ForbiddenError",
    "NotFoundError",
    "NotTracked",
    "ProviderError",
    "QuotaExceeded",
    "RateLimitedError",
    "TransportError",
    "UnauthorizedError",
    "UnknownError",
    "UnsupportedError",
    "ValidationError",
    "error_from_response",
    "extract_message",
    "is_transient",
    "kind_for_status",
    "validation_error",
]
