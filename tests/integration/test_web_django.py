"""examples/django_site served by a real uvicorn process (ASGI, async views) against the
real cluster: CSRF, open, SSE until running, touch, info, list, another user refused on
every route, Last-Event-ID resume, stop; plus ``manage.py atlas doctor``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from atlas_tasks import orchestrator
from atlas_tasks.testing.localstack import LocalCluster, ManagedProcess, worker_ready
from tests.integration.web_support import create_users, free_port, manage, serve, sse, status_of

pytestmark = pytest.mark.integration

SITE = Path(__file__).resolve().parents[2] / "examples" / "django_site"


@pytest.fixture(scope="module")
def site(_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {
        **_cluster.env,
        "DJANGO_DB_PATH": str(tmp_path_factory.mktemp("db") / "db.sqlite3"),
        "DJANGO_ATLAS_VIEWS": "async",
    }
    manage(SITE, env, "migrate", "--noinput")
    create_users(SITE, env, "alice", "bob")
    port = free_port()
    proc = serve(
        "django-site",
        [
            sys.executable,
            "-m",
            "uvicorn",
            "atlas_site.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--app-dir",
            str(SITE),
        ],
        env,
        port,
        SITE,
    )
    yield f"http://127.0.0.1:{port}"
    proc.stop()


def _login(base: str, name: str) -> httpx.Client:
    c = httpx.Client(base_url=base, timeout=10)
    c.get("/csrf/")
    token = c.cookies["csrftoken"]
    c.headers["X-CSRFToken"] = token
    r = c.post("/login/", json={"username": name, "password": f"pw-{name}"})
    assert r.status_code == 200, r.text
    c.headers["X-CSRFToken"] = c.cookies["csrftoken"]  # rotated at login
    return c


def test_django_example_end_to_end(site: str) -> None:
    alice, bob = _login(site, "alice"), _login(site, "bob")
    opened = alice.post("/atlas/sessions/", json={"preset": "default"})
    assert opened.status_code == 201, opened.text
    sid, token = opened.json()["session"], opened.json()["token"]
    assert opened.json()["status"] == "spawning" and len(token) >= 32

    running = sse(alice, f"/atlas/sessions/{sid}/events/", "running")
    assert status_of(running[-1]) == "running" and all(m["id"] for m in running)
    assert alice.post(f"/atlas/sessions/{sid}/touch/").status_code == 204
    info = alice.get(f"/atlas/sessions/{sid}/").json()
    assert info["status"] == "running" and token not in str(info)
    assert [s["id"] for s in alice.get("/atlas/sessions/").json()["sessions"]][:1] == [sid]

    for method, url in [
        ("GET", f"/atlas/sessions/{sid}/"),
        ("POST", f"/atlas/sessions/{sid}/touch/"),
        ("GET", f"/atlas/sessions/{sid}/events/"),
        ("DELETE", f"/atlas/sessions/{sid}/"),
    ]:
        r = bob.request(method, url)
        assert r.status_code == 404 and r.json()["error"] == "not_found", (method, url)
        anonymous = httpx.Client(base_url=site).request(method, url)
        assert anonymous.status_code == 403, (method, url)
    assert sid not in [s["id"] for s in bob.get("/atlas/sessions/").json()["sessions"]]
    assert alice.get(f"/atlas/sessions/{sid}/").json()["status"] == "running"

    assert alice.delete(f"/atlas/sessions/{sid}/").status_code == 202
    full = sse(alice, f"/atlas/sessions/{sid}/events/", "terminated")
    ids = [m["id"] for m in full]
    assert status_of(full[-1]) == "terminated" and len(set(ids)) == len(ids) >= 3
    # the stream ends by itself after `terminated`; a resume after any event loses and
    # repeats nothing
    for cut in range(len(ids) - 1):
        resumed = sse(alice, f"/atlas/sessions/{sid}/events/", "terminated", last_id=ids[cut])
        assert [m["id"] for m in resumed] == ids[cut + 1 :]
    assert alice.post(f"/atlas/sessions/{sid}/touch/").status_code == 404


def test_csrf_is_required_for_session_auth_writes(site: str) -> None:
    alice = _login(site, "alice")
    header = alice.headers.pop("X-CSRFToken")
    r = alice.post("/atlas/sessions/", json={"preset": "default"})
    assert r.status_code == 403  # Django's CSRF check, before our view runs
    r = alice.post("/atlas/sessions/", json={"preset": "nope"}, headers={"X-CSRFToken": header})
    assert r.status_code == 422 and r.json()["error"] == "validation"


def test_manage_py_atlas_doctor(_cluster: LocalCluster, site: str, tmp_path: Path) -> None:
    env = {**_cluster.env, "DJANGO_DB_PATH": str(tmp_path / "db.sqlite3")}
    out = manage(SITE, env, "atlas", "doctor")
    assert "redis answers PING" in out and "SECRET_KEY is set" in out
    assert "consumes 'compute': yes" in out


def test_manage_py_atlas_worker_and_beat_serve_a_spawn(tmp_path: Path) -> None:
    """``manage.py atlas worker`` / ``atlas beat`` with the project's settings loaded: the
    only worker of this cluster runs the spawn; beat takes the single-beat lock."""
    with LocalCluster(workers=0, beat=False, fakecloud={"boot_delay_s": 0.0}) as cluster:
        env = {
            **cluster.env,
            "DJANGO_DB_PATH": str(tmp_path / "db.sqlite3"),
            "PYTHONPATH": str(SITE),
        }
        worker = ManagedProcess(
            "manage-worker",
            [
                sys.executable,
                str(SITE / "manage.py"),
                "atlas",
                "worker",
                "--",
                "--concurrency=4",
                "--without-mingle",
                "--without-gossip",
            ],
            env,
        )
        beat = ManagedProcess(
            "manage-beat", [sys.executable, str(SITE / "manage.py"), "atlas", "beat"], env
        )
        try:
            worker_ready(worker)
            beat.start().wait_for("Acquired lock", 60)
            s = orchestrator.spawn(
                gpu="h100", image="me/infer:1", ports=[(8000, "http")], user_id=1
            )
            assert s.wait(timeout=30).status == "running"
            orchestrator.stop_tracked(s.id)
        finally:
            worker.stop()
            beat.stop()


def test_a_typo_in_settings_atlas_stops_startup_naming_it(tmp_path: Path) -> None:
    (tmp_path / "typo_settings.py").write_text(
        "from atlas_site.settings import *  # noqa\n"
        "ATLAS = {**ATLAS, 'REDIS_ULR': 'redis://nowhere:6379/0'}\n"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "typo_settings",
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{SITE}",
        "DJANGO_DB_PATH": str(tmp_path / "db.sqlite3"),
    }
    done = subprocess.run(
        [sys.executable, str(SITE / "manage.py"), "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert (
        "REDIS_ULR: unknown atlas setting in settings.ATLAS; did you mean 'REDIS_URL'?"
        in done.stderr
    )
