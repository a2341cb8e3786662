"""In-memory state of the fake cloud: pods, templates, volumes, endpoints and counters.

Every mutation happens under :attr:`CloudState.lock` (a plain ``threading.RLock`` that is
never held across an ``await``), so the server loop and a test thread reading
``FakeCloud.state()`` see consistent data. Terminated pods are kept (the admin state lists
them) but the provider API no longer shows them, as RunPod drops terminated pods.
"""

from __future__ import annotations

import random
import string
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from atlas_tasks.testing.fakecloud.catalog import DATA_CENTERS, gpu_info

_ID_ALPHABET = string.ascii_lowercase + string.digits


def iso(ts: float) -> str:
    """Epoch seconds → ISO 8601 UTC with milliseconds and ``Z`` (RunPod's format)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{int((ts % 1) * 1000):03d}Z"
    )


@dataclass
class Pod:
    """One fake pod; :meth:`to_v2` renders RunPod REST v2's ``Pod`` schema.

    ``desired_status`` is ``RUNNING``, ``EXITED`` or ``TERMINATED`` (what the user asked
    for); the v2 ``status`` is derived from it and the boot clock (:meth:`v2_status`).
    """

    id: str
    name: str
    image: str
    template_id: str | None
    cloud_type: str
    gpu_type_id: str
    gpu_count: int
    env: dict[str, str]
    ports: list[str]
    data_center_id: str
    created_at: float
    last_started_at: float
    boot_until: float
    public_ip: str
    tcp_mappings: dict[str, int]
    extra: dict[str, Any]
    desired_status: str = "RUNNING"
    last_status_change: str = ""
    calls: Counter[str] = field(default_factory=Counter)
    #: Seconds run before the current start (stops and restarts add up; see billing).
    run_s_before: float = 0.0
    #: Per-GPU ``util`` / ``memoryUtil`` a test pinned (``/_admin/pods/{id}/gpu``); a
    #: moving synthetic load otherwise.
    gpu_util: list[int] | None = None
    gpu_memory_util: list[int] | None = None

    def running_seconds(self, now: float) -> float:
        """Seconds this pod has been running (billed) in total, up to ``now``."""
        if self.desired_status != "RUNNING":
            return self.run_s_before
        return self.run_s_before + max(0.0, now - self.last_started_at)

    def halt(self, status: str, now: float) -> None:
        """Move to ``EXITED`` or ``TERMINATED``, banking the running time so far."""
        if self.desired_status == "RUNNING":
            self.run_s_before += max(0.0, now - self.last_started_at)
        self.desired_status = status

    def billed_usd(self, now: float) -> float:
        """What the pod has cost up to ``now``: its hourly price × its running time."""
        return round(self.cost_per_hr() * self.running_seconds(now) / 3600.0, 6)

    def cost_per_hr(self) -> float:
        """Hourly price of the whole pod (per-GPU price × count) while it runs."""
        gpu = gpu_info(self.gpu_type_id)
        unit = gpu.secure_price if self.cloud_type == "SECURE" else gpu.community_price
        return round(unit * self.gpu_count, 3)

    def booted(self, now: float) -> bool:
        """True once the pod has a public IP and port mappings."""
        return self.desired_status == "RUNNING" and now >= self.boot_until

    def v2_status(self, now: float) -> str:
        """The v2 ``PodStatus``: PROVISIONING then STARTING (each half the boot delay),
        RUNNING once booted; EXITED when stopped; TERMINATED when deleted."""
        if self.desired_status != "RUNNING":
            return self.desired_status
        if self.booted(now):
            return "RUNNING"
        halfway = self.last_started_at + (self.boot_until - self.last_started_at) / 2
        return "PROVISIONING" if now < halfway else "STARTING"

    def to_v2(self, now: float) -> dict[str, Any]:
        """The pod as ``GET /v2/pods/{id}`` returns it (every field the definition
        requires, with its type; ``null`` only where it is nullable)."""
        status = self.v2_status(now)
        running = status == "RUNNING"
        direct = None
        if running and "22" in self.tcp_mappings:
            port = self.tcp_mappings["22"]
            direct = {
                "host": self.public_ip,
                "port": port,
                "username": "root",
                "command": f"ssh root@{self.public_ip} -p {port}",
            }
        user = f"{self.id}-{self.id[:8]}"
        mounts: dict[str, Any] = {}
        if "mounts" in self.extra:
            mounts = dict(self.extra["mounts"])
        return {
            "id": self.id,
            "name": self.name,
            "image": self.image,
            "args": str(self.extra.get("args", "")),
            "disk": int(self.extra.get("disk", 50)),
            "ports": list(self.ports),
            "env": dict(self.env),
            "registry": self.extra.get("registry"),
            "status": status,
            "actions": _ACTIONS[status],
            "mounts": mounts,
            "gpu": {"id": self.gpu_type_id, "count": self.gpu_count},
            "cloud": self.cloud_type,
            "dataCenterId": self.data_center_id,
            "cudaVersion": "12.8",
            "ssh": {
                "proxy": {
                    "host": "ssh.runpod.io",
                    "port": 22,
                    "username": user,
                    "command": f"ssh {user}@ssh.runpod.io",
                },
                "direct": direct,
            },
            "template": None,  # v2: a created pod keeps no link to its template
            # v2: the cost is a number, 0.0 while EXITED or TERMINATED.
            "cost": self.cost_per_hr() if self.desired_status == "RUNNING" else 0.0,
            "locked": False,
            "globalNetworking": {"enabled": False},
            "runtime": self._runtime(now) if running else None,
            "createdAt": iso(self.created_at),
            "startedAt": iso(self.last_started_at) if self.desired_status == "RUNNING" else None,
        }

    def _runtime(self, now: float) -> dict[str, Any]:
        ports: list[dict[str, Any]] = []
        for spec in self.ports:
            number, _, kind = spec.partition("/")
            if kind == "tcp":
                ports.append(
                    {
                        "private": int(number),
                        "public": self.tcp_mappings.get(number),
                        "type": "tcp",
                        "ip": self.public_ip,
                    }
                )
            else:  # http ports are reached through RunPod's proxy, not a public port
                ports.append({"private": int(number), "public": None, "type": kind, "ip": None})
        # A deterministic but moving load, so tests can see per-GPU figures change,
        # unless a test pinned the figures (GPU-idle reaping tests).
        load = int(now) % 60 + 20
        util = self.gpu_util or [min(100, load + i) for i in range(self.gpu_count)]
        memory = self.gpu_memory_util or [min(100, load // 2 + i) for i in range(self.gpu_count)]
        return {
            "uptime": max(0, int(now - self.last_started_at)),
            "gpus": [
                {"util": util[i % len(util)], "memoryUtil": memory[i % len(memory)]}
                for i in range(self.gpu_count)
            ],
            "cpu": {"util": 12},
            "memory": {"util": 35},
            "ports": ports,
        }

    def admin_view(self) -> dict[str, Any]:
        """Compact record for ``/_admin/state``."""
        return {
            "id": self.id,
            "name": self.name,
            "status": self.desired_status,
            "created_at": self.created_at,
            "last_started_at": self.last_started_at,
            "gpu_type_id": self.gpu_type_id,
            "env_keys": sorted(self.env),
            "calls": dict(self.calls),
            "running_s": round(self.running_seconds(time.time()), 3),
            "cost_per_hr": self.cost_per_hr(),
            "gpu_util": self.gpu_util,
        }


class CloudState:
    """All mutable state of one fake cloud (reset as a whole by ``/_admin/reset``)."""

    def __init__(self, seed: int | None = None) -> None:
        self.lock = threading.RLock()
        self._rng = random.Random(seed)
        self.pods: dict[str, Pod] = {}
        self.templates: dict[str, dict[str, Any]] = {}
        self.volumes: dict[str, dict[str, Any]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        #: Semantic totals: creates, deletes (effective), delete_calls, gets, lists, ...
        self.totals: Counter[str] = Counter()
        #: Calls per route template, e.g. "POST /runpod/v2/pods" (faulted calls included).
        self.routes: Counter[str] = Counter()
        #: Per-endpoint runtime counters: status_calls, stream_calls, runs, ...
        self.endpoint_calls: dict[str, Counter[str]] = {}

    def reset(self) -> None:
        """Forget everything."""
        with self.lock:
            self.pods.clear()
            self.templates.clear()
            self.volumes.clear()
            self.endpoints.clear()
            self.totals.clear()
            self.routes.clear()
            self.endpoint_calls.clear()

    # ---- ids ----------------------------------------------------------------------------

    def new_pod_id(self) -> str:
        """14 lowercase alphanumerics, like ``xedezhzb9la3ye``."""
        with self.lock:
            while True:
                pod_id = "".join(self._rng.choice(_ID_ALPHABET) for _ in range(14))
                if pod_id not in self.pods:
                    return pod_id

    def new_short_id(self, length: int = 10) -> str:
        """Ids for templates, volumes and endpoints."""
        with self.lock:
            return "".join(self._rng.choice(_ID_ALPHABET) for _ in range(length))

    @staticmethod
    def new_job_id(sync: bool = False) -> str:
        """``eaebd6e7-…-u1`` for /run, ``sync-…`` for /runsync."""
        base = f"{uuid.uuid4()}-u1"
        return f"sync-{base}" if sync else base

    # ---- pods ---------------------------------------------------------------------------

    def create_pod(self, body: dict[str, Any], *, boot_delay_s: float) -> Pod:
        """Create a pod from a validated v2 ``CreatePodRequest`` body."""
        now = time.time()
        with self.lock:
            gpu = body.get("gpu") or {"id": "NVIDIA GeForce RTX 4090"}
            dcs = body.get("dataCenterIds") or list(DATA_CENTERS)
            ports = list(body.get("ports", []))
            mappings = {
                p.split("/")[0]: self._rng.randint(10000, 60000)
                for p in ports
                if p.endswith("/tcp")
            }
            pod = Pod(
                id=self.new_pod_id(),
                name=body.get("name", "my pod"),
                image=body.get("image", ""),
                template_id=body.get("templateId"),
                cloud_type=body.get("cloud", "SECURE"),
                gpu_type_id=gpu["id"],
                gpu_count=int(gpu.get("count", 1)),
                env=dict(body.get("env", {})),
                ports=ports,
                data_center_id=dcs[0],
                created_at=now,
                last_started_at=now,
                boot_until=now + boot_delay_s,
                public_ip=f"203.0.113.{self._rng.randint(2, 254)}",
                tcp_mappings=mappings,
                extra={k: v for k, v in body.items() if k in _ECHOED},
                last_status_change=f"Rented by User: {iso(now)}",
            )
            self.pods[pod.id] = pod
            pod.calls["creates"] += 1
            self.totals["creates"] += 1
            return pod

    def live_pod(self, pod_id: str) -> Pod | None:
        """The pod unless it is unknown or terminated (what the API can still see)."""
        with self.lock:
            pod = self.pods.get(pod_id)
            if pod is None or pod.desired_status == "TERMINATED":
                return None
            return pod

    def count_pod_call(self, pod_id: str, kind: str) -> None:
        """Count a call against a pod id (known or not) and in the totals."""
        with self.lock:
            self.totals[kind] += 1
            pod = self.pods.get(pod_id)
            if pod is not None:
                pod.calls[kind] += 1

    def count_endpoint_call(self, endpoint_id: str, kind: str) -> None:
        """Count one runtime call (``runs``, ``status_calls``...) against an endpoint id."""
        with self.lock:
            self.endpoint_calls.setdefault(endpoint_id, Counter())[kind] += 1


#: CreatePodRequest fields kept on the pod and echoed back.
_ECHOED = frozenset({"args", "disk", "mounts", "registry"})

#: v2 ``actions`` valid in each status (the ``podAction`` operation's description).
_ACTIONS: dict[str, list[str]] = {
    "PROVISIONING": ["stop", "terminate"],
    "STARTING": ["stop", "terminate"],
    "RUNNING": ["stop", "restart", "terminate"],
    "EXITED": ["start", "terminate"],
    "ERROR": ["start", "terminate"],
    "TERMINATED": [],
}
