"""A Redis Sentinel deployment on loopback for tests: one master, replicas, three sentinels.

Every part is a real ``redis-server`` process (a sentinel is ``redis-server <conf>
--sentinel``, which is what Debian's ``redis-sentinel`` runs), so a failover is the real
one: ``kill_master()`` SIGKILLs the master and :meth:`SentinelSet.wait_for_failover`
polls the sentinels until they agree on a promoted replica that answers as a master::

    with SentinelSet() as sentinels:
        url = sentinels.url  # redis+sentinel://127.0.0.1:p1,127.0.0.1:p2,.../atlas
        old = sentinels.kill_master()
        new = sentinels.wait_for_failover(old, timeout=30)
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import redis

#: The master name the sentinels monitor.
MASTER_NAME = "atlas"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str | None:
    """The ``redis-server`` executable (it also runs sentinels), or None."""
    return shutil.which("redis-server")


@dataclass
class _Node:
    """One ``redis-server`` child (data node or sentinel)."""

    name: str
    port: int
    args: list[str]
    log_path: Path
    password: str | None = None
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.process = subprocess.Popen(
            self.args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            socket_connect_timeout=0.5,
            socket_timeout=2,
            decode_responses=True,
        )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _master_addr_port(client: redis.Redis) -> int:
    """The master's port as one sentinel sees it (``SENTINEL GET-MASTER-ADDR-BY-NAME``)."""
    addr = cast(tuple[str, int], client.sentinel_get_master_addr_by_name(MASTER_NAME))
    return int(addr[1])


