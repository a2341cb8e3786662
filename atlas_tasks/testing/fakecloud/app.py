"""The Starlette application of the fake cloud.

Layout (each provider under its own prefix, so Fly/Lambda/Vast can be added beside it)::

    /runpod/v2/...        RunPod REST v2        (runpod_rest; base URL <fake>/runpod)
    /runpod/v2/<ep>/...   RunPod serverless     (runpod_runtime; matched after REST v2)
    /lambda/api/v1/...    Lambda Cloud          (lambda_labs)
    /vast/api/v0/...      Vast.ai               (vast)
    /fly/v1/apps/...      Fly Machines          (fly_machines)
    /fly/api/v1/apps/<app>/logs  Fly logs API   (fly_logs)
    /_admin/...           test controls         (admin)
"""

from __future__ import annotations

from http import HTTPStatus

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from atlas_tasks.testing.fakecloud import admin, runpod_rest, runpod_runtime
from atlas_tasks.testing.fakecloud import lambda_labs as lambda_api
from atlas_tasks.testing.fakecloud.common import FakeCloudContext
from atlas_tasks.testing.fakecloud.config import FakeCloudConfig
from atlas_tasks.testing.fakecloud.faults import FaultInjector
from atlas_tasks.testing.fakecloud.providers import PROVIDERS
from atlas_tasks.testing.fakecloud.ratelimit import KeyRateLimiter
from atlas_tasks.testing.fakecloud.state import CloudState


def build_context(config: FakeCloudConfig | None = None) -> FakeCloudContext:
    """Fresh state, fault injector and job store for ``config``."""
    config = config or FakeCloudConfig()
    state = CloudState(seed=config.faults.seed)
    ctx = FakeCloudContext(
        config=config,
        state=state,
        faults=FaultInjector(config.faults),
        jobs=None,
        limiter=KeyRateLimiter(config.rate_limit_per_minute),
    )
    ctx.jobs = runpod_runtime.JobStore(config, state)
    return ctx


def mounted_prefixes(app: Starlette) -> list[str]:
    """First path segment of every route (``/runpod``, ``/fly``, ...), sorted."""
    prefixes = {
        "/" + str(getattr(route, "path", "")).strip("/").split("/")[0] for route in app.routes
    }
    return sorted(p for p in prefixes if p != "/")


async def _http_error(request: Request, exc: Exception) -> Response:
    # Unknown paths and wrong methods answer in the error shape of the provider whose
    # prefix was asked (RunPod REST v2: an RFC 9457 problem; Lambda: {"error": {code,
    # message}}; Vast: {success, error, msg}; Fly: {"error"}), not plain text, so an
    # official client parses them as it would the real API's.
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    message = str(exc.detail)
    extra: dict[str, object] = {}
    if status == 404:
        # A client pointed at the wrong base URL sees what it asked for and what exists.
        prefixes = mounted_prefixes(request.app)
        message = (
            f"fake cloud: no route for {request.method} {request.url}; "
            f"providers are mounted under {', '.join(prefixes)} (the "
            "banner of `atlas-tasks fakecloud` prints each base URL)"
        )
        extra = {"method": request.method, "url": str(request.url), "prefixes": prefixes}
    elif status == 405:
        message = f"fake cloud: {request.method} is not allowed on {request.url.path}"
    path = request.url.path
    headers = dict(exc.headers or {})
    if path.startswith("/runpod/"):
        # Problem details may carry extension members (RFC 9457 §3.2): keep what was asked.
        answer: Response = JSONResponse(
            {"title": HTTPStatus(status).phrase, "status": status, "detail": message, **extra},
            status_code=status,
            media_type=runpod_rest.PROBLEM_JSON,
        )
    elif path.startswith("/lambda/"):
        code = "global/object-does-not-exist" if status == 404 else "global/invalid-parameters"
        answer = lambda_api.lambda_error(status, code, message)
    elif path.startswith("/vast/"):
        answer = JSONResponse(
            {
                "success": False,
                "error": "not_found" if status == 404 else "invalid_request",
                "msg": message,
                **extra,
            },
            status_code=status,
        )
    else:
        # Fly's ErrorResponse is {"error": str}; outside any provider, say what exists.
        body: dict[str, object] = {"error": exc.detail, **extra}
        if extra:
            body["message"] = message
        answer = JSONResponse(body, status_code=status)
    answer.headers.update(headers)
    return answer


def create_app(config: FakeCloudConfig | None = None) -> Starlette:
    """The fake cloud as an ASGI app; its context is ``app.state.fakecloud``."""
    ctx = build_context(config)
    # Every provider of the list, in its order, then the admin API.
    routes = [route for provider in PROVIDERS for route in provider.routes(ctx)]
    routes += admin.build_routes(ctx)
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    app.state.fakecloud = ctx
    return app
