"""The logs client against the fake cloud's Fly logs endpoint over HTTP (no Celery)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from atlas_tasks.config import AtlasSettings
from atlas_tasks.errors import UnauthorizedError
from atlas_tasks.fly.logs import LogsClient
from atlas_tasks.fly.token_storage import MemoryTokenStorage, TokenRecord
from atlas_tasks.fly.tokens import FlyTokens
from atlas_tasks.testing.fakecloud import FakeCloud
from atlas_tasks.testing.fakecloud.fly_logs import fly_logs_state

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cloud() -> Iterator[FakeCloud]:
    with FakeCloud() as c:
        yield c


@pytest.fixture(autouse=True)
def _reset(cloud: FakeCloud) -> None:
    httpx.delete(f"{cloud.url}/_admin/fly/logs")


def client_for(
    cloud: FakeCloud, tmp_path: Path, *, stored: str, env: str | None = None
) -> tuple[LogsClient, FlyTokens]:
    storage = MemoryTokenStorage()
    storage.put("web", "cached", TokenRecord(stored, int(time.time()) + 3600))
    settings = AtlasSettings(
        fly_api_url=f"{cloud.url}/fly",
        fly_executable="no-fly-here",
        fly_config_file=str(tmp_path / "none.yml"),
        fly_api_token=env,
    )
    tokens = FlyTokens(storage, settings=settings, cluster_lock=False)
    return LogsClient(tokens=tokens, settings=settings), tokens


def test_paging_with_next_token(cloud: FakeCloud, tmp_path: Path) -> None:
    client, _ = client_for(cloud, tmp_path, stored=cloud.api_key)
    assert client.fetch("web").entries == []
    httpx.post(f"{cloud.url}/_admin/fly/logs/web", json={"count": 130})
    first = client.fetch("web")  # no token: Fly's latest 100
    assert [e.message for e in first.entries] == [f"line {i}" for i in range(31, 131)]
    assert first.next_token is not None
    empty = client.fetch("web", next_token=first.next_token)
    assert empty.entries == [] and empty.next_token == first.next_token
    httpx.post(
        f"{cloud.url}/_admin/fly/logs/web",
        json={
            "entries": [
                {"message": "boot", "region": "ams", "instance": "m2"},
                {"message": "ready"},
            ]
        },
    )
    newer = client.fetch("web", next_token=first.next_token)
    assert [e.message for e in newer.entries] == ["boot", "ready"]
    assert (newer.entries[0].region, newer.entries[0].instance) == ("ams", "m2")
    only_ams = client.fetch("web", next_token=first.next_token, region="ams")
    assert [e.message for e in only_ams.entries] == ["boot"]
    client.close()


def test_401_after_rotation_is_refetched_once_with_a_refreshed_token(
    cloud: FakeCloud, tmp_path: Path
) -> None:
    httpx.post(f"{cloud.url}/_admin/fly/logs/web", json={"count": 3})
    # the stored token worked until the fake rotated its valid token
    httpx.post(f"{cloud.url}/_admin/fly/logs-auth", json={"tokens": ["rotated-token"]})
    client, tokens = client_for(cloud, tmp_path, stored=cloud.api_key, env="rotated-token")
    page = client.fetch("web")
    assert [e.message for e in page.entries] == ["line 1", "line 2", "line 3"]
    stats = httpx.get(f"{cloud.url}/_admin/fly/logs/web").json()
    assert (stats["requests"], stats["unauthorized"]) == (2, 1)
    assert tokens.resolve("web").token == "rotated-token"

    # rotate again; the chain's next token (a manual one) is wrong too: one re-fetch only,
    # then the 401 is raised as is
    fly_logs_state(cloud.ctx).set_tokens(["another"])
    tokens.set_manual("web", "also-wrong")
    with pytest.raises(UnauthorizedError) as info:
        client.fetch("web")
    assert info.value.status == 401
    stats = httpx.get(f"{cloud.url}/_admin/fly/logs/web").json()
    assert (stats["requests"], stats["unauthorized"]) == (4, 3)
    # and with nothing left in the chain, no request is made at all
    tokens.clear_manual("web")
    with pytest.raises(UnauthorizedError) as info:
        client.fetch("web")
    assert "no_token_available" in str(info.value)
    httpx.post(f"{cloud.url}/_admin/fly/logs-auth", json={"tokens": None})
    client.close()
