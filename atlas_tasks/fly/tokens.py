"""The Fly token chain: which token to use for one app's API calls (logs, read-only ops).

Resolution order (first hit wins; ``source`` names the step)::

    1. memory   this process's cache, while the token has not expired
    2. storage  the durable store's ``cached`` entry (Redis sealed / file 0600), if unexpired
    3. env      ATLAS_FLY_API_TOKEN or FLY_API_TOKEN   (Fly's documented variable; ExAtlas
                                                         mapped it in config but never read it)
    4. config   ``access_token:`` of ~/.fly/config.yml  (ATLAS_FLY_CONFIG_FILE[_ENABLED])
    5. cli      ``fly tokens create readonly -a <app>`` (timeout ATLAS_FLY_CLI_TIMEOUT_S;
                app-scoped, unlike ExAtlas which omitted ``-a``)
    6. manual   the store's ``manual`` entry (``set_manual``), the operator's last resort
    7. none     → :class:`~atlas_tasks.errors.UnauthorizedError` from :meth:`FlyTokens.get`

Tokens from steps 2–5 are kept in memory for their lifetime (``ATLAS_FLY_TOKEN_TTL_S``,
24 h, for config/cli); those from 4–5 are also written to storage (a failed write is
logged, not raised: the token still works). Manual tokens are never cached in memory,
so clearing one takes effect at once.

**Single flight.** Concurrent resolutions of one app run one after another inside a
process (a per-app lock, like ExAtlas's per-app server) and, across the cluster, the CLI
step runs under a Redis lease (:data:`~atlas_tasks.constants.FLY_TOKEN_LOCK_KEY`, an
owner-token :class:`~atlas_tasks.lease.Lease`, so a CLI run that outlived its lease cannot
release a successor's): one process runs ``fly tokens create`` while the others wait for
its token to appear in the shared store. With ``ATLAS_FLY_TOKEN_STORE=file`` the waiters
see it only when they share the directory (one machine).

**Invalidate / refresh.** ``invalidate(app, token)`` drops the memory entry and the stored
``cached`` entry (only if it still holds ``token``: a newer token written by another
worker is kept) and remembers ``token`` as rejected for a while, so the chain skips every
source still offering it (an env token that got a 401 leads to the CLI, not to another
401). ``refresh(app, token)`` does that and resolves again under the app's lock: two
callers refreshing the same rejected token get one new resolution.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import redis

from atlas_tasks.config import AtlasSettings, get_settings, resolve_api_key
from atlas_tasks.errors import AtlasError, UnauthorizedError, UnsupportedError, validation_error
from atlas_tasks.fly.store import token_lock_key
from atlas_tasks.fly.token_storage import (
    TokenRecord,
    TokenStorage,
    check_app,
    storage_from_settings,
)
from atlas_tasks.lease import Lease
from atlas_tasks.redis_conn import get_redis

if TYPE_CHECKING:
    from atlas_tasks.deps import Dependencies

log = logging.getLogger(__name__)

TokenSource = Literal["memory", "storage", "env", "config", "cli", "manual", "none"]

#: How long a token that got a 401 is skipped by the chain.
REJECTED_TTL_S = 15 * 60

_ACCESS_TOKEN = re.compile(r"^access_token:\s*(.+)$", re.MULTILINE)

#: ``cli(app) -> token | None``: the chain's CLI step (``fly tokens create readonly``).
TokenCli = Callable[[str], "str | None"]

#: How often a waiter of the single flight looks for the holder's token.
_WAIT_POLL_S = 0.05


@dataclass(frozen=True)
class TokenResult:
    """Outcome of one resolution: the token (``None`` for source ``none``) and its step."""

    token: str | None
    source: TokenSource
    expires_at: int | None = None

    def __repr__(self) -> str:
        shown = None if self.token is None else "'***'"
        return f"TokenResult(token={shown}, source={self.source!r}, expires_at={self.expires_at})"


def _fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def read_config_token(path: str | os.PathLike[str]) -> str | None:
    """``access_token`` of a flyctl ``config.yml`` (trimmed, quotes stripped), or ``None``."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    match = _ACCESS_TOKEN.search(text)
    if not match:
        return None
    token = match.group(1).strip().strip("\"'").strip()
    return token or None


