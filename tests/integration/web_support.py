"""Helpers of the web integration tests: parse Server-Sent Events."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any


def sse_messages(chunks: Iterable[bytes | str]) -> Iterator[dict[str, Any]]:
    """Parse SSE text into ``{"id", "event", "data"}`` dicts (comments skipped)."""
    buffer = ""
    for chunk in chunks:
        buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            message: dict[str, Any] = {"id": None}
            for line in block.splitlines():
                if line.startswith(":"):
                    continue
                key, _, value = line.partition(": ")
                message[key] = json.loads(value) if key == "data" else value
            if "event" in message:
                yield message


def status_of(message: dict[str, Any]) -> str | None:
    """``data.status`` of a ``status`` event, else None."""
    if message.get("event") != "status":
        return None
    return message["data"]["data"].get("status")  # type: ignore[no-any-return]


# ------------------------------------------------------------------ Django processes
import os  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402

from atlas_tasks.testing.localstack import ManagedProcess  # noqa: E402


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def manage(project: Path, env: dict[str, str], *args: str) -> str:
    """Run ``python manage.py ARGS`` in ``project``; returns its output (raises on error)."""
    done = subprocess.run(
        [sys.executable, str(project / "manage.py"), *args],
        env=env,
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def create_users(project: Path, env: dict[str, str], *names: str, staff: bool = False) -> None:
    """Users ``names`` with password ``pw-<name>``."""
    code = "from django.contrib.auth.models import User\n" + "".join(
        f"User.objects.create_user({n!r}, password='pw-{n}', is_staff={staff})\n" for n in names
    )
    manage(project, env, "shell", "-c", code)


def serve(name: str, args: list[str], env: dict[str, str], port: int, cwd: Path) -> ManagedProcess:
    """Start a server process and wait until it answers HTTP on ``port``."""
    proc = ManagedProcess(name, args, {**env, "PYTHONPATH": str(cwd)}).start()

    def answers() -> bool:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return True
        except httpx.HTTPError:
            return False

    proc.wait_until(answers, 60, f"HTTP on port {port}")
    return proc


def wait_status(client: httpx.Client, url: str, status: str, timeout: float = 30) -> Any:
    """Poll ``GET url`` until its JSON ``status`` is ``status`` (returns the JSON)."""
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(url).json()
        if body.get("status") == status or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def sse(
    client: httpx.Client, url: str, until: str, last_id: str | None = None
) -> list[dict[str, Any]]:
    """Read the SSE stream at ``url`` until a status event ``until`` (or its end)."""
    headers = {"Last-Event-ID": last_id} if last_id else {}
    seen: list[dict[str, Any]] = []
    with client.stream("GET", url, headers=headers, timeout=30) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for message in sse_messages(response.iter_text()):
            seen.append(message)
            if status_of(message) == until:
                break
    return seen


__all__ = [
    "create_users",
    "free_port",
    "manage",
    "os",
    "serve",
    "sse",
    "sse_messages",
    "status_of",
    "wait_status",
]
