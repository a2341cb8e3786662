"""``RunPodProvider``: the facade over RunPod pods, serverless jobs and the GPU catalog.

Each method is one resource call delegated to :mod:`.pods`, :mod:`.serverless` or
:mod:`.extras`; translation lives in :mod:`.translate`, HTTP (pooling,
retries, hooks) in :mod:`atlas_tasks.providers.http`.

Example::

    from atlas_tasks.providers import get_provider
    from atlas_tasks.specs import build_compute_request

    runpod = get_provider("runpod", api_key="...")
    pod = runpod.spawn_compute(build_compute_request(
        gpu="h100", image="vllm/vllm-openai", ports=[(8000, "http")], name="atlas-demo"))
    pod.ports[0].url   # https://<pod id>-8000.proxy.runpod.net
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

from atlas_tasks.providers.base import ProviderContext
from atlas_tasks.providers.common import HttpProvider
from atlas_tasks.providers.runpod import extras, pods, serverless
from atlas_tasks.providers.runpod.client import RunPodClients
from atlas_tasks.specs import (
    Capability,
    Compute,
    ComputeRequest,
    GpuType,
    Job,
    JobRequest,
    JobStatus,
)


class RunPodProvider(HttpProvider):
    """RunPod (``provider="runpod"``): REST v2 pods and catalog, serverless runtime.

    RunPod REST v2 has no spot (interruptible) pods, so ``spot`` is not among the
    capabilities and ``spot=True`` is a validation error.

    Args:
        context: API key and base URLs (see :mod:`.client` for the override order).

    Attributes:
        sleep: every backoff/poll sleep goes through it; replace it in tests.
        clock: monotonic clock used for runsync deadlines.
        rand: jitter source in [0, 1) for retry backoff and job polling.
    """

    name: ClassVar[str] = "runpod"
    CAPABILITIES: ClassVar[frozenset[Capability]] = frozenset(
        {
            Capability.SERVERLESS,
            Capability.NETWORK_VOLUMES,
            Capability.HTTP_PROXY,
            Capability.RAW_TCP,
            Capability.SYMMETRIC_PORTS,
            Capability.WEBHOOKS,
            Capability.GLOBAL_NETWORKING,
            Capability.JOB_STREAM_READS,
            Capability.GPU_UTILIZATION,
        }
    )

    def __init__(self, context: ProviderContext | None = None) -> None:
        super().__init__(context)
        self.clock: Callable[[], float] = time.monotonic
        self.rand: Callable[[], float] = random.random
        # Late-bound: replacing provider.sleep/rand later (tests) still applies.
        self.clients = RunPodClients(self.context, self.late_sleep, lambda: self.rand())

    def __repr__(self) -> str:
        return f"RunPodProvider(base_url={self.clients.base_url('management')!r})"

    def close(self) -> None:
        """Close the pooled HTTP clients."""
        self.clients.close()

    # ------------------------------------------------------------------ pods
    def create_compute(self, request: ComputeRequest) -> Compute:
        """``POST /v2/pods``, duplicate-safe (see :func:`.pods.create`)."""
        api = self.clients.management
        return pods.create(
            api, request, find_by_name=self.find_compute_by_name, max_retries=api.max_retries
        )

    def get_compute(self, compute_id: str) -> Compute:
        """``GET /v2/pods/{id}``; ``NotFoundError`` when unknown."""
        return pods.get(self.clients.management, compute_id)

    def list_all_compute(self, *, region: str | None = None) -> list[Compute]:
        """``GET /v2/pods``: the pods of the account (v2 takes no filters)."""
        return pods.list_pods(self.clients.management)

    def find_compute_by_name(self, name: str) -> Compute | None:
        """The not-terminated pod with exactly this name (from ``GET /v2/pods``), or None."""
        return pods.find_by_name(self.clients.management, name)

    def stop(self, compute_id: str) -> None:
        """``POST /v2/pods/{id}/action`` ``{"action": "stop"}``."""
        pods.stop(self.clients.management, compute_id)

    def start(self, compute_id: str) -> None:
        """``POST /v2/pods/{id}/action`` ``{"action": "start"}``."""
        pods.start(self.clients.management, compute_id)

    def terminate(self, compute_id: str) -> None:
        """``DELETE /v2/pods/{id}``; ``NotFoundError`` on 404."""
        pods.terminate(self.clients.management, compute_id)

    # ------------------------------------------------------------------ serverless
    def run_job(self, request: JobRequest) -> Job:
        """``/run`` (async) or ``/runsync`` bounded by ``request.timeout_ms`` (sync)."""
        api = self.clients.runtime
        if request.mode == "sync":
            return serverless.run_sync(api, request, clock=self.clock, rand=self.rand)
        return serverless.run(api, request)

    def get_job(self, job_id: str, *, endpoint: str) -> Job:
        """``GET /status/{id}``."""
        return serverless.status(self.clients.runtime, endpoint, job_id)

    def cancel_job(self, job_id: str, *, endpoint: str) -> None:
        """``POST /cancel/{id}``."""
        serverless.cancel(self.clients.runtime, endpoint, job_id)

    def stream_job(self, job_id: str, *, endpoint: str) -> Iterator[Any]:
        """Chunk outputs from ``/stream/{id}`` until the job ends (unwrapped values)."""
        # Validate now rather than at the first next(): errors belong to the call site.
        serverless.job_path(endpoint, "stream", job_id)
        return serverless.stream(self.clients.runtime, endpoint, job_id, rand=self.rand)

    def read_job_stream(self, job_id: str, *, endpoint: str) -> tuple[JobStatus | None, list[Any]]:
        """One ``GET /stream/{id}`` (chunks are handed out once)."""
        return serverless.read_stream(self.clients.runtime, endpoint, job_id)

    def endpoint_health(self, endpoint: str) -> dict[str, Any]:
        """``GET /health`` of a serverless endpoint (job and worker counts)."""
        return serverless.health(self.clients.runtime, endpoint)

    # ------------------------------------------------------------------ catalog
    def list_gpu_types(self) -> list[GpuType]:
        """``GET /v2/catalog/gpus``: per-GPU prices (secure/community) and pod stock."""
        return extras.list_gpu_types(self.clients.management)

    # ------------------------------------------------------------------ RunPod-only extras
    def list_templates(self, **params: Any) -> list[dict[str, Any]]:
        """``GET /v2/templates``: the account's templates."""
        return extras.list_items(self.clients.management, "template", params or None)

    def get_template(self, template_id: str) -> dict[str, Any]:
        """``GET /v2/templates/{id}``."""
        return extras.get_item(self.clients.management, "template", template_id)

    def create_template(self, name: str, image: str, **fields: Any) -> dict[str, Any]:
        """``POST /v2/templates`` with the required ``name``/``image`` plus any other
        ``CreateTemplateRequest`` field (``env``, ``ports``, ``disk``, ``serverless``...)."""
        return extras.create_item(
            self.clients.management, "template", {**fields, "name": name, "image": image}
        )

    def delete_template(self, template_id: str) -> None:
        """``DELETE /v2/templates/{id}``."""
        extras.delete_item(self.clients.management, "template", template_id)

    def list_network_volumes(self) -> list[dict[str, Any]]:
        """``GET /v2/network-volumes``: ``[{id, name, size, dataCenter, type}]``."""
        return extras.list_items(self.clients.management, "network_volume")

    def get_network_volume(self, volume_id: str) -> dict[str, Any]:
        """``GET /v2/network-volumes/{id}``."""
        return extras.get_item(self.clients.management, "network_volume", volume_id)

    def create_network_volume(
        self, name: str, size_gb: int, data_center_id: str, **fields: Any
    ) -> dict[str, Any]:
        """``POST /v2/network-volumes`` (``size`` in GB, 10-4096; ``type`` optional)."""
        return extras.create_item(
            self.clients.management,
            "network_volume",
            {**fields, "name": name, "size": size_gb, "dataCenter": data_center_id},
        )

    def delete_network_volume(self, volume_id: str) -> None:
        """``DELETE /v2/network-volumes/{id}``."""
        extras.delete_item(self.clients.management, "network_volume", volume_id)

    def list_endpoints(self, **params: Any) -> list[dict[str, Any]]:
        """``GET /v2/serverless``: the account's serverless endpoints."""
        return extras.list_items(self.clients.management, "endpoint", params or None)

    def get_endpoint(self, endpoint_id: str) -> dict[str, Any]:
        """``GET /v2/serverless/{id}``."""
        return extras.get_item(self.clients.management, "endpoint", endpoint_id)

    def create_endpoint(
        self, name: str, *, template_id: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        """``POST /v2/serverless``: a queue endpoint (``type="QUEUE"``, scaling on a 4 s
        queue delay unless ``scaling`` is given) from ``template_id`` or ``image``, plus any
        other ``CreateEndpointRequest`` field (``gpu: {"pools": [...]}``, ``workers``...)."""
        body: dict[str, Any] = {
            "type": "QUEUE",
            "scaling": {"type": "QUEUE_DELAY", "queueDelay": 4},
            **fields,
            "name": name,
            "templateId": template_id,
        }
        return extras.create_item(self.clients.management, "endpoint", body)

    def delete_endpoint(self, endpoint_id: str) -> None:
        """``DELETE /v2/serverless/{id}``."""
        extras.delete_item(self.clients.management, "endpoint", endpoint_id)

    def pod_billing(self, pod_id: str | None = None, **params: Any) -> dict[str, Any]:
        """``GET /v2/billing/pods``: spend per pod and time bucket (``records``) with
        ``metadata.totals``; ``params`` are the query (``lastN``, ``bucketSize``,
        ``startTime``, ``endTime``)."""
        return extras.pod_billing(self.clients.management, {**params, "podId": pod_id})


__all__ = ["RunPodProvider"]
