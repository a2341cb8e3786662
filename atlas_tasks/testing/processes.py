"""Start real Celery worker / beat / Flower processes (tests, the demo, benchmarks, chaos).

Each process runs ``python -m celery -A atlas_tasks.celery_app ...`` with the given
environment, logs to a file, and is stopped with its whole process group, so a test that
fails half-way leaves nothing running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


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
        self.process = subprocess.Popen(self.args, env=self.env, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
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
        raise RuntimeError(f"{self.name}: no {what} after {timeout}s "
                           f"(alive={self.alive()}). Log tail:\n{self.log()[-3000:]}")

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


def _celery(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "atlas_tasks.celery_app", *args]


def celery_worker(env: dict[str, str], *, pool: str = "threads", concurrency: int = 16,
                  queues: str = "compute,jobs,fly,maintenance", hostname: str = "w1@%h",
                  loglevel: str = "INFO") -> ManagedProcess:
    """A worker with task events on (``-E``), not started yet."""
    return ManagedProcess("worker", _celery(
        "worker", "-E", "-P", pool, "-c", str(concurrency), "-Q", queues, "-n", hostname,
        "--loglevel", loglevel, "--without-mingle", "--without-gossip"), env)


def celery_beat(env: dict[str, str], *, loglevel: str = "INFO") -> ManagedProcess:
    """Beat with the redbeat scheduler (schedule + single-beat lock in Redis)."""
    return ManagedProcess("beat", _celery("beat", "--loglevel", loglevel, "-s",
                                          os.devnull), env)


def flower(env: dict[str, str], port: int) -> ManagedProcess:
    """Flower on loopback ``port``."""
    return ManagedProcess("flower", _celery("flower", f"--port={port}", "--address=127.0.0.1"),
                          env)


def worker_ready(proc: ManagedProcess, timeout: float = 60.0) -> ManagedProcess:
    """Start ``proc`` and wait for Celery's ``ready.`` line."""
    if not proc.alive():
        proc.start()
    proc.wait_for(" ready.", timeout)
    return proc
