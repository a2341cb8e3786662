"""GPU catalog: canonical names → the ids each provider really accepts, and the variant
rule (SXM first, else PCIe; Lambda sizes by ``gpu_count``; Vast A100 sizes by ``gpu_ram``).

The cross-check of every id against the providers' published definitions lives in
``tests/contract/test_gpu_ids_contract.py``.
"""

from __future__ import annotations

from pathlib import Path

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
from atlas_tasks.specs.gpu import (
    GPU_ALIASES,
    LAMBDA_SIZES,
    lambda_instance_type,
    lambda_type_info,
    vast_canonical,
    vast_search_filters,
)

RUNPOD = {
    "h200": "NVIDIA H200",
    "h100": "NVIDIA H100 80GB HBM3",
    "h100_pcie": "NVIDIA H100 PCIe",
    "h100_nvl": "NVIDIA H100 NVL",
    "a100_80g": "NVIDIA A100-SXM4-80GB",
    "l40s": "NVIDIA L40S",
    "l40": "NVIDIA L40",
    "l4": "NVIDIA L4",
    "a6000": "NVIDIA RTX A6000",
    "a5000": "NVIDIA RTX A5000",
    "a4000": "NVIDIA RTX A4000",
    "rtx_6000_ada": "NVIDIA RTX 6000 Ada Generation",
    "rtx_5090": "NVIDIA GeForce RTX 5090",
    "rtx_4090": "NVIDIA GeForce RTX 4090",
    "rtx_3090": "NVIDIA GeForce RTX 3090",
    "mi300x": "AMD Instinct MI300X OAM",
}

LAMBDA_ONE_GPU = {
    "gh200": "gpu_1x_gh200",
    "h100": "gpu_1x_h100_sxm5",
    "h100_pcie": "gpu_1x_h100_pcie",
    "a100_40g": "gpu_1x_a100_sxm4",
    "a10": "gpu_1x_a10",
    "a6000": "gpu_1x_a6000",
    "rtx_6000": "gpu_1x_rtx6000",
}

FLY = {
    # Corrected: ExAtlas's "a100-80gb" is not a Fly gpu_kind (reference §9.8).
    "a100_80g": "a100-sxm4-80gb",
    "a100_40g": "a100-pcie-40gb",
    "l40s": "l40s",
    "a10": "a10",
}

VAST = {
    "h200": "H200",
    "gh200": "GH200 SXM",
    "h100": "H100 SXM",
    "h100_pcie": "H100 PCIE",
    "h100_nvl": "H100 NVL",
    "a100_80g": "A100 SXM4",
    "a100_40g": "A100 SXM4",
    "l40s": "L40S",
    "l40": "L40",
    "l4": "L4",
    "a10": "A10",
    "a6000": "RTX A6000",
    "a5000": "RTX A5000",
    "a4000": "RTX A4000",
    "rtx_6000_ada": "RTX 6000Ada",
    "rtx_6000": "Q RTX 6000",
    "rtx_5090": "RTX 5090",
    "rtx_4090": "RTX 4090",
    "rtx_3090": "RTX 3090",
}


@pytest.mark.parametrize(("canonical", "native"), sorted(RUNPOD.items()))
def test_runpod_ids(canonical: str, native: str) -> None:
    assert for_provider(canonical, "runpod") == native
    assert canonical_for_native("runpod", native) == canonical


@pytest.mark.parametrize(("canonical", "native"), sorted(LAMBDA_ONE_GPU.items()))
def test_lambda_one_gpu_types(canonical: str, native: str) -> None:
    assert lambda_instance_type(canonical, 1) == native
    assert lambda_type_info(native) == (canonical, 1)


@pytest.mark.parametrize(("canonical", "native"), sorted(FLY.items()))
def test_fly_ids(canonical: str, native: str) -> None:
    assert for_provider(canonical, "fly") == native


@pytest.mark.parametrize(("canonical", "native"), sorted(VAST.items()))
def test_vast_ids(canonical: str, native: str) -> None:
    assert for_provider(canonical, "vast") == native


def test_fly_a100_80g_is_the_real_gpu_kind() -> None:
    assert for_provider("a100_80g", "fly") == "a100-sxm4-80gb"
    assert "a100-80gb" not in {ids.get("fly") for ids in GPU_CATALOG.values()}


def test_the_ids_issue_11_found_wrong_are_gone() -> None:
    natives = {(p, n) for ids in GPU_CATALOG.values() for p, n in ids.items()}
    lambda_types = {t for sizes in LAMBDA_SIZES.values() for t in sizes.values()}
    assert ("runpod", "NVIDIA A100-SXM4-40GB") not in natives
    assert {"gpu_1x_a100_sxm4_80gb", "gpu_1x_rtx_6000"}.isdisjoint(lambda_types)
    assert {("vast", "H100"), ("vast", "A100 80GB"), ("vast", "A100")}.isdisjoint(natives)


