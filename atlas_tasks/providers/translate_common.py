"""Small, pure helpers every provider's ``translate`` module reads wire shapes with.

Cloud answers are untrusted JSON: a field may be missing, ``null``, a string where a number
was documented, or a bool (which Python counts as an int). These helpers coerce such a value
to what atlas wants or to ``None``, never raising ``KeyError``/``TypeError``; a body that
cannot be understood at all becomes :func:`malformed` (a ``ProviderError``).

Example::

    gpu_count = as_int(body.get("gpuCount")) or 1
    price = as_float(offer.get("dph_total"))
    created = iso_datetime(body.get("createdAt", "").replace("Z", "+00:00"))
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from atlas_tasks.errors import ProviderError, validation_error
from atlas_tasks.specs import Port

N = TypeVar("N", int, float)


def malformed(provider: str, what: str, body: Any) -> ProviderError:
    """The ``ProviderError`` for an answer we cannot understand (``malformed answer: ...``).

    ``raw`` is the body when it is an object, else ``{"body": body}``.
    """
    raw = body if isinstance(body, dict) else {"body": body}
    return ProviderError(f"malformed answer: {what}", provider=provider, raw=raw)


def loads_json(content: bytes | str) -> Any:
    """Decode a provider's JSON body.

    Raises:
        ValueError: the body is not JSON. ``json`` raises ``RecursionError`` (not a
            ``ValueError``) for deeply nested input such as ``"[" * 100000``; it is turned
            into a ``ValueError`` here so every caller's ``except ValueError`` holds.
    """
    try:
        return json.loads(content)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc


def object_with_id(provider: str, body: Any, what: str) -> tuple[dict[str, Any], str]:
    """``body`` and its ``id``, when ``body`` is a JSON object with a non-empty string id.

    Raises:
        ProviderError: ``<what> is not a JSON object`` or ``<what> has no id``.
    """
    if not isinstance(body, dict):
        raise malformed(provider, f"{what} is not a JSON object", body)
    object_id = body.get("id")
    if not isinstance(object_id, str) or not object_id:
        raise malformed(provider, f"{what} has no id", body)
    return body, object_id


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` if it is a dict, else an empty dict (so ``.get`` chains never fail)."""
    return value if isinstance(value, dict) else {}


def str_or_none(value: Any) -> str | None:
    """``value`` if it is a non-empty string (kept as it is), else ``None``."""
    return value if isinstance(value, str) and value else None


def stripped_or_none(value: Any) -> str | None:
    """``value`` stripped, if it is a string with something besides whitespace, else ``None``."""
    return value.strip() if isinstance(value, str) and value.strip() else None


def as_int(value: Any, *, strings: bool = True) -> int | None:
    """An int from an int, an integral float or (when ``strings``) a numeric string.

    Bools, fractional floats, unparsable strings and anything else give ``None``.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if strings and isinstance(value, str):
        return _parsed(value, int)
    return None


def as_float(value: Any) -> float | None:
    """A float from an int, a float or a numeric string; ``None`` for bools and the rest."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return _parsed(value, float)
    return None


def _parsed(text: str, parse: Callable[[str], N]) -> N | None:
    """``parse(text.strip())``, or ``None`` when it raises ``ValueError``."""
    try:
        return parse(text.strip())
    except ValueError:
        return None


def iso_datetime(text: str) -> datetime | None:
    """An aware datetime from ISO 8601 text (naive times are taken as UTC), or ``None``
    when ``datetime.fromisoformat`` cannot read it. Callers normalize their cloud's
    variants first."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def tcp_port(internal: int, external: int | None, ip: str | None) -> Port:
    """A ``tcp`` :class:`Port`, with ``url = tcp://<ip>:<external>`` when both are known."""
    return Port(
        internal=internal,
        external=external,
        protocol="tcp",
        url=f"tcp://{ip}:{external}" if ip and external else None,
    )


def drop_none(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``mapping`` without its ``None`` values (omitted fields, not ``null``)."""
    return {k: v for k, v in mapping.items() if v is not None}


__all__ = [
    "as_dict",
    "as_float",
    "as_int",
    "drop_none",
    "iso_datetime",
    "loads_json",
    "malformed",
    "object_with_id",
    "refuse_foreign_opts",
    "refused_keys",
    "str_or_none",
    "stripped_or_none",
    "tcp_port",
]


def refuse_foreign_opts(
    opts: Mapping[str, Any],
    *,
    owned: Collection[str],
    known: Collection[str],
    unknown_why: str,
    allowed: Iterable[str],
    provider: str,
) -> None:
    """Refuse ``provider_opts`` keys that may not pass into a provider's request body.

    Args:
        opts: the options (string keys).
        owned: body fields atlas sets itself from the request (never overridden).
        known: every field of the provider's body.
        unknown_why: what a key outside ``known`` is not (e.g. "not in Lambda's
            InstanceLaunchRequest").
        allowed: the keys that would be accepted, listed in the error.
        provider: provider name for the error.

    Raises:
        ValidationError: field ``provider_opts``, naming every refused key at once.
    """
    problem = refused_keys(
        opts, owned=owned, known=known, owned_why="from the request", unknown_why=unknown_why
    )
    if problem:
        raise validation_error(
            "provider_opts", f"{problem}; allowed: {', '.join(sorted(allowed))}", provider=provider
        )


def refused_keys(
    given: Iterable[str],
    *,
    owned: Collection[str],
    known: Collection[str],
    owned_why: str,
    unknown_why: str,
) -> str | None:
    """What is wrong with the keys ``given`` for a provider body, or ``None`` if nothing.

    ``"<owned keys> set by atlas_tasks <owned_why>; <unknown keys> <unknown_why>"``: the
    keys atlas sets itself (``owned``) and those outside the body's fields (``known``),
    each group sorted, a group left out when it is empty.
    """
    keys = list(given)
    owned_keys = sorted(k for k in keys if k in owned)
    unknown = sorted(k for k in keys if k not in known)
    parts = []
    if owned_keys:
        parts.append(f"{', '.join(owned_keys)} set by atlas_tasks {owned_why}")
    if unknown:
        parts.append(f"{', '.join(unknown)} {unknown_why}")
    return "; ".join(parts) or None
