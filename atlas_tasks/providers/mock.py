"""The mock provider: a fake cloud with no network, for tests, demos and local development.

It follows the ExAtlas mock (reference notes §8): ids are ``"mock-" + base64url(8 bytes)``,
resources are ``running`` as soon as they are created, ``terminate`` keeps the record with
status ``terminated``, serverless jobs complete immediately with ``{"echo": input}``.

Its state lives in one of two stores:

* **memory** (default): a class-level dict guarded by a lock, shared by every
  ``MockProvider`` of the process; :meth:`MockProvider.reset` clears it.
* **redis**: two hashes (:data:`~atlas_tasks.constants.MOCK_COMPUTE_KEY`,
  :data:`~atlas_tasks.constants.MOCK_JOBS_KEY`) of JSON records, so a Celery worker, beat
  and a web process all see one mock cloud. Chosen by ``options["redis_url"]``
  (``get_provider("mock", redis_url=...)``) or by ``ATLAS_MOCK_STATE=redis`` together with
  ``ATLAS_REDIS_URL``.

The "pod env" is recorded in ``compute.raw["env"]`` (and ``raw["request"]["env"]``) so tests
can check what a pod would see. Auth secrets (``ATLAS_PRESHARED_KEY``,
``ATLAS_SIGNING_SECRET``) are recorded as ``"sha256:<hex>"`` digests, never raw: the raw
bearer token is handed out once in ``compute.auth`` and must not be readable anywhere else
(not in Redis, not in a later ``get_compute``).

Options (``get_provider("mock", **options)``):
    redis_url: keep state in this Redis instead of process memory.
    state: ``"memory"`` or ``"redis"``, overriding ``ATLAS_MOCK_STATE``.
    latency_s: sleep this long at the start of every operation (timeouts, demos).
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, cast

from atlas_tasks import constants
from atlas_tasks.auth.tokens import token_hash
from atlas_tasks.errors import validation_error
from atlas_tasks.keyspace_names import keyspace
from atlas_tasks.providers.base import (
    Provider,
    ProviderContext,
)
from atlas_tasks.providers.translate_common import tcp_port
from atlas_tasks.specs import (
    Capability,
    Compute,
    ComputeRequest,
    ComputeStatus,
    GpuType,
    Job,
    JobRequest,
    JobStatus,
    Port,
)

if TYPE_CHECKING:
    import redis

#: The public IP every mock resource reports (TEST-NET-3, never routable).
MOCK_PUBLIC_IP = "203.0.113.1"

#: Env names whose values are secrets; the mock records only their digest.
SECRET_ENV_NAMES = frozenset({constants.PRESHARED_KEY_ENV, constants.SIGNING_SECRET_ENV})

Record = dict[str, Any]


def _new_id(prefix: str) -> str:
    raw = base64.urlsafe_b64encode(secrets.token_bytes(8)).rstrip(b"=").decode("ascii")
    return f"{prefix}{raw}"


def secret_digest(value: str) -> str:
    """How the mock records a secret env value: ``"sha256:" + token_hash(value)``."""
    return f"sha256:{token_hash(value)}"


def _copy(record: Record) -> Record:
    # A deep copy through JSON: what a caller gets can never alias the stored record.
    return cast(Record, json.loads(json.dumps(record)))


def _redact_env(env: dict[str, str]) -> dict[str, str]:
    return {k: secret_digest(v) if k in SECRET_ENV_NAMES else v for k, v in env.items()}


# --------------------------------------------------------------------------- stores


class _MemoryStore:
    """Process-wide state: one dict per table, shared by every MockProvider instance."""

    lock: ClassVar[threading.RLock] = threading.RLock()
    tables: ClassVar[dict[str, dict[str, Record]]] = {"computes": {}, "jobs": {}}

    def get(self, table: str, key: str) -> Record | None:
        with self.lock:
            record = self.tables[table].get(key)
            return _copy(record) if record is not None else None

    def put(self, table: str, key: str, record: Record) -> None:
        with self.lock:
            self.tables[table][key] = _copy(record)

    def values(self, table: str) -> list[Record]:
        with self.lock:
            return [_copy(r) for r in self.tables[table].values()]

    def update(self, table: str, key: str, change: Callable[[Record], None]) -> Record | None:
        with self.lock:
            record = self.tables[table].get(key)
            if record is None:
                return None
            change(record)
            return _copy(record)

    @classmethod
    def clear(cls) -> None:
        with cls.lock:
            for table in cls.tables.values():
                table.clear()


_redis_clients: dict[str, redis.Redis] = {}
_redis_lock = threading.Lock()


def _redis_client(url: str) -> redis.Redis:
    # One pooled client per URL for the process; redis-py resets pools after fork,
    # so Celery prefork children are safe.
    from atlas_tasks.redis_conn import client_for_url

    with _redis_lock:
        client = _redis_clients.get(url)
        if client is None:
            client = client_for_url(url, decode_responses=True)
            _redis_clients[url] = client
        return client


class _RedisStore:
    """Shared state: one Redis hash per table, JSON values, in the deployment's namespace
    (each namespace is its own simulated account; the fake cloud simulates a shared one)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = _redis_client(url)
        ks = keyspace()
        self.keys: dict[str, str] = {
            "computes": ks.key(constants.MOCK_COMPUTE_KEY),
            "jobs": ks.key(constants.MOCK_JOBS_KEY),
        }

    def get(self, table: str, key: str) -> Record | None:
        value = self.client.hget(self.keys[table], key)
        return cast(Record, json.loads(value)) if value else None

    def put(self, table: str, key: str, record: Record) -> None:
        self.client.hset(self.keys[table], key, json.dumps(record))

    def values(self, table: str) -> list[Record]:
        return [cast(Record, json.loads(v)) for v in self.client.hvals(self.keys[table])]

    def update(self, table: str, key: str, change: Callable[[Record], None]) -> Record | None:
        hash_key = self.keys[table]
        result: list[Record | None] = [None]

        # WATCH/MULTI so two processes changing one record cannot lose an update.
        def apply(pipe: Any) -> None:
            value = pipe.hget(hash_key, key)
            if not value:
                result[0] = None
                pipe.multi()
                return
            record = json.loads(value)
            change(record)
            pipe.multi()
            pipe.hset(hash_key, key, json.dumps(record))
            result[0] = record

        self.client.transaction(apply, hash_key)
        return result[0]

    def clear(self) -> None:
        self.client.delete(*self.keys.values())


