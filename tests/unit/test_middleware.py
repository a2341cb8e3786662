"""Pod-side middleware: bearer token or signed URL, for ASGI (HTTP, WebSocket) and WSGI."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import logging
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit
from wsgiref.types import StartResponse, WSGIEnvironment
from wsgiref.util import setup_testing_defaults
from wsgiref.validate import validator

import httpx
import pytest

from atlas_tasks.auth import (
    BearerOrSignedUrlMiddleware,
    PodAuthenticator,
    WSGIBearerOrSignedUrlMiddleware,
    sign_url,
)
from atlas_tasks.auth.middleware import WS_CLOSE_POLICY_VIOLATION
from atlas_tasks.constants import PRESHARED_KEY_ENV, SIGNING_SECRET_ENV
from atlas_tasks.errors import ValidationError

TOKEN = "pod-token-0123456789abcdefghijklmnopqrstuvwxyz"
SECRET = "pod-signing-secret"
NOW = 1_700_000_000.0
POD = "https://pod-abc-8000.proxy.runpod.net"


def clock() -> float:
    return NOW


def signed_target(path: str, *, expires_in: int = 60, now: float = NOW) -> str:
    """Path + query of a signed URL for ``path`` on the pod."""
    parts = urlsplit(sign_url(POD + path, secret=SECRET, expires_in=expires_in, now=now))
    return f"{parts.path}?{parts.query}"


# --------------------------------------------------------------------------- ASGI helpers


class Recorder:
    """A bare ASGI app answering 200 and remembering which scopes reached it."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scopes.append(dict(scope))
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
        elif scope["type"] == "websocket":
            await send({"type": "websocket.accept"})
        elif scope["type"] == "lifespan":
            await send({"type": "lifespan.startup.complete"})


def asgi_get(app: Any, target: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=POD) as client:
            return await client.get(target, headers=headers)

    return asyncio.run(go())


