"""Start a throwaway real ``redis-server`` on a free port (tests, benchmarks, the demo).

Used by the pytest fixtures and the demo. In CI (``CI=true``) a missing ``redis-server``
is an error, never a silent skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import redis


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    """A running ``redis-server`` child process.

    Attributes:
        port: the port it listens on (loopback only).
        appendonly: AOF persistence (the chaos suite restarts Redis and expects data back).
    """

    port: int = field(default_factory=free_port)
    appendonly: bool = False
    executable: str | None = None
    process: subprocess.Popen[bytes] | None = None
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="atlas-redis-")))

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers PING."""
        exe = self.executable or shutil.which("redis-server")
        if exe is None:
            raise RuntimeError(
                "redis-server not found on PATH; install it (Debian: apt-get install redis-server)"
            )
        args = [
            exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec", "--dir", str(self.directory),
            "--notify-keyspace-events", "Ex", "--loglevel", "warning",
            # Faster active expiry: idle clocks run out closer to their deadline.
            "--hz", "100",
            # Redis 7.0 preallocates min(4096, this) bytes for every new stream; a
            # session's event log is a few hundred bytes (bench/RESULTS.md, memory).
            "--stream-node-max-bytes", "1024",
            # Session records (values up to the ~0.5 KB compute JSON) stay compact
            # listpacks instead of hashtables: about 1 KB less per running session.
            "--hash-max-listpack-value", "1024",
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if client.ping():
                    break
            except redis.exceptions.RedisError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"redis-server did not start on port {self.port}: {err}")
            time.sleep(0.02)
        client.close()
        return self

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s)."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port and directory (keeps AOF data)."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop and remove the data directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


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
