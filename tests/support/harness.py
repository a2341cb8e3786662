"""Test-only helpers around the shipped local stack (:mod:`atlas_tasks.testing.localstack`).

What only the repository's tests, chaos suite and benchmarks need: whether we run in CI
(where a missing ``redis-server`` is an error, never a silent skip), a dump of every Redis
key to search for leaked secrets, and a Flower process.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, cast

import redis

from atlas_tasks.testing.localstack import ManagedProcess, celery_command


def redis_available() -> bool:
    """Whether a ``redis-server`` binary is on PATH."""
    return shutil.which("redis-server") is not None


def in_ci() -> bool:
    """True under CI (``CI=true``), where missing services are errors, not skips."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def dump_redis(url: str) -> bytes:
    """Every key and value in Redis as one byte string, to search for leaked secrets."""
    r = redis.Redis.from_url(url)
    out: list[bytes] = []
    for key in r.scan_iter(count=1000):
        kind = cast(bytes, r.type(key)).decode()
        value: Any
        if kind == "string":
            value = r.get(key)
        elif kind == "hash":
            value = r.hgetall(key)
        elif kind == "list":
            value = r.lrange(key, 0, -1)
        elif kind == "set":
            value = r.smembers(key)
        elif kind == "zset":
            value = r.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = r.xrange(key)
        else:
            value = kind
        out.append(key + b" " + repr(value).encode())
    r.close()
    return b"\n".join(out)


def flower(env: dict[str, str], port: int) -> ManagedProcess:
    """Flower on loopback ``port``."""
    args = celery_command("flower", f"--port={port}", "--address=127.0.0.1")
    return ManagedProcess("flower", args, env)
