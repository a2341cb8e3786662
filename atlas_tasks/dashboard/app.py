"""The standalone ops page: a Starlette app served by ``atlas-tasks dashboard``.

Routes (every one checks auth, except the login form itself)::

    GET  /                                   the page (redirects to /login when logged out)
    GET  /login   POST /login   POST /logout
    GET  /api/events                         server-sent events: snapshot, then changes
    GET  /api/sessions                       every tracked session (JSON rows)
    GET  /api/sessions/{id}/timeline         the session's recorded events
    POST /api/sessions/{id}/touch|stop|terminate
    GET  /api/orphans                        untracked provider pods (lists providers)
    POST /api/orphans/{provider}/{pod}/terminate
    GET  /api/health                         reaper health, jobs and deploys in flight
    GET  /api/csrf                           a CSRF token for bearer-token clients

Auth: ``Authorization: Bearer <ATLAS_DASHBOARD_TOKEN>`` (operator named by the
``X-Atlas-Operator`` header) or the login cookie (HttpOnly, SameSite=Strict). Every POST
needs the caller's CSRF token in ``X-CSRF-Token`` and, when the browser sends one, an
``Origin`` equal to the page's own.

Live updates: one :class:`LiveFeed` per process pattern-subscribes to every session's
event channel and re-reads the sessions an event was published for (debounced), plus the
whole registry every ``ATLAS_DASHBOARD_POLL_INTERVAL_MS`` (touches publish no event;
stretched for registries of thousands of sessions), then pushes the diff to every open
page. All viewers share that one reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from atlas_tasks.dashboard.auth import (
    COOKIE_NAME,
    CSRF_HEADER,
    DashboardAuth,
    Principal,
    token_fingerprint,
    valid_operator,
)
from atlas_tasks.dashboard.page import new_nonce, render_login, render_page, security_headers
from atlas_tasks.dashboard.service import DashboardService, LiveTable
from atlas_tasks.dashboard.settings import MIN_TOKEN_LENGTH, DashboardSettings
from atlas_tasks.dashboard.web import KEEPALIVE_S, error_body, session_action, sse
from atlas_tasks.errors import AtlasError, ValidationError
from atlas_tasks.events import session_channel_pattern
from atlas_tasks.redis_conn import async_pubsub_client_for_url

log = logging.getLogger(__name__)

#: Hosts a ``--insecure-localhost`` server answers to (DNS-rebinding guard).
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})
#: Pause after an event wakes the feed, so a burst of events costs one registry read.
DEBOUNCE_S = 0.05
#: Changes buffered per viewer; a viewer that falls further behind is disconnected (its
#: browser reconnects and gets a fresh snapshot).
QUEUE_SIZE = 256
#: Rows a full re-read may cover per second of its period (see LiveFeed.full_interval_s).
FULL_READ_ROWS_PER_S = 2000
#: Largest form body accepted (login, logout).
MAX_FORM_BYTES = 4096

Endpoint = Callable[[Request], Awaitable[Response]]


def error_response(exc: AtlasError) -> JSONResponse:
    """An :class:`AtlasError` as a JSON error with a fitting status code."""
    status, body = error_body(exc)
    return JSONResponse(body, status_code=status)


class LiveFeed:
    """One registry reader per process, fanned out to every open page."""

    def __init__(self, service: DashboardService, settings: DashboardSettings) -> None:
        self.table = LiveTable(service, linger_ms=settings.linger_ms)
        self.interval_s = settings.poll_interval_ms / 1000
        self.redis_url = service.settings.redis_url
        self.ks = service.ks  # only this deployment's session channels
        self._queues: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._dirty: set[str] = set()
        self._last_full = 0.0
        self._poller: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None

    async def _refresh(self, only: set[str] | None = None) -> None:
        async with self._lock:
            changes = await anyio.to_thread.run_sync(self.table.refresh, only)
            if only is None:
                self._last_full = time.monotonic()
        if changes:
            self._broadcast({"now_ms": self.table.now_ms, "changes": changes})

    def _broadcast(self, message: dict[str, Any]) -> None:
        for queue in list(self._queues):
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:
                # Too far behind: end its stream (the browser reconnects for a snapshot).
                self._queues.discard(queue)
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(None)

    def full_interval_s(self) -> float:
        """Period of the full re-read: the poll interval, stretched past
        :data:`FULL_READ_ROWS_PER_S` rows so a large registry is not re-read at 2 Hz
        (events still refresh their own sessions at once)."""
        return max(self.interval_s, len(self.table.rows) / FULL_READ_ROWS_PER_S)

    async def _poll(self) -> None:
        while self._queues:
            wait_s = max(0.0, self._last_full + self.full_interval_s() - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait_s)
            try:
                if self._wake.is_set():
                    await asyncio.sleep(DEBOUNCE_S)  # a burst of events: one read
                    self._wake.clear()
                    dirty, self._dirty = self._dirty, set()
                    await self._refresh(dirty)
                if time.monotonic() - self._last_full >= self.full_interval_s():
                    await self._refresh()
            except Exception as exc:  # Redis away: keep the pages, retry next interval
                log.warning("dashboard: registry read failed: %s", exc)
                await asyncio.sleep(self.interval_s)

    async def _listen(self) -> None:
        """Mark sessions dirty and wake the poller on their events (pattern subscription
        to every session's channel, cluster-wide)."""
        while self._queues:
            # on a cluster, one node's subscriber hears every PUBLISH
            client = await async_pubsub_client_for_url(self.redis_url, decode_responses=True)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(session_channel_pattern(self.ks.namespace))
                while self._queues:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        # "<ns>:events:<id>", or "<ns>:{s<k>}:events:<id>" when tagged
                        self._dirty.add(str(message["channel"]).rpartition(":")[2])
                        self._wake.set()
            except Exception as exc:
                log.warning("dashboard: event subscription failed: %s", exc)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                    await client.aclose()

    def _ensure_running(self) -> None:
        # Each loop ends on its own once the last viewer left; restart whichever did.
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll())
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen())

    async def stream(self) -> AsyncIterator[str]:
        """SSE text for one viewer: a ``snapshot``, then ``changes`` as they happen."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=QUEUE_SIZE)
        await self._refresh()
        async with self._lock:
            snapshot = self.table.snapshot()
            self._queues.add(queue)
        self._ensure_running()
        try:
            yield sse("snapshot", snapshot)
            while True:
                try:
                    message = await asyncio.wait_for(queue.get(), timeout=KEEPALIVE_S)
                except TimeoutError:
                    yield sse("clock", {"now_ms": self.table.now_ms})
                    continue
                if message is None:
                    return  # fell behind: the browser reconnects and gets a snapshot
                yield sse("changes", message)
        finally:
            self._queues.discard(queue)

    async def close(self) -> None:
        """Stop the background reader (app shutdown)."""
        self._queues.clear()
        tasks = [t for t in (self._poller, self._listener) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


class DashboardApp:
    """Routes of the standalone page, bound to one service, auth and feed."""

    def __init__(
        self, service: DashboardService, settings: DashboardSettings, auth: DashboardAuth
    ) -> None:
        self.service = service
        self.settings = settings
        self.auth = auth
        self.feed = LiveFeed(service, settings)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def base(request: Request) -> str:
        """URL prefix of the app (its root path) ending in ``/``."""
        return str(request.scope.get("root_path", "")).rstrip("/") + "/"

    def principal(self, request: Request) -> Principal | None:
        """Who is calling, or ``None``."""
        if self.auth.insecure and not self.loopback_host(request):
            return None  # a rebound DNS name pointing at 127.0.0.1
        header = request.headers.get("authorization", "")
        if header[:7].lower() == "bearer " and not self.auth.insecure:
            if not self.auth.check_token(header[7:].strip()):
                return None
            name = request.headers.get(self.settings.operator_header, "api")
            try:
                return Principal(operator=valid_operator(name), via="bearer")
            except ValidationError:
                return None
        return self.auth.read_login(request.cookies.get(COOKIE_NAME))

    @staticmethod
    def same_origin(request: Request) -> bool:
        """False when the browser says the request comes from another origin."""
        origin = request.headers.get("origin")
        if origin is None:
            return True  # not a browser, or a same-origin GET-initiated navigation
        return urlsplit(origin).netloc == request.headers.get("host", "")

    def guarded(
        self, endpoint: Callable[[Request, Principal], Awaitable[Response]], *, action: bool = False
    ) -> Endpoint:
        """Wrap an endpoint with auth (401), and for actions origin + CSRF checks (403)."""

        async def wrapper(request: Request) -> Response:
            principal = self.principal(request)
            if principal is None:
                return error_response(
                    AtlasError(
                        "log in, or send Authorization: Bearer <ATLAS_DASHBOARD_TOKEN>",
                        kind="unauthorized",
                    )
                )
            if action:
                refusal = None
                if not self.same_origin(request):
                    refusal = "cross-origin request refused"
                elif not self.auth.check_csrf(principal, request.headers.get(CSRF_HEADER)):
                    refusal = f"missing or wrong CSRF token (send it in {CSRF_HEADER})"
                if refusal is not None:
                    # An audit trail of refused actions: a forged request shows up here.
                    log.warning(
                        "dashboard: refused %s %s as %r: %s",
                        request.method,
                        request.url.path,
                        principal.operator,
                        refusal,
                    )
                    return error_response(AtlasError(refusal, kind="forbidden"))
            try:
                return await endpoint(request, principal)
            except AtlasError as exc:
                return error_response(exc)

        return wrapper

    def html(self, render: Callable[[str], str], status_code: int = 200) -> HTMLResponse:
        """An HTML response with a fresh nonce and the strict security headers."""
        nonce = new_nonce()
        return HTMLResponse(render(nonce), status_code=status_code, headers=security_headers(nonce))

    @staticmethod
    async def form(request: Request) -> dict[str, str]:
        """The urlencoded form body (first value of each field)."""
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            raise ValidationError("form: too large", field="form")
        parsed = parse_qs(body.decode("utf-8", "replace"), max_num_fields=20)
        return {k: v[0] for k, v in parsed.items()}

    # ------------------------------------------------------------------ pages
    async def index(self, request: Request) -> Response:
        """The page, or a redirect to the login form."""
        principal = self.principal(request)
        base = self.base(request)
        if principal is None:
            return RedirectResponse(base + "login", status_code=303)
        csrf = principal.csrf or self.auth.bearer_csrf(principal.operator)
        note = "insecure: localhost only, no token" if self.auth.insecure else ""
        return self.html(
            lambda nonce: render_page(
                base=base,
                csrf=csrf,
                operator=principal.operator,
                nonce=nonce,
                csrf_header=CSRF_HEADER,
                logout_url=base + "logout",
                note=note,
            )
        )

    async def login_form(self, request: Request) -> Response:
        """The login form."""
        base = self.base(request)
        return self.html(
            lambda nonce: render_login(
                action=base + "login", nonce=nonce, insecure=self.auth.insecure
            )
        )

    async def login(self, request: Request) -> Response:
        """Check the token, set the login cookie, go to the page."""
        base = self.base(request)
        if not self.same_origin(request):
            return error_response(AtlasError("cross-origin login refused", kind="forbidden"))
        try:
            form = await self.form(request)
            operator = valid_operator(form.get("operator", ""))
        except ValidationError as exc:
            problem = exc.message or "invalid input"
            return self.html(
                lambda nonce: render_login(
                    action=base + "login", nonce=nonce, error=problem, insecure=self.auth.insecure
                ),
                status_code=400,
            )
        if self.auth.insecure and not self.loopback_host(request):
            return error_response(AtlasError("not a loopback host", kind="forbidden"))
        if not self.auth.check_token(form.get("token")):
            await asyncio.sleep(0.5)  # slows guessing; the token is long anyway
            log.warning(
                "dashboard: failed login as %r from %s",
                operator,
                request.client.host if request.client else "?",
            )
            return self.html(
                lambda nonce: render_login(
                    action=base + "login",
                    nonce=nonce,
                    error="Wrong access token.",
                    insecure=self.auth.insecure,
                ),
                status_code=401,
            )
        cookie, _ = self.auth.issue_login(operator)
        log.info("dashboard: operator %r logged in", operator)
        response = RedirectResponse(base, status_code=303)
        response.set_cookie(
            COOKIE_NAME,
            cookie,
            max_age=self.auth.ttl_s,
            path=base,
            httponly=True,
            samesite="strict",
            secure=self.settings.cookie_secure,
        )
        return response

    @staticmethod
    def loopback_host(request: Request) -> bool:
        """Whether the Host header names loopback (checked when running insecure)."""
        host = (request.headers.get("host") or "").rsplit(":", 1)[0]
        return host in LOOPBACK_HOSTS

    async def logout(self, request: Request) -> Response:
        """Drop the login cookie (needs the CSRF token as the ``csrf`` form field)."""
        principal = self.principal(request)
        base = self.base(request)
        form = await self.form(request)
        if (
            principal is None
            or not self.same_origin(request)
            or not self.auth.check_csrf(principal, form.get("csrf"))
        ):
            return error_response(AtlasError("bad logout request", kind="forbidden"))
        response = RedirectResponse(base + "login", status_code=303)
        response.delete_cookie(COOKIE_NAME, path=base, httponly=True, samesite="strict")
        return response

    # ------------------------------------------------------------------ API
    async def events(self, request: Request, principal: Principal) -> Response:
        """Server-sent events of the live table."""
        return StreamingResponse(
            self.feed.stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def sessions(self, request: Request, principal: Principal) -> Response:
        """Every tracked session."""
        return JSONResponse(await anyio.to_thread.run_sync(self.service.sessions))

    async def timeline(self, request: Request, principal: Principal) -> Response:
        """One session's events."""
        session_id = request.path_params["session_id"]
        return JSONResponse(await anyio.to_thread.run_sync(self.service.timeline, session_id))

    async def session_action(self, request: Request, principal: Principal) -> Response:
        """Touch, Stop or Terminate one session."""
        session_id = request.path_params["session_id"]
        action = session_action(self.service, request.path_params["action"])
        result = await anyio.to_thread.run_sync(action, session_id, principal.operator)
        return JSONResponse(result)

    async def orphans(self, request: Request, principal: Principal) -> Response:
        """Untracked provider pods."""
        return JSONResponse(await anyio.to_thread.run_sync(self.service.orphans))

    async def orphan_terminate(self, request: Request, principal: Principal) -> Response:
        """Terminate one untracked prefixed pod."""
        result = await anyio.to_thread.run_sync(
            self.service.terminate_orphan,
            request.path_params["provider"],
            request.path_params["compute_id"],
            principal.operator,
        )
        return JSONResponse(result)

    async def health(self, request: Request, principal: Principal) -> Response:
        """Reaper health and work in flight."""
        return JSONResponse(await anyio.to_thread.run_sync(self.service.health))

    async def csrf(self, request: Request, principal: Principal) -> Response:
        """The caller's CSRF token (bearer clients need one for actions)."""
        return JSONResponse(
            {
                "operator": principal.operator,
                "header": CSRF_HEADER,
                "csrf": principal.csrf or self.auth.bearer_csrf(principal.operator),
            }
        )

    async def metrics(self, request: Request, principal: Principal) -> Response:
        """Prometheus metrics (``atlas_tasks.metrics``), behind the same guard as the API:
        scrape with ``authorization: {credentials: <ATLAS_DASHBOARD_TOKEN>}``."""
        from atlas_tasks.metrics import render_metrics

        body, content_type = await anyio.to_thread.run_sync(render_metrics)
        return Response(body, media_type=content_type)

    def routes(self) -> list[Route]:
        """Every route of the app."""
        g = self.guarded
        return [
            Route("/", self.index),
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/api/events", g(self.events)),
            Route("/api/sessions", g(self.sessions)),
            Route("/api/sessions/{session_id}/timeline", g(self.timeline)),
            Route(
                "/api/sessions/{session_id}/{action:str}",
                g(self.session_action, action=True),
                methods=["POST"],
            ),
            Route("/api/orphans", g(self.orphans)),
            Route(
                "/api/orphans/{provider}/{compute_id}/terminate",
                g(self.orphan_terminate, action=True),
                methods=["POST"],
            ),
            Route("/api/health", g(self.health)),
            Route("/api/csrf", g(self.csrf)),
            Route("/metrics", g(self.metrics)),
        ]


