"""A tiny inference server for a pod spawned by atlas_tasks, guarded by the pod-side middleware.

The orchestrator injects ``ATLAS_PRESHARED_KEY`` (``auth="bearer"``) or
``ATLAS_SIGNING_SECRET`` (``auth="signed_url"``) into the pod; this app reads them at
start-up and admits only requests that carry the bearer token or a valid signed URL.
``/health`` stays public so the platform can probe the pod.

Run it (inside the pod image, or locally to try it)::

    ATLAS_PRESHARED_KEY=dev-token uvicorn examples.inference_server:app --host 0.0.0.0 --port 8000
    curl -s localhost:8000/health                                   # {"status":"ok"}
    curl -s -X POST localhost:8000/infer -d '{"prompt":"hi"}'        # 401
    curl -s -X POST localhost:8000/infer -H 'Authorization: Bearer dev-token' -d '{"prompt":"hi"}'

Your web app spawns the pod and hands the browser the pod URL and the token, once::

    # Django/Flask view (web process)
    from atlas_tasks import orchestrator
    s = orchestrator.spawn(provider="runpod", gpu="h100", image="me/inference:latest",
                           ports=[(8000, "http")], auth="bearer", user_id=request.user.id)
    compute = s.wait(timeout=120)
    return JsonResponse({"session": s.id, "url": compute.ports[0].url, "token": s.token})

and the browser talks to the pod directly (the web app only relays ``touch`` heartbeats)::

    const {url, token} = await (await fetch("/gpu/session", {method: "POST"})).json();
    const res = await fetch(`${url}/infer`, {
      method: "POST",
      headers: {"Authorization": `Bearer ${token}`, "Content-Type": "application/json"},
      body: JSON.stringify({prompt: "a red bicycle"}),
    });
    console.log(await res.json());   // {"output": "...", "model": "echo"}

For ``<img src>``/``<video src>``, which cannot send headers, the web app signs the URL
with the pod's signing secret instead: ``sign_url(f"{url}/infer?prompt=...", secret=...)``.
``CORSMiddleware`` sits *outside* the auth middleware so the browser's preflight (which
never carries credentials) is answered, and 401s still carry CORS headers.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from atlas_tasks.auth import BearerOrSignedUrlMiddleware

#: Comma-separated origins allowed to call the pod from a browser ("*" by default: the
#: credential is the bearer token, not a cookie, so a wildcard grants nothing by itself).
CORS_ORIGINS_ENV = "CORS_ORIGINS"


async def health(request: Request) -> JSONResponse:
    """Liveness probe; exempt from auth."""
    return JSONResponse({"status": "ok"})


async def infer(request: Request) -> JSONResponse:
    """Stand-in for a model: echo the prompt back, reversed."""
    prompt = request.query_params.get("prompt", "")
    if request.method == "POST":
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "body must be JSON"}, status_code=400)
        if isinstance(body, dict):
            prompt = str(body.get("prompt", prompt))
    return JSONResponse({"output": prompt[::-1] or "(empty prompt)", "model": "echo"})


def create_app(
    *,
    preshared_key: str | None = None,
    signing_secret: str | None = None,
    cors_origins: list[str] | None = None,
) -> Starlette:
    """Build the app; secrets default to the pod's environment (see module docstring)."""
    origins = cors_origins or os.environ.get(CORS_ORIGINS_ENV, "*").split(",")
    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/infer", infer, methods=["GET", "POST"]),
        ],
        middleware=[
            # Outermost first: CORS answers preflights before the auth check runs.
            Middleware(
                CORSMiddleware,
                allow_origins=origins,
                allow_methods=["GET", "POST"],
                allow_headers=["authorization", "content-type"],
            ),
            Middleware(
                BearerOrSignedUrlMiddleware,
                preshared_key=preshared_key,
                signing_secret=signing_secret,
                exempt_paths=["/health"],
            ),
        ],
    )


#: What ``uvicorn examples.inference_server:app`` serves (secrets read from the env now).
app = create_app()


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="0.0.0.0", port=int(os.environ.get("PORT", "8000")))
