"""GPU catalog: canonical names → native ids (reference §6, with its corrections)."""

from __future__ import annotations

import pytest

from atlas_tasks.errors import ValidationError
from atlas_tasks.specs import (
    GPU_CATALOG,
    Gpu,
    all_canonical,
    canonical_for_native,
    canonical_gpu,
    for_provider,
    supported_gpus,
)

#: RunPod column of reference §6, verbatim.
RUNPOD = {
    "h200": "NVIDIA H200",
    "h100": "NVIDIA H100 80GB HBM3",
    "h100_pcie": "NVIDIA H100 PCIe",
    "a100_80g": "NVIDIA A100 80GB PCIe",
    "a100_40g": "NVIDIA A100-SXM4-40GB",
    "l40s": "NVIDIA L40S",
    "l40": "NVIDIA L40",
    "l4": "NVIDIA L4",
    "a6000": "NVIDIA RTX A6000",
    "a5000": "NVIDIA RTX A5000",
    "a4000": "NVIDIA RTX A4000",
    "rtx_6000_ada": "NVIDIA RTX 6000 Ada Generation",
    "rtx_4090": "NVIDIA GeForce RTX 4090",
    "rtx_3090": "NVIDIA GeForce RTX 3090",
    "mi300x": "AMD Instinct MI300X OAM",
}

LAMBDA = {
    "h100": "gpu_1x_h100_pcie",
    "h100_sxm": "gpu_1x_h100_sxm5",
    "a100_80g": "gpu_1x_a100_sxm4_80gb",
    "a100_40g": "gpu_1x_a100_sxm4",
    "a10": "gpu_1x_a10",
    "a6000": "gpu_1x_a6000",
    "rtx_6000": "gpu_1x_rtx_6000",
}

FLY = {
    # Corrected: ExAtlas's "a100-80gb" is not a Fly gpu_kind (reference §9.8).
    "a100_80g": "a100-sxm4-80gb",
    "a100_40g": "a100-pcie-40gb",
    "l40s": "l40s",
    "a10": "a10",
}


@pytest.mark.parametrize(("canonical", "native"), sorted(RUNPOD.items()))
def test_runpod_ids(canonical: str, native: str) -> None:
    assert for_provider(canonical, "runpod") == native
    assert canonical_for_native("runpod", native) == canonical


@pytest.mark.parametrize(("canonical", "native"), sorted(LAMBDA.items()))
def test_lambda_ids(canonical: str, native: str) -> None:
    assert for_provider(canonical, "lambda_labs") == native


@pytest.mark.parametrize(("canonical", "native"), sorted(FLY.items()))
def test_fly_ids(canonical: str, native: str) -> None:
    assert for_provider(canonical, "fly") == native


def test_fly_a100_80g_is_the_real_gpu_kind() -> None:
    assert for_provider("a100_80g", "fly") == "a100-sxm4-80gb"
    assert "a100-80gb" not in {ids.get("fly") for ids in GPU_CATALOG.values()}


def test_supported_gpus_match_the_tables() -> None:
    assert supported_gpus("runpod") == sorted(RUNPOD)
    assert supported_gpus("lambda_labs") == sorted(LAMBDA)
    assert supported_gpus("fly") == sorted(FLY)
    assert supported_gpus("nobody") == []


def test_all_canonical_is_sorted_and_matches_the_enum() -> None:
    names = all_canonical()
    assert names == sorted(set(names))
    assert set(names) == {g.value for g in Gpu}
    assert len(names) == 18


@pytest.mark.parametrize(("provider", "gpu"), [("fly", "h100"), ("runpod", "a10"),
                                               ("lambda_labs", "l4"), ("mock", "h100")])
def test_unsupported_gpu_for_provider_names_gpu(provider: str, gpu: str) -> None:
    with pytest.raises(ValidationError) as info:
        for_provider(gpu, provider)
    assert info.value.field == "gpu"
    assert info.value.kind == "validation"
    assert provider in str(info.value)


def test_unknown_gpu_lists_known_names() -> None:
    with pytest.raises(ValidationError) as info:
        canonical_gpu("nope")
    assert info.value.field == "gpu"
    assert "h100" in str(info.value)


def test_canonical_gpu_normalises_case_and_dashes() -> None:
    assert canonical_gpu("H100") == "h100"
    assert canonical_gpu("rtx-4090") == "rtx_4090"
    assert canonical_for_native("runpod", "unknown card") is None
    assert canonical_for_native("runpod", None) is None
