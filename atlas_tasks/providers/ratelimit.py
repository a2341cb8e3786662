"""Rate-limit state a provider reports in ``RateLimit`` / ``RateLimit-Policy`` headers.

RunPod REST v2 sends both on every authenticated answer, not only on 429s, as structured
field lists (RFC 9651, the IETF ratelimit-headers draft) with one member per window::

    RateLimit:        "minute";r=0;t=12, "hour";r=2800;t=1812, "day";r=49500;t=45012
    RateLimit-Policy: "minute";q=60;w=60, "hour";q=3000;w=3600, "day";q=50000;w=86400

``r`` is the remaining request count, ``t`` the seconds until the window resets, ``q`` the
quota and ``w`` the window length in seconds. :func:`parse_rate_limit` turns the pair into a
:class:`RateLimit` that the HTTP layer hands to every request hook
(:attr:`~atlas_tasks.providers.base.RequestInfo.rate_limit`), so a fleet-wide budget can
slow down before the cloud starts answering 429. Parsing uses ``http-sf`` (a maintained
structured-field parser); a header it cannot read is ignored, never an error, because the
answer itself is still good.

Example::

    limit = parse_rate_limit('"minute";r=0;t=12', '"minute";q=60;w=60')
    limit.window("minute")          # RateLimitWindow(name='minute', remaining=0, ...)
    limit.exhausted                 # True
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import http_sf

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RateLimitWindow:
    """One quota window as the provider reports it.

    Attributes:
        name: the window's name (``minute``, ``hour``, ``day``).
        remaining: requests left in the current window (``r``), if reported.
        reset_s: seconds until the window resets (``t``), if reported.
        quota: requests allowed per window (``q``), if reported.
        window_s: window length in seconds (``w``), if reported.
    """

    name: str
    remaining: int | None = None
    reset_s: int | None = None
    quota: int | None = None
    window_s: int | None = None


@dataclass(frozen=True)
class RateLimit:
    """Every window of one answer's ``RateLimit`` and ``RateLimit-Policy`` headers.

    Attributes:
        windows: one entry per window name, in the order the headers list them.
    """

    windows: tuple[RateLimitWindow, ...]

    def window(self, name: str) -> RateLimitWindow | None:
        """The window called ``name``, or ``None``."""
        return next((w for w in self.windows if w.name == name), None)

    @property
    def exhausted(self) -> bool:
        """True when some window has no request left."""
        return any(w.remaining == 0 for w in self.windows)

    @property
    def reset_after_s(self) -> int | None:
        """Seconds until every exhausted window has reset (``None`` if none is exhausted)."""
        waits = [w.reset_s for w in self.windows if w.remaining == 0 and w.reset_s is not None]
        return max(waits) if waits else None


def _members(value: str | None, header: str) -> list[tuple[str, dict[str, int]]]:
    """``[(window name, {param: int})]`` of one header; ``[]`` when absent or unreadable."""
    if not value or not value.strip():
        return []
    try:
        parsed = http_sf.parse(value.encode("ascii", errors="replace"), tltype="list")
    except http_sf.StructuredFieldError as exc:
        logger.debug("ignoring unreadable %s header %r: %s", header, value[:200], exc)
        return []
    out: list[tuple[str, dict[str, int]]] = []
    for member in parsed if isinstance(parsed, list) else []:
        if not isinstance(member, tuple) or len(member) != 2:
            continue
        name, params = member
        if not isinstance(name, str) or not isinstance(params, Mapping):
            continue  # an inner list or a non-string item: not a window
        ints = {
            str(k): v for k, v in params.items() if isinstance(v, int) and not isinstance(v, bool)
        }
        out.append((name, ints))
    return out


def parse_rate_limit(limit: str | None, policy: str | None) -> RateLimit | None:
    """The :class:`RateLimit` of a ``RateLimit`` and a ``RateLimit-Policy`` header value.

    Windows are matched by name; a window named in only one header keeps ``None`` for the
    other header's numbers. Returns ``None`` when neither header has a readable window.
    """
    windows: dict[str, dict[str, int | None]] = {}
    for name, params in _members(limit, "RateLimit"):
        entry = windows.setdefault(name, {})
        entry["remaining"], entry["reset_s"] = params.get("r"), params.get("t")
    for name, params in _members(policy, "RateLimit-Policy"):
        entry = windows.setdefault(name, {})
        entry["quota"], entry["window_s"] = params.get("q"), params.get("w")
    if not windows:
        return None
    return RateLimit(
        tuple(RateLimitWindow(name=name, **fields) for name, fields in windows.items())
    )


def rate_limit_from_headers(headers: Mapping[str, str]) -> RateLimit | None:
    """:func:`parse_rate_limit` of a response's headers (case-insensitive mapping)."""
    return parse_rate_limit(headers.get("RateLimit"), headers.get("RateLimit-Policy"))


__all__ = ["RateLimit", "RateLimitWindow", "parse_rate_limit", "rate_limit_from_headers"]