def create_app(
    *,
    settings: DashboardSettings | None = None,
    service: DashboardService | None = None,
    insecure_localhost: bool = False,
) -> Starlette:
    """The standalone ops page as an ASGI app.

    Raises:
        ValidationError: no ``ATLAS_DASHBOARD_TOKEN`` (and not ``insecure_localhost``),
            or a token shorter than 16 characters.
    """
    settings = settings or DashboardSettings()
    token = settings.token.get_secret_value() if settings.token else None
    if token is None and not insecure_localhost:
        raise ValidationError(
            "token: set ATLAS_DASHBOARD_TOKEN (or run with "
            "--insecure-localhost to serve 127.0.0.1 without one)",
            field="token",
        )
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise ValidationError(
            f"token: ATLAS_DASHBOARD_TOKEN must have at least {MIN_TOKEN_LENGTH} characters",
            field="token",
        )
    service = service or DashboardService(scan_limit=settings.scan_limit)
    dashboard = DashboardApp(service, settings, DashboardAuth(token, ttl_s=settings.session_ttl_s))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await dashboard.feed.close()

    app = Starlette(routes=dashboard.routes(), lifespan=lifespan)
    app.state.dashboard = dashboard
    return app


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 8720,
    insecure_localhost: bool = False,
    settings: DashboardSettings | None = None,
) -> None:
    """Run the page with uvicorn until interrupted.

    Raises:
        ValidationError: see :func:`create_app`.
    """
    import uvicorn

    settings = settings or DashboardSettings()
    if insecure_localhost and settings.token is None:
        host = "127.0.0.1"  # no token: never reachable from another machine
    app = create_app(settings=settings, insecure_localhost=insecure_localhost)
    who = (
        f"token sha256:{token_fingerprint(settings.token.get_secret_value())}…"
        if settings.token
        else "NO TOKEN (localhost only)"
    )
    print(f"atlas ops page on http://{host}:{port}/ ({who})", flush=True)
    # Open event streams would hold a graceful shutdown forever: give them 2 s.
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=2)


__all__ = ["DashboardApp", "LiveFeed", "create_app", "error_response", "serve"]
