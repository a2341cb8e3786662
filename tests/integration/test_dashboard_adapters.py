"""The ops page's Django URLconf and Flask blueprint, and the standalone app's guards,
against a real redis-server (the session registry) with a recorded ``send_task``.

No worker runs here: the tests check who may call what, that actions need the CSRF
token, that they reach the registry / the task queue and are recorded as
``operator_action`` events naming the operator.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from atlas_tasks import constants as C
from atlas_tasks import events
from atlas_tasks.config import reset_settings
from atlas_tasks.dashboard.app import create_app
from atlas_tasks.dashboard.service import DashboardService
from atlas_tasks.dashboard.settings import DashboardSettings
from atlas_tasks.errors import ValidationError
from atlas_tasks.redis_conn import get_redis, reset_redis_clients
from atlas_tasks.sessions.records import SessionRecord, SessionStatus
from atlas_tasks.sessions.store import store_for

pytestmark = pytest.mark.integration

TOKEN = "adapter-test-token-0123456789"


class Sent:
    """A ``send_task`` that records what would have been enqueued."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[Any]]] = []

    def __call__(self, name: str, args: list[Any]) -> None:
        self.calls.append((name, args))


@pytest.fixture
def sent() -> Sent:
    return Sent()


@pytest.fixture
def service(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, sent: Sent
) -> Iterator[DashboardService]:
    monkeypatch.setenv("ATLAS_REDIS_URL", redis_url)
    reset_settings()
    reset_redis_clients()
    yield DashboardService(send_task=sent)
    reset_redis_clients()


def running_session(session_id: str = "0123456789abcdef", *, cost: float | None = 2.0) -> str:
    """A running session written straight into the registry (no pod, no worker)."""
    reg = store_for(get_redis())
    reg.create(
        SessionRecord(
            id=session_id,
            provider="runpod",
            status=SessionStatus.SPAWNING,
            pod_name=f"atlas-{session_id}",
            user_id="alice",
            idle_ttl_ms=600000,
            auth="bearer",
            token_hash="f" * 64,
            gpu="h100",
            base_url="",
        )
    )
    compute = {
        "id": "pod-1",
        "provider": "runpod",
        "cost_per_hour": cost,
        "ports": [
            {"internal": 8000, "protocol": "http", "url": "https://pod-1-8000.proxy.runpod.net"}
        ],
    }
    assert reg.finish_spawn(session_id, "pod-1", compute) == "running"
    return session_id


def actions(session_id: str) -> list[dict[str, Any]]:
    return [e.data for e in events.history(session_id) if e.type == "operator_action"]


# ---------------------------------------------------------------- service


def test_rows_hold_the_fields_and_no_secret(service: DashboardService) -> None:
    sid = running_session()
    rows = service.sessions()["rows"]
    assert [r["id"] for r in rows] == [sid]
    row = rows[0]
    assert (row["status"], row["user"], row["provider"], row["gpu"]) == (
        "running",
        "alice",
        "runpod",
        "h100",
    )
    assert row["url"] == "https://pod-1-8000.proxy.runpod.net"
    assert row["cost_per_hour"] == 2.0 and row["accrued_usd"] is not None
    assert 0 < row["deadline_ms"] - service.sessions()["now_ms"] <= 600_000
    assert "f" * 64 not in json.dumps(rows)


def test_no_cost_means_no_accrued(service: DashboardService) -> None:
    running_session(cost=None)
    row = service.sessions()["rows"][0]
    assert row["cost_per_hour"] is None and row["accrued_usd"] is None


def test_terminate_goes_through_the_fenced_task(service: DashboardService, sent: Sent) -> None:
    sid = running_session()
    service.terminate(sid, "ada")
    assert sent.calls == [(C.TASK_TERMINATE, [sid, "operator"])]
    record = store_for(get_redis()).get(sid)
    # durable: the reaper re-sends a lost one
    assert record is not None and record.stop_reason == "operator"
    assert actions(sid)[-1] == {"operator": "ada", "action": "terminate"}


def test_unknown_session_is_not_tracked(service: DashboardService, sent: Sent) -> None:
    from atlas_tasks.errors import NotTracked

    with pytest.raises(NotTracked):
        service.terminate("feedfeedfeedfeed", "ada")
    with pytest.raises(ValidationError):
        service.touch("../../etc", "ada")
    assert sent.calls == []


