"""Fault injection: latency, 5xx, 429 with Retry-After, 500-after-create, scripted faults.

Scripted rules can also *hold* a call at a named gate until a test releases it, before or
after the handler ran (step-by-step race tests), or answer late after the handler ran (a
create that lands after the client's read timeout). The injector also counts successful
creates per resource name (``creates_by_name`` in ``/_admin/state``), so a test can assert
"at most one pod per session" however the pods ended.

:class:`FaultInjector` decides, per provider call, what goes wrong. It is thread-safe (the
server loop and a test thread may both touch it) and seeded, so a run with ``seed=`` set
replays the same faults for the same sequence of calls.
"""

from __future__ import annotations

import asyncio
import fnmatch
import random
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from starlette.responses import HTMLResponse, JSONResponse, Response

from atlas_tasks.testing.fakecloud.config import FaultSettings, ScriptRule

#: Body of an injected 500, worded like RunPod's generic failure.
GENERIC_500 = "Something went wrong. Please try again later or contact support."

#: Counter names in ``/_admin/state`` → ``faults_injected``.
FAULT_KINDS = (
    "latency",
    "rate_limited",
    "error_5xx",
    "create_500_after_create",
    "script",
    "held",
    "latency_after",
)


@dataclass
class FaultPlan:
    """What the injector decided for one call.

    Attributes:
        delay_s: sleep this long before answering (global latency plus any rule latency).
        now: answer this instead of running the handler (None: run it).
        after: run the handler, then answer this instead if the handler succeeded.
    """

    delay_s: float = 0.0
    now: Response | None = None
    after: Response | None = None
    #: ``after`` came from ``create_500_after_create_rate`` (counted only when applied).
    after_random: bool = False
    #: Wait at this named gate (before the handler, or after it with ``hold_after``).
    hold: str | None = None
    hold_after: bool = False
    hold_timeout_s: float = 60.0
    #: Sleep this long after the handler ran, before answering.
    delay_after_s: float = 0.0


class HoldGate:
    """A named gate: calls wait at it until :meth:`release` (thread-safe, loop-agnostic)."""

    def __init__(self) -> None:
        self.released = False
        self.waiting = 0
        self.passed = 0

    def view(self) -> dict[str, Any]:
        """``{"waiting": n, "passed": n, "released": bool}``."""
        return {"waiting": self.waiting, "passed": self.passed, "released": self.released}


def fault_response(
    status: int, body: Any = None, retry_after: int | None = None, api: str | None = None
) -> Response:
    """The response an injected fault sends, in the error shape of ``api`` (HTML for a 502,
    as a load balancer would send): RunPod REST v2 (``rest``) an RFC 9457 problem (a 429
    also carries ``RateLimit``/``RateLimit-Policy`` with nothing left, as the definition's
    ``TooManyRequestsError`` shows), Lambda ``{"error": {"code", "message"}}``, Vast
    ``{"success": false, "error", "msg"}``, others (Fly, the serverless runtime)
    ``{"error": ...}``. A scripted ``body`` is sent as given."""
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    if body is None and status == 502:
        # What a load balancer sends when the API behind it is down: not JSON at all.
        html = "<html><head><title>502 Bad Gateway</title></head><body>bad gateway</body></html>"
        return HTMLResponse(html, status_code=502, headers=headers or None)
    media_type = None
    if body is None:
        phrase = GENERIC_500 if status == 500 else _reason(status)
        if api == "rest":
            media_type = "application/problem+json"
            body = {"title": _reason(status), "status": status, "detail": phrase}
            if status == 429:
                wait = retry_after if retry_after is not None else 60
                headers["RateLimit"] = f'"minute";r=0;t={wait}'
                headers["RateLimit-Policy"] = '"minute";q=600;w=60'
        elif api == "lambda":
            # Lambda's ApiError* objects (e.g. 403 ApiErrorAccountInactive) require
            # `suggestion` as well as `code` and `message`.
            code = _LAMBDA_CODES.get(status) or (
                "global/internal-error" if status >= 500 else "global/rate-limited"
            )
            body = {
                "error": {
                    "code": code,
                    "message": phrase,
                    "suggestion": "Try again later, or contact support.",
                }
            }
        elif api == "vast":
            body = {
                "success": False,
                "error": _reason(status).lower().replace(" ", "_"),
                "msg": phrase,
            }
        else:
            body = {"error": phrase}
    return JSONResponse(body, status_code=status, headers=headers or None, media_type=media_type)


#: Lambda's error codes by status (``ApiError*`` in its definition); other 5xx are
#: ``global/internal-error``, and a 429 (the definition declares none) is
#: ``global/rate-limited`` [inferred].
_LAMBDA_CODES = {
    400: "global/invalid-parameters",
    401: "global/invalid-api-key",
    403: "global/account-inactive",
    404: "global/object-does-not-exist",
    500: "global/internal-error",
}


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


