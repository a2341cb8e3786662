"""Small pieces shared by every Redis store (sessions, jobs): the Lua "now" snippet and
the tolerant JSON decoder of hash fields.

Every store script takes its time from Redis ``TIME`` (web nodes and workers then share
one clock, and scripts are effect-replicated since Redis 5, so ``TIME`` is allowed).
"""

from __future__ import annotations

import json
from typing import Any

#: Lua prelude defining ``now``: Redis server time in milliseconds.
LUA_NOW = (
    "local _t = redis.call('TIME') "
    "local now = tonumber(_t[1]) * 1000 + math.floor(tonumber(_t[2]) / 1000)\n"
)


def decode_json(value: str | None) -> Any:
    """The JSON value of a hash field; ``None`` when the field is missing, empty or not
    JSON (a record written by another version must not break a read)."""
    if not value:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return None


__all__ = ["LUA_NOW", "decode_json"]
