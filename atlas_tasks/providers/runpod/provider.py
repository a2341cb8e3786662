"""``RunPodProvider``: the facade over RunPod pods, serverless jobs and the GPU catalog.

Each method is one resource call delegated to :mod:`.pods`, :mod:`.serverless`,
:mod:`.graphql` or :mod:`.extras`; translation lives in :mod:`.translate`, HTTP (pooling,
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

from atlas_tasks.providers.base import Provider, ProviderContext, status_filter
from atlas_tasks.providers.runpod import extras, graphql, pods, serverless
from atlas_tasks.providers.runpod.client import RunPodClients
from atlas_tasks.specs import (
    Capability,
    Compute,
    ComputeRequest,
    ComputeStatus,
    GpuType,
    Job,
    JobRequest,
    canonical_gpu,
)


class RunPodProvider(Provider):
    """RunPod (``provider="runpod"``): REST v1 pods, serverless runtime, GraphQL catalog.

    Args:
        context: API key and base URLs (see :mod:`.client` for the override order).

    Attributes:
        sleep: every backoff/poll sleep goes through it; replace it in tests.
        clock: monotonic clock used for runsync deadlines.
        rand: jitter source in [0, 1) for retry backoff and job polling.
    """

    name: ClassVar[str] = "runpod"
    CAPABILITIES: ClassVar[frozenset[Capability]] = frozenset({
        Capability.SPOT,
        Capability.SERVERLESS,
        Capability.NETWORK_VOLUMES,
        Capability.HTTP_PROXY,
        Capability.RAW_TCP,
        Capability.SYMMETRIC_PORTS,
        Capability.WEBHOOKS,
        Capability.GLOBAL_NETWORKING,
    })

    def __init__(self, context: ProviderContext | None = None) -> None:
        super().__init__(context)
        self.sleep: Callable[[float], None] = time.sleep
        self.clock: Callable[[], float] = time.monotonic
        self.rand: Callable[[], float] = random.random
        # Late-bound lambdas: replacing provider.sleep/rand later (tests) still applies.
        self.clients = RunPodClients(self.context, lambda seconds: self.sleep(seconds),
                                     lambda: self.rand())

    def __repr__(self) -> str:
        return f"RunPodProvider(base_url={self.clients.base_url('management')!r})"

    def close(self) -> None:
        """Close the pooled HTTP clients."""
        self.clients.close()

    # ------------------------------------------------------------------ pods
    def create_compute(self, request: ComputeRequest) -> Compute:
        """``POST /pods``, duplicate-safe (see :func:`.pods.create`)."""
        api = self.clients.management
        return pods.create(api, request, find_by_name=self.find_compute_by_name,
                           max_retries=api.max_retries)

    def get_compute(self, compute_id: str) -> Compute:
        """``GET /pods/{id}``; ``NotFoundError`` when unknown."""
        return pods.get(self.clients.management, compute_id)

    def list_compute(
        self,
        *,
        status: str | ComputeStatus | None = None,
        name: str | None = None,
        region: str | None = None,
        gpu: str | None = None,
    ) -> list[Compute]:
        """Pods of the account, filtered by status, exact name, region and canonical GPU.

        Raises:
            ValidationError: ``status`` or ``gpu`` is not a known value.
        """
        wanted = status_filter(status, provider=self.name)
        return pods.list_pods(self.clients.management, status=wanted, name=name, region=region,
                              gpu=canonical_gpu(gpu) if gpu else None)

    def find_compute_by_name(self, name: str) -> Compute | None:
        """``GET /pods?name=``: the not-terminated pod with exactly this name, or None."""
        return pods.find_by_name(self.clients.management, name)

    def stop(self, compute_id: str) -> None:
        """``POST /pods/{id}/stop``."""
        pods.stop(self.clients.management, compute_id)

    def start(self, compute_id: str) -> None:
        """``POST /pods/{id}/start``."""
        pods.start(self.clients.management, compute_id)

    def terminate(self, compute_id: str) -> None:
        """``DELETE /pods/{id}``; ``NotFoundError`` on 404 (see :mod:`.pods` about 400)."""
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

    def endpoint_health(self, endpoint: str) -> dict[str, Any]:
        """``GET /health`` of a serverless endpoint (job and worker counts)."""
        return serverless.health(self.clients.runtime, endpoint)

    # ------------------------------------------------------------------ catalog
    def list_gpu_types(self) -> list[GpuType]:
        """GPU catalog from GraphQL (prices for one GPU, stock from ``lowestPrice``)."""
        return graphql.list_gpu_types(self.clients.graphql)

    # ------------------------------------------------------------------ RunPod-only extras
    def list_templates(self, **params: Any) -> list[dict[str, Any]]:
        """``GET /templates`` (e.g. ``includePublicTemplates=True``)."""
        return extras.list_items(self.clients.management, "template", params or None)

    def create_template(self, name: str, image_name: str, **fields: Any) -> dict[str, Any]:
        """``POST /templates`` with the required ``name``/``imageName`` plus v1 fields."""
        return extras.create_item(self.clients.management, "template",
                                  {"name": name, "imageName": image_name, **fields})

    def delete_template(self, template_id: str) -> None:
        """``DELETE /templates/{id}``."""
        extras.delete_item(self.clients.management, "template", template_id)

    def list_network_volumes(self) -> list[dict[str, Any]]:
        """``GET /networkvolumes``: ``[{id, name, size, dataCenterId}]``."""
        return extras.list_items(self.clients.management, "network_volume")

    def get_network_volume(self, volume_id: str) -> dict[str, Any]:
        """``GET /networkvolumes/{id}``."""
        return extras.get_item(self.clients.management, "network_volume", volume_id)

    def create_network_volume(self, name: str, size_gb: int, data_center_id: str,
                              **fields: Any) -> dict[str, Any]:
        """``POST /networkvolumes`` (``size`` in GB)."""
        return extras.create_item(
            self.clients.management, "network_volume",
            {"name": name, "size": size_gb, "dataCenterId": data_center_id, **fields},
        )

    def delete_network_volume(self, volume_id: str) -> None:
        """``DELETE /networkvolumes/{id}``."""
        extras.delete_item(self.clients.management, "network_volume", volume_id)

    def list_endpoints(self, **params: Any) -> list[dict[str, Any]]:
        """``GET /endpoints`` (e.g. ``includeTemplate=True``)."""
        return extras.list_items(self.clients.management, "endpoint", params or None)

    def get_endpoint(self, endpoint_id: str) -> dict[str, Any]:
        """``GET /endpoints/{id}``."""
        return extras.get_item(self.clients.management, "endpoint", endpoint_id)

    def create_endpoint(self, template_id: str, **fields: Any) -> dict[str, Any]:
        """``POST /endpoints`` with the required ``templateId`` plus v1 fields."""
        return extras.create_item(self.clients.management, "endpoint",
                                  {"templateId": template_id, **fields})

    def delete_endpoint(self, endpoint_id: str) -> None:
        """``DELETE /endpoints/{id}``."""
        extras.delete_item(self.clients.management, "endpoint", endpoint_id)


__all__ = ["RunPodProvider"]
