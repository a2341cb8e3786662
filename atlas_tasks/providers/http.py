"""The shared HTTP layer every HTTP provider builds on (sync httpx, pooled, retried).

One :class:`HttpClient` talks to one API of one provider (e.g. RunPod ``management``
or ``runtime``). It owns a single pooled ``httpx.Client``, created lazily and
shared by every thread of a Celery thread pool, and it is the only place where transport
exceptions become :class:`~atlas_tasks.errors.TransportError` (the other mapping place is
:func:`~atlas_tasks.errors.error_from_response`, used for unexpected statuses).

Retry policy:

* Retried: HTTP 408/429/500/502/503/504 and transport failures, with exponential backoff
  (1 s, 2 s, 4 s… plus up to 25 % jitter) capped by ``settings.http_max_backoff_s``; a
  ``Retry-After`` header (seconds or an HTTP date) replaces the computed delay, capped too.
* Non-idempotent requests (``idempotent=False``; the default for POST and PATCH) are
  *not* retried blindly: a cloud may have created the resource and still failed the answer
  (RunPod ``POST /pods`` has been seen returning 500 after creating the pod). They are
  retried only when nothing can have happened: HTTP 429 and failures to *connect*. Any other
  retryable failure raises at once with ``err.maybe_created = True`` (see
  :func:`is_maybe_created`), so the caller can look the resource up before trying again.

Every attempt calls each ``context.hooks`` function with a
:class:`~atlas_tasks.providers.base.RequestInfo` (carrying the answer's parsed
``RateLimit``/``RateLimit-Policy`` headers, see :mod:`.ratelimit`) and is logged at DEBUG.
Headers and bodies are never logged, and ``api_key=``-style query values are redacted from
URLs.

Fleet rate budget: with ``ATLAS_RATE_BUDGET`` on, every attempt first takes a token from the
Redis bucket the whole fleet shares for this provider, API and key
(:mod:`atlas_tasks.providers.budget`), and every answer's ``RateLimit`` headers and 429
``Retry-After`` are folded back into it. The request's priority class (terminate > spawn >
read) comes from :func:`~atlas_tasks.providers.budget.classify` unless the caller names it.

Error answers: an RFC 9457 problem (``application/problem+json``, or a JSON object shaped
``{title, status, detail, errors?}``) becomes an :class:`AtlasError` whose message keeps
``detail`` and every validation ``errors`` entry (see :func:`problem_message`); other bodies
go through :func:`~atlas_tasks.errors.error_from_response`. A body that is not JSON at all
(truncated, or nested deeper than the decoder allows) never escapes as a raw exception.

Example::

    api = HttpClient(ctx, provider="runpod", api="management",
                     base_url="https://api.runpod.io",
                     headers={"Authorization": f"Bearer {key}"})
    pod = api.call("POST", "/v2/pods", json=body, expect=(201,), idempotent=False).data
"""

from __future__ import annotations

import email.utils
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any, TypeVar

import httpx

from atlas_tasks.errors import (
    AtlasError,
    ProviderError,
    TransportError,
    error_from_response,
    kind_for_status,
)
from atlas_tasks.providers.base import ProviderContext, RequestInfo
from atlas_tasks.providers.budget import BUDGET_ERRORS, ApiClass, RateBudget, budget_for, classify
from atlas_tasks.providers.ratelimit import RateLimit, rate_limit_from_headers
from atlas_tasks.providers.translate_common import drop_none, loads_json

logger = logging.getLogger(__name__)

#: Statuses worth another attempt (Req's ``:transient`` set, which ExAtlas used).
RETRY_STATUSES: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504})

#: Statuses a non-idempotent request may retry: the server refused before doing anything.
SAFE_RETRY_STATUSES: frozenset[int] = frozenset({429})

#: First backoff delay in seconds; doubles per retry.
BACKOFF_BASE_S = 1.0

#: Methods retried freely unless the caller says otherwise.
IDEMPOTENT_METHODS: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})

_SECRET_QUERY = re.compile(r"(?i)([?&](?:api_key|apikey|api-key|token|access_token)=)[^&#\s]*")

Params = Mapping[str, Any] | None

_Created = TypeVar("_Created")
_Found = TypeVar("_Found")


def redact_url(url: str) -> str:
    """``url`` with secret-looking query values (``api_key=`` and friends) replaced."""
    return _SECRET_QUERY.sub(r"\1REDACTED", url)


def is_maybe_created(err: BaseException) -> bool:
    """True when a non-idempotent request failed in a way that may have had its effect."""
    return bool(getattr(err, "maybe_created", False))


