"""Flask integration: ``AtlasTasks(app)`` (or ``ext = AtlasTasks(); ext.init_app(app)``).

Settings come from ``app.config["ATLAS_*"]`` (``ATLAS_REDIS_URL``, ``ATLAS_SECRET_KEY``,
``ATLAS_DEFAULT_PROVIDER``... and the web keys ``ATLAS_SESSION_PRESETS``,
``ATLAS_OWNER``, ``ATLAS_SSE_KEEPALIVE_S``); they win over the environment, and a typo'd
``ATLAS_*`` key is a validation error naming the closest one.

The routes are a blueprint mounted at ``/atlas`` (``url_prefix=`` to change), the same as
the Django app's: ``POST/GET sessions``, ``GET/DELETE sessions/<id>``,
``POST sessions/<id>/touch``, ``GET sessions/<id>/events`` (SSE). The owner of a request
is ``flask_login.current_user.get_id()`` when Flask-Login is set up on the app, else
``app.config["ATLAS_OWNER"](request)``; nobody → 401 (Flask-Login's convention). Another
user's session answers 404 on every route.

CSRF: Flask has none built in. If you use Flask-WTF's ``CSRFProtect``, these POST/DELETE
routes are protected like the rest of your app (send ``X-CSRFToken``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request, stream_with_context

from atlas_tasks import client
from atlas_tasks.contrib import _web
from atlas_tasks.errors import AtlasError

_EXTENSION_KEY = "atlas_tasks"


class _Anonymous(Exception):
    """No owner for this request."""


def _options() -> _web.WebOptions:
    ext: AtlasTasks = current_app.extensions[_EXTENSION_KEY]
    assert ext.options is not None
    return ext.options


def _owner() -> Any:
    custom = _options().owner
    if custom is not None:
        owner = custom(request)
    elif getattr(current_app, "login_manager", None) is not None:
        from flask_login import current_user

        owner = current_user.get_id() if current_user.is_authenticated else None
    elif current_app.config.get("ATLAS_OWNER") is not None:
        # AtlasTasks(app) / init_app read app.config once; this key came later.
        raise AtlasError(
            "app.config['ATLAS_OWNER'] was set after AtlasTasks(app) / "
            "init_app(app) read app.config: set the ATLAS_* keys before it",
            kind="unsupported",
        )
    else:
        raise AtlasError(
            "no owner: set up Flask-Login or app.config['ATLAS_OWNER'] (before AtlasTasks(app))",
            kind="unsupported",
        )
    if owner is None:
        raise _Anonymous
    return owner


def _json(body: Any, status: int) -> Response:
    response = jsonify(body)
    response.status_code = status
    return response


def _guard(view: Callable[..., Response]) -> Callable[..., Response]:
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        try:
            return view(*args, **kwargs)
        except _Anonymous:
            return _json({"error": "unauthorized", "message": "authentication required"}, 401)
        except AtlasError as exc:
            return _json(_web.error_body(exc), _web.status_for(exc))

    wrapper.__name__ = view.__name__
    wrapper.__doc__ = view.__doc__
    return wrapper


@_guard
def sessions() -> Response:
    """``POST``: open a session from a preset (201); ``GET``: the user's sessions."""
    owner = _owner()
    if request.method == "POST":
        preset = _web.parse_open_body(request.get_data())
        session = client.spawn(**_web.spawn_arguments(_options(), preset, owner))
        return _json(_web.open_body(session), 201)
    infos = client.list_sessions(owner)
    return _json({"sessions": [_web.info_body(i) for i in infos]}, 200)


@_guard
def session(session_id: str) -> Response:
    """``GET``: info; ``DELETE``: stop (202)."""
    info = _web.owned_info(session_id, _owner())
    if request.method == "GET":
        return _json(_web.info_body(info), 200)
    client.stop_tracked(session_id)
    return _json({"session": session_id, "status": "stopping"}, 202)


@_guard
def touch(session_id: str) -> Response:
    """``POST``: heartbeat (204)."""
    _web.owned_info(session_id, _owner())
    client.touch(session_id)
    return Response(status=204)


@_guard
def session_events(session_id: str) -> Response:
    """``GET``: Server-Sent Events (replay then live; ``Last-Event-ID`` resumes)."""
    _web.owned_info(session_id, _owner())
    after = _web.last_event_id(request.headers.get("Last-Event-ID"))
    stream = _web.sse_stream(session_id, after, _options().keepalive_s)
    return Response(
        stream_with_context(stream), mimetype="text/event-stream", headers=_web.SSE_HEADERS
    )


def blueprint() -> Blueprint:
    """A fresh blueprint with the session routes (one per app: url_prefix differs)."""
    bp = Blueprint("atlas", __name__)
    bp.add_url_rule("/sessions", view_func=sessions, methods=["GET", "POST"])
    bp.add_url_rule("/sessions/<session_id>", view_func=session, methods=["GET", "DELETE"])
    bp.add_url_rule("/sessions/<session_id>/touch", view_func=touch, methods=["POST"])
    bp.add_url_rule("/sessions/<session_id>/events", view_func=session_events, methods=["GET"])
    return bp


class AtlasTasks:
    """The Flask extension: settings from ``app.config`` and the session routes.

    Args:
        app: initialise it at once (else call :meth:`init_app`).
        url_prefix: where the routes are mounted (default ``/atlas``).
    """

    def __init__(self, app: Flask | None = None, *, url_prefix: str = "/atlas") -> None:
        self.url_prefix = url_prefix
        self.options: _web.WebOptions | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, *, url_prefix: str | None = None) -> None:
        """Apply ``app.config["ATLAS_*"]`` and register the blueprint.

        Raises:
            ValidationError: an unknown ``ATLAS_*`` key (closest suggested) or bad value.
        """
        values = {k[len("ATLAS_") :]: v for k, v in app.config.items() if k.startswith("ATLAS_")}
        self.options = _web.apply_settings(values, source="app.config", prefix="ATLAS_")
        app.extensions[_EXTENSION_KEY] = self
        app.register_blueprint(blueprint(), url_prefix=url_prefix or self.url_prefix)

    def init_ops(
        self,
        app: Flask,
        *,
        check: Callable[[], bool],
        operator: Callable[[], str] | None = None,
        url_prefix: str = "/atlas/ops",
    ) -> None:
        """Mount the ops page (:mod:`atlas_tasks.dashboard`), its API and ``/metrics``.

        Args:
            check: called before every ops route; only ``True`` lets the request through
                (e.g. ``lambda: current_user.is_authenticated and current_user.is_admin``).
            operator: the name recorded with each action (default ``"flask"``).
            url_prefix: where the page is mounted.
        """
        from atlas_tasks.dashboard.flask import create_blueprint

        app.register_blueprint(
            create_blueprint(check, operator=operator or (lambda: "flask")), url_prefix=url_prefix
        )


__all__ = ["AtlasTasks", "blueprint"]
