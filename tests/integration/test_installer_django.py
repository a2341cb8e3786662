"""``atlas-tasks init django`` on a fresh ``django-admin startproject``: idempotent, and
the result served (``runserver``, WSGI, sync views) and driven against the real cluster."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from atlas_tasks.cli import cli
from atlas_tasks.testing.localstack import LocalCluster
from tests.integration.web_support import create_users, free_port, manage, serve, sse, status_of

pytestmark = pytest.mark.integration


def _startproject(root: Path) -> Path:
    root.mkdir()
    subprocess.run(
        [sys.executable, "-m", "django", "startproject", "proj", str(root)], check=True, timeout=60
    )
    return root


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def _admin_login(base: str, name: str) -> httpx.Client:
    c = httpx.Client(base_url=base, timeout=10)
    page = c.get("/admin/login/").text
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token, page[:500]
    r = c.post(
        "/admin/login/",
        data={
            "username": name,
            "password": f"pw-{name}",
            "csrfmiddlewaretoken": token.group(1),
            "next": "/admin/",
        },
    )
    assert r.status_code == 302, r.text[:500]
    c.headers["X-CSRFToken"] = c.cookies["csrftoken"]
    return c


def test_init_django_is_idempotent_and_dry_run_writes_nothing(tmp_path: Path) -> None:
    root = _startproject(tmp_path / "p")
    before = _digest(root)
    dry = CliRunner().invoke(cli, ["init", "django", "--path", str(root), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert dry.output.count("would change") == 3 and _digest(root) == before
    first = CliRunner().invoke(cli, ["init", "django", "--path", str(root)])
    assert first.exit_code == 0, first.output
    assert "settings.py" in first.output and "urls.py" in first.output
    assert "docker-compose.yml" in first.output
    after = _digest(root)
    assert after != before
    second = CliRunner().invoke(cli, ["init", "django", "--path", str(root)])
    assert "nothing to change" in second.output and _digest(root) == after
    settings = (root / "proj" / "settings.py").read_text()
    assert 'environ.get("ATLAS_SECRET_KEY")' in settings
    compose = (root / "docker-compose.yml").read_text()
    for service in ("redis:", "worker:", "beat:", "flower:"):
        assert service in compose
    missing = CliRunner().invoke(cli, ["init", "django", "--path", str(tmp_path)])
    assert missing.exit_code == 1 and "manage.py" in missing.output


def test_init_flask_adds_the_extension_once(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("from flask import Flask\n\napp = Flask(__name__)\n")
    assert CliRunner().invoke(cli, ["init", "flask", "--path", str(tmp_path)]).exit_code == 0
    text = (tmp_path / "app.py").read_text()
    assert text.count("AtlasTasks(app)") == 1 and "import os" in text
    again = CliRunner().invoke(cli, ["init", "flask", "--path", str(tmp_path)])
    assert "nothing to change" in again.output
    assert (tmp_path / "app.py").read_text() == text
    compile(text, "app.py", "exec")


def test_initialised_project_serves_sessions(cluster: LocalCluster, tmp_path: Path) -> None:
    root = _startproject(tmp_path / "site")
    assert CliRunner().invoke(cli, ["init", "django", "--path", str(root)]).exit_code == 0
    env = dict(cluster.env)
    manage(root, env, "migrate", "--noinput")
    create_users(root, env, "alice", "bob", staff=True)
    port = free_port()
    proc = serve(
        "init-site",
        [sys.executable, str(root / "manage.py"), "runserver", "--noreload", f"127.0.0.1:{port}"],
        env,
        port,
        root,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        alice, bob = _admin_login(base, "alice"), _admin_login(base, "bob")
        opened = alice.post("/atlas/sessions/", json={"preset": "default"})
        assert opened.status_code == 201, opened.text
        sid = opened.json()["session"]
        assert status_of(sse(alice, f"/atlas/sessions/{sid}/events/", "running")[-1]) == "running"
        assert alice.post(f"/atlas/sessions/{sid}/touch/").status_code == 204
        assert alice.get(f"/atlas/sessions/{sid}/").json()["status"] == "running"
        assert bob.get(f"/atlas/sessions/{sid}/").status_code == 404
        assert bob.delete(f"/atlas/sessions/{sid}/").status_code == 404
        assert alice.delete(f"/atlas/sessions/{sid}/").status_code == 202
        assert (
            status_of(sse(alice, f"/atlas/sessions/{sid}/events/", "terminated")[-1])
            == "terminated"
        )
    finally:
        proc.stop()