def test_live_table_diffs(service: DashboardService) -> None:
    from atlas_tasks.dashboard.service import LiveTable

    table = LiveTable(service, linger_ms=60_000)
    assert table.refresh() == []
    sid = running_session()
    changes = table.refresh()
    assert [c["op"] for c in changes] == ["upsert"] and changes[0]["row"]["id"] == sid
    assert table.refresh() == []  # nothing changed: nothing sent (clock jitter ignored)
    reg = store_for(get_redis())
    reg.finish_terminate(sid, "operator")
    changes = table.refresh()
    assert changes[0]["row"]["status"] == "terminated" and not changes[0]["row"]["tracked"]


def test_live_table_partial_refresh_reads_only_the_named_sessions(
    service: DashboardService,
) -> None:
    from atlas_tasks.dashboard.service import LiveTable

    table = LiveTable(service)
    first = running_session("aaaaaaaaaaaaaaaa")
    second = running_session("bbbbbbbbbbbbbbbb")
    changes = table.refresh(only={first, "cluster", "not a session!"})
    assert [c["row"]["id"] for c in changes] == [first]
    store_for(get_redis()).finish_terminate(first, "operator")
    changes = table.refresh(only={first})
    assert [(c["row"]["id"], c["row"]["status"]) for c in changes] == [(first, "terminated")]
    # a session that ended before the table showed it is not added by an event
    store_for(get_redis()).finish_terminate(second, "operator")
    assert table.refresh(only={second}) == []


def test_timeline_redacts_secret_looking_keys(service: DashboardService) -> None:
    sid = running_session()
    events.publish(sid, "custom", {"api_key": "sk-live", "nested": {"token": "t"}, "n": 1})
    timeline = service.timeline(sid)["events"]
    assert timeline[-1]["data"] == {
        "api_key": "[redacted]",
        "nested": {"token": "[redacted]"},
        "n": 1,
    }


# ---------------------------------------------------------------- standalone app


def test_app_refuses_to_start_without_a_token() -> None:
    with pytest.raises(ValidationError):
        create_app(settings=DashboardSettings())
    with pytest.raises(ValidationError):
        create_app(settings=DashboardSettings(token="short"))
    create_app(settings=DashboardSettings(), insecure_localhost=True)


