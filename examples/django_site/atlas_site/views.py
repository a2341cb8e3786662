"""Login for API clients: ``GET csrf/`` sets the CSRF cookie, ``POST login/`` (with the
``X-CSRFToken`` header, as Django requires) logs in with a JSON user name and password."""

from __future__ import annotations

import json

from django.contrib.auth import authenticate, login
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_POST


@ensure_csrf_cookie
def csrf(request: HttpRequest) -> HttpResponse:
    """Set the ``csrftoken`` cookie."""
    return JsonResponse({"ok": True})


@require_POST
def login_view(request: HttpRequest) -> HttpResponse:
    """Log in (session cookie) with ``{"username", "password"}``."""
    body = json.loads(request.body or b"{}")
    user = authenticate(request, username=body.get("username"), password=body.get("password"))
    if user is None:
        return JsonResponse({"error": "unauthorized"}, status=401)
    login(request, user)
    return JsonResponse({"ok": True})
