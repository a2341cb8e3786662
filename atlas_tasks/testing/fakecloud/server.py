"""Running the fake cloud: :class:`FakeCloud` (background thread, for tests) and
:func:`serve` (blocking, for ``atlas-tasks fakecloud --port N``).

``FakeCloud`` runs uvicorn in a daemon thread with its own event loop, on a socket it binds
itself (so ``port=0`` works and the port is known before the loop starts), and returns from
``start()`` only once ``/_admin/health`` answers. Stopping sets ``should_exit``, the clean
uvicorn shutdown.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from types import TracebackType
from typing import Any

import httpx
import uvicorn

from atlas_tasks.testing.fakecloud.admin import age, reset, set_gpu_util, snapshot
from atlas_tasks.testing.fakecloud.app import create_app
from atlas_tasks.testing.fakecloud.common import FakeCloudContext
from atlas_tasks.testing.fakecloud.config import (
    DEFAULT_API_KEY,
    FakeCloudConfig,
    ScriptRule,
    split_options,
)
from atlas_tasks.testing.fakecloud.fly_machines import DEFAULT_APP as FLY_APP
from atlas_tasks.testing.fakecloud.fly_machines import fly_base_url, fly_env
from atlas_tasks.testing.fakecloud.lambda_labs import DEFAULT_SSH_KEY as LAMBDA_SSH_KEY
from atlas_tasks.testing.fakecloud.providers import age_pod


def _uvicorn_config(
    app: Any, host: str, port: int, log_level: str, *, own_logging: bool
) -> uvicorn.Config:
    extra: dict[str, Any] = {} if own_logging else {"log_config": None}
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        **extra,
        # Plain asyncio + h11: always installed, and plenty for thousands of requests/s here.
        loop="asyncio",
        http="h11",
        ws="none",
        lifespan="off",
        backlog=4096,
        timeout_graceful_shutdown=2,
    )


class FakeCloud:
    """A fake cloud on loopback for the duration of a ``with`` block.

    Example::

        with FakeCloud(latency_s=0.05, boot_delay_s=0.2) as cloud:
            settings = AtlasSettings(runpod_base_url=cloud.runpod_rest_url, ...)
            cloud.fail_next("POST /pods", status=500, after_create=True)
            ...
            assert cloud.state()["totals"]["live_pods"] == 0

    Args:
        host: interface to bind (loopback by default).
        port: TCP port; 0 picks a free one.
        config: a ready :class:`FakeCloudConfig`; or pass its fields (and fault fields such
            as ``latency_s``, ``error_rate``, ``seed``) as keyword ``options``.
        log_level: uvicorn log level.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        config: FakeCloudConfig | None = None,
        log_level: str = "warning",
        **options: Any,
    ) -> None:
        if config is not None and options:
            raise TypeError("pass either config= or keyword options, not both")
        self.config = config or split_options(**options)
        self.app = create_app(self.config)
        self.ctx: FakeCloudContext = self.app.state.fakecloud
        self.host = host
        self._requested_port = port
        self._log_level = log_level
        self._sock: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = port

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> FakeCloud:
        """Bind, start serving in a thread and wait until the server answers."""
        if self._thread is not None:
            return self
        # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose
        # proto says TCP, and without it Nagle + delayed ACK add ~40 ms to every response.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((self.host, self._requested_port))
        self._sock = sock
        self.port = int(sock.getsockname()[1])
        # log_config=None: inside a test process, leave the host's logging setup alone.
        config = _uvicorn_config(self.app, self.host, self.port, self._log_level, own_logging=False)
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=lambda: asyncio.run(server.serve(sockets=[sock])),
            name=f"fakecloud:{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._thread.is_alive():
                raise RuntimeError(f"fake cloud failed to start on {self.host}:{self.port}")
            if server.started and self._answers():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"fake cloud did not answer within {timeout}s on port {self.port}")

    def _answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/_admin/health", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, timeout: float = 5.0) -> None:
        """Shut the server down (idempotent)."""
        server, thread = self._server, self._thread
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive() and server is not None:
                server.force_exit = True
                thread.join(timeout)
        if self._sock is not None:
            self._sock.close()
        self._server, self._thread, self._sock = None, None, None

    def __enter__(self) -> FakeCloud:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- addresses ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{self.host}:{self.port}"

    @property
    def runpod_rest_url(self) -> str:
        """Base for ``ATLAS_RUNPOD_BASE_URL`` (stands in for ``https://api.runpod.io``; the
        REST v2 paths ``/v2/pods``... follow it)."""
        return f"{self.url}/runpod"

    @property
    def runpod_runtime_url(self) -> str:
        """Base for ``ATLAS_RUNPOD_RUNTIME_URL`` (stands in for ``https://api.runpod.ai/v2``)."""
        return f"{self.url}/runpod/v2"

    @property
    def lambda_labs_url(self) -> str:
        """``ATLAS_LAMBDA_LABS_BASE_URL`` (stands in for ``https://cloud.lambda.ai/api/v1``)."""
        return f"{self.url}/lambda/api/v1"

    @property
    def vast_url(self) -> str:
        """``ATLAS_VAST_BASE_URL`` (stands in for ``https://console.vast.ai/api/v0``)."""
        return f"{self.url}/vast/api/v0"

    @property
    def api_key(self) -> str:
        """A key the fake accepts."""
        return self.config.api_key

    def env(self) -> dict[str, str]:
        """``ATLAS_*`` variables pointing RunPod at this fake (for worker subprocesses)."""
        return {
            "ATLAS_RUNPOD_BASE_URL": self.runpod_rest_url,
            "ATLAS_RUNPOD_RUNTIME_URL": self.runpod_runtime_url,
            "ATLAS_RUNPOD_API_KEY": self.api_key,
            "ATLAS_LAMBDA_LABS_BASE_URL": self.lambda_labs_url,
            "ATLAS_LAMBDA_LABS_API_KEY": self.api_key,
            "ATLAS_LAMBDA_LABS_SSH_KEY_NAME": LAMBDA_SSH_KEY,
            "ATLAS_VAST_BASE_URL": self.vast_url,
            "ATLAS_VAST_API_KEY": self.api_key,
            **fly_env(self.url, self.api_key),
            "ATLAS_FLY_API_URL": f"{self.url}/fly",
        }

    @property
    def fly_url(self) -> str:
        """Base for ``ATLAS_FLY_BASE_URL`` (stands in for ``https://api.machines.dev``)."""
        return fly_base_url(self.url)

    # ---- in-process controls (same as the /_admin endpoints) -----------------------------

    def state(self) -> dict[str, Any]:
        """What ``GET /_admin/state`` returns."""
        return snapshot(self.ctx)

    def reset(self) -> None:
        """``POST /_admin/reset``: no pods, no jobs, zero counters, start-up faults."""
        reset(self.ctx)

    def set_faults(self, **changes: Any) -> None:
        """Merge fault settings (``latency_s=``, ``error_rate=``, ``script=[...]``...)."""
        self.ctx.faults.update(changes)

    def clear_faults(self) -> None:
        """No faults at all."""
        self.ctx.faults.clear()

    def fail_next(
        self,
        match: str,
        status: int | None = 500,
        *,
        after_create: bool = False,
        times: int | None = 1,
        **rule: Any,
    ) -> None:
        """Script a deterministic fault, e.g. ``fail_next("POST /pods", 500, after_create=True)``.

        See :class:`~atlas_tasks.testing.fakecloud.config.ScriptRule` for ``match`` and the
        other fields (``retry_after``, ``latency_s``, ``body``, ``api``).
        """
        self.ctx.faults.add_rule(
            ScriptRule(match=match, status=status, after_create=after_create, times=times, **rule)
        )

    def release(self, name: str) -> None:
        """Open the hold gate ``name`` (``POST /_admin/holds/{name}/release``)."""
        self.ctx.faults.release(name)

    def wait_held(self, name: str, count: int = 1, timeout: float = 10.0) -> None:
        """Block until ``count`` calls wait at gate ``name``.

        Raises:
            TimeoutError: fewer were waiting after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ctx.faults.holds_snapshot().get(name, {}).get("waiting", 0) >= count:
                return
            time.sleep(0.005)
        raise TimeoutError(f"no {count} call(s) held at {name!r} after {timeout}s")

    def creates_by_name(self) -> dict[str, int]:
        """Successful creates per requested name (see ``/_admin/state``)."""
        return self.ctx.faults.creates_snapshot()

    def age_pod(self, pod_id: str, seconds: float) -> None:
        """Backdate a pod's creation by ``seconds``.

        Raises:
            KeyError: unknown pod id.
        """
        if age_pod(self.ctx, pod_id, seconds) is None:
            raise KeyError(pod_id)

    def age(self, provider: str, resource_id: str, seconds: float) -> None:
        """Backdate a resource of any fake provider (``runpod`` pod, ``lambda_labs`` or
        ``vast`` instance, ``fly`` machine) by ``seconds``.

        Raises:
            KeyError: unknown provider or resource id.
        """
        if not age(self.ctx, provider, resource_id, seconds):
            raise KeyError(resource_id)

    def set_gpu_util(
        self, pod_id: str, util: float | list[float] | None, memory_util: Any = None
    ) -> None:
        """Pin a pod's RunPod v2 ``runtime.gpus`` figures (``/_admin/pods/{id}/gpu``):
        one number for every GPU or a list per GPU; ``None`` unpins.

        Raises:
            KeyError: unknown pod id.
        """
        if set_gpu_util(self.ctx, pod_id, util, memory_util) is None:
            raise KeyError(pod_id)

    def set_rate_limit(self, per_minute: int | None) -> None:
        """Enforce ``per_minute`` requests per API key and provider API (``None``: none)."""
        self.ctx.limiter.set_quota(per_minute)

    def live_pods(self) -> list[dict[str, Any]]:
        """Admin view of every pod not terminated."""
        return list(self.state()["pods"])


def banner(base: str, config: FakeCloudConfig) -> str:
    """The start-up banner: every provider's base URL (what each ``ATLAS_*_BASE_URL``
    should be set to), the Fly app and Lambda SSH key the fake expects, and the API key."""
    key_note = DEFAULT_API_KEY if config.api_keys == {DEFAULT_API_KEY} else "<configured>"
    return (
        f"fake cloud on {base}   (base URL to set, then the setting)\n"
        f"  RunPod REST v2  {base}/runpod   ATLAS_RUNPOD_BASE_URL (paths /v2/pods, ...)\n"
        f"  RunPod runtime  {base}/runpod/v2   ATLAS_RUNPOD_RUNTIME_URL\n"
        f"  Lambda Labs     {base}/lambda/api/v1   ATLAS_LAMBDA_LABS_BASE_URL\n"
        f"  Vast.ai         {base}/vast/api/v0   ATLAS_VAST_BASE_URL\n"
        f"  Fly Machines    {fly_base_url(base)}   ATLAS_FLY_BASE_URL "
        f"(app {FLY_APP}: ATLAS_FLY_APP)\n"
        f"  Fly logs        {base}/fly   ATLAS_FLY_API_URL (logs at /api/v1/apps/<app>/logs)\n"
        f"  admin           {base}/_admin/state\n"
        f"  api key         {key_note}   (e.g. RUNPOD_API_KEY)\n"
        f"  Lambda SSH key  {LAMBDA_SSH_KEY}   ATLAS_LAMBDA_LABS_SSH_KEY_NAME"
    )


def serve(
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    log_level: str = "info",
    config: FakeCloudConfig | None = None,
    **options: Any,
) -> None:
    """Run the fake cloud in the foreground until interrupted (Ctrl-C / SIGTERM).

    Args:
        host: interface to bind.
        port: TCP port.
        log_level: uvicorn log level.
        config: a ready config, or its fields and fault fields as ``options`` (e.g.
            ``api_keys=["k1"]``, ``latency_s=0.5``, ``error_rate=0.1``, ``seed=1``).

    Raises:
        TypeError: an unknown option name.
        pydantic.ValidationError: an option with a bad value.
    """
    if config is not None and options:
        raise TypeError("pass either config= or keyword options, not both")
    config = config or split_options(**options)
    app = create_app(config)
    print(banner(f"http://{host}:{port}", config), flush=True)  # noqa: T201 - the CLI's banner
    uvicorn.Server(_uvicorn_config(app, host, port, log_level, own_logging=True)).run()
