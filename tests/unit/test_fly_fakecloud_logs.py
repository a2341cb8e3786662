"""The fake cloud's Fly logs endpoint and its admin controls (loopback server thread)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from atlas_tasks.testing.fakecloud import DEFAULT_API_KEY, FakeCloud
from atlas_tasks.testing.fakecloud.config import ScriptRule
from atlas_tasks.testing.fakecloud.fly_logs import fly_logs_state

AUTH = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
LOGS = "/fly/api/v1/apps/web/logs"


@pytest.fixture(scope="module")
def cloud() -> Iterator[FakeCloud]:
    with FakeCloud() as c:
        yield c


@pytest.fixture
def client(cloud: FakeCloud) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cloud.url) as c:
        c.delete("/_admin/fly/logs")  # every test starts with no logs and default auth
        yield c


def test_json_api_document_and_paging(client: httpx.Client) -> None:
    assert client.get(LOGS, headers=AUTH).json() == {"data": [], "meta": {"next_token": ""}}
    assert client.post("/_admin/fly/logs/web", json={"count": 2}).json() == {
        "appended": 2,
        "total": 2,
    }
    doc = client.get(LOGS, headers=AUTH).json()
    item = doc["data"][0]
    assert item["type"] == "logs" and item["id"]
    assert set(item["attributes"]) == {
        "timestamp",
        "message",
        "level",
        "instance",
        "region",
        "meta",
    }
    assert item["attributes"]["timestamp"].endswith("Z")
    token = doc["meta"]["next_token"]
    assert client.get(LOGS, params={"next_token": token}, headers=AUTH).json()["data"] == []
    client.post("/_admin/fly/logs/web", json={"entries": [{"message": "x", "level": "warn"}]})
    newer = client.get(LOGS, params={"next_token": token}, headers=AUTH).json()
    assert [d["attributes"]["level"] for d in newer["data"]] == ["warn"]
    assert int(newer["meta"]["next_token"]) > int(token)


def test_auth_rotation_and_bad_input(client: httpx.Client) -> None:
    assert client.get(LOGS).status_code == 401
    assert client.get(LOGS, headers={"Authorization": "Bearer nope"}).status_code == 401
    client.post("/_admin/fly/logs-auth", json={"tokens": ["new"]})
    assert client.get(LOGS, headers=AUTH).status_code == 401
    assert client.get(LOGS, headers={"Authorization": "Bearer new"}).status_code == 200
    assert (
        client.get(
            LOGS, params={"next_token": "abc"}, headers={"Authorization": "Bearer new"}
        ).status_code
        == 400
    )
    assert (
        client.post("/_admin/fly/logs/web", json={"entries": [{"no": "message"}]}).status_code
        == 400
    )
    assert client.post("/_admin/fly/logs-auth", json={"tokens": "x"}).status_code == 400
    stats = client.get("/_admin/fly/logs/web").json()
    assert (stats["requests"], stats["unauthorized"]) == (5, 3)
    client.delete("/_admin/fly/logs")
    assert client.get(LOGS, headers=AUTH).status_code == 200  # default keys again
    assert client.get("/_admin/fly/logs/web").json()["requests"] == 1


def test_script_faults_apply(client: httpx.Client, cloud: FakeCloud) -> None:
    ctx = cloud.ctx
    ctx.faults.add_rule(ScriptRule(match="GET /apps/*/logs", status=503, times=1))
    assert client.get(LOGS, headers=AUTH).status_code == 503
    assert client.get(LOGS, headers=AUTH).status_code == 200
    assert fly_logs_state(ctx).stats("web")["max_inflight"] == 1