def test_supported_gpus_match_the_tables() -> None:
    assert supported_gpus("runpod") == sorted(RUNPOD)
    assert supported_gpus("lambda_labs") == sorted(LAMBDA_SIZES)
    assert supported_gpus("fly") == sorted(FLY)
    assert supported_gpus("vast") == sorted(VAST)
    assert supported_gpus("nobody") == []


# ---------------------------------------------------------------- the variant rule
def test_h100_is_the_sxm_part_on_every_provider_and_h100_sxm_is_its_alias() -> None:
    assert for_provider("h100", "runpod") == "NVIDIA H100 80GB HBM3"  # RunPod's "H100 SXM"
    assert for_provider("h100", "vast") == "H100 SXM"
    assert lambda_instance_type("h100", 1) == "gpu_1x_h100_sxm5"
    assert GPU_ALIASES == {"h100_sxm": "h100"}
    assert canonical_gpu("h100_sxm") == "h100"
    assert canonical_gpu("H100-SXM") == "h100"


def test_pcie_and_nvl_parts_are_pinned_by_their_own_names() -> None:
    assert for_provider("h100_pcie", "vast") == "H100 PCIE"
    assert for_provider("h100_nvl", "vast") == "H100 NVL"
    assert lambda_instance_type("h100_pcie", 1) == "gpu_1x_h100_pcie"


@pytest.mark.parametrize(
    ("count", "native"),
    [
        (1, "gpu_1x_h100_sxm5"),
        (2, "gpu_2x_h100_sxm5"),
        (4, "gpu_4x_h100_sxm5"),
        (8, "gpu_8x_h100_sxm5"),
    ],
)
def test_lambda_size_follows_gpu_count(count: int, native: str) -> None:
    assert lambda_instance_type("h100", count) == native
    assert lambda_type_info(native) == ("h100", count)
    assert canonical_for_native("lambda_labs", native) == "h100"


def test_lambda_count_it_does_not_sell_is_a_gpu_count_error() -> None:
    with pytest.raises(ValidationError) as info:
        lambda_instance_type("a100_80g", 1)
    assert info.value.field == "gpu_count"
    assert info.value.provider == "lambda_labs"
    assert "only as 8" in str(info.value)
    assert lambda_instance_type("a100_80g", 8) == "gpu_8x_a100_80gb_sxm4"
    with pytest.raises(ValidationError) as info:
        lambda_instance_type("h100_pcie", 8)
    assert info.value.field == "gpu_count"


def test_vast_a100_sizes_differ_by_gpu_ram() -> None:
    assert vast_search_filters("a100_80g") == {
        "gpu_name": {"eq": "A100 SXM4"},
        "gpu_ram": {"gte": 70_000.0},
    }
    assert vast_search_filters("a100_40g") == {
        "gpu_name": {"eq": "A100 SXM4"},
        "gpu_ram": {"lt": 70_000.0},
    }
    assert vast_search_filters("rtx_4090") == {"gpu_name": {"eq": "RTX 4090"}}
    assert vast_canonical("A100 SXM4", 81_920) == "a100_80g"
    assert vast_canonical("A100 SXM4", 40_960) == "a100_40g"
    assert vast_canonical("H100 SXM", 81_559) == "h100"
    assert vast_canonical("Tesla K80", 12_000) is None
    assert vast_canonical(None) is None


# ---------------------------------------------------------------- names and errors
def test_all_canonical_is_sorted_and_matches_the_enum() -> None:
    names = all_canonical()
    assert names == sorted(set(names))
    assert set(names) | set(GPU_ALIASES) == {g.value for g in Gpu}
    assert len(names) == 20


@pytest.mark.parametrize(
    ("provider", "gpu"),
    [
        ("fly", "h100"),
        ("runpod", "a10"),
        ("runpod", "a100_40g"),
        ("lambda_labs", "l4"),
        ("vast", "mi300x"),
        ("mock", "h100"),
    ],
)
def test_unsupported_gpu_for_provider_names_provider_field_and_offer(
    provider: str, gpu: str
) -> None:
    with pytest.raises(ValidationError) as info:
        for_provider(gpu, provider)
    assert info.value.field == "gpu"
    assert info.value.kind == "validation"
    message = str(info.value)
    assert provider in message
    assert "offers:" in message
    for offered in supported_gpus(provider):
        assert offered in message


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


def test_readme_gpu_table_matches_the_catalog() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for canonical, ids in GPU_CATALOG.items():
        row = next(
            (line for line in readme.splitlines() if line.startswith(f"| `{canonical}` |")), None
        )
        assert row is not None, f"README has no GPU row for {canonical}"
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == (f"`{ids['runpod']}`" if "runpod" in ids else "–"), canonical
        assert cells[3] == (f"`{ids['fly']}`" if "fly" in ids else "–"), canonical
        assert cells[4].startswith(f"`{ids['vast']}`" if "vast" in ids else "–"), canonical
        for count, type_name in LAMBDA_SIZES.get(canonical, {}).items():
            assert f"{count}: `{type_name}`" in cells[2], canonical
