"""Durable storage of resolved Fly tokens: Redis (Fernet-sealed), files (0600) or memory.

Each app has two independent entries (ExAtlas's ``Fly.TokenStorage`` behaviour):

* ``cached`` — a token resolved from config.yml or the CLI, with an integer
  ``expires_at`` (unix seconds); the chain uses it while ``expires_at > now``.
* ``manual`` — an operator override set by ``tokens.set_manual()``, ``expires_at=None``.

Every backend implements :class:`TokenStorage` (``get`` / ``put`` / ``delete``) and passes
the shipped :class:`atlas_tasks.testing.token_storage_conformance.TokenStorageConformance`.

* :class:`RedisTokenStorage` — cluster-wide; each value is Fernet-encrypted with
  ``ATLAS_SECRET_KEY`` (:mod:`atlas_tasks.sealing`), so Redis never holds a token in the
  clear. Cached entries expire in Redis with the token.
* :class:`FileTokenStorage` — one JSON file per entry in a directory created with mode
  0700; files are written 0600 through a temporary file and ``os.replace`` (a crash never
  leaves a half-written token). A corrupt ``cached`` file is deleted and reads as absent; a
  corrupt ``manual`` file raises, because silently dropping an operator's override would
  hide a real problem.
* :class:`MemoryTokenStorage` — one process, for tests and single-process tools.
"""

from __future__ import annotations

import abc
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import redis

from atlas_tasks import constants as C
from atlas_tasks.config import AtlasSettings, get_settings
from atlas_tasks.errors import AtlasError, TransportError, ValidationError, validation_error
from atlas_tasks.key_groups import FLY_GROUP, fill
from atlas_tasks.keyspace_names import keyspace
from atlas_tasks.redis_conn import get_redis
from atlas_tasks.sealing import seal, unseal

TokenKind = Literal["cached", "manual"]

#: The two entry kinds of an app.
TOKEN_KINDS: tuple[TokenKind, ...] = ("cached", "manual")

# Fly app names are lowercase letters, digits and dashes; we accept a little more
# (underscores, dots, upper case) but never a path separator or a leading dot.
_APP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


@dataclass(frozen=True)
class TokenRecord:
    """A stored token. ``expires_at`` is unix seconds, or ``None`` (manual overrides)."""

    token: str
    expires_at: int | None = None

    def __repr__(self) -> str:  # never show the token
        return f"TokenRecord(token='***', expires_at={self.expires_at!r})"

    def valid(self, now: float | None = None) -> bool:
        """True when it has no expiry or expires in the future."""
        return self.expires_at is None or self.expires_at > (time.time() if now is None else now)


def check_app(app: str) -> str:
    """``app`` if it is a plausible Fly app name.

    Raises:
        ValidationError: (field ``app``) empty or containing path characters.
    """
    if not isinstance(app, str) or not _APP_NAME.match(app) or ".." in app:
        raise validation_error("app", f"{app!r} is not a valid Fly app name")
    return app


def _check_kind(kind: str) -> TokenKind:
    if kind not in TOKEN_KINDS:
        raise validation_error("kind", f"must be one of {', '.join(TOKEN_KINDS)}, not {kind!r}")
    return kind


def _record_from(data: object) -> TokenRecord:
    if not isinstance(data, dict) or not isinstance(data.get("token"), str):
        raise ValueError("not a token record")
    expires = data.get("expires_at")
    if expires is not None and not isinstance(expires, int):
        raise ValueError("bad expires_at")
    return TokenRecord(token=data["token"], expires_at=expires)


class TokenStorage(abc.ABC):
    """Where resolved tokens survive process restarts. Implementations are thread-safe."""

    @abc.abstractmethod
    def get(self, app: str, kind: TokenKind) -> TokenRecord | None:
        """The stored entry, or ``None`` when there is none."""

    @abc.abstractmethod
    def put(self, app: str, kind: TokenKind, record: TokenRecord) -> None:
        """Store (or overwrite) an entry.

        Raises:
            AtlasError: the entry could not be persisted.
        """

    @abc.abstractmethod
    def delete(self, app: str, kind: TokenKind) -> None:
        """Remove an entry; removing an absent entry is not an error."""


