"""The public surface of ``import atlas_tasks``: sorted, complete, light."""

from __future__ import annotations

import subprocess
import sys

import atlas_tasks

EXPECTED = {
    # stateless SDK
    "spawn_compute",
    "get_compute",
    "list_compute",
    "stop",
    "start",
    "terminate",
    "run_job",
    "get_job",
    "cancel_job",
    "stream_job",
    "list_gpu_types",
    "capabilities",
    "get_provider",
    "register_provider",
    # specs
    "ComputeRequest",
    "Compute",
    "Port",
    "AuthHandle",
    "Job",
    "JobRequest",
    "GpuType",
    "Capability",
    "ComputeStatus",
    "JobStatus",
    # errors
    "AtlasError",
    "AtlasTimeoutError",
    "ForbiddenError",
    "NotFoundError",
    "NotTracked",
    "ProviderError",
    "RateLimitedError",
    "TransportError",
    "UnauthorizedError",
    "UnknownError",
    "UnsupportedError",
    "ValidationError",
    "__version__",
}


def test_all_is_sorted() -> None:
    assert atlas_tasks.__all__ == sorted(atlas_tasks.__all__)


def test_every_exported_name_exists() -> None:
    for name in atlas_tasks.__all__:
        assert hasattr(atlas_tasks, name), name


def test_no_duplicates_and_expected_names() -> None:
    assert len(set(atlas_tasks.__all__)) == len(atlas_tasks.__all__)
    assert set(atlas_tasks.__all__) == EXPECTED


def test_version_is_a_string() -> None:
    assert isinstance(atlas_tasks.__version__, str) and atlas_tasks.__version__.count(".") >= 2


def test_public_functions_and_classes_have_docstrings() -> None:
    for name in atlas_tasks.__all__:
        obj = getattr(atlas_tasks, name)
        if callable(obj):
            assert obj.__doc__, f"{name} has no docstring"


def test_import_is_light() -> None:
    # Importing the package must not pull in Celery or Redis, nor read the environment.
    code = (
        "import sys, atlas_tasks, atlas_tasks.cli;"
        "from atlas_tasks.config import get_settings;"
        "heavy = sorted(m for m in ('celery', 'redis', 'kombu') if m in sys.modules);"
        "print(heavy, get_settings.cache_info().currsize)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout.strip()
    assert out == "[] 0"
