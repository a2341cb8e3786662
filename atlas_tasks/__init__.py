"""atlas_tasks: GPU/CPU compute across clouds, on Celery and Redis.

The top level is the stateless SDK (one provider call per function), the specs and the
error tree::

    import atlas_tasks as atlas

    compute = atlas.spawn_compute(provider="runpod", gpu="h100", image="my/image:latest",
                                  ports=[(8000, "http")], auth="bearer")
    atlas.terminate(compute.id, provider="runpod")

Importing this package never imports Celery or Redis and never reads the environment;
the orchestrator (``atlas_tasks.client``), events and Celery app are separate submodules.
"""

from atlas_tasks.errors import (
    AtlasError,
    AtlasTimeoutError,
    ForbiddenError,
    NotFoundError,
    NotTracked,
    ProviderError,
    RateLimitedError,
    TransportError,
    UnauthorizedError,
    UnknownError,
    UnsupportedError,
    ValidationError,
)
from atlas_tasks.providers.registry import get_provider, register_provider
from atlas_tasks.sdk import (
    cancel_job,
    capabilities,
    get_compute,
    get_job,
    list_compute,
    list_gpu_types,
    run_job,
    spawn_compute,
    start,
    stop,
    stream_job,
    terminate,
)
from atlas_tasks.specs import (
    AuthHandle,
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

__version__ = "0.1.0"

__all__ = [
    "AtlasError",
    "AtlasTimeoutError",
    "AuthHandle",
    "Capability",
    "Compute",
    "ComputeRequest",
    "ComputeStatus",
    "ForbiddenError",
    "GpuType",
    "Job",
    "JobRequest",
    "JobStatus",
    "NotFoundError",
    "NotTracked",
    "Port",
    "ProviderError",
    "RateLimitedError",
    "TransportError",
    "UnauthorizedError",
    "UnknownError",
    "UnsupportedError",
    "ValidationError",
    "__version__",
    "cancel_job",
    "capabilities",
    "get_compute",
    "get_job",
    "get_provider",
    "list_compute",
    "list_gpu_types",
    "register_provider",
    "run_job",
    "spawn_compute",
    "start",
    "stop",
    "stream_job",
    "terminate",
]