class FaultInjector:
    """Holds the live :class:`FaultSettings`, the remaining script and the fault counters."""

    def __init__(self, settings: FaultSettings) -> None:
        self._lock = threading.Lock()
        self._initial = settings.model_copy(deep=True)
        self._settings = settings.model_copy(deep=True)
        self._rng = random.Random(settings.seed)
        self._script: list[list[Any]] = [[rule, rule.times] for rule in settings.script]
        self.counters: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)
        self._holds: dict[str, HoldGate] = {}
        self._creates: dict[str, int] = {}

    # ---- configuration ------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Current settings, with each script rule's remaining count."""
        with self._lock:
            data = self._settings.model_dump(exclude={"script"})
            data["script"] = [
                {**rule.model_dump(exclude_none=True), "remaining": remaining}
                for rule, remaining in self._script
            ]
            return data

    def update(self, changes: dict[str, Any]) -> None:
        """Merge ``changes`` into the settings (validated); ``script`` replaces the script.

        Raises:
            pydantic.ValidationError: on unknown names or bad values (nothing is changed).
        """
        with self._lock:
            merged = {**self._settings.model_dump(), **changes}
            new = FaultSettings.model_validate(merged)
            self._settings = new
            if "seed" in changes:
                self._rng = random.Random(new.seed)
            if "script" in changes:
                self._script = [[rule, rule.times] for rule in new.script]

    def add_rule(self, rule: ScriptRule) -> None:
        """Append one scripted fault (what ``FakeCloud.fail_next`` uses)."""
        with self._lock:
            self._settings.script.append(rule)
            self._script.append([rule, rule.times])

    def clear(self) -> None:
        """No faults at all (the counters are kept)."""
        with self._lock:
            self._settings = FaultSettings()
            self._script = []

    def reset(self) -> None:
        """Back to the start-up settings, a fresh RNG and zero counters."""
        with self._lock:
            self._settings = self._initial.model_copy(deep=True)
            self._rng = random.Random(self._settings.seed)
            self._script = [[rule, rule.times] for rule in self._settings.script]
            self.counters = dict.fromkeys(FAULT_KINDS, 0)
            self._holds = {}
            self._creates = {}

    # ---- per call -----------------------------------------------------------------------

    def plan(
        self, method: str, api: str, rel_path: str, full_path: str, *, create: bool
    ) -> FaultPlan:
        """Decide the faults of one call (consumes script counts and random draws)."""
        with self._lock:
            s = self._settings
            plan = FaultPlan(delay_s=s.latency_s)
            if s.latency_s > 0:
                self.counters["latency"] += 1
            rule = self._take_rule(method, api, rel_path, full_path)
            if rule is not None:
                plan.delay_s += rule.latency_s
                plan.delay_after_s = rule.latency_after_s
                if rule.latency_after_s > 0:
                    self.counters["latency_after"] += 1
                if rule.hold is not None:
                    plan.hold, plan.hold_after = rule.hold, rule.hold_after_handler
                    plan.hold_timeout_s = rule.hold_timeout_s
                    self._holds.setdefault(rule.hold, HoldGate())
                if rule.status is not None:
                    self.counters["script"] += 1
                    retry = rule.retry_after
                    if retry is None and rule.status in (429, 503):
                        retry = s.retry_after_s
                    response = fault_response(rule.status, rule.body, retry, api)
                    if rule.after_create:
                        plan.after = response
                    else:
                        plan.now = response
                    return plan
            draw = self._rng.random()
            if draw < s.rate_limit_rate:
                self.counters["rate_limited"] += 1
                plan.now = fault_response(429, retry_after=s.retry_after_s, api=api)
                return plan
            if draw < s.rate_limit_rate + s.error_rate:
                self.counters["error_5xx"] += 1
                status = self._rng.choice(s.error_statuses)
                retry = s.retry_after_s if status == 503 else None
                plan.now = fault_response(status, retry_after=retry, api=api)
                return plan
            if create and s.create_500_after_create_rate > 0:
                if self._rng.random() < s.create_500_after_create_rate:
                    plan.after = fault_response(500, api=api)
                    plan.after_random = True
            return plan

    def count_after_create(self) -> None:
        """Record that a random 500-after-create was actually applied."""
        with self._lock:
            self.counters["create_500_after_create"] += 1

    # ---- holds and create counts ----------------------------------------------------------

    async def wait_at(self, name: str, timeout_s: float) -> None:
        """Wait at gate ``name`` until it is released (or ``timeout_s`` passed)."""
        with self._lock:
            gate = self._holds.setdefault(name, HoldGate())
            gate.waiting += 1
            self.counters["held"] += 1
        deadline = time.monotonic() + timeout_s
        try:
            # Polling keeps the gate free of any one event loop: tests release it from
            # their own thread (or over HTTP) while the server loop waits here.
            while not gate.released and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
        finally:
            with self._lock:
                gate.waiting -= 1
                gate.passed += 1

    def release(self, name: str) -> dict[str, Any]:
        """Open gate ``name``: waiting and later calls held there go on."""
        with self._lock:
            gate = self._holds.setdefault(name, HoldGate())
            gate.released = True
            return gate.view()

    def holds_snapshot(self) -> dict[str, dict[str, Any]]:
        """Every gate's ``{"waiting", "passed", "released"}``."""
        with self._lock:
            return {name: gate.view() for name, gate in self._holds.items()}

    def count_create(self, name: str | None) -> None:
        """Count one successful create of a resource named ``name`` (unnamed: ``""``)."""
        with self._lock:
            key = name or ""
            self._creates[key] = self._creates.get(key, 0) + 1

    def creates_snapshot(self) -> dict[str, int]:
        """Successful creates per resource name since start-up or the last reset."""
        with self._lock:
            return dict(self._creates)

    def counters_snapshot(self) -> dict[str, int]:
        """A copy of the fault counters."""
        with self._lock:
            return dict(self.counters)

    def _take_rule(self, method: str, api: str, rel_path: str, full_path: str) -> ScriptRule | None:
        for entry in self._script:
            rule: ScriptRule = entry[0]
            remaining: int | None = entry[1]
            if remaining is not None and remaining <= 0:
                continue
            if rule.api is not None and rule.api != api:
                continue
            rule_method, pattern = rule.match.split(" ", 1)
            if rule_method not in ("*", method):
                continue
            paths = (rel_path, full_path)
            if not any(fnmatch.fnmatchcase(path, pattern) for path in paths):
                continue
            if remaining is not None:
                entry[1] = remaining - 1
            return rule
        return None