class FlyTokens:
    """The token chain of one process (see the module docstring).

    Args:
        storage: durable store (default: ``ATLAS_FLY_TOKEN_STORE``).
        settings: settings (default :func:`get_settings`).
        redis_client: Redis for the cluster-wide CLI lock (default ``get_redis()``).
        cluster_lock: take the Redis lock around the CLI step (off: process-local only).
        clock: unix-seconds clock (tests).
        cli: the CLI step (default :func:`run_token_cli` under these settings).
        monotonic: monotonic clock of the single-flight wait.
        sleep: how a waiter of the single flight waits between looks.

    :meth:`from_deps` builds one from an explicit :class:`~atlas_tasks.deps.Dependencies`.
    """

    def __init__(
        self,
        storage: TokenStorage | None = None,
        *,
        settings: AtlasSettings | None = None,
        redis_client: redis.Redis | None = None,
        cluster_lock: bool = True,
        clock: Callable[[], float] | None = None,
        cli: TokenCli | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings or get_settings()
        self.storage = storage or storage_from_settings(self.settings, client=redis_client)
        self._redis = redis_client
        self.cluster_lock = cluster_lock
        self._clock = clock or time.time
        self._cli = cli
        self._monotonic = monotonic
        self._sleep = sleep
        self._memory: dict[str, tuple[str, int | None, TokenSource]] = {}
        self._rejected: dict[str, dict[str, float]] = {}
        self._locks: dict[str, threading.RLock] = {}
        self._guard = threading.Lock()

    @classmethod
    def from_deps(
        cls,
        deps: Dependencies,
        storage: TokenStorage | None = None,
        *,
        cluster_lock: bool = True,
        cli: TokenCli | None = None,
    ) -> FlyTokens:
        """A chain reading nothing from globals: Redis, settings and clocks from ``deps``
        (the storage defaults to ``ATLAS_FLY_TOKEN_STORE`` over ``deps.redis``)."""
        storage = storage or storage_from_settings(
            deps.settings, client=deps.redis, clock=deps.clock
        )
        return cls(
            storage,
            settings=deps.settings,
            redis_client=deps.redis,
            cluster_lock=cluster_lock,
            clock=deps.clock,
            cli=cli,
            monotonic=deps.monotonic,
            sleep=deps.sleep,
        )

    # ------------------------------------------------------------------ public API
    def get(self, app: str) -> str:
        """The token to use for ``app``.

        Raises:
            UnauthorizedError: no source has a token (``no_token_available``).
            ValidationError: (field ``app``) not a Fly app name.
        """
        result = self.resolve(app)
        if result.token is None:
            raise UnauthorizedError(
                f"no_token_available: no Fly token for app {app!r} (tried memory, storage, "
                "FLY_API_TOKEN, ~/.fly/config.yml, `fly tokens create readonly`, manual)",
                provider="fly",
            )
        return result.token

    def resolve(self, app: str) -> TokenResult:
        """Walk the chain; ``source="none"`` (token ``None``) when nothing has a token."""
        check_app(app)
        hit = self._from_memory(app)
        if hit is not None:
            return hit
        with self._lock_for(app):
            result = self._resolve_locked(app)
        log.debug("fly token for %s from %s", app, result.source)
        return result

    def invalidate(self, app: str, token: str | None = None) -> None:
        """Forget ``app``'s cached token (memory and stored ``cached`` entry).

        Args:
            token: the token that was rejected; when given, the stored entry is deleted
                only if it still holds it, and the chain skips it for a while.
        """
        check_app(app)
        with self._lock_for(app):
            self._invalidate_locked(app, token)

    def refresh(self, app: str, token: str | None = None) -> str:
        """Atomically invalidate ``token`` (or whatever is cached) and resolve again.

        If another thread already replaced the rejected ``token``, its replacement is
        returned without a new resolution.

        Raises:
            UnauthorizedError: no token available any more.
        """
        check_app(app)
        with self._lock_for(app):
            if token is not None:
                current = self._memory.get(app)
                if current is not None and current[0] != token and self._alive(current[1]):
                    return current[0]
            self._invalidate_locked(app, token)
            result = self._resolve_locked(app)
        if result.token is None:
            raise UnauthorizedError(
                f"no_token_available: no Fly token for app {app!r} after refresh", provider="fly"
            )
        return result.token

    def set_manual(self, app: str, token: str) -> None:
        """Persist an operator-provided token for ``app`` (the chain's last resort).

        Raises:
            ValidationError: empty token / bad app name.
            AtlasError: the store failed (``persist failed: ...``; same kind as the
                store's error, ``unknown`` for anything else). Never swallowed.
        """
        check_app(app)
        if not isinstance(token, str) or not token.strip():
            raise validation_error("token", "must be a non-empty string")
        token = token.strip()
        try:
            self.storage.put(app, "manual", TokenRecord(token=token, expires_at=None))
        except AtlasError as exc:
            raise AtlasError(
                f"persist failed: {exc.message}", kind=exc.kind, provider="fly"
            ) from exc
        except Exception as exc:
            raise AtlasError(
                f"persist failed: {type(exc).__name__}: {exc}", kind="unknown", provider="fly"
            ) from exc
        with self._guard:
            self._rejected.get(app, {}).pop(_fingerprint(token), None)

    def clear_manual(self, app: str) -> None:
        """Remove ``app``'s manual override."""
        check_app(app)
        self.storage.delete(app, "manual")

    def clear_memory(self) -> None:
        """Forget every in-memory token and rejection (tests, key rotation)."""
        with self._guard:
            self._memory.clear()
            self._rejected.clear()

    # ------------------------------------------------------------------ the chain
    def _resolve_locked(self, app: str) -> TokenResult:
        hit = self._from_memory(app)
        if hit is not None:
            return hit
        now = self._clock()
        ttl = self.settings.fly_token_ttl_s
        try:
            stored = self.storage.get(app, "cached")
        except AtlasError as exc:
            log.warning("fly token storage unreadable for %s: %s", app, exc.kind)
            stored = None
        if stored is not None and stored.valid(now) and self._usable(app, stored.token):
            return self._remember(app, stored.token, stored.expires_at, "storage")

        env_token = resolve_api_key("fly", settings=self.settings)
        if env_token and self._usable(app, env_token):
            return self._remember(app, env_token, int(now + ttl), "env")

        if self.settings.fly_config_file_enabled:
            config_token = read_config_token(self.config_path())
            if config_token and self._usable(app, config_token):
                return self._persist(app, config_token, int(now + ttl), "config")

        cli = self._cli_single_flight(app)
        if cli is not None:
            return cli

        try:
            manual = self.storage.get(app, "manual")
        except AtlasError as exc:
            if exc.kind == "validation":
                raise  # a corrupt manual override must be seen, not skipped
            log.warning("fly token storage unreadable for %s: %s", app, exc.kind)
            manual = None
        if manual is not None and self._usable(app, manual.token):
            return TokenResult(manual.token, "manual", None)
        return TokenResult(None, "none", None)

    def config_path(self) -> Path:
        """flyctl's config file (``ATLAS_FLY_CONFIG_FILE`` or ``~/.fly/config.yml``)."""
        configured = self.settings.fly_config_file
        return Path(configured).expanduser() if configured else Path.home() / ".fly" / "config.yml"

    def _cli_single_flight(self, app: str) -> TokenResult | None:
        """Run the CLI once across the cluster; waiters pick its token from storage."""
        if not self.cluster_lock:
            return self._run_cli_and_store(app)
        try:
            self.storage.get(app, "cached")
        except AtlasError as exc:
            # Waiters pick the holder's token from storage; without a working store
            # (e.g. no ATLAS_SECRET_KEY for the Redis store) they could only give up.
            log.warning(
                "fly token storage unusable (%s); running the CLI without the cluster lock",
                exc.kind,
            )
            return self._run_cli_and_store(app)
        try:
            timeout = self.settings.fly_cli_timeout_s
            # The lease outlives the CLI's own timeout, so it never needs renewing.
            lease = Lease(
                self._redis or get_redis(), token_lock_key(app), int((timeout + 10) * 1000)
            )
            if lease.acquire():
                try:
                    stored = self._stored_cached(app)  # finished by someone just before?
                    if stored is not None:
                        return stored
                    return self._run_cli_and_store(app)
                finally:
                    lease.release()
            deadline = self._monotonic() + timeout + 10
            while self._monotonic() < deadline:
                self._sleep(_WAIT_POLL_S)
                stored = self._stored_cached(app)
                if stored is not None:
                    return stored
                if lease.holder() is None:
                    # The holder finished without a token (or died): one last look, then
                    # count the CLI as a miss rather than run it a second time.
                    return self._stored_cached(app)
            return None
        except redis.RedisError as exc:
            log.warning("fly token lock unavailable (%s); running the CLI without it", exc)
            return self._run_cli_and_store(app)

    def _stored_cached(self, app: str) -> TokenResult | None:
        try:
            stored = self.storage.get(app, "cached")
        except AtlasError:
            return None
        if stored is not None and stored.valid(self._clock()) and self._usable(app, stored.token):
            return self._remember(app, stored.token, stored.expires_at, "cli")
        return None

    def _run_cli_and_store(self, app: str) -> TokenResult | None:
        token = (
            self._cli(app) if self._cli is not None else run_token_cli(app, settings=self.settings)
        )
        if token is None or not self._usable(app, token):
            return None
        return self._persist(app, token, int(self._clock() + self.settings.fly_token_ttl_s), "cli")

    # ------------------------------------------------------------------ helpers
    def _persist(self, app: str, token: str, expires_at: int, source: TokenSource) -> TokenResult:
        try:
            self.storage.put(app, "cached", TokenRecord(token=token, expires_at=expires_at))
        except Exception as exc:  # the token still works; the next process resolves again
            log.warning(
                "could not store the fly token of %s (%s): %s", app, source, type(exc).__name__
            )
        return self._remember(app, token, expires_at, source)

    def _remember(
        self, app: str, token: str, expires_at: int | None, source: TokenSource
    ) -> TokenResult:
        with self._guard:
            self._memory[app] = (token, expires_at, source)
        return TokenResult(token, source, expires_at)

    def _from_memory(self, app: str) -> TokenResult | None:
        with self._guard:
            entry = self._memory.get(app)
        if entry is None or not self._alive(entry[1]):
            return None
        return TokenResult(entry[0], "memory", entry[1])

    def _alive(self, expires_at: int | None) -> bool:
        return expires_at is None or expires_at > self._clock()

    def _invalidate_locked(self, app: str, token: str | None) -> None:
        with self._guard:
            self._memory.pop(app, None)
            if token is not None:
                self._rejected.setdefault(app, {})[_fingerprint(token)] = (
                    self._clock() + REJECTED_TTL_S
                )
        try:
            stored = self.storage.get(app, "cached")
            if stored is not None and (token is None or stored.token == token):
                self.storage.delete(app, "cached")
        except AtlasError as exc:
            log.warning("could not drop the stored fly token of %s: %s", app, exc.kind)

    def _usable(self, app: str, token: str) -> bool:
        with self._guard:
            rejected = self._rejected.get(app)
            if not rejected:
                return True
            until = rejected.get(_fingerprint(token))
            if until is None:
                return True
            if until <= self._clock():
                rejected.pop(_fingerprint(token), None)
                return True
            return False

    def _lock_for(self, app: str) -> threading.RLock:
        with self._guard:
            lock = self._locks.get(app)
            if lock is None:
                lock = self._locks[app] = threading.RLock()
            return lock


def run_token_cli(app: str, *, settings: AtlasSettings | None = None) -> str | None:
    """``fly tokens create readonly -a <app>``: the token it prints, or ``None`` on any miss.

    The token is the last non-empty stdout line (flyctl prints warnings on stderr, which
    is read separately and never logged). A timeout kills the CLI's process group.
    """
    settings = settings or get_settings()
    from atlas_tasks.fly.deploy import find_fly_executable  # no import cycle at load time

    try:
        exe = find_fly_executable(settings)
    except UnsupportedError:
        log.debug("fly token cli: no fly executable")
        return None
    try:
        proc = subprocess.Popen(
            [exe, "tokens", "create", "readonly", "-a", app],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        log.warning("fly token cli could not start: %s", exc.strerror)
        return None
    try:
        out, _ = proc.communicate(timeout=settings.fly_cli_timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        log.warning("fly tokens create for %s timed out after %gs", app, settings.fly_cli_timeout_s)
        return None
    if proc.returncode != 0:
        log.warning("fly tokens create for %s exited with code %d", app, proc.returncode)
        return None
    lines = [ln.strip() for ln in out.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1] if lines else None


_default: FlyTokens | None = None
_default_lock = threading.Lock()


def default_tokens() -> FlyTokens:
    """The process-wide :class:`FlyTokens` built from settings (created on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = FlyTokens()
        return _default


def reset_tokens() -> None:
    """Forget the process-wide chain (after settings changed; in tests)."""
    global _default
    with _default_lock:
        _default = None


def get(app: str) -> str:
    """:meth:`FlyTokens.get` of the process-wide chain."""
    return default_tokens().get(app)


def resolve(app: str) -> TokenResult:
    """:meth:`FlyTokens.resolve` of the process-wide chain."""
    return default_tokens().resolve(app)


def invalidate(app: str, token: str | None = None) -> None:
    """:meth:`FlyTokens.invalidate` of the process-wide chain."""
    default_tokens().invalidate(app, token)


def refresh(app: str, token: str | None = None) -> str:
    """:meth:`FlyTokens.refresh` of the process-wide chain."""
    return default_tokens().refresh(app, token)


def set_manual(app: str, token: str) -> None:
    """:meth:`FlyTokens.set_manual` of the process-wide chain."""
    default_tokens().set_manual(app, token)


def clear_manual(app: str) -> None:
    """:meth:`FlyTokens.clear_manual` of the process-wide chain."""
    default_tokens().clear_manual(app)


__all__ = [
    "REJECTED_TTL_S",
    "FlyTokens",
    "TokenCli",
    "TokenResult",
    "TokenSource",
    "clear_manual",
    "default_tokens",
    "get",
    "invalidate",
    "read_config_token",
    "refresh",
    "reset_tokens",
    "resolve",
    "run_token_cli",
    "set_manual",
]
