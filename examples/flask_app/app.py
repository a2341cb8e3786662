"""A Flask app serving atlas_tasks sessions to logged-in users (Flask-Login).

    ATLAS_SECRET_KEY=$(atlas-tasks keygen) flask --app examples.flask_app.app run

Routes: ``POST /login`` (demo login by user name), then the extension's ``/atlas/...``
routes. Settings come from ``app.config["ATLAS_*"]``; the browser opens a session by
preset name only.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, Response, jsonify, request
from flask_login import LoginManager, UserMixin, login_user

from atlas_tasks.contrib.flask import AtlasTasks


class User(UserMixin):  # type: ignore[misc]
    """A demo user: any name logs in (use your real user model)."""

    def __init__(self, name: str) -> None:
        self.id = name


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """The app; ``config`` overrides (tests point it at their cluster)."""
    app = Flask(__name__)
    app.config["SECRET_KEY"] = os.environ.get("FLASK_SECRET_KEY", "dev-only-not-secret")
    app.config["ATLAS_SECRET_KEY"] = os.environ.get("ATLAS_SECRET_KEY")
    app.config["ATLAS_SESSION_PRESETS"] = {
        "default": {
            "gpu": "h100",
            "image": "ghcr.io/acme/realtime-inference:latest",
            "ports": [[8000, "http"]],
            "auth": "bearer",
            "idle_ttl_ms": 15 * 60_000,
        },
    }
    app.config.update(config or {})

    login = LoginManager(app)

    @login.user_loader
    def load_user(user_id: str) -> User:
        return User(user_id)

    @app.post("/login")
    def login_view() -> Response:
        login_user(User(str(request.get_json()["user"])))
        return jsonify({"ok": True})

    AtlasTasks(app)
    return app
