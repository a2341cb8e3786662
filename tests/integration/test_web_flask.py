"""examples/flask_app against the real cluster (Flask test client, real Redis, worker and
fake cloud): open, SSE until running, touch, info, list, another user refused on every
route, Last-Event-ID resume, stop."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from atlas_tasks.config import configure
from atlas_tasks.errors import AtlasError
from atlas_tasks.testing.localstack import LocalCluster
from tests.integration.web_support import sse_messages, status_of

pytestmark = pytest.mark.integration

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from examples.flask_app.app import create_app  # noqa: E402


@pytest.fixture
def app(cluster: LocalCluster) -> Iterator[Flask]:
    configure()
    app = create_app(
        {"TESTING": True, "ATLAS_REDIS_URL": cluster.redis_url, "ATLAS_SSE_KEEPALIVE_S": 2}
    )
    yield app
    configure()  # the overrides are process-wide: leave none to the next test


def _login(app: Flask, user: str) -> FlaskClient:
    c = app.test_client()
    assert c.post("/login", json={"user": user}).status_code == 200
    return c


def _events(
    c: FlaskClient, sid: str, until: str, last_id: str | None = None
) -> list[dict[str, Any]]:
    headers = {"Last-Event-ID": last_id} if last_id else {}
    response = c.get(f"/atlas/sessions/{sid}/events", headers=headers, buffered=False)
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    seen = []
    try:
        for message in sse_messages(response.response):
            seen.append(message)
            if status_of(message) == until:
                break
    finally:
        response.close()
    return seen


def test_flask_example_end_to_end(app: Flask) -> None:
    alice, bob = _login(app, "alice"), _login(app, "bob")
    opened = alice.post("/atlas/sessions", json={"preset": "default"})
    assert opened.status_code == 201, opened.text
    body = opened.get_json()
    sid = body["session"]
    assert body["status"] == "spawning" and len(body["token"]) >= 32

    running = _events(alice, sid, "running")
    assert status_of(running[0]) == "spawning" and status_of(running[-1]) == "running"
    assert all(m["id"] for m in running)  # each carries its stream id

    assert alice.post(f"/atlas/sessions/{sid}/touch").status_code == 204
    info = alice.get(f"/atlas/sessions/{sid}").get_json()
    assert info["status"] == "running" and info["user_id"] == "alice"
    assert body["token"] not in str(info)  # the token is shown once, in the POST answer
    listed = alice.get("/atlas/sessions").get_json()["sessions"]
    assert [s["id"] for s in listed][:1] == [sid]
    assert sid not in [s["id"] for s in bob.get("/atlas/sessions").get_json()["sessions"]]

    assert alice.delete(f"/atlas/sessions/{sid}").status_code == 202
    ended = _events(alice, sid, "terminated")
    assert status_of(ended[-1]) == "terminated"
    assert alice.post(f"/atlas/sessions/{sid}/touch").status_code == 404


def test_another_user_is_refused_on_every_route(app: Flask) -> None:
    alice, bob = _login(app, "alice"), _login(app, "bob")
    anonymous = app.test_client()
    sid = alice.post("/atlas/sessions", json={"preset": "default"}).get_json()["session"]
    routes = [
        ("get", f"/atlas/sessions/{sid}"),
        ("post", f"/atlas/sessions/{sid}/touch"),
        ("get", f"/atlas/sessions/{sid}/events"),
        ("delete", f"/atlas/sessions/{sid}"),
    ]
    for method, url in routes:
        r = getattr(bob, method)(url)
        assert r.status_code == 404, (method, url, r.status_code)
        assert r.get_json()["error"] == "not_found"
        assert getattr(anonymous, method)(url).status_code == 401, (method, url)
    assert anonymous.get("/atlas/sessions").status_code == 401
    assert anonymous.post("/atlas/sessions", json={}).status_code == 401
    assert sid not in [s["id"] for s in bob.get("/atlas/sessions").get_json()["sessions"]]
    # bob's DELETE did nothing: alice's session still runs to `running` and can be stopped
    assert status_of(_events(alice, sid, "running")[-1]) == "running"
    assert alice.delete(f"/atlas/sessions/{sid}").status_code == 202


def test_sse_resumes_after_last_event_id_without_loss_or_duplicate(app: Flask) -> None:
    alice = _login(app, "alice")
    sid = alice.post("/atlas/sessions", json={"preset": "default"}).get_json()["session"]
    _events(alice, sid, "running")
    assert alice.delete(f"/atlas/sessions/{sid}").status_code == 202
    full = _events(alice, sid, "terminated")
    ids = [m["id"] for m in full]
    # running (replayed from the record: the log is compacted once running),
    # terminating, terminated
    assert len(ids) >= 3 and len(set(ids)) == len(ids)
    for cut in range(len(ids) - 1):
        resumed = _events(alice, sid, "terminated", last_id=ids[cut])
        assert [m["id"] for m in resumed] == ids[cut + 1 :]


def test_presets_and_bad_input(app: Flask) -> None:
    alice = _login(app, "alice")
    r = alice.post("/atlas/sessions", json={"preset": "huge"})
    assert r.status_code == 422 and r.get_json()["error"] == "validation"
    assert "preset" in r.get_json()["message"]
    r = alice.post("/atlas/sessions", json={"image": "evil/miner"})
    assert r.status_code == 422 and r.get_json()["message"].startswith("image")
    r = alice.get("/atlas/sessions/nope/events", headers={"Last-Event-ID": "x"})
    assert r.status_code == 404  # ownership first: an unknown id says nothing more


def test_typo_in_config_names_the_key_and_the_closest() -> None:
    with pytest.raises(AtlasError) as caught:
        create_app({"ATLAS_REDIS_ULR": "redis://x"})
    assert caught.value.kind == "validation"
    message = caught.value.message or ""
    assert "ATLAS_REDIS_ULR" in message and "REDIS_URL" in message
    configure()
