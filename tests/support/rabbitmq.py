"""A private RabbitMQ node for tests: Debian's ``rabbitmq-server`` on free loopback ports.

Nothing is shared with a system RabbitMQ that may run on the machine: the node has its
own name, AMQP port, Erlang distribution port and its own ``epmd`` (started here on a
free port, ``ERL_EPMD_PORT``), its database and logs in a temporary directory, its own
Erlang cookie (``HOME``) and no plugins (no management listener on 15672)::

    with RabbitMQServer() as rabbit:
        rabbit.url  # amqp://guest:guest@127.0.0.1:<port>//
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from kombu.connection import Connection

#: Where Debian installs the server script that runs as the calling user (the
#: ``/usr/sbin/rabbitmq-server`` wrapper switches to the ``rabbitmq`` user instead).
_SCRIPT_DIRS = ("/usr/lib/rabbitmq/bin", "/usr/local/lib/rabbitmq/bin")


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rabbitmq_server_binary() -> str | None:
    """The ``rabbitmq-server`` start script, or None when RabbitMQ is not installed."""
    for directory in _SCRIPT_DIRS:
        path = Path(directory) / "rabbitmq-server"
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return shutil.which("rabbitmq-server")


def _stop(process: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> None:
    """SIGTERM the process group (Erlang shuts down cleanly on it), SIGKILL if stuck."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


@dataclass
class RabbitMQServer:
    """One RabbitMQ node (and its private ``epmd``) as child processes."""

    port: int = field(default_factory=free_port)
    directory: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix="atlas-rabbitmq-"))
    )
    process: subprocess.Popen[bytes] | None = None
    epmd: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``amqp://guest:guest@127.0.0.1:<port>//`` (guest may log in from loopback)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @property
    def log_path(self) -> Path:
        """The node's log file."""
        return self.directory / "rabbit.log"

    def log(self) -> str:
        """The tail of the node's log and console output, for failure messages."""
        parts = []
        for path in (self.directory / "console.log", self.log_path):
            try:
                parts.append(path.read_text(errors="replace")[-3000:])
            except FileNotFoundError:
                pass
        return "\n".join(parts)

    def start(self, timeout: float = 90.0) -> RabbitMQServer:
        """Start epmd and the node; return once an AMQP connection succeeds."""
        script = rabbitmq_server_binary()
        epmd_exe = shutil.which("epmd")
        if script is None or epmd_exe is None:
            raise RuntimeError(
                "rabbitmq-server not installed (Debian: apt-get install rabbitmq-server)"
            )
        epmd_port = free_port()
        (self.directory / "enabled_plugins").write_text("[].\n")
        env = {
            **os.environ,
            # The Erlang cookie is written to and read from $HOME.
            "HOME": str(self.directory),
            "ERL_EPMD_PORT": str(epmd_port),
            "RABBITMQ_NODENAME": f"atlas-test-{self.port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(self.directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.directory / "log"),
            "RABBITMQ_LOGS": str(self.log_path),
            "RABBITMQ_PID_FILE": str(self.directory / "rabbit.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.directory / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.directory / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.directory / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.directory / "rabbitmq-env.conf"),
        }
        # Our own epmd in the foreground (no -daemon), so stopping it is ours to do.
        self.epmd = subprocess.Popen(
            [epmd_exe, "-port", str(epmd_port), "-address", "127.0.0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        console = open(self.directory / "console.log", "ab")  # noqa: SIM115 - child's
        self.process = subprocess.Popen(
            [script],
            env=env,
            cwd=self.directory,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        console.close()
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"rabbitmq-server exited ({self.process.returncode}):\n{self.log()}"
                )
            try:
                with Connection(self.url, connect_timeout=1) as conn:
                    conn.connect()
                return self
            except Exception as exc:  # refused until the listener is up
                last = exc
            time.sleep(0.25)
        raise RuntimeError(
            f"rabbitmq-server did not accept AMQP within {timeout}s ({last!r}):\n{self.log()}"
        )

    def stop(self) -> None:
        """Stop the node, then its epmd; remove the directory."""
        _stop(self.process)
        _stop(self.epmd, timeout=5)
        self.process = self.epmd = None
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RabbitMQServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
