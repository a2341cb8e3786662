"""A whole atlas_tasks deployment on loopback: Redis, fake cloud, worker(s), beat.

Used by the integration tests, the demo, the benchmarks and the chaos suite, so all of
them exercise the same real parts::

    with LocalCluster(reap_interval_ms=500) as cluster:
        s = orchestrator.spawn(provider="runpod", gpu="h100", image="x")
        s.wait(30)
        cluster.cloud.state()["totals"]

Entering the cluster points this process's settings at it (``ATLAS_*`` env vars) and
restores the previous environment on exit.
"""

from __future__ import annotations

import os
from typing import Any

from atlas_tasks.config import reset_settings
from atlas_tasks.providers.registry import clear_provider_cache
from atlas_tasks.redis_conn import get_redis, reset_redis_clients
from atlas_tasks.sealing import generate_key
from atlas_tasks.sessions.store import store_for
from atlas_tasks.testing.fakecloud import FakeCloud
from atlas_tasks.testing.processes import (
    ManagedProcess,
    celery_beat,
    celery_worker,
    worker_ready,
)
from atlas_tasks.testing.redis_server import RedisServer


class LocalCluster:
    """Redis + fake cloud + Celery worker(s) + beat, all real processes on loopback.

    Args:
        redis_url: use this Redis instead of starting a private ``redis-server``.
        beat: start a beat process (the reaper's clock).
        workers: how many worker processes to start.
        pool, concurrency: worker pool settings.
        appendonly: start the private Redis with AOF (restart-safe).
        fakecloud: options for :class:`FakeCloud` (``latency_s``, ``error_rate``...).
        settings: extra ``ATLAS_*`` settings as ``name=value`` (``reap_interval_ms=500``).
    """

    def __init__(self, *, redis_url: str | None = None, beat: bool = True, workers: int = 1,
                 pool: str = "threads", concurrency: int = 32, appendonly: bool = False,
                 fakecloud: dict[str, Any] | None = None, **settings: Any) -> None:
        self._external_redis = redis_url
        self.redis: RedisServer | None = None
        self.redis_url = redis_url or ""
        self.start_beat = beat
        self.worker_count = workers
        self.pool = pool
        self.concurrency = concurrency
        self.appendonly = appendonly
        self.cloud = FakeCloud(**(fakecloud or {}))
        self.settings = {f"ATLAS_{k.upper()}": str(v) for k, v in settings.items()}
        self.workers: list[ManagedProcess] = []
        self.beat: ManagedProcess | None = None
        self.env: dict[str, str] = {}
        self._saved_env: dict[str, str | None] = {}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> LocalCluster:
        """Start everything and wait until workers are ready."""
        if not self._external_redis:
            self.redis = RedisServer(appendonly=self.appendonly).start()
            self.redis_url = self.redis.url
        self.cloud.start()
        self.env = {
            **os.environ,
            "ATLAS_REDIS_URL": self.redis_url,
            "ATLAS_SECRET_KEY": os.environ.get("ATLAS_SECRET_KEY") or generate_key(),
            "ATLAS_DEFAULT_PROVIDER": "runpod",
            "ATLAS_REAP_PROVIDERS": "runpod",
            # Test and demo sessions live for seconds; production keeps the 10 s floor.
            "ATLAS_MIN_IDLE_TTL_MS": "100",
            **self.cloud.env(),
            **self.settings,
        }
        self.apply_env()
        # This is the deployment's first start: mark the dataset, so the reaper's
        # data-loss guard (a missing epoch) only fires if this Redis loses its data later.
        store_for(get_redis(self.redis_url)).ensure_epoch()
        for i in range(self.worker_count):
            self.add_worker(hostname=f"w{i + 1}@%h")
        if self.start_beat:
            self.start_beat_process()
        return self

    def apply_env(self) -> None:
        """Point this process's settings, Redis clients and providers at the cluster."""
        for key, value in self.env.items():
            if key.startswith("ATLAS_") and os.environ.get(key) != value:
                self._saved_env.setdefault(key, os.environ.get(key))
                os.environ[key] = value
        reset_settings()
        reset_redis_clients()
        clear_provider_cache()

    def add_worker(self, *, hostname: str | None = None, wait: bool = True,
                   **extra_env: str) -> ManagedProcess:
        """Start one more worker (``extra_env`` e.g. ``ATLAS_FAULT_KILL_AT="after_create"``)."""
        name = hostname or f"w{len(self.workers) + 1}@%h"
        proc = celery_worker({**self.env, **extra_env}, pool=self.pool,
                             concurrency=self.concurrency, hostname=name)
        self.workers.append(proc)
        if wait:
            worker_ready(proc)
        else:
            proc.start()
        return proc

    def start_beat_process(self) -> ManagedProcess:
        """(Re)start beat and wait until it holds the single-beat lock."""
        self.beat = celery_beat(self.env).start()
        self.beat.wait_for("Acquired lock", 60)
        return self.beat

    def stop(self) -> None:
        """Stop processes, the fake cloud and the private Redis; restore the env."""
        for proc in [*self.workers, *([self.beat] if self.beat else [])]:
            proc.stop()
        self.workers.clear()
        self.beat = None
        self.cloud.stop()
        if self.redis is not None:
            self.redis.cleanup()
            self.redis = None
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()
        reset_settings()
        reset_redis_clients()
        clear_provider_cache()

    def __enter__(self) -> LocalCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def logs(self) -> str:
        """Every process's log, for failure messages."""
        parts = [f"== {p.name} {p.pid if p.process else ''}\n{p.log()[-4000:]}"
                 for p in [*self.workers, *([self.beat] if self.beat else [])]]
        return "\n".join(parts)
