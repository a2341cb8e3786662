"""The ops page as a Django URLconf, for staff users only (``request.user.is_staff``).

::

    # urls.py
    urlpatterns = [
        path("ops/", include("atlas_tasks.dashboard.django_urls")),
    ]

Auth is Django's: a logged-out visitor of the page is sent to ``settings.LOGIN_URL``; a
logged-in non-staff user, and any API call without a staff user, gets 403. Actions are
``csrf_protect``-ed with Django's own CSRF token (per session, rotated at login, compared
in constant time), which the page sends in ``X-CSRFToken``; the operator recorded in
``operator_action`` events is the user's username. The live table uses one polling
stream per open page (:func:`atlas_tasks.dashboard.web.poll_stream`), which holds one
worker thread while the page is open and ends after 5 minutes (the browser reconnects).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    JsonResponse,
    StreamingHttpResponse,
)
from django.middleware.csrf import get_token
from django.urls import path
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.http import require_GET, require_POST

from atlas_tasks.dashboard.page import new_nonce, render_page, security_headers
from atlas_tasks.dashboard.service import DashboardService
from atlas_tasks.dashboard.settings import DashboardSettings
from atlas_tasks.dashboard.web import error_body, poll_stream, session_action
from atlas_tasks.errors import AtlasError

app_name = "atlas_dashboard"

#: The service behind the views; replace it (e.g. in tests) with :func:`configure`.
_service: DashboardService | None = None

View = Callable[..., HttpResponseBase]


def configure(service: DashboardService | None) -> None:
    """Use ``service`` for the views (``None``: a default one on first use)."""
    global _service
    _service = service


def service() -> DashboardService:
    """The service the views use."""
    global _service
    if _service is None:
        _service = DashboardService(scan_limit=DashboardSettings().scan_limit)
    return _service


def _is_staff(request: HttpRequest) -> bool:
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_authenticated and user.is_staff)


def _operator(request: HttpRequest) -> str:
    return str(request.user.get_username())[:64] or "staff"


def _json_error(exc: AtlasError) -> JsonResponse:
    status, body = error_body(exc)
    return JsonResponse(body, status=status)


def staff_api(view: View) -> View:
    """403 JSON unless a staff user calls; AtlasErrors become JSON errors."""

    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not _is_staff(request):
            return _json_error(AtlasError("staff users only", kind="forbidden"))
        try:
            return view(request, *args, **kwargs)
        except AtlasError as exc:
            return _json_error(exc)

    wrapper.__name__ = view.__name__
    wrapper.__doc__ = view.__doc__
    return wrapper


@require_GET
def index(request: HttpRequest) -> HttpResponseBase:
    """The page (logged-out visitors go to LOGIN_URL; non-staff users get 403)."""
    user = getattr(request, "user", None)  # None without AuthenticationMiddleware
    if user is None or not user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    if not _is_staff(request):
        return HttpResponse("staff users only", status=403, content_type="text/plain")
    nonce = new_nonce()
    base = request.path if request.path.endswith("/") else request.path + "/"
    html = render_page(
        base=base,
        csrf=get_token(request),
        operator=_operator(request),
        nonce=nonce,
        csrf_header="X-CSRFToken",
        logout_url=None,
    )
    response = HttpResponse(html)
    for name, value in security_headers(nonce).items():
        response[name] = value
    return response


@staff_api
@require_GET
def events(request: HttpRequest) -> HttpResponseBase:
    """Server-sent events of the live table (one polling stream per open page)."""
    settings = DashboardSettings()
    response = StreamingHttpResponse(
        poll_stream(
            service(), poll_interval_ms=settings.poll_interval_ms, linger_ms=settings.linger_ms
        ),
        content_type="text/event-stream",
    )
    response["Cache-Control"] = "no-store"
    response["X-Accel-Buffering"] = "no"
    return response


@staff_api
@require_GET
def sessions(request: HttpRequest) -> HttpResponseBase:
    """Every tracked session."""
    return JsonResponse(service().sessions())


@staff_api
@require_GET
def timeline(request: HttpRequest, session_id: str) -> HttpResponseBase:
    """One session's recorded events."""
    return JsonResponse(service().timeline(session_id))


@staff_api
@csrf_protect
@require_POST
def act(request: HttpRequest, session_id: str, action: str) -> HttpResponseBase:
    """Touch, Stop or Terminate a session."""
    return JsonResponse(session_action(service(), action)(session_id, _operator(request)))


@staff_api
@require_GET
def orphans(request: HttpRequest) -> HttpResponseBase:
    """Untracked provider pods."""
    return JsonResponse(service().orphans())


@staff_api
@csrf_protect
@require_POST
def orphan_terminate(request: HttpRequest, provider: str, compute_id: str) -> HttpResponseBase:
    """Terminate an untracked prefixed pod."""
    return JsonResponse(service().terminate_orphan(provider, compute_id, _operator(request)))


@staff_api
@require_GET
def health(request: HttpRequest) -> HttpResponseBase:
    """Reaper health, jobs and deploys in flight."""
    return JsonResponse(service().health())


@staff_api
@require_GET
def metrics(request: HttpRequest) -> HttpResponseBase:
    """Prometheus metrics (``atlas_tasks.metrics``), for staff only like the page."""
    from atlas_tasks.metrics import render_metrics

    body, content_type = render_metrics()
    return HttpResponse(body, content_type=content_type)


urlpatterns = [
    path("", index, name="index"),
    path("api/events", events, name="events"),
    path("api/sessions", sessions, name="sessions"),
    path("api/sessions/<str:session_id>/timeline", timeline, name="timeline"),
    path("api/sessions/<str:session_id>/<str:action>", act, name="action"),
    path("api/orphans", orphans, name="orphans"),
    path(
        "api/orphans/<str:provider>/<str:compute_id>/terminate",
        orphan_terminate,
        name="orphan-terminate",
    ),
    path("api/health", health, name="health"),
    path("metrics", metrics, name="metrics"),
]

__all__ = ["app_name", "configure", "service", "urlpatterns"]
