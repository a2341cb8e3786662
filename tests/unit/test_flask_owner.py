"""The Flask extension without Flask-Login: ``ATLAS_OWNER`` names the owner; nobody is
401; the preset is checked before anything reaches Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask, Request

from atlas_tasks.config import configure
from atlas_tasks.contrib.flask import AtlasTasks


def owner_from_header(request: Request) -> str | None:
    """The test's stand-in for real authentication."""
    return request.headers.get("X-User")


@pytest.fixture
def app() -> Iterator[Flask]:
    app = Flask(__name__)
    app.config.update(
        ATLAS_OWNER=f"{__name__}.owner_from_header",
        ATLAS_SESSION_PRESETS={"default": {"gpu": "h100"}},
    )
    AtlasTasks(app, url_prefix="/gpu")
    yield app
    configure()


def test_owner_callable_and_anonymous(app: Flask) -> None:
    c = app.test_client()
    assert c.post("/gpu/sessions", json={"preset": "default"}).status_code == 401
    r = c.post("/gpu/sessions", json={"preset": "big"}, headers={"X-User": "u1"})
    assert r.status_code == 422 and r.get_json() == {
        "error": "validation",
        "message": "preset: unknown preset 'big' (known: default)",
    }
    assert c.get("/atlas/sessions").status_code == 404  # mounted at url_prefix only


def test_init_app_later() -> None:
    ext = AtlasTasks()
    app = Flask(__name__)
    app.config["ATLAS_OWNER"] = owner_from_header
    ext.init_app(app)
    assert app.extensions["atlas_tasks"] is ext
    assert any(r.rule == "/atlas/sessions" for r in app.url_map.iter_rules())
    configure()


def test_owner_set_after_init_app_is_named_in_the_error() -> None:
    # The natural order in an app.py: AtlasTasks(app) first, the owner added below it.
    app = Flask(__name__)
    app.config["ATLAS_SESSION_PRESETS"] = {"default": {"gpu": "h100"}}
    AtlasTasks(app)
    app.config["ATLAS_OWNER"] = owner_from_header
    r = app.test_client().get("/atlas/sessions", headers={"X-User": "u1"})
    assert r.status_code == 502
    assert "set after AtlasTasks(app)" in r.get_json()["message"]
    late = Flask(__name__)
    AtlasTasks(late)
    r = late.test_client().get("/atlas/sessions")
    assert "before AtlasTasks(app)" in r.get_json()["message"]
    configure()