class MemoryTokenStorage(TokenStorage):
    """Entries in a dict of this process (tests, single-process tools)."""

    def __init__(self) -> None:
        self._data: dict[tuple[str, TokenKind], TokenRecord] = {}
        self._lock = threading.Lock()

    def get(self, app: str, kind: TokenKind) -> TokenRecord | None:
        """See :meth:`TokenStorage.get`."""
        key = (check_app(app), _check_kind(kind))
        with self._lock:
            return self._data.get(key)

    def put(self, app: str, kind: TokenKind, record: TokenRecord) -> None:
        """See :meth:`TokenStorage.put`."""
        key = (check_app(app), _check_kind(kind))
        with self._lock:
            self._data[key] = record

    def delete(self, app: str, kind: TokenKind) -> None:
        """See :meth:`TokenStorage.delete`."""
        key = (check_app(app), _check_kind(kind))
        with self._lock:
            self._data.pop(key, None)


class RedisTokenStorage(TokenStorage):
    """Entries in Redis, Fernet-sealed with ``ATLAS_SECRET_KEY`` (shared by the cluster).

    Args:
        client: Redis client (default :func:`atlas_tasks.redis_conn.get_redis`).
        settings: settings carrying ``secret_key``.
        clock: unix-seconds clock turning a cached entry's ``expires_at`` into its TTL.
    """

    def __init__(
        self,
        client: redis.Redis | None = None,
        settings: AtlasSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._settings = settings
        self._clock = clock

    @property
    def client(self) -> redis.Redis:
        """The Redis client used."""
        return self._client or get_redis()

    def _key(self, app: str, kind: str) -> str:
        # In the "fly" hash-tag group beside the app's other keys (tagged layout; a
        # single-key command either way, so any slot would do).
        return fill(
            keyspace().group(FLY_GROUP),
            C.FLY_TOKEN_KEY,
            app=check_app(app),
            kind=_check_kind(kind),
        )

    def get(self, app: str, kind: TokenKind) -> TokenRecord | None:
        """See :meth:`TokenStorage.get`. A value sealed with another key reads as absent."""
        key = self._key(app, kind)
        try:
            raw = self.client.get(key)
        except redis.RedisError as exc:
            raise TransportError(f"token storage: Redis failed: {exc}", provider="fly") from exc
        if raw is None:
            return None
        try:
            return _record_from(unseal(str(raw), self._settings))
        except ValidationError as exc:
            if exc.field == "ATLAS_SECRET_KEY" and "not set" in str(exc):
                raise
            return None  # sealed with a rotated key or corrupt: as good as absent
        except ValueError:
            return None

    def put(self, app: str, kind: TokenKind, record: TokenRecord) -> None:
        """See :meth:`TokenStorage.put`. Cached entries expire with their token."""
        key = self._key(app, kind)
        sealed = seal({"token": record.token, "expires_at": record.expires_at}, self._settings)
        px: int | None = None
        if kind == "cached" and record.expires_at is not None:
            px = max(1, int((record.expires_at - self._clock()) * 1000))
        try:
            self.client.set(key, sealed, px=px)
        except redis.RedisError as exc:
            raise TransportError(f"token storage: Redis failed: {exc}", provider="fly") from exc

    def delete(self, app: str, kind: TokenKind) -> None:
        """See :meth:`TokenStorage.delete`."""
        key = self._key(app, kind)
        try:
            self.client.delete(key)
        except redis.RedisError as exc:
            raise TransportError(f"token storage: Redis failed: {exc}", provider="fly") from exc


class FileTokenStorage(TokenStorage):
    """Entries as ``<dir>/<app>.<kind>.json`` (directory 0700, files 0600, atomic writes).

    Args:
        directory: where to keep the files (created 0700 if missing; an existing
            directory is tightened to 0700).
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory).expanduser()
        self._lock = threading.Lock()
        self._ensure_dir()

    def _ensure_dir(self) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.directory, 0o700)  # mkdir's mode is filtered by the umask
        except OSError as exc:
            raise validation_error(
                "fly_token_dir", f"cannot create {str(self.directory)!r}: {exc.strerror}"
            ) from exc

    def path(self, app: str, kind: TokenKind) -> Path:
        """File of one entry."""
        return self.directory / f"{check_app(app)}.{_check_kind(kind)}.json"

    def get(self, app: str, kind: TokenKind) -> TokenRecord | None:
        """See :meth:`TokenStorage.get`.

        Raises:
            ValidationError: (field ``fly_token_dir``) a corrupt manual entry.
        """
        path = self.path(app, kind)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise AtlasError(
                f"token storage: cannot read {path.name}: {exc.strerror}",
                kind="unknown",
                provider="fly",
            ) from exc
        try:
            return _record_from(json.loads(text))
        except ValueError as exc:
            if kind == "manual":
                raise validation_error(
                    "fly_token_dir",
                    f"manual token file {path.name} is corrupt; fix or "
                    "delete it (atlas will not silently drop an operator's override)",
                ) from exc
            self._unlink(path)
            return None

    def put(self, app: str, kind: TokenKind, record: TokenRecord) -> None:
        """See :meth:`TokenStorage.put` (atomic: temp file 0600, fsync, rename)."""
        path = self.path(app, kind)
        payload = json.dumps({"token": record.token, "expires_at": record.expires_at})
        with self._lock:
            try:
                self._ensure_dir()
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=self.directory)
                try:
                    os.fchmod(fd, 0o600)  # mkstemp already uses 0600; be explicit
                    with os.fdopen(fd, "w", encoding="utf-8") as handle:
                        handle.write(payload)
                        handle.flush()
                        os.fsync(handle.fileno())
                    os.replace(tmp, path)
                except BaseException:
                    self._unlink(Path(tmp))
                    raise
            except OSError as exc:
                raise AtlasError(
                    f"token storage: cannot write {path.name}: {exc.strerror}",
                    kind="unknown",
                    provider="fly",
                ) from exc

    def delete(self, app: str, kind: TokenKind) -> None:
        """See :meth:`TokenStorage.delete`."""
        self._unlink(self.path(app, kind))

    @staticmethod
    def _unlink(path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise AtlasError(
                f"token storage: cannot delete {path.name}: {exc.strerror}",
                kind="unknown",
                provider="fly",
            ) from exc


def default_token_dir() -> Path:
    """``~/.atlas_tasks/fly-tokens``."""
    return Path.home() / ".atlas_tasks" / "fly-tokens"


def storage_from_settings(
    settings: AtlasSettings | None = None,
    *,
    client: redis.Redis | None = None,
    clock: Callable[[], float] = time.time,
) -> TokenStorage:
    """The backend named by ``ATLAS_FLY_TOKEN_STORE`` (``redis`` by default).

    Args:
        client: the Redis of the ``redis`` backend (default: the process-wide client).
        clock: the ``redis`` backend's clock (see :class:`RedisTokenStorage`).
    """
    settings = settings or get_settings()
    if settings.fly_token_store == "file":
        return FileTokenStorage(settings.fly_token_dir or default_token_dir())
    if settings.fly_token_store == "memory":
        return MemoryTokenStorage()
    return RedisTokenStorage(client, settings=settings, clock=clock)


__all__ = [
    "TOKEN_KINDS",
    "FileTokenStorage",
    "MemoryTokenStorage",
    "RedisTokenStorage",
    "TokenKind",
    "TokenRecord",
    "TokenStorage",
    "check_app",
    "default_token_dir",
    "storage_from_settings",
]
