"""A whole atlas_tasks deployment on loopback: Redis, fake cloud, Celery worker(s), beat.

This is the runner of ``atlas-tasks demo`` (shipped with ``pip install 'atlas-tasks[testing]'``
because the fake cloud needs Starlette and uvicorn). The repository's integration tests,
chaos suite and benchmarks build on it (``tests/support``), so all of them exercise the
same real parts::

    with LocalCluster(reap_interval_ms=500) as cluster:
        s = orchestrator.spawn(provider="runpod", gpu="h100", image="x")
        s.wait(30)
        cluster.cloud.state()["totals"]

Entering the cluster points this process's settings at it (``ATLAS_*`` env vars) and
restores the previous environment on exit. Every child process runs in its own process
group and is stopped with it, so a run that fails half-way leaves nothing running.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import redis

from atlas_tasks import constants as C
from atlas_tasks.config import reset_settings
from atlas_tasks.keyspace_names import Keyspace
from atlas_tasks.providers.registry import clear_provider_cache
from atlas_tasks.redis_conn import get_redis, reset_redis_clients
from atlas_tasks.sealing import generate_key
from atlas_tasks.sessions.store import store_for
from atlas_tasks.testing.fakecloud import FakeCloud


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    """A running ``redis-server`` child process.

    Attributes:
        port: the port it listens on (loopback only).
        appendonly: AOF persistence (the chaos suite restarts Redis and expects data back).
    """

    port: int = field(default_factory=free_port)
    appendonly: bool = False
    executable: str | None = None
    process: subprocess.Popen[bytes] | None = None
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="atlas-redis-")))

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers PING."""
        exe = self.executable or shutil.which("redis-server")
        if exe is None:
            raise RuntimeError(
                "redis-server not found on PATH; install it (Debian: apt-get install redis-server)"
            )
        args = [
            exe,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "everysec",
            "--dir",
            str(self.directory),
            "--notify-keyspace-events",
            "Ex",
            "--loglevel",
            "warning",
            # Faster active expiry: idle clocks run out closer to their deadline.
            "--hz",
            "100",
            # Redis 7.0 preallocates min(4096, this) bytes for every new stream; a
            # session's event log is a few hundred bytes (bench/RESULTS.md, memory).
            "--stream-node-max-bytes",
            "1024",
            # Session records (values up to the ~0.5 KB compute JSON) stay compact
            # listpacks instead of hashtables: about 1 KB less per running session.
            "--hash-max-listpack-value",
            "1024",
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if client.ping():
                    break
            except redis.exceptions.RedisError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"redis-server did not start on port {self.port}: {err}")
            time.sleep(0.02)
        client.close()
        return self

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s)."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port and directory (keeps AOF data)."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop and remove the data directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def _wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, logs: Callable[[], str]
) -> None:
    """Poll ``predicate()`` every 20 ms until true; RuntimeError with ``logs()`` after
    ``timeout`` (a Redis error inside the predicate counts as "not yet")."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except redis.exceptions.RedisError as exc:  # a node still starting
            last = exc
        time.sleep(0.02)
    raise RuntimeError(
        f"timed out after {timeout}s waiting for {what} (last error: {last!r})\n{logs()}"
    )


#: Hash slots of a Redis Cluster: every key maps to one of them (CRC16 mod 16384).
CLUSTER_SLOTS = 16384
#: A cluster node also listens on its port + 10000 (the cluster bus).
_CLUSTER_BUS_OFFSET = 10000


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port(taken: set[int] | frozenset[int] = frozenset()) -> int:
    """A loopback port ``p`` for a cluster node with ``p`` and its bus port ``p + 10000``
    both free. Chosen in 10000-22767 so that neither falls in Linux's default ephemeral
    range (32768-60999), where the kernel could hand it to an outgoing connection before
    the node binds it (:func:`free_port`'s ports are ephemeral ones, and a node's port
    must stay <= 55535 anyway)."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(10000, 32768 - _CLUSTER_BUS_OFFSET)
        if port in taken or port + _CLUSTER_BUS_OFFSET in taken:
            continue
        if _port_free(port) and _port_free(port + _CLUSTER_BUS_OFFSET):
            return port
    raise RuntimeError("no free port pair (p, p + 10000) for a Redis Cluster node")


