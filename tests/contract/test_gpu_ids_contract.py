"""Every native GPU id in the catalog is one the provider's published definition lists.

Sources (``../shared/reference/specs/``): RunPod's ``PodCreateInput.gpuTypeIds`` enum
(the same ids v2 takes in ``gpu.id``), Lambda's instance-type names, Fly's ``gpu_kind``
values (supplement) and the Vast official client's GPU names. A wrong id fails here.
"""

from __future__ import annotations

from typing import Any

import pytest

from atlas_tasks.specs.gpu import GPU_CATALOG, LAMBDA_SIZES
from tests.contract.spec_check import load_spec_dict


def _runpod_ids() -> set[str]:
    spec: dict[str, Any] = load_spec_dict("runpod-rest-v1.openapi.json")
    prop = spec["components"]["schemas"]["PodCreateInput"]["properties"]["gpuTypeIds"]
    return set(prop["items"]["enum"])


def _accepted(provider: str) -> set[str]:
    if provider == "runpod":
        return _runpod_ids()
    if provider == "lambda_labs":
        return set(load_spec_dict("lambda-instance-types.json")["instance_types"])
    if provider == "fly":
        return set(load_spec_dict("fly-supplement.json")["gpu_kinds"]) - {"none"}
    if provider == "vast":
        return set(load_spec_dict("vast-official-client.json")["gpu_names"])
    raise AssertionError(f"no definition for provider {provider!r}")


ENTRIES = sorted(
    (canonical, provider, native)
    for canonical, ids in GPU_CATALOG.items()
    for provider, native in ids.items()
)
LAMBDA_ENTRIES = sorted(
    (canonical, count, native)
    for canonical, sizes in LAMBDA_SIZES.items()
    for count, native in sizes.items()
)


@pytest.mark.parametrize(("canonical", "provider", "native"), ENTRIES)
def test_catalog_id_is_in_the_providers_definition(
    canonical: str, provider: str, native: str
) -> None:
    assert native in _accepted(provider), (
        f"{canonical} → {provider} {native!r} is not an id {provider} accepts"
    )


@pytest.mark.parametrize(("canonical", "count", "native"), LAMBDA_ENTRIES)
def test_every_lambda_size_is_a_real_instance_type(canonical: str, count: int, native: str) -> None:
    assert native in _accepted("lambda_labs")
    assert native.startswith(f"gpu_{count}x_"), f"{native} does not hold {count} GPU(s)"


def test_the_cross_check_covers_every_provider() -> None:
    assert {provider for _, provider, _ in ENTRIES} == {"runpod", "lambda_labs", "fly", "vast"}
    assert len(ENTRIES) >= 40


def test_a_wrong_id_would_fail() -> None:
    # The examples: ids we used to send that the providers do not accept.
    assert "NVIDIA A100-SXM4-40GB" not in _accepted("runpod")
    assert "gpu_1x_a100_sxm4_80gb" not in _accepted("lambda_labs")
    assert "gpu_1x_rtx_6000" not in _accepted("lambda_labs")
    assert {"H100", "A100 80GB", "A100"}.isdisjoint(_accepted("vast"))
