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
