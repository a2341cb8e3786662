"""examples/web_node.py against the real cluster: spawn, touch, info, SSE events, stop."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
import pytest

from atlas_tasks.testing.localstack import LocalCluster

pytestmark = pytest.mark.integration

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from examples.web_node import app  # noqa: E402


def test_web_node_round_trip(cluster: LocalCluster) -> None:
    async def main() -> list[str]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            opened = await client.post("/sessions", json={"user_id": 7, "idle_ttl_ms": 60_000})
            assert opened.status_code == 201, opened.text
            sid, token = opened.json()["session"], opened.json()["token"]
            assert len(token) >= 32
            for _ in range(100):
                info = (await client.get(f"/sessions/{sid}")).json()
                if info["status"] == "running":
                    break
                await asyncio.sleep(0.1)
            assert info["status"] == "running" and info["user_id"] == 7
            assert info["ports"][0]["url"].endswith("-8000.proxy.runpod.net")
            assert (await client.post(f"/sessions/{sid}/touch")).status_code == 204
            assert (await client.delete(f"/sessions/{sid}")).status_code == 202
            seen = []
            async with client.stream("GET", f"/sessions/{sid}/events") as response:
                async for line in response.aiter_lines():
                    if line.startswith("event: "):
                        seen.append(line.removeprefix("event: "))
            assert (await client.post(f"/sessions/{sid}/touch")).status_code == 404
            return seen

    seen = asyncio.run(main())
    assert seen[0] == "status" and "terminating" in seen and seen[-1] == "status"