def is_timeout(err: BaseException) -> bool:
    """True when ``err`` is a transport failure caused by an httpx timeout."""
    raw = getattr(err, "raw", None)
    return isinstance(raw, httpx.TimeoutException) or isinstance(
        err.__cause__, httpx.TimeoutException
    )


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date).

    Returns ``None`` when the header is missing or unparsable; never negative.
    """
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now or datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())


@dataclass(frozen=True)
class ApiResponse:
    """An answer with an expected status.

    Attributes:
        status: HTTP status.
        data: decoded JSON body, or ``None`` when the body was empty.
        headers: response headers.
    """

    status: int
    data: Any
    headers: httpx.Headers


class HttpClient:
    """One provider API over one pooled, thread-safe ``httpx.Client``.

    Args:
        context: provider context (settings, test transport, hooks).
        provider: provider name used in errors, hooks and logs.
        api: API name (``management``, ``runtime``, ``logs``...).
        base_url: prefix of every request path (no trailing slash needed).
        headers: default headers, e.g. ``Authorization``. Never logged.
        max_retries: retries after the first attempt (default ``settings.http_max_retries``).
        timeout_s: per-request timeout (default ``settings.http_timeout_s``).

    Attributes:
        sleep: called with the delay before each retry; replace it in tests.
        rand: returns a float in [0, 1) for jitter; replace it for deterministic tests.
    """

    def __init__(
        self,
        context: ProviderContext,
        *,
        provider: str,
        api: str,
        base_url: str,
        headers: Mapping[str, str] | None = None,
        max_retries: int | None = None,
        timeout_s: float | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.context = context
        self.provider = provider
        self.api = api
        self.base_url = base_url.rstrip("/")
        self._headers = {"Accept": "application/json", **dict(headers or {})}
        settings = context.settings
        self.max_retries = settings.http_max_retries if max_retries is None else max_retries
        self.timeout_s = settings.http_timeout_s if timeout_s is None else timeout_s
        self.max_backoff_s = settings.http_max_backoff_s
        self.sleep: Callable[[float], None] = sleep or time.sleep
        self.rand: Callable[[], float] = random.random
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()
        #: The fleet-wide rate budget (``None`` when ``ATLAS_RATE_BUDGET`` is off).
        self.budget: RateBudget | None = budget_for(context, provider=provider, api=api)

    def __repr__(self) -> str:
        # Headers stay out: they carry the API key.
        return (
            f"HttpClient(provider={self.provider!r}, api={self.api!r}, base_url={self.base_url!r})"
        )

    # ------------------------------------------------------------------ pooling
    @property
    def client(self) -> httpx.Client:
        """The pooled ``httpx.Client``, created on first use (thread-safe)."""
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = httpx.Client(
                        headers=self._headers,
                        timeout=httpx.Timeout(self.timeout_s),
                        transport=self.context.transport,
                        follow_redirects=False,
                    )
                client = self._client
        return client

    def close(self) -> None:
        """Close the pooled client. Safe to call twice; a later call reopens one."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def url(self, path: str) -> str:
        """Absolute URL of ``path`` (``""`` means the base URL itself)."""
        if not path:
            return self.base_url
        return f"{self.base_url}/{path.lstrip('/')}"

    # ------------------------------------------------------------------ requests
    def call(
        self,
        method: str,
        path: str,
        *,
        params: Params = None,
        json: Any = None,
        expect: Collection[int] = (200,),
        idempotent: bool | None = None,
        timeout_s: float | None = None,
        max_retries: int | None = None,
        api_class: ApiClass | str | None = None,
    ) -> ApiResponse:
        """Send a request, retrying per the module's policy, and decode its JSON body.

        Args:
            method: HTTP method.
            path: path below the base URL.
            params: query parameters (``None`` values are dropped).
            json: JSON body.
            expect: statuses that count as success.
            idempotent: whether a blind retry is safe; defaults to False for POST/PATCH.
            timeout_s: overrides the per-request timeout for this call.
            max_retries: overrides the retry budget for this call.
            api_class: priority class in the fleet rate budget (``terminate``, ``spawn``,
                ``read``); by default :func:`~atlas_tasks.providers.budget.classify`.

        Raises:
            AtlasError: the kind of :func:`error_from_response` for an unexpected status;
                ``ProviderError`` for malformed JSON; ``TransportError`` when no answer
                came. Non-idempotent failures that may have had their effect carry
                ``maybe_created = True``.
        """
        method = method.upper()
        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS
        budget = self.max_retries if max_retries is None else max_retries
        url = self.url(path)
        query = drop_none(params or {})
        timeout = httpx.Timeout(timeout_s) if timeout_s is not None else None
        klass = ApiClass(api_class) if api_class is not None else classify(method, path, json)
        attempt = 0
        while True:
            attempt += 1
            response = self._attempt(
                method,
                url,
                query,
                json,
                timeout,
                attempt,
                idempotent,
                retries_left=attempt <= budget,
                api_class=klass,
            )
            if response is None:  # a retryable transport failure; _attempt already slept
                continue
            status = response.status_code
            if status in expect:
                return ApiResponse(status, self._decode(response, method, path), response.headers)
            retryable = status in RETRY_STATUSES
            if retryable and not idempotent and status not in SAFE_RETRY_STATUSES:
                raise mark_maybe_created(response_error(response, self.provider))
            if retryable and attempt <= budget:
                self._backoff(attempt, response.headers.get("Retry-After"))
                continue
            raise response_error(response, self.provider)

    def _attempt(
        self,
        method: str,
        url: str,
        query: dict[str, Any],
        body: Any,
        timeout: httpx.Timeout | None,
        attempt: int,
        idempotent: bool,
        *,
        retries_left: bool,
        api_class: ApiClass = ApiClass.READ,
    ) -> httpx.Response | None:
        """One try. Returns the response, or None after sleeping for a transport retry."""
        self._take_budget(api_class)
        started = time.monotonic()
        kwargs: dict[str, Any] = {"params": query or None}
        if body is not None:
            kwargs["json"] = body
        if timeout is not None:
            kwargs["timeout"] = timeout
        try:
            response = self.client.request(method, url, **kwargs)
        except httpx.InvalidURL as exc:
            # A misconfigured base URL: no request was made and retrying cannot help.
            raise TransportError(
                f"{method} {redact_url(url)}: invalid URL: {exc}", provider=self.provider, raw=exc
            ) from exc
        except httpx.RequestError as exc:
            duration = time.monotonic() - started
            shown = redact_url(str(httpx.URL(url, params=query or None)))
            text = redact_url(f"{type(exc).__name__}: {exc}".rstrip(": "))
            self._emit(method, shown, None, duration, attempt, text)
            err = TransportError(
                f"{method} {shown} failed: {text}", provider=self.provider, raw=exc
            )
            if isinstance(exc, httpx.UnsupportedProtocol):
                raise err from exc  # e.g. a base URL without http(s)://: nothing was sent
            # Failing to connect means the request never left: safe to retry even a POST.
            unsent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
            if not idempotent and not unsent:
                raise mark_maybe_created(err) from exc
            if retries_left:
                self._backoff(attempt, None)
                return None
            raise err from exc
        duration = time.monotonic() - started
        # Parsed only when someone listens: most clients have no hooks and no budget.
        limit = (
            rate_limit_from_headers(response.headers)
            if self.context.hooks or self.budget is not None
            else None
        )
        self._feed_budget(response, limit)
        self._emit(
            method,
            redact_url(str(response.request.url)),
            response.status_code,
            duration,
            attempt,
            None,
            rate_limit=limit,
        )
        return response

    # ------------------------------------------------------------------ fleet budget
    def _take_budget(self, api_class: ApiClass) -> None:
        """Wait for a fleet budget token (no-op without a budget)."""
        budget = self.budget
        if budget is None:
            return
        try:
            waited = budget.acquire(api_class, sleep=self.sleep)
        except AtlasError:
            raise  # no token within ATLAS_RATE_BUDGET_MAX_WAIT_S: a rate_limited error
        except BUDGET_ERRORS as exc:
            # Fail open: Redis trouble must not stop a cloud call (above all a terminate);
            # the provider's own 429s and our backoff still apply.
            logger.warning(
                "%s %s: rate budget unavailable, sending anyway: %s", self.provider, self.api, exc
            )
            return
        except Exception:
            # Same for anything else the budget trips on (a misconfigured Redis client):
            # it is a guard rail, never a reason to leave a pod running.
            logger.exception("%s %s: rate budget failed, sending anyway", self.provider, self.api)
            return
        if waited:
            logger.debug(
                "%s %s: waited %.3fs for a %s budget token",
                self.provider,
                self.api,
                waited,
                api_class,
            )

    def _feed_budget(self, response: httpx.Response, limit: RateLimit | None) -> None:
        """Fold an answer's rate-limit headers (and a 429's Retry-After) into the budget."""
        budget = self.budget
        if budget is None:
            return
        retry_after = (
            parse_retry_after(response.headers.get("Retry-After"))
            if response.status_code == 429
            else None
        )
        try:
            budget.observe(status=response.status_code, rate_limit=limit, retry_after_s=retry_after)
        except BUDGET_ERRORS as exc:
            logger.warning("%s %s: rate budget not updated: %s", self.provider, self.api, exc)
        except Exception:
            logger.exception("%s %s: rate budget not updated", self.provider, self.api)

    def _decode(self, response: httpx.Response, method: str, path: str) -> Any:
        content = response.content
        if not content or not content.strip():
            return None
        try:
            return loads_json(content)
        except ValueError as exc:  # includes too-deep nesting (see loads_json)
            raise ProviderError(
                f"malformed JSON from {self.provider} {self.api} {method} {path or '/'} "
                f"(HTTP {response.status_code})",
                provider=self.provider,
                status=response.status_code,
                raw=response.text[:500],
            ) from exc

    # ------------------------------------------------------------------ retry timing
    def backoff_delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Delay before retry number ``attempt`` (1-based), honouring ``Retry-After``."""
        hinted = parse_retry_after(retry_after)
        if hinted is not None:
            return min(hinted, self.max_backoff_s)
        delay = BACKOFF_BASE_S * 2.0 ** min(max(attempt - 1, 0), 30)
        delay += delay * 0.25 * self.rand()
        return min(delay, self.max_backoff_s)

    def _backoff(self, attempt: int, retry_after: str | None) -> None:
        self.sleep(self.backoff_delay(attempt, retry_after))

    # ------------------------------------------------------------------ observability
    def _emit(
        self,
        method: str,
        url: str,
        status: int | None,
        duration: float,
        attempt: int,
        error: str | None,
        *,
        rate_limit: RateLimit | None = None,
    ) -> None:
        info = RequestInfo(
            provider=self.provider,
            api=self.api,
            method=method,
            url=url,
            status=status,
            duration_s=duration,
            attempt=attempt,
            error=error,
            rate_limit=rate_limit,
        )
        logger.debug(
            "%s %s %s %s -> %s in %.3fs (attempt %d)%s",
            self.provider,
            self.api,
            method,
            url,
            status if status is not None else "no response",
            duration,
            attempt,
            f": {error}" if error else "",
        )
        for hook in self.context.hooks:
            try:
                hook(info)
            except Exception:  # a broken metrics hook must never fail a cloud call
                logger.exception("request hook %r failed", hook)


#: Media type of RFC 9457 problem details.
PROBLEM_JSON = "application/problem+json"

#: Validation ``errors`` entries quoted in a message at most (the rest stay in ``raw``).
MAX_PROBLEM_ERRORS = 10


def _body_of(response: httpx.Response) -> tuple[Any, bool]:
    """``(decoded JSON, True)``, or ``(text, False)`` when the body is not JSON."""
    try:
        return loads_json(response.content), True
    except ValueError:  # not JSON, not UTF-8, or nested too deeply (see loads_json)
        return response.text, False


def is_problem(body: Any, content_type: str | None = None) -> bool:
    """True when ``body`` is an RFC 9457 problem object.

    Said so by the media type (``application/problem+json``), or recognisable by shape: a
    JSON object with a string ``title`` or ``detail`` and an integer ``status``.
    """
    if not isinstance(body, dict):
        return False
    if content_type and content_type.split(";")[0].strip().lower() == PROBLEM_JSON:
        return True
    status = body.get("status")
    return (
        isinstance(status, int)
        and not isinstance(status, bool)
        and (isinstance(body.get("title"), str) or isinstance(body.get("detail"), str))
    )


def problem_message(body: dict[str, Any]) -> str:
    """A one-line message from a problem object: ``detail`` (else ``title``), then the
    validation ``errors`` (the first :data:`MAX_PROBLEM_ERRORS`), so the caller sees which
    field the provider rejected, e.g. ``Request validation failed.: $: additional
    properties 'bogus' not allowed``."""
    detail = body.get("detail")
    title = body.get("title")
    text = (
        detail
        if isinstance(detail, str) and detail.strip()
        else title
        if isinstance(title, str) and title.strip()
        else ""
    )
    errors = body.get("errors")
    items = [str(e) for e in errors if e is not None] if isinstance(errors, list) else []
    if items:
        shown = "; ".join(items[:MAX_PROBLEM_ERRORS])
        more = len(items) - MAX_PROBLEM_ERRORS
        if more > 0:
            shown += f"; and {more} more"
        text = f"{text}: {shown}" if text else shown
    return text


def response_error(response: httpx.Response, provider: str | None) -> AtlasError:
    """The :class:`AtlasError` for an answer whose status the caller did not expect.

    Problem bodies keep ``detail`` and ``errors`` in the message; an undecodable body gives
    a message that says so (its text, cut to 500 characters, goes to ``raw``). ``kind``
    follows the status either way (:func:`~atlas_tasks.errors.kind_for_status`).
    """
    status = response.status_code
    body, decoded = _body_of(response)
    if decoded and is_problem(body, response.headers.get("content-type")):
        message = problem_message(body) or f"unexpected HTTP {status}"
        return AtlasError(
            message, kind=kind_for_status(status), provider=provider, status=status, raw=body
        )
    if not decoded:
        text = str(body)[:500]
        stripped = text.strip()
        # Text that looks like JSON but did not decode is broken JSON: say so rather than
        # letting error_from_response try (and fail) to decode it again.
        if not stripped or stripped.startswith(("{", "[")):
            message = f"unexpected HTTP {status} with a malformed body"
        else:
            message = stripped
        return AtlasError(
            message, kind=kind_for_status(status), provider=provider, status=status, raw=text
        )
    return error_from_response(status, body, provider)


def mark_maybe_created(err: AtlasError) -> AtlasError:
    """Flag ``err`` as possibly having had its effect (see :func:`is_maybe_created`)."""
    err.maybe_created = True  # type: ignore[attr-defined]
    return err


def create_once(
    create: Callable[[], _Created],
    *,
    name: str | None,
    find_by_name: Callable[[str], _Found | None],
    max_retries: int,
    sleep: Callable[[float], None],
    backoff: Callable[[int], float],
    label: str,
    action: str = "create",
    kind: str = "resource",
    id_of: Callable[[_Found], object] = attrgetter("id"),
) -> _Created | _Found:
    """Run a non-idempotent ``create`` so that exactly one resource results.

    ``create`` sends the request with ``idempotent=False``, so the HTTP layer retries only
    what cannot have had an effect (429, connect failures). After a failure that may have
    created the resource (:func:`is_maybe_created`: 5xx, read timeout, reset) this waits
    one backoff, then looks the resource up by ``name``: found → it is returned; not found
    → ``create`` runs again, at most ``max_retries`` more times. Without a name no lookup
    is possible, so the error is raised (still flagged ``maybe_created``) rather than
    risking a second resource. A lookup that fails raises the create's error (from the
    lookup's): whether the resource exists is unknown, and creating again could duplicate
    it.

    Args:
        create: sends the create request and returns its result.
        name: the resource's name, used for the lookup.
        find_by_name: the live resource with exactly this name, or ``None``.
        max_retries: creates allowed after the first one.
        sleep: called with the backoff delay before each lookup.
        backoff: the delay before retry number ``attempt`` (1-based), e.g.
            :meth:`HttpClient.backoff_delay`.
        label: log prefix (the provider name).
        action: what the create is called in logs (``create``, ``launch``).
        kind: what is created, in logs (``pod``, ``machine``, ``instance``).
        id_of: the id of a found resource, for logs (default: its ``id`` attribute).

    Returns:
        What ``create`` returned, or the resource ``find_by_name`` found.

    Raises:
        AtlasError: the final failure of ``create``.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return create()
        except AtlasError as err:
            if not is_maybe_created(err) or not name:
                raise
            sleep(backoff(attempt))
            try:
                found = find_by_name(name)
            except AtlasError as lookup_err:
                logger.warning(
                    "%s: lookup of %r after a failed %s failed: %s", label, name, action, lookup_err
                )
                raise err from lookup_err
            if found is not None:
                logger.info(
                    "%s: %s of %r failed (%s) but the %s exists: %s",
                    label,
                    action,
                    name,
                    err,
                    kind,
                    id_of(found),
                )
                return found
            if attempt > max_retries:
                raise
            logger.info(
                "%s: %s of %r failed (%s) and no %s exists; retrying",
                label,
                action,
                name,
                err,
                kind,
            )


__all__ = [
    "BACKOFF_BASE_S",
    "IDEMPOTENT_METHODS",
    "MAX_PROBLEM_ERRORS",
    "PROBLEM_JSON",
    "RETRY_STATUSES",
    "SAFE_RETRY_STATUSES",
    "ApiResponse",
    "HttpClient",
    "create_once",
    "is_maybe_created",
    "is_problem",
    "is_timeout",
    "mark_maybe_created",
    "parse_retry_after",
    "problem_message",
    "redact_url",
    "response_error",
]