def test_app_routes_need_auth_and_csrf(service: DashboardService, sent: Sent) -> None:
    sid = running_session()
    app = create_app(settings=DashboardSettings(token=TOKEN), service=service)
    client = TestClient(app, base_url="http://127.0.0.1:8720")
    for path in (
        "/api/sessions",
        "/api/health",
        "/api/orphans",
        f"/api/sessions/{sid}/timeline",
        "/api/csrf",
        "/api/events",
    ):
        assert client.get(path).status_code == 401, path
    assert client.post(f"/api/sessions/{sid}/stop").status_code == 401
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"

    login = client.post("/login", data={"token": TOKEN, "operator": "Ada"}, follow_redirects=False)
    assert login.status_code == 303
    cookie = login.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and TOKEN.lower() not in cookie
    page = client.get("/")
    assert page.status_code == 200 and TOKEN not in page.text
    assert "nonce-" in page.headers["content-security-policy"]
    csrf = page.text.split('name="csrf-token" content="')[1].split('"')[0]
    assert client.post(f"/api/sessions/{sid}/stop").status_code == 403
    assert (
        client.post(f"/api/sessions/{sid}/stop", headers={"X-CSRF-Token": csrf + "x"}).status_code
        == 403
    )
    assert (
        client.post(
            f"/api/sessions/{sid}/stop",
            headers={"X-CSRF-Token": csrf, "Origin": "http://evil.test"},
        ).status_code
        == 403
    )
    assert sent.calls == []
    ok = client.post(f"/api/sessions/{sid}/stop", headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 200, ok.text
    # Stop is orchestrator.stop_tracked: recorded durably, enqueued by the caller API.
    stopped = store_for(get_redis()).get(sid)
    assert stopped is not None and stopped.stop_requested_at_ms
    assert actions(sid)[-1] == {"operator": "Ada", "action": "stop"}
    assert (
        client.post(
            "/api/sessions/feedfeedfeedfeed/touch", headers={"X-CSRF-Token": csrf}
        ).status_code
        == 404
    )


def metric_names(text: str) -> set[str]:
    """The metric family names of a Prometheus text scrape (parsed, not grepped)."""
    return {family.name for family in text_string_to_metric_families(text)}


def test_metrics_route_is_behind_the_same_auth(service: DashboardService) -> None:
    running_session()
    app = create_app(settings=DashboardSettings(token=TOKEN), service=service)
    client = TestClient(app, base_url="http://127.0.0.1:8720")
    assert client.get("/metrics").status_code == 401
    scrape = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain")
    assert {"atlas_sessions", "atlas_redis_up"} <= metric_names(scrape.text)
    assert TOKEN not in scrape.text


def test_wrong_token_login_fails(service: DashboardService) -> None:
    app = create_app(settings=DashboardSettings(token=TOKEN), service=service)
    client = TestClient(app, base_url="http://127.0.0.1:8720")
    bad = client.post("/login", data={"token": "x" * 30, "operator": "Ada"})
    assert bad.status_code == 401 and "set-cookie" not in bad.headers
    client.cookies.set("atlas_dashboard", "forged.cookie")
    assert client.get("/api/sessions").status_code == 401


def test_insecure_mode_answers_only_loopback_hosts(service: DashboardService) -> None:
    app = create_app(settings=DashboardSettings(), service=service, insecure_localhost=True)
    local = TestClient(app, base_url="http://127.0.0.1:8720")
    assert local.post("/login", data={"operator": "me"}, follow_redirects=False).status_code == 303
    assert local.get("/api/sessions").status_code == 200
    rebound = TestClient(app, base_url="http://attacker.example:8720")
    rebound.cookies = local.cookies
    assert rebound.get("/api/sessions").status_code == 401


# ---------------------------------------------------------------- Django


@pytest.fixture
def django_views(service: DashboardService) -> Iterator[Any]:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            SECRET_KEY="test",
            ROOT_URLCONF="atlas_tasks.dashboard.django_urls",
            ALLOWED_HOSTS=["testserver"],
            USE_TZ=True,
            INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth"],
        )
        django.setup()
    from atlas_tasks.dashboard import django_urls

    django_urls.configure(service)
    yield django_urls
    django_urls.configure(None)


class FakeUser:
    def __init__(self, name: str, staff: bool) -> None:
        self.name, self.is_staff, self.is_authenticated = name, staff, True

    def get_username(self) -> str:
        return self.name


def test_django_staff_only_and_csrf(django_views: Any, sent: Sent) -> None:
    from django.middleware.csrf import get_token
    from django.test import RequestFactory
    from django.urls import resolve

    sid = running_session()
    rf = RequestFactory()

    def call(method: str, path: str, user: FakeUser, **extra: Any) -> Any:
        request = getattr(rf, method)(path, **extra)
        request.user = user
        for key, value in extra.pop("cookies", {}).items():
            request.COOKIES[key] = value
        match = resolve(path)
        return match.func(request, **match.kwargs)

    from django.contrib.auth.models import AnonymousUser

    anonymous = call("get", "/", AnonymousUser())
    assert anonymous.status_code == 302 and "login" in anonymous["Location"]
    assert call("get", "/api/sessions", AnonymousUser()).status_code == 403
    nobody = FakeUser("eve", staff=False)
    staff = FakeUser("grace", staff=True)
    assert call("get", "/api/sessions", nobody).status_code == 403
    assert call("get", "/", nobody).status_code == 403
    listed = call("get", "/api/sessions", staff)
    assert listed.status_code == 200 and sid in listed.content.decode()
    page = call("get", "/", staff)
    assert page.status_code == 200 and b'data-csrf-header="X-CSRFToken"' in page.content
    assert call("post", f"/api/sessions/{sid}/touch", nobody).status_code == 403
    assert call("post", f"/api/sessions/{sid}/touch", staff).status_code == 403  # no CSRF

    seed = rf.get("/")
    token = get_token(seed)
    request = rf.post(f"/api/sessions/{sid}/touch", HTTP_X_CSRFTOKEN=token)
    request.COOKIES["csrftoken"] = seed.META["CSRF_COOKIE"]
    request.user = staff
    match = resolve(f"/api/sessions/{sid}/touch")
    response = match.func(request, **match.kwargs)
    assert response.status_code == 200, response.content
    assert actions(sid)[-1] == {"operator": "grace", "action": "touch"}

    assert call("get", "/metrics", nobody).status_code == 403
    scrape = call("get", "/metrics", staff)
    assert scrape.status_code == 200
    assert "atlas_sessions" in metric_names(scrape.content.decode())
    # The documented include() target serves exactly this URLconf.
    from atlas_tasks.contrib.django import ops_urls

    assert ops_urls.urlpatterns is django_views.urlpatterns
    assert ops_urls.app_name == django_views.app_name


