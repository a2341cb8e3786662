"""The ops page as a Flask blueprint, guarded by a check callable of the host app.

::

    from atlas_tasks.dashboard.flask import create_blueprint

    app.secret_key = ...          # the CSRF token lives in Flask's signed session
    app.register_blueprint(
        create_blueprint(check=lambda: current_user.is_authenticated and current_user.is_admin,
                         operator=lambda: current_user.email),
        url_prefix="/ops")

``check()`` runs before every route of the blueprint (page and API alike): False answers
403. Actions need the CSRF token the page embeds (``X-CSRF-Token``): a random token kept
in Flask's session (one per browser session; clear the session at logout to rotate it),
compared in constant time. ``operator()`` names who acts in ``operator_action`` events.
The live table uses one polling stream per open page (see
:func:`atlas_tasks.dashboard.web.poll_stream`).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable

from flask import Blueprint, Response, jsonify, request, session, stream_with_context
from flask.typing import ResponseReturnValue

from atlas_tasks.dashboard.page import new_nonce, render_page, security_headers
from atlas_tasks.dashboard.service import DashboardService
from atlas_tasks.dashboard.settings import DashboardSettings
from atlas_tasks.dashboard.web import error_body, poll_stream, session_action
from atlas_tasks.errors import AtlasError

#: Key of the CSRF token in Flask's session.
CSRF_SESSION_KEY = "atlas_dashboard_csrf"
#: Header the page sends the CSRF token in.
CSRF_HEADER = "X-CSRF-Token"


def _json_error(exc: AtlasError) -> ResponseReturnValue:
    status, body = error_body(exc)
    return jsonify(body), status


def _csrf_token() -> str:
    token = session.get(CSRF_SESSION_KEY)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        session[CSRF_SESSION_KEY] = token
    return token


def create_blueprint(
    check: Callable[[], bool],
    *,
    operator: Callable[[], str] = lambda: "flask",
    service: DashboardService | None = None,
    settings: DashboardSettings | None = None,
    name: str = "atlas_dashboard",
) -> Blueprint:
    """A blueprint serving the ops page and its API.

    Args:
        check: called before every route; only True lets the request through.
        operator: the name recorded with each action (e.g. the user's email).
        service: the service to use (default: a new :class:`DashboardService`).
        settings: dashboard settings (poll interval, linger; the token is not used here:
            ``check`` decides who gets in).
        name: the blueprint's name.
    """
    settings = settings or DashboardSettings()
    svc = service or DashboardService(scan_limit=settings.scan_limit)
    bp = Blueprint(name, __name__)

    @bp.before_request
    def guard() -> ResponseReturnValue | None:
        if not check():
            return _json_error(AtlasError("not allowed", kind="forbidden"))
        if request.method == "POST":
            given = request.headers.get(CSRF_HEADER, "")
            expected = session.get(CSRF_SESSION_KEY)
            if not isinstance(expected, str) or not hmac.compare_digest(
                given.encode(), expected.encode()
            ):
                return _json_error(
                    AtlasError(
                        f"missing or wrong CSRF token (send it in {CSRF_HEADER})", kind="forbidden"
                    )
                )
        return None

    @bp.errorhandler(AtlasError)
    def atlas_error(exc: AtlasError) -> ResponseReturnValue:
        return _json_error(exc)

    def who() -> str:
        return str(operator())[:64] or "flask"

    @bp.get("/")
    def index() -> ResponseReturnValue:
        nonce = new_nonce()
        base = request.path if request.path.endswith("/") else request.path + "/"
        html = render_page(
            base=base,
            csrf=_csrf_token(),
            operator=who(),
            nonce=nonce,
            csrf_header=CSRF_HEADER,
            logout_url=None,
        )
        return Response(html, mimetype="text/html", headers=security_headers(nonce))

    @bp.get("/api/events")
    def events() -> ResponseReturnValue:
        stream = poll_stream(
            svc, poll_interval_ms=settings.poll_interval_ms, linger_ms=settings.linger_ms
        )
        return Response(
            stream_with_context(stream),
            mimetype="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @bp.get("/api/sessions")
    def sessions() -> ResponseReturnValue:
        return jsonify(svc.sessions())

    @bp.get("/api/sessions/<session_id>/timeline")
    def timeline(session_id: str) -> ResponseReturnValue:
        return jsonify(svc.timeline(session_id))

    @bp.post("/api/sessions/<session_id>/<action>")
    def act(session_id: str, action: str) -> ResponseReturnValue:
        return jsonify(session_action(svc, action)(session_id, who()))

    @bp.get("/api/orphans")
    def orphans() -> ResponseReturnValue:
        return jsonify(svc.orphans())

    @bp.post("/api/orphans/<provider>/<compute_id>/terminate")
    def orphan_terminate(provider: str, compute_id: str) -> ResponseReturnValue:
        return jsonify(svc.terminate_orphan(provider, compute_id, who()))

    @bp.get("/api/health")
    def health() -> ResponseReturnValue:
        return jsonify(svc.health())

    @bp.get("/metrics")
    def metrics() -> ResponseReturnValue:
        from atlas_tasks.metrics import render_metrics

        body, content_type = render_metrics()
        return Response(body, content_type=content_type)

    return bp


__all__ = ["CSRF_HEADER", "CSRF_SESSION_KEY", "create_blueprint"]
