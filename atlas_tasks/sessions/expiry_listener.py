"""The expiry listener, fast path of the idle clock: react to Redis expiring
``<namespace>:alive:{id}``.

Redis publishes ``__keyevent@<db>__:expired`` when it expires a key, if
``notify-keyspace-events`` has ``E`` and ``x``. A listener thread in each worker turns
those into terminate batches within milliseconds. Expiry events are fire-and-forget (lost
while nobody listens, and managed Redis may refuse ``CONFIG SET``), so the beat-driven
reaper stays the safety net; where ``CONFIG SET`` is refused the listener logs it once
and the reaper alone does the job.

Each expired session is claimed with the same claim the reaper's sweep takes (its
deadline is moved past now), so N listeners plus the sweep enqueue one terminate.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from atlas_tasks import constants as C
from atlas_tasks.keyspace_names import keyspace
from atlas_tasks.redis_conn import client_for_url, cluster_primary_clients, is_cluster_url
from atlas_tasks.sessions.store import store_for

log = logging.getLogger(__name__)


def enable_expiry_events(client: redis.Redis) -> bool:
    """Make sure ``notify-keyspace-events`` includes ``E`` and ``x``; False if refused."""
    try:
        current = str(client.config_get("notify-keyspace-events").get("notify-keyspace-events", ""))
        if "E" in current and ("x" in current or "A" in current):
            return True
        flags = "".join(sorted(set(current + "Ex")))
        client.config_set("notify-keyspace-events", flags)
        return True
    except redis.ResponseError as exc:
        log.warning(
            "keyspace notifications unavailable (%s); idle sessions are reaped by "
            "the beat sweep only",
            exc,
        )
        return False


class ExpiryListener(threading.Thread):
    """Daemon thread: expired ``<namespace>:alive:*`` keys → ``on_expired([session ids])``.

    Claimed ids are handed over in batches of up to ``IDLE_BATCH_MAX``, waiting at most
    ``IDLE_BATCH_WINDOW_MS`` after the first one. Only the keys of ``namespace`` (default:
    ``ATLAS_NAMESPACE`` when constructed) count: another deployment on the same Redis
    expires its own keys on the same channel, and they are not ours to claim.
    """

    def __init__(
        self, redis_url: str, on_expired: Callable[[list[str]], None], namespace: str | None = None
    ) -> None:
        super().__init__(name="atlas-expiry-listener", daemon=True)
        self.redis_url = redis_url
        self.namespace = keyspace(namespace).namespace
        self.on_expired = on_expired
        self.stopping = threading.Event()
        self.ready = threading.Event()
        self.enabled = True

    def stop(self) -> None:
        """Ask the thread to finish (it exits within about a second)."""
        self.stopping.set()

    def run(self) -> None:
        """Thread body: subscribe, batch expired ids, reconnect with backoff until stopped."""
        backoff = 0.5
        while not self.stopping.is_set():
            try:
                # Expiry events are node-local: on a cluster, every primary is subscribed
                # (the primaries are read again after any failure: a failover moves them)
                subscribers = cluster_primary_clients(self.redis_url, decode_responses=True)
                if not all(enable_expiry_events(client) for client in subscribers):
                    self.enabled = False
                    self.ready.set()
                    return
                registry = (
                    client_for_url(self.redis_url, decode_responses=True)
                    if is_cluster_url(self.redis_url)
                    else subscribers[0]
                )
                self._listen(registry, subscribers)
                backoff = 0.5
            except redis.RedisError as exc:
                log.warning("expiry listener lost Redis (%s); reconnecting", exc)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _listen(self, registry: redis.Redis, subscribers: list[redis.Redis]) -> None:
        store = store_for(registry, namespace=self.namespace)
        prefixes = [shard.alive_prefix for shard in store.shards]
        pubsubs = []
        for client in subscribers:
            db = client.connection_pool.connection_kwargs.get("db", 0)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(f"__keyevent@{db}__:expired")
            pubsubs.append(pubsub)
        self.ready.set()
        batch: list[str] = []
        first_at = 0.0
        window = C.IDLE_BATCH_WINDOW_MS / 1000
        # one node: block on it; several: take turns with short waits
        turn = 1.0 if len(pubsubs) == 1 else 0.02
        try:
            while not self.stopping.is_set():
                wait = turn if not batch else max(0.0, window - (time.monotonic() - first_at))
                for pubsub in pubsubs:
                    message = pubsub.get_message(timeout=min(wait, turn))
                    session_id = _session_of(str(message["data"]), prefixes) if message else ""
                    if session_id and store.claim_expired(session_id, C.IDLE_CLAIM_SLACK_MS):
                        if not batch:
                            first_at = time.monotonic()
                        batch.append(session_id)
                if batch and (
                    len(batch) >= C.IDLE_BATCH_MAX or time.monotonic() - first_at >= window
                ):
                    self._flush(batch)
                    batch = []
        finally:
            if batch:
                self._flush(batch)
            for pubsub in pubsubs:
                pubsub.close()

    def _flush(self, batch: list[str]) -> None:
        try:
            self.on_expired(list(batch))
        except Exception:  # keep listening whatever the callback does; the sweep retries
            log.exception("expiry callback failed for %d sessions", len(batch))


def _session_of(key: str, alive_prefixes: list[str]) -> str:
    """The session id of an expired idle-clock key of this namespace, else ``""``."""
    for prefix in alive_prefixes:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return ""