# ---------------------------------------------------------------- Flask


def test_flask_blueprint_check_and_csrf(service: DashboardService, sent: Sent) -> None:
    import flask

    from atlas_tasks.dashboard.flask import create_blueprint

    sid = running_session()
    app = flask.Flask("ops-test")
    app.secret_key = "test"
    app.register_blueprint(
        create_blueprint(
            check=lambda: flask.request.headers.get("X-Staff") == "1",
            operator=lambda: "flask-ada",
            service=service,
        ),
        url_prefix="/ops",
    )
    client = app.test_client()
    assert client.get("/ops/api/sessions").status_code == 403
    assert client.get("/ops/").status_code == 403
    staff = {"X-Staff": "1"}
    page = client.get("/ops/", headers=staff)
    assert page.status_code == 200
    csrf = page.get_data(as_text=True).split('name="csrf-token" content="')[1].split('"')[0]
    assert client.post(f"/ops/api/sessions/{sid}/terminate", headers=staff).status_code == 403
    assert sent.calls == []
    ok = client.post(f"/ops/api/sessions/{sid}/terminate", headers={**staff, "X-CSRF-Token": csrf})
    assert ok.status_code == 200, ok.get_data(as_text=True)
    assert sent.calls == [(C.TASK_TERMINATE, [sid, "operator"])]
    assert actions(sid)[-1] == {"operator": "flask-ada", "action": "terminate"}
    assert (
        client.post(
            "/ops/api/sessions/feedfeedfeedfeed/touch", headers={**staff, "X-CSRF-Token": csrf}
        ).status_code
        == 404
    )


def test_flask_extension_mounts_the_ops_page_with_its_check(service: DashboardService) -> None:
    import flask

    from atlas_tasks.contrib.flask import AtlasTasks

    app = flask.Flask("ops-ext-test")
    app.secret_key = "test"
    AtlasTasks(app).init_ops(app, check=lambda: flask.request.headers.get("X-Staff") == "1")
    client = app.test_client()
    assert client.get("/atlas/ops/metrics").status_code == 403
    assert client.get("/atlas/ops/api/health").status_code == 403
    scrape = client.get("/atlas/ops/metrics", headers={"X-Staff": "1"})
    assert scrape.status_code == 200
    assert "atlas_redis_up" in metric_names(scrape.get_data(as_text=True))
    assert client.get("/atlas/ops/api/health", headers={"X-Staff": "1"}).status_code == 200


def test_health_counts_and_work_in_flight(service: DashboardService) -> None:
    r = get_redis()
    sid = running_session()
    reg = store_for(r)
    reg.begin_terminate(sid, "operator", "fence-1", 60_000)
    reg.terminate_failed(sid, {"kind": "provider", "message": "500"}, 60_000)
    r.hset(
        C.JOB_KEY.format(id="job-live"),
        mapping={"id": "job-live", "status": "in_progress", "provider": "runpod", "endpoint": "e1"},
    )
    r.hset(C.JOB_KEY.format(id="job-done"), mapping={"id": "job-done", "status": "completed"})
    events.publish("deploy-live", "line", {"line": "building"}, topic="deploy")
    events.publish("deploy-done", "line", {"line": "ok"}, topic="deploy")
    events.publish("deploy-done", "exit", {"code": 0}, topic="deploy")
    r.set("atlas:reaper:last-sweep", json.dumps({"at_ms": reg.now_ms(), "due": 0}))
    r.hset("atlas:reaper:stats", mapping={"sweeps": 7, "orphans": 2})
    health = service.health()
    assert health["reaper_ok"] is True and health["stats"]["sweeps"] == 7
    assert health["orphans_reaped"] == 2
    assert health["terminate_retries"] == 1
    assert health["open_intents"] == 0
    assert [j["id"] for j in health["jobs_in_flight"]] == ["job-live"]
    assert [d["ticket"] for d in health["deploys_in_flight"]] == ["deploy-live"]
    assert health["partial"] is False