@dataclass
class RedisClusterServer:
    """A Redis Cluster of ``masters`` primaries (no replicas), all ``redis-server``
    children on loopback, formed with ``redis-cli --cluster create``::

        with RedisClusterServer() as cluster:
            cluster.url    # redis+cluster://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3
            cluster.nodes  # [("127.0.0.1", p1), ...]

    Each node runs with the same tuning as :class:`RedisServer` (keyspace events ``Ex``,
    ``hz 100``, compact streams and hashes) so benchmarks compare like with like.

    Attributes:
        masters: number of primaries (Redis Cluster needs at least 3).
        password: ``requirepass``/``masterauth`` of every node (also put in :attr:`url`).
        appendonly: AOF persistence on every node.
    """

    masters: int = 3
    password: str | None = None
    appendonly: bool = False
    node_timeout_ms: int = 5000
    directory: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix="atlas-redis-cluster-"))
    )
    ports: list[int] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def nodes(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every node, in start order."""
        return [("127.0.0.1", port) for port in self.ports]

    @property
    def url(self) -> str:
        """``redis+cluster://[:password@]127.0.0.1:<p1>,127.0.0.1:<p2>,...``."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        hosts = ",".join(f"{host}:{port}" for host, port in self.nodes)
        return f"{C.CLUSTER_URL_SCHEME}{auth}{hosts}"

    def node_client(self, port: int, **kwargs: Any) -> redis.Redis:
        """A plain (non-cluster) client on the node listening on ``port``."""
        return redis.Redis(
            host="127.0.0.1",
            port=port,
            password=self.password,
            socket_connect_timeout=0.5,
            socket_timeout=5,
            **kwargs,
        )

    def start(self, timeout: float = 30.0) -> RedisClusterServer:
        """Start the nodes, form the cluster and wait until every node reports
        ``cluster_state:ok`` with all 16384 slots assigned and every peer known.

        Raises:
            RuntimeError: ``redis-server`` or ``redis-cli`` is missing, a node did not
                start, or the cluster did not form in ``timeout`` seconds (every process
                started so far is killed first).
        """
        server = shutil.which("redis-server")
        cli = shutil.which("redis-cli")
        if server is None or cli is None:
            missing = "redis-server" if server is None else "redis-cli"
            raise RuntimeError(
                f"{missing} not found on PATH; a Redis Cluster needs both "
                "(Debian: apt-get install redis-server, which pulls in redis-tools)"
            )
        if self.masters < 3:
            raise ValueError("a Redis Cluster needs at least 3 masters")
        try:
            self._start(server, cli, timeout)
        except BaseException:
            self.cleanup()
            raise
        return self

    def _start(self, server: str, cli: str, timeout: float) -> None:
        for _ in range(self.masters):
            taken = set(self.ports) | {p + _CLUSTER_BUS_OFFSET for p in self.ports}
            self.ports.append(free_cluster_port(taken))
        for port in self.ports:
            args = [
                server,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                # One file per node: each node rewrites its own cluster state into it.
                "--cluster-config-file",
                str(self.directory / f"nodes-{port}.conf"),
                "--cluster-node-timeout",
                str(self.node_timeout_ms),
                "--dir",
                str(self.directory),
                "--dbfilename",
                f"dump-{port}.rdb",
                "--appendfilename",
                f"appendonly-{port}.aof",
                "--appenddirname",
                f"appendonly-{port}",
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--notify-keyspace-events",
                "Ex",
                "--loglevel",
                "warning",
                "--logfile",
                str(self.directory / f"redis-{port}.log"),
                "--hz",
                "100",
                "--stream-node-max-bytes",
                "1024",
                "--hash-max-listpack-value",
                "1024",
            ]
            if self.password:
                args += ["--requirepass", self.password, "--masterauth", self.password]
            self.processes.append(
                subprocess.Popen(
                    args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
                )
            )
        for port, process in zip(self.ports, self.processes, strict=True):

            def answers(port: int = port, process: subprocess.Popen[bytes] = process) -> bool:
                if process.poll() is not None:
                    raise RuntimeError(f"redis-server on port {port} exited:\n{self.logs()}")
                client = self.node_client(port)
                try:
                    return bool(client.ping())
                finally:
                    client.close()

            _wait_for(
                answers, timeout, f"the cluster node on port {port} to answer PING", self.logs
            )
        create = [cli, "--cluster", "create", *(f"{h}:{p}" for h, p in self.nodes)]
        create += ["--cluster-replicas", "0", "--cluster-yes"]
        env = dict(os.environ)
        if self.password:
            env["REDISCLI_AUTH"] = self.password  # not on the command line (ps shows it)
        result = subprocess.run(
            create, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed ({result.returncode}):\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-2000:]}\n{self.logs()}"
            )
        _wait_for(self.ready, timeout, "cluster_state:ok on every node", self.logs)

    def ready(self) -> bool:
        """Whether every node reports ``cluster_state:ok``, all slots assigned and every
        other node known (a client may ask any node for the slot map)."""
        for port in self.ports:
            client = self.node_client(port, decode_responses=True)
            try:
                info = cast(dict[str, Any], client.cluster("INFO"))
            finally:
                client.close()
            if (
                info.get("cluster_state") != "ok"
                or int(info.get("cluster_slots_assigned", 0)) != CLUSTER_SLOTS
                or int(info.get("cluster_known_nodes", 0)) != self.masters
            ):
                return False
        return True

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after 5 s)."""
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stderr is not None:
                process.stderr.close()
        self.processes.clear()

    def cleanup(self) -> None:
        """Stop and remove the data directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def logs(self) -> str:
        """The tail of every node's log file, for failure messages."""
        parts = []
        for port in self.ports:
            try:
                text = (self.directory / f"redis-{port}.log").read_text(errors="replace")
            except FileNotFoundError:
                text = ""
            parts.append(f"== redis-server :{port}\n{text[-1500:]}")
        return "\n".join(parts)

    def __enter__(self) -> RedisClusterServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