def _wait(predicate: object, timeout: float, what: str, logs: str = "") -> None:
    """Poll ``predicate()`` every 50 ms until true; AssertionError after ``timeout``."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except redis.RedisError as exc:  # a node still starting or already gone
            last = exc
        time.sleep(0.05)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what} (last error: {last!r})\n{logs}"
    )


@dataclass
class SentinelSet:
    """Master + ``replicas`` replicas + ``sentinels`` sentinels (quorum 2), all loopback.

    Attributes:
        down_after_ms: ``sentinel down-after-milliseconds``: how long the master must be
            unreachable before the sentinels call it down (the failover starts then).
        appendonly: AOF on the data nodes (what production runs; the registry's
            persistence check warns without it).
        password: ``requirepass``/``masterauth`` of the data nodes (and the sentinels'
            ``auth-pass``); the sentinels themselves take no password.
    """

    replicas: int = 2
    sentinels: int = 3
    down_after_ms: int = 1000
    failover_timeout_ms: int = 5000
    appendonly: bool = True
    password: str | None = None
    directory: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix="atlas-sentinel-"))
    )
    data_nodes: list[_Node] = field(default_factory=list)
    sentinel_nodes: list[_Node] = field(default_factory=list)

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 30.0) -> SentinelSet:
        """Start the master, the replicas (synced), then the sentinels (all see them)."""
        exe = redis_server_binary()
        if exe is None:
            raise RuntimeError(
                "redis-server not found on PATH (Debian: apt-get install "
                "redis-server); sentinels run as `redis-server --sentinel`"
            )
        master_port = free_port()
        for i in range(1 + self.replicas):
            port = master_port if i == 0 else free_port()
            node_dir = self.directory / f"data-{port}"
            node_dir.mkdir()
            args = [
                exe,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(node_dir),
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--appendfsync",
                "everysec",
                "--notify-keyspace-events",
                "Ex",
                "--hz",
                "100",
                "--loglevel",
                "notice",
                # A replica promoted by the sentinels must take writes at once.
                "--replica-read-only",
                "yes",
            ]
            if self.password:
                args += ["--requirepass", self.password, "--masterauth", self.password]
            if i:
                args += ["--replicaof", "127.0.0.1", str(master_port)]
            node = _Node(
                "master" if i == 0 else f"replica{i}",
                port,
                args,
                self.directory / f"redis-{port}.log",
                self.password,
            )
            node.start()
            self.data_nodes.append(node)
        for node in self.data_nodes:
            _wait(
                lambda n=node: n.client().ping(), timeout, f"{node.name} to answer PING", node.log()
            )
        master = self.data_nodes[0]
        _wait(
            lambda: int(master.client().info("replication")["connected_slaves"]) == self.replicas,
            timeout,
            "the replicas to connect",
            self.logs(),
        )
        for replica in self.data_nodes[1:]:
            _wait(
                lambda r=replica: r.client().info("replication").get("master_link_status") == "up",
                timeout,
                f"{replica.name} to sync",
                self.logs(),
            )
        for _ in range(self.sentinels):
            port = free_port()
            conf = self.directory / f"sentinel-{port}.conf"
            # Sentinels rewrite their own config file: one file each.
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}\n"
                f"sentinel failover-timeout {MASTER_NAME} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
                + (f"sentinel auth-pass {MASTER_NAME} {self.password}\n" if self.password else "")
            )
            node = _Node(
                f"sentinel{len(self.sentinel_nodes) + 1}",
                port,
                [exe, str(conf), "--sentinel"],
                self.directory / f"sentinel-{port}.log",
            )
            node.start()
            self.sentinel_nodes.append(node)
        # Every sentinel must know the replicas and its peers before a failover can
        # reach quorum and pick a replica.
        for node in self.sentinel_nodes:
            _wait(
                lambda n=node: self._sentinel_ready(n),
                timeout,
                f"{node.name} to discover the replicas and the other sentinels",
                self.logs(),
            )
        return self

    def _sentinel_ready(self, node: _Node) -> bool:
        client = node.client()
        try:
            # redis-py's sentinel replies are typed loosely (a dict here).
            fields = cast(dict[str, Any], client.sentinel_master(MASTER_NAME))
            return (
                int(fields.get("num-slaves", 0)) == self.replicas
                and int(fields.get("num-other-sentinels", 0)) == self.sentinels - 1
            )
        finally:
            client.close()

    def stop(self) -> None:
        """Stop every process and remove the data directory."""
        for node in [*self.sentinel_nodes, *self.data_nodes]:
            node.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> SentinelSet:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ topology
    @property
    def url(self) -> str:
        """``redis+sentinel://[:password@]127.0.0.1:<s1>,127.0.0.1:<s2>,.../atlas/0``."""
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.sentinel_nodes)
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis+sentinel://{auth}{hosts}/{MASTER_NAME}/0"

    def master_port(self) -> int:
        """The master's port according to the first sentinel that answers."""
        for node in self.sentinel_nodes:
            if not node.alive():
                continue
            client = node.client()
            try:
                return _master_addr_port(client)
            except redis.RedisError:
                continue
            finally:
                client.close()
        raise RuntimeError("no sentinel answered")

    def node(self, port: int) -> _Node:
        """The data node listening on ``port``."""
        return next(n for n in self.data_nodes if n.port == port)

    def master_client(self) -> redis.Redis:
        """A plain client on the current master (no sentinel logic, for assertions)."""
        return self.node(self.master_port()).client()

    def wait_replicated(self, timeout_ms: int = 5000) -> int:
        """Block until every write so far reached every replica (``WAIT``); returns how
        many replicas acknowledged."""
        client = self.master_client()
        try:
            return int(client.execute_command("WAIT", self.replicas, timeout_ms))
        finally:
            client.close()

    # ------------------------------------------------------------------ failover
    def kill_master(self) -> int:
        """SIGKILL the current master (no shutdown, no last fsync); returns its port."""
        port = self.master_port()
        node = self.node(port)
        assert node.process is not None
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(5)
        return port

    def wait_for_failover(self, old_port: int, timeout: float = 30.0) -> int:
        """Until every live sentinel names a new master that answers as ``role:master``;
        returns its port."""

        def promoted() -> bool:
            ports = set()
            for node in self.sentinel_nodes:
                client = node.client()
                try:
                    ports.add(_master_addr_port(client))
                finally:
                    client.close()
            if len(ports) != 1 or old_port in ports:
                return False
            client = self.node(ports.pop()).client()
            try:
                return bool(client.info("replication")["role"] == "master")
            finally:
                client.close()

        _wait(promoted, timeout, "the sentinels to promote a replica", self.logs())
        return self.master_port()

    def logs(self) -> str:
        """The tail of every node's log, for failure messages."""
        return "\n".join(
            f"== {n.name} :{n.port}\n{n.log()[-1500:]}"
            for n in [*self.data_nodes, *self.sentinel_nodes]
        )
