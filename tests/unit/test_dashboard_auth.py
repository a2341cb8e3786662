"""The ops page's token, login cookie and CSRF checks, its HTML, and its settings docs."""

from __future__ import annotations

from pathlib import Path

import pytest

from atlas_tasks.dashboard.auth import DashboardAuth, Principal, valid_operator
from atlas_tasks.dashboard.page import render_login, render_page, security_headers
from atlas_tasks.dashboard.service import redact, row_from_record
from atlas_tasks.dashboard.settings import DashboardSettings
from atlas_tasks.errors import ValidationError
from atlas_tasks.sessions.records import SessionRecord

TOKEN = "unit-test-token-0123456789"


def test_token_check() -> None:
    auth = DashboardAuth(TOKEN)
    assert auth.check_token(TOKEN)
    assert not auth.check_token(TOKEN + "x")
    assert not auth.check_token("")
    assert not auth.check_token(None)
    assert DashboardAuth(None).check_token(None)  # --insecure-localhost


def test_login_cookie_round_trip_forgery_and_expiry() -> None:
    auth = DashboardAuth(TOKEN, ttl_s=60)
    cookie, csrf = auth.issue_login("ada", now=1000.0)
    assert TOKEN not in cookie
    principal = auth.read_login(cookie, now=1030.0)
    assert principal == Principal(operator="ada", via="cookie", csrf=csrf)
    assert auth.read_login(cookie, now=1061.0) is None  # expired
    payload, mac = cookie.rsplit(".", 1)
    assert auth.read_login(payload + "." + mac[:-2] + "AA", now=1030.0) is None
    other, _ = DashboardAuth("another-token-0123456789").issue_login("ada", now=1000.0)
    assert auth.read_login(other, now=1030.0) is None  # a token change logs everybody out
    assert auth.read_login("garbage", now=1030.0) is None
    assert auth.read_login(None) is None


def test_csrf_cookie_and_bearer() -> None:
    auth = DashboardAuth(TOKEN, ttl_s=60)
    _, csrf = auth.issue_login("ada")
    login = Principal("ada", "cookie", csrf)
    assert auth.check_csrf(login, csrf)
    assert not auth.check_csrf(login, csrf[:-1])
    assert not auth.check_csrf(login, None)
    _, other = auth.issue_login("ada")
    assert other != csrf and not auth.check_csrf(login, other)  # one per login

    bearer = Principal("script", "bearer")
    token = auth.bearer_csrf("script", now=1000.0)
    assert auth.check_csrf(bearer, token, now=1030.0)
    assert not auth.check_csrf(bearer, token, now=1061.0)
    assert not auth.check_csrf(Principal("mallory", "bearer"), token, now=1030.0)
    assert not auth.check_csrf(bearer, "1999999999.forged", now=1030.0)


def test_operator_names() -> None:
    assert valid_operator("  Ada Ops ") == "Ada Ops"
    for bad in ("", " ", "a" * 65, "<script>", "ada\nops"):
        with pytest.raises(ValidationError):
            valid_operator(bad)


def test_page_escapes_and_has_the_hooks() -> None:
    html = render_page(
        base="/ops/", csrf='c"sr<f', operator="<b>x</b>", nonce="n0nce", logout_url="/ops/logout"
    )
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html
    assert 'content="c&quot;sr&lt;f"' in html
    assert 'nonce="n0nce"' in html and 'data-base="/ops/"' in html
    assert html.count("<script") == 1
    login = render_login(action="/login", nonce="n", error="<bad>")
    assert 'name="token"' in login and "&lt;bad&gt;" in login
    assert 'name="token"' not in render_login(action="/login", nonce="n", insecure=True)
    csp = security_headers("n0nce")["Content-Security-Policy"]
    assert "script-src 'nonce-n0nce'" in csp and "frame-ancestors 'none'" in csp


def test_rows_and_redaction() -> None:
    record = {
        "id": "abc",
        "status": "running",
        "provider": "runpod",
        "user_id": "42",
        "idle_ttl_ms": "60000",
        "running_at_ms": "1000",
        "token_hash": "h" * 64,
        "api_key_sealed": "sealed",
        "base_url": "http://user:pw@host",
        "compute": '{"cost_per_hour": 3.6, "ports": []}',
    }
    parsed = SessionRecord.from_hash(record)
    assert parsed is not None
    row = row_from_record(parsed, 30_000, 3_601_000, True)
    assert row.user == "42" and row.deadline_ms == 3_631_000
    assert row.last_activity_ms == 3_571_000
    assert row.accrued_usd == pytest.approx(3.6)
    dumped = str(row.as_dict())
    assert "h" * 64 not in dumped and "sealed" not in dumped and "pw@" not in dumped
    assert redact({"Authorization": "b", "list": [{"secret": 1}], "ok": 2}) == {
        "Authorization": "[redacted]",
        "list": [{"secret": "[redacted]"}],
        "ok": 2,
    }


def test_every_dashboard_setting_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for name in DashboardSettings.model_fields:
        assert f"`ATLAS_DASHBOARD_{name.upper()}`" in readme, name