# --------------------------------------------------------------------------- provider


class MockProvider(Provider):
    """In-process (or Redis-shared) fake cloud implementing the whole provider contract."""

    name: ClassVar[str] = "mock"
    CAPABILITIES: ClassVar[frozenset[Capability]] = frozenset(
        {
            Capability.SPOT,
            Capability.SERVERLESS,
            Capability.NETWORK_VOLUMES,
            Capability.HTTP_PROXY,
            Capability.RAW_TCP,
            Capability.WEBHOOKS,
            Capability.JOB_STREAM_READS,
        }
    )

    def __init__(self, context: ProviderContext | None = None) -> None:
        super().__init__(context)
        options = self.context.options
        settings = self.context.settings
        state = options.get("state") or ("redis" if options.get("redis_url") else None)
        state = state or settings.mock_state
        self._store: _MemoryStore | _RedisStore
        if state == "redis":
            self._store = _RedisStore(str(options.get("redis_url") or settings.redis_url))
        elif state == "memory":
            self._store = _MemoryStore()
        else:
            raise validation_error(
                "state", f"mock state must be 'memory' or 'redis', not {state!r}"
            )
        self._latency_s = float(options.get("latency_s") or 0.0)

    @property
    def state(self) -> str:
        """``"memory"`` or ``"redis"``: where this instance keeps the mock cloud."""
        return "redis" if isinstance(self._store, _RedisStore) else "memory"

    @classmethod
    def reset(cls, redis_url: str | None = None) -> None:
        """Forget every mock compute and job (the in-memory store, or the given Redis)."""
        if redis_url:
            _RedisStore(redis_url).clear()
        else:
            _MemoryStore.clear()

    def reset_state(self) -> None:
        """Forget every mock compute and job in the store this instance uses."""
        self._store.clear()

    def _pause(self) -> None:
        if self._latency_s > 0:
            time.sleep(self._latency_s)

    # ------------------------------------------------------------------ compute
    def create_compute(self, request: ComputeRequest) -> Compute:
        self._pause()
        compute_id = _new_id("mock-")
        ports = [
            Port(
                internal=port,
                external=port,
                protocol="http",
                url=f"https://{compute_id}-{port}.mock.local",
            )
            if proto == "http"
            else tcp_port(port, port, MOCK_PUBLIC_IP)
            for port, proto in request.ports
        ]
        env = _redact_env(dict(request.env))
        request_json = request.model_dump(mode="json")
        request_json["env"] = env
        compute = Compute(
            id=compute_id,
            provider=self.name,
            status=ComputeStatus.RUNNING,
            public_ip=MOCK_PUBLIC_IP,
            ports=ports,
            gpu_type=request.gpu,
            gpu_count=request.gpu_count,
            cost_per_hour=0.0,
            region=request.region_hints[0] if request.region_hints else None,
            image=request.image,
            name=request.name,
            created_at=datetime.now(UTC),
            raw={"request": request_json, "env": env},
        )
        # The stored record never holds ``auth``: the raw token is returned once, by the
        # spawn_compute template, and a later get_compute cannot reveal it.
        self._store.put("computes", compute_id, compute.model_dump(mode="json", exclude={"auth"}))
        return compute

    def get_compute(self, compute_id: str) -> Compute:
        self._pause()
        record = self._store.get("computes", compute_id)
        if record is None:
            raise self.not_found(f"compute {compute_id}")
        return Compute.model_validate(record)

    def list_all_compute(self, *, region: str | None = None) -> list[Compute]:
        """Every mock compute (terminated ones too), oldest first."""
        self._pause()
        out = [Compute.model_validate(record) for record in self._store.values("computes")]
        out.sort(key=lambda c: (c.created_at or datetime.min.replace(tzinfo=UTC), c.id))
        return out

    def _set_status(self, compute_id: str, status: ComputeStatus) -> None:
        self._pause()

        def change(record: Record) -> None:
            record["status"] = status.value

        if self._store.update("computes", compute_id, change) is None:
            raise self.not_found(f"compute {compute_id}")

    def stop(self, compute_id: str) -> None:
        self._set_status(compute_id, ComputeStatus.STOPPED)

    def start(self, compute_id: str) -> None:
        self._set_status(compute_id, ComputeStatus.RUNNING)

    def terminate(self, compute_id: str) -> None:
        # The record is kept (like ExAtlas's mock) so a later get shows "terminated".
        self._set_status(compute_id, ComputeStatus.TERMINATED)

    # ------------------------------------------------------------------ jobs
    def run_job(self, request: JobRequest) -> Job:
        self._pause()
        job = Job(
            id=_new_id("job-"),
            provider=self.name,
            status=JobStatus.COMPLETED,
            endpoint=request.endpoint,
            output={"echo": request.input},
            execution_time_ms=0,
            delay_time_ms=0,
            raw={"request": request.model_dump(mode="json")},
        )
        self._store.put("jobs", job.id, job.model_dump(mode="json"))
        return job

    def _job(self, job_id: str, endpoint: str) -> Job:
        record = self._store.get("jobs", job_id)
        # Jobs are scoped by endpoint, as on RunPod: another endpoint's job id is unknown.
        if record is None or record.get("endpoint") != endpoint:
            raise self.not_found(f"job {job_id} on endpoint {endpoint}")
        return Job.model_validate(record)

    def get_job(self, job_id: str, *, endpoint: str) -> Job:
        self._pause()
        return self._job(job_id, endpoint)

    def cancel_job(self, job_id: str, *, endpoint: str) -> None:
        self._pause()
        self._job(job_id, endpoint)

        def change(record: Record) -> None:
            # Like ExAtlas: cancelling marks the job cancelled even if it had completed.
            record["status"] = JobStatus.CANCELLED.value

        self._store.update("jobs", job_id, change)

    def stream_job(self, job_id: str, *, endpoint: str) -> Iterator[Any]:
        self._pause()
        # Looked up before the generator starts so an unknown id fails at the call.
        job = self._job(job_id, endpoint)
        return iter([job.output])

    def read_job_stream(self, job_id: str, *, endpoint: str) -> tuple[JobStatus | None, list[Any]]:
        self._pause()
        # Mock jobs end at once: their whole output is the one chunk of a finished job.
        job = self._job(job_id, endpoint)
        return job.status, ([job.output] if job.status == JobStatus.COMPLETED else [])

    # ------------------------------------------------------------------ catalog
    def list_gpu_types(self) -> list[GpuType]:
        self._pause()
        return [
            GpuType(
                id="mock-h100",
                provider=self.name,
                canonical="h100",
                display_name="Mock H100",
                memory_gb=80,
                lowest_price_per_hour=0.0,
                spot_price_per_hour=0.0,
                stock="high",
                cloud_type="any",
            )
        ]


__all__ = ["MOCK_PUBLIC_IP", "SECRET_ENV_NAMES", "MockProvider", "secret_digest"]