def asgi_raw(app: Any, scope: dict[str, Any]) -> list[dict[str, Any]]:
    """Drive ``app`` with one scope; return every message it sent."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": f"{scope['type']}.connect" if scope["type"] == "websocket" else "x"}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    asyncio.run(app(scope, receive, send))
    return sent


def ws_scope(target: str, headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    path, _, query = target.partition("?")
    return {
        "type": "websocket",
        "scheme": "wss",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": headers or [],
    }


def make_asgi(**kw: Any) -> tuple[BearerOrSignedUrlMiddleware, Recorder]:
    inner = Recorder()
    kw.setdefault("preshared_key", TOKEN)
    kw.setdefault("signing_secret", SECRET)
    kw.setdefault("exempt_paths", ["/health"])
    kw.setdefault("now", clock)
    return BearerOrSignedUrlMiddleware(inner, **kw), inner


def assert_401(response: httpx.Response, reason: str) -> None:
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": "unauthorized", "reason": reason}


# --------------------------------------------------------------------------- ASGI HTTP


def test_asgi_bearer_ok() -> None:
    app, inner = make_asgi()
    response = asgi_get(app, "/infer", {"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200 and response.text == "ok"
    assert len(inner.scopes) == 1


def test_asgi_bearer_scheme_is_case_insensitive() -> None:
    app, _ = make_asgi()
    assert asgi_get(app, "/infer", {"Authorization": f"bearer  {TOKEN}"}).status_code == 200


@pytest.mark.parametrize(
    "header",
    [
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        "Bearer wrong",
        f"Basic {TOKEN}",
        f"Token {TOKEN}",
        f"{TOKEN}",
    ],
)
def test_asgi_bearer_wrong(header: str) -> None:
    app, inner = make_asgi()
    response = asgi_get(app, "/infer", {"Authorization": header})
    expected = "invalid_token" if header.lower().startswith("bearer ") else "missing_credentials"
    assert_401(response, expected)
    assert inner.scopes == []


def test_asgi_no_header() -> None:
    app, inner = make_asgi()
    assert_401(asgi_get(app, "/infer"), "missing_credentials")
    assert_401(asgi_get(app, "/infer", {"Authorization": "Bearer"}), "missing_credentials")
    assert inner.scopes == []


def test_asgi_signed_url_ok() -> None:
    app, inner = make_asgi()
    response = asgi_get(app, signed_target("/video/session-42.m3u8?quality=720p"))
    assert response.status_code == 200
    assert inner.scopes[0]["path"] == "/video/session-42.m3u8"


def test_asgi_signed_url_with_encoded_path_ok() -> None:
    app, _ = make_asgi()
    assert asgi_get(app, signed_target("/vidéo/a b")).status_code == 200


def test_asgi_signed_url_expired() -> None:
    app, inner = make_asgi()
    stale = signed_target("/video/x", expires_in=60, now=NOW - 61)
    assert_401(asgi_get(app, stale), "expired")
    assert inner.scopes == []


def test_asgi_signed_url_for_another_path_is_refused() -> None:
    app, _ = make_asgi()
    target = signed_target("/video/x").replace("/video/x", "/admin")
    assert_401(asgi_get(app, target), "bad_signature")


def test_asgi_signed_url_with_wrong_secret_is_refused() -> None:
    app, _ = make_asgi(signing_secret="another-secret")
    assert_401(asgi_get(app, signed_target("/video/x")), "bad_signature")


def test_asgi_wrong_bearer_but_valid_signed_url_passes() -> None:
    app, _ = make_asgi()
    response = asgi_get(app, signed_target("/video/x"), {"Authorization": "Bearer nope"})
    assert response.status_code == 200


def test_asgi_host_header_cannot_move_the_checked_path() -> None:
    # If the middleware rebuilt "scheme://<Host><path>?<query>" and parsed it, this Host
    # would make it check /video/x (validly signed) while the app serves /admin.
    app, inner = make_asgi()
    target = signed_target("/video/x")
    sent = asgi_raw(
        app,
        {
            "type": "http",
            "scheme": "https",
            "method": "GET",
            "path": "/admin",
            "raw_path": b"/admin",
            "query_string": b"",
            "headers": [(b"host", f"pod{target}#".encode())],
        },
    )
    assert sent[0]["status"] == 401
    assert inner.scopes == []


def test_asgi_exempt_path() -> None:
    app, inner = make_asgi()
    assert asgi_get(app, "/health").status_code == 200
    # Exact match only.
    assert_401(asgi_get(app, "/health/extra"), "missing_credentials")
    assert_401(asgi_get(app, "/healthz"), "missing_credentials")
    assert len(inner.scopes) == 1


def test_asgi_bearer_only_configuration() -> None:
    app, _ = make_asgi(signing_secret="")
    assert asgi_get(app, "/x", {"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert_401(asgi_get(app, signed_target("/x")), "missing_credentials")


def test_asgi_signed_url_only_configuration() -> None:
    app, _ = make_asgi(preshared_key="")
    assert asgi_get(app, signed_target("/x")).status_code == 200
    assert_401(asgi_get(app, "/x", {"Authorization": f"Bearer {TOKEN}"}), "invalid_token")


def test_asgi_fail_closed_without_any_secret(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="atlas_tasks.auth"):
        app, inner = make_asgi(preshared_key=None, signing_secret=None)
    assert PRESHARED_KEY_ENV in caplog.text and SIGNING_SECRET_ENV in caplog.text
    assert "refusing" in caplog.text
    assert_401(asgi_get(app, "/infer", {"Authorization": f"Bearer {TOKEN}"}), "not_configured")
    assert_401(asgi_get(app, "/infer", {"Authorization": "Bearer "}), "not_configured")
    assert_401(asgi_get(app, signed_target("/infer")), "not_configured")
    # Health checks still work, so the orchestrator can see the pod is up.
    assert asgi_get(app, "/health").status_code == 200
    assert [s["path"] for s in inner.scopes] == ["/health"]


def test_asgi_secrets_are_read_from_env_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PRESHARED_KEY_ENV, TOKEN)
    monkeypatch.setenv(SIGNING_SECRET_ENV, SECRET)
    inner = Recorder()
    app = BearerOrSignedUrlMiddleware(inner, now=clock)
    monkeypatch.setenv(PRESHARED_KEY_ENV, "changed-later")
    monkeypatch.delenv(SIGNING_SECRET_ENV)
    assert asgi_get(app, "/x", {"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert asgi_get(app, signed_target("/x")).status_code == 200
    assert_401(asgi_get(app, "/x", {"Authorization": "Bearer changed-later"}), "invalid_token")


def test_asgi_empty_env_counts_as_unset(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(PRESHARED_KEY_ENV, "")
    with caplog.at_level(logging.WARNING, logger="atlas_tasks.auth"):
        app = BearerOrSignedUrlMiddleware(Recorder())
    assert "refusing" in caplog.text
    assert_401(asgi_get(app, "/x", {"Authorization": "Bearer "}), "not_configured")


def test_asgi_lifespan_passes_through() -> None:
    app, inner = make_asgi(preshared_key="", signing_secret="")
    sent = asgi_raw(app, {"type": "lifespan"})
    assert sent == [{"type": "lifespan.startup.complete"}]
    assert inner.scopes[0]["type"] == "lifespan"


# --------------------------------------------------------------------------- ASGI WebSocket


def test_websocket_bearer_ok() -> None:
    app, inner = make_asgi()
    sent = asgi_raw(app, ws_scope("/ws", [(b"authorization", f"Bearer {TOKEN}".encode())]))
    assert sent == [{"type": "websocket.accept"}]
    assert len(inner.scopes) == 1


def test_websocket_signed_url_ok() -> None:
    app, _ = make_asgi()
    assert asgi_raw(app, ws_scope(signed_target("/ws"))) == [{"type": "websocket.accept"}]


@pytest.mark.parametrize(
    "target,headers",
    [
        ("/ws", []),
        ("/ws", [(b"authorization", b"Bearer wrong")]),
        ("expired", []),
    ],
)
def test_websocket_refused_is_closed_with_1008(
    target: str, headers: list[tuple[bytes, bytes]]
) -> None:
    if target == "expired":
        target = signed_target("/ws", now=NOW - 3600)
    app, inner = make_asgi()
    sent = asgi_raw(app, ws_scope(target, headers))
    assert sent == [{"type": "websocket.close", "code": WS_CLOSE_POLICY_VIOLATION}]
    assert WS_CLOSE_POLICY_VIOLATION == 1008
    assert inner.scopes == []


def test_asgi_scope_without_raw_path_uses_path() -> None:
    app, _ = make_asgi()
    scope = ws_scope(signed_target("/a b"))
    del scope["raw_path"]
    scope["path"] = "/a b"
    assert asgi_raw(app, scope) == [{"type": "websocket.accept"}]


def test_asgi_surrogate_path_is_refused_not_crashed() -> None:
    app, _ = make_asgi()
    scope = ws_scope(signed_target("/x"))
    del scope["raw_path"]
    scope["path"] = "/\ud800"
    assert asgi_raw(app, scope)[0]["type"] == "websocket.close"


# --------------------------------------------------------------------------- WSGI


def hello(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def wsgi_call(
    app: Any, target: str, authorization: str | None = None
) -> tuple[str, dict[str, str], bytes]:
    path, _, query = target.partition("?")
    environ: dict[str, Any] = {
        # PEP 3333: PATH_INFO is unquoted, latin-1 "bytes in str"; QUERY_STRING is raw.
        "SCRIPT_NAME": "",
        "PATH_INFO": _unquote_latin1(path),
        "QUERY_STRING": query,
        "REQUEST_METHOD": "GET",
        "wsgi.input": io.BytesIO(),
    }
    if authorization is not None:
        environ["HTTP_AUTHORIZATION"] = authorization
    setup_testing_defaults(environ)
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        captured["status"], captured["headers"] = status, dict(headers)
        return lambda _data: None

    result = validator(app)(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        result.close()  # type: ignore[attr-defined]
    return captured["status"], captured["headers"], body


def _unquote_latin1(path: str) -> str:
    return unquote_to_bytes(path).decode("latin-1")


def wsgi_direct(app: Any, environ: dict[str, Any]) -> tuple[list[str], bytes]:
    """Call a WSGI app with a hand-made (possibly non-conforming) environ, no validator."""
    setup_testing_defaults(environ)
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        statuses.append(status)
        return lambda _data: None

    return statuses, b"".join(app(environ, start_response))


def make_wsgi(**kw: Any) -> WSGIBearerOrSignedUrlMiddleware:
    kw.setdefault("preshared_key", TOKEN)
    kw.setdefault("signing_secret", SECRET)
    kw.setdefault("exempt_paths", ["/health"])
    kw.setdefault("now", clock)
    return WSGIBearerOrSignedUrlMiddleware(hello, **kw)


def assert_wsgi_401(result: tuple[str, dict[str, str], bytes], reason: str) -> None:
    status, headers, body = result
    assert status == "401 Unauthorized"
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"error": "unauthorized", "reason": reason}


def test_wsgi_bearer_ok() -> None:
    assert wsgi_call(make_wsgi(), "/infer", f"Bearer {TOKEN}")[::2] == ("200 OK", b"ok")


def test_wsgi_bearer_wrong() -> None:
    assert_wsgi_401(wsgi_call(make_wsgi(), "/infer", "Bearer nope"), "invalid_token")
    assert_wsgi_401(wsgi_call(make_wsgi(), "/infer", f"Basic {TOKEN}"), "missing_credentials")


def test_wsgi_no_header() -> None:
    assert_wsgi_401(wsgi_call(make_wsgi(), "/infer"), "missing_credentials")


def test_wsgi_signed_url_ok() -> None:
    app = make_wsgi()
    assert wsgi_call(app, signed_target("/video/x?quality=720p"))[0] == "200 OK"
    assert wsgi_call(app, signed_target("/vidéo/a b"))[0] == "200 OK"


def test_wsgi_signed_url_expired() -> None:
    stale = signed_target("/video/x", now=NOW - 61)
    assert_wsgi_401(wsgi_call(make_wsgi(), stale), "expired")


def test_wsgi_signed_url_tampered() -> None:
    target = signed_target("/video/x").replace("/video/x", "/video/y")
    assert_wsgi_401(wsgi_call(make_wsgi(), target), "bad_signature")


def test_wsgi_exempt_path() -> None:
    app = make_wsgi()
    assert wsgi_call(app, "/health")[0] == "200 OK"
    assert_wsgi_401(wsgi_call(app, "/health/"), "missing_credentials")


def test_wsgi_script_name_is_part_of_the_signed_path() -> None:
    app = make_wsgi()
    target = signed_target("/api/video/x")
    path, _, query = target.partition("?")
    environ = {"SCRIPT_NAME": "/api", "PATH_INFO": "/video/x", "QUERY_STRING": query}
    assert wsgi_direct(app, environ)[0] == ["200 OK"]


def test_wsgi_fail_closed_without_any_secret(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="atlas_tasks.auth"):
        app = make_wsgi(preshared_key=None, signing_secret=None)
    assert "refusing" in caplog.text
    assert_wsgi_401(wsgi_call(app, "/infer", f"Bearer {TOKEN}"), "not_configured")
    assert_wsgi_401(wsgi_call(app, signed_target("/infer")), "not_configured")
    assert wsgi_call(app, "/health")[0] == "200 OK"


def test_wsgi_non_latin1_environ_is_refused_not_crashed() -> None:
    app = make_wsgi()
    statuses, body = wsgi_direct(app, {"PATH_INFO": "/日本", "QUERY_STRING": ""})
    assert statuses == ["401 Unauthorized"]
    assert json.loads(body)["reason"] == "malformed"


# --------------------------------------------------------------------------- shared core


def test_authenticator_repr_hides_secrets() -> None:
    auth = PodAuthenticator(preshared_key=TOKEN, signing_secret=SECRET, exempt_paths=["/health"])
    text = repr(auth) + repr(vars(auth))
    assert TOKEN not in text
    assert SECRET not in repr(auth)
    assert "bearer=True" in repr(auth) and "signed_urls=True" in repr(auth)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"exempt_paths": "/health"}, "exempt_paths"),
        ({"preshared_key": 42}, "preshared_key"),
        ({"signing_secret": ["x"]}, "signing_secret"),
    ],
)
def test_authenticator_rejects_bad_configuration(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        PodAuthenticator(**kwargs)
    assert info.value.field == field


def test_bytes_secrets_are_accepted() -> None:
    app, _ = make_asgi(preshared_key=TOKEN.encode(), signing_secret=SECRET.encode())
    assert asgi_get(app, "/x", {"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert asgi_get(app, signed_target("/x")).status_code == 200


# --------------------------------------------------------------------------- the example


def _load_example() -> Any:
    path = Path(__file__).resolve().parents[2] / "examples" / "inference_server.py"
    spec = importlib.util.spec_from_file_location("atlas_example_inference_server", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
    return module


def test_example_inference_server() -> None:
    example = _load_example()
    app = example.create_app(preshared_key=TOKEN, signing_secret=SECRET)

    async def go() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=POD) as client:
            assert (await client.get("/health")).json() == {"status": "ok"}
            refused = await client.post("/infer", json={"prompt": "hi"})
            assert refused.status_code == 401
            ok = await client.post(
                "/infer", json={"prompt": "hi"}, headers={"Authorization": f"Bearer {TOKEN}"}
            )
            assert ok.status_code == 200
            assert ok.json()["output"]
            signed = sign_url(POD + "/infer", secret=SECRET)
            assert (await client.post(signed, json={"prompt": "hi"})).status_code == 200
            # A browser preflight carries no credentials and must still get CORS headers.
            preflight = await client.options(
                "/infer",
                headers={
                    "Origin": "https://app.example",
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "authorization,content-type",
                },
            )
            assert preflight.status_code == 200
            assert "access-control-allow-origin" in preflight.headers

    asyncio.run(go())
