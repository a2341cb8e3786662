"""Small pieces shared by every Redis store (sessions, jobs): the Lua "now" snippet and
the tolerant JSON decoder of hash fields.

Every store script takes its time from Redis ``TIME`` (web nodes and workers then share
one clock, and scripts are effect-replicated since Redis 5, so ``TIME`` is allowed).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import redis
from redis.commands.core import Script

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


def flat_hash(flat: list[Any]) -> dict[str, str]:
    """A hash from a script's flat ``HGETALL`` reply (``[field, value, ...]``)."""
    items = [str(x) for x in flat]
    return dict(zip(items[::2], items[1::2], strict=True))


def pipeline_script(
    pipe: Any, script: Script, keys: Sequence[str], args: Sequence[str | int | float]
) -> None:
    """Queue ``script`` on ``pipe`` as a raw ``EVALSHA`` (routed by its first key).

    redis-py's cluster pipelines refuse ``Script`` calls, and no pipeline loads a script
    it lacks; call :func:`load_scripts` on the client before executing the pipeline."""
    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)


def load_scripts(client: redis.Redis, *scripts: Script) -> None:
    """``SCRIPT LOAD`` each script (on every primary of a cluster) so pipelined
    ``EVALSHA`` calls find them."""
    for script in scripts:
        client.script_load(script.script)


__all__ = ["LUA_NOW", "decode_json", "flat_hash", "load_scripts", "pipeline_script"]