@dataclass
class ManagedProcess:
    """A child process in its own process group with its output in ``log_path``."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path = field(default_factory=lambda: Path(tempfile.mkstemp(suffix=".log")[1]))
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        """Start the process (its output goes to ``log_path``)."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.process = subprocess.Popen(
            self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        """Process id (the group leader)."""
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        """Everything the process printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        """Block until ``text`` appears in the log (raises with the log tail if not)."""
        self.wait_until(lambda: text in self.log(), timeout, f"{text!r} in the log")

    def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Block until ``predicate()``; raise with the log tail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if not self.alive():
                break
            time.sleep(0.05)
        raise RuntimeError(
            f"{self.name}: no {what} after {timeout}s "
            f"(alive={self.alive()}). Log tail:\n{self.log()[-3000:]}"
        )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the whole process group (SIGKILL by default) and reap it."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the group, then SIGKILL after ``timeout``."""
        if not self.alive():
            return
        assert self.process is not None
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        except ProcessLookupError:
            pass


def celery_command(*args: str) -> list[str]:
    """``python -m celery -A atlas_tasks.celery_app <args>`` with this interpreter."""
    return [sys.executable, "-m", "celery", "-A", "atlas_tasks.celery_app", *args]


def namespace_queues(env: dict[str, str]) -> str:
    """The ``-Q`` list of an atlas worker with this environment's ``ATLAS_NAMESPACE``
    (``compute,jobs,fly,maintenance`` in the default namespace)."""
    ks = Keyspace(env.get("ATLAS_NAMESPACE") or C.DEFAULT_NAMESPACE)
    return ",".join(
        ks.queue(q) for q in (C.QUEUE_COMPUTE, C.QUEUE_JOBS, C.QUEUE_FLY, C.QUEUE_MAINTENANCE)
    )


def celery_worker(
    env: dict[str, str],
    *,
    pool: str = "threads",
    concurrency: int = 16,
    queues: str | None = None,
    hostname: str = "w1@%h",
    loglevel: str = "INFO",
) -> ManagedProcess:
    """A worker with task events on (``-E``), not started yet. ``queues`` defaults to
    every atlas queue of ``env``'s namespace (:func:`namespace_queues`)."""
    queues = queues or namespace_queues(env)
    return ManagedProcess(
        "worker",
        celery_command(
            "worker",
            "-E",
            "-P",
            pool,
            "-c",
            str(concurrency),
            "-Q",
            queues,
            "-n",
            hostname,
            "--loglevel",
            loglevel,
            "--without-mingle",
            "--without-gossip",
        ),
        env,
    )


