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
    """One fake pod; :meth:`to_v1` renders the REST v1 ``Pod`` schema."""

    id: str
    name: str
    image: str
    template_id: str | None
    cloud_type: str
    compute_type: str
    gpu_type_id: str
    gpu_count: int
    env: dict[str, str]
    ports: list[str]
    data_center_id: str
    interruptible: bool
    created_at: float
    last_started_at: float
    boot_until: float
    public_ip: str
    tcp_mappings: dict[str, int]
    extra: dict[str, Any]
    desired_status: str = "RUNNING"
    last_status_change: str = ""
    calls: Counter[str] = field(default_factory=Counter)

    def cost_per_hr(self) -> float:
        """Hourly price of the whole pod (per-GPU price × count)."""
        gpu = gpu_info(self.gpu_type_id)
        secure = self.cloud_type == "SECURE"
        if self.interruptible:
            unit = gpu.secure_spot_price if secure else gpu.community_spot_price
        else:
            unit = gpu.secure_price if secure else gpu.community_price
        return round(unit * self.gpu_count, 3)

    def booted(self, now: float) -> bool:
        """True once the pod has a public IP and port mappings."""
        return self.desired_status == "RUNNING" and now >= self.boot_until

    def to_v1(self, now: float) -> dict[str, Any]:
        """The pod as ``GET /pods/{id}`` returns it (v1 spec field names and types)."""
        gpu = gpu_info(self.gpu_type_id)
        cost = self.cost_per_hr()
        booted = self.booted(now)
        secure = self.cloud_type == "SECURE"
        body: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "image": self.image,
            "desiredStatus": self.desired_status,
            # The spec's example has costPerHr as a string and adjustedCostPerHr as a number.
            "costPerHr": f"{cost:.2f}",
            "adjustedCostPerHr": cost,
            "publicIp": self.public_ip if booted else "",
            "portMappings": dict(self.tcp_mappings) if booted else None,
            "ports": list(self.ports),
            "env": dict(self.env),
            "interruptible": self.interruptible,
            "locked": bool(self.extra.get("locked", False)),
            "lastStartedAt": iso(self.last_started_at),
            "lastStatusChange": self.last_status_change,
            "machineId": f"m{self.id[:10]}",
            "machine": {
                "gpuTypeId": self.gpu_type_id,
                "gpuDisplayName": gpu.display_name,
                "dataCenterId": self.data_center_id,
                "location": self.data_center_id.split("-")[0],
                "secureCloud": secure,
                "supportPublicIp": True,
                "costPerHr": cost,
                "currentPricePerGpu": round(cost / self.gpu_count, 3),
                "maxDownloadSpeedMbps": 2500,
            },
            "gpu": {
                "id": self.gpu_type_id,
                "count": self.gpu_count,
                "displayName": gpu.display_name,
                "securePrice": gpu.secure_price,
                "communityPrice": gpu.community_price,
                "secureSpotPrice": gpu.secure_spot_price,
                "communitySpotPrice": gpu.community_spot_price,
            },
            "memoryInGb": 62 * self.gpu_count,
            "vcpuCount": int(self.extra.get("vcpuCount", 8 * self.gpu_count)),
            "containerDiskInGb": int(self.extra.get("containerDiskInGb", 50)),
            "volumeInGb": int(self.extra.get("volumeInGb", 20)),
            "volumeMountPath": self.extra.get("volumeMountPath", "/workspace"),
            "templateId": self.template_id,
            "networkVolumeId": self.extra.get("networkVolumeId"),
            "dockerEntrypoint": list(self.extra.get("dockerEntrypoint", [])),
            "dockerStartCmd": list(self.extra.get("dockerStartCmd", [])),
            "consumerUserId": "user_fakecloud",
            "volumeEncrypted": False,
        }
        if self.compute_type == "CPU":
            body["gpu"] = None
        return body

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
        #: Calls per route template, e.g. "POST /runpod/v1/pods" (faulted calls included).
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
        """Create a RUNNING pod from a validated PodCreateInput body."""
        now = time.time()
        with self.lock:
            gpu_ids = body.get("gpuTypeIds") or ["NVIDIA GeForce RTX 4090"]
            dcs = body.get("dataCenterIds") or list(DATA_CENTERS)
            ports = list(body.get("ports", []))
            mappings = {
                p.split("/")[0]: self._rng.randint(10000, 60000)
                for p in ports if p.endswith("/tcp")
            }
            pod = Pod(
                id=self.new_pod_id(),
                name=body.get("name", "my pod"),
                image=body.get("imageName", ""),
                template_id=body.get("templateId"),
                cloud_type=body.get("cloudType", "SECURE"),
                compute_type=body.get("computeType", "GPU"),
                gpu_type_id=gpu_ids[0],
                gpu_count=int(body.get("gpuCount", 1)),
                env=dict(body.get("env", {})),
                ports=ports,
                data_center_id=dcs[0],
                interruptible=bool(body.get("interruptible", False)),
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


#: PodCreateInput fields kept on the pod and echoed back.
_ECHOED = frozenset({
    "containerDiskInGb", "volumeInGb", "volumeMountPath", "networkVolumeId", "vcpuCount",
    "dockerEntrypoint", "dockerStartCmd", "locked", "globalNetworking", "supportPublicIp",
    "countryCodes", "allowedCudaVersions",
})