def celery_beat(env: dict[str, str], *, loglevel: str = "INFO") -> ManagedProcess:
    """Beat with the redbeat scheduler (schedule + single-beat lock in Redis)."""
    return ManagedProcess(
        "beat", celery_command("beat", "--loglevel", loglevel, "-s", os.devnull), env
    )


def worker_ready(proc: ManagedProcess, timeout: float = 60.0) -> ManagedProcess:
    """Start ``proc`` and wait for Celery's ``ready.`` line."""
    if not proc.alive():
        proc.start()
    proc.wait_for(" ready.", timeout)
    return proc


class LocalCluster:
    """Redis + fake cloud + Celery worker(s) + beat, all real processes on loopback.

    Args:
        redis_url: use this Redis instead of starting a private ``redis-server``.
        redis_cluster: put the registry and events on a private 3-master Redis Cluster
            (:class:`RedisClusterServer`, ``ATLAS_REDIS_URL=redis+cluster://...``) and
            Celery's broker, results and redbeat on a private plain ``redis-server``
            (Celery cannot use a cluster), unless ``broker_url``/``result_backend`` are
            given in ``settings``. Ignored when ``redis_url`` is given.
        beat: start a beat process (the reaper's clock).
        workers: how many worker processes to start.
        pool, concurrency: worker pool settings.
        appendonly: start the private Redis with AOF (restart-safe).
        fakecloud: options for :class:`FakeCloud` (``latency_s``, ``error_rate``...).
        settings: extra ``ATLAS_*`` settings as ``name=value`` (``reap_interval_ms=500``).
    """

    def __init__(
        self,
        *,
        redis_url: str | None = None,
        redis_cluster: bool = False,
        beat: bool = True,
        workers: int = 1,
        pool: str = "threads",
        concurrency: int = 32,
        appendonly: bool = False,
        fakecloud: dict[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        self._external_redis = redis_url
        self.redis: RedisServer | None = None
        self.use_redis_cluster = redis_cluster
        #: The private cluster of ``redis_cluster=True`` (``self.redis`` is then the
        #: plain Redis of Celery's broker, results and redbeat).
        self.redis_cluster: RedisClusterServer | None = None
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
        celery_urls: dict[str, str] = {}
        if not self._external_redis:
            self.redis = RedisServer(appendonly=self.appendonly).start()
            self.redis_url = self.redis.url
            if self.use_redis_cluster:
                self.redis_cluster = RedisClusterServer(appendonly=self.appendonly).start()
                self.redis_url = self.redis_cluster.url
                celery_urls = {
                    "ATLAS_BROKER_URL": self.redis.url,
                    "ATLAS_RESULT_BACKEND": self.redis.url,
                }
        self.cloud.start()
        self.env = {
            **os.environ,
            **celery_urls,
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
        store_for(
            get_redis(self.redis_url), namespace=self.env.get("ATLAS_NAMESPACE")
        ).ensure_epoch()
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

    def add_worker(
        self, *, hostname: str | None = None, wait: bool = True, **extra_env: str
    ) -> ManagedProcess:
        """Start one more worker (``extra_env`` e.g. ``ATLAS_FAULT_KILL_AT="after_create"``)."""
        name = hostname or f"w{len(self.workers) + 1}@%h"
        proc = celery_worker(
            {**self.env, **extra_env}, pool=self.pool, concurrency=self.concurrency, hostname=name
        )
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
        if self.redis_cluster is not None:
            self.redis_cluster.cleanup()
            self.redis_cluster = None
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
        parts = [
            f"== {p.name} {p.pid if p.process else ''}\n{p.log()[-4000:]}"
            for p in [*self.workers, *([self.beat] if self.beat else [])]
        ]
        return "\n".join(parts)


__all__ = [
    "CLUSTER_SLOTS",
    "LocalCluster",
    "ManagedProcess",
    "RedisClusterServer",
    "RedisServer",
    "celery_beat",
    "celery_worker",
    "celery_command",
    "free_cluster_port",
    "free_port",
    "namespace_queues",
    "worker_ready",
]
