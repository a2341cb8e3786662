"""The GPU catalog: canonical GPU names and the ids each provider really accepts.

Canonical names are plain lowercase strings (``"h100"``, ``"a100_80g"``) so they travel
through JSON task arguments unchanged. Every native id below is one the provider's own
published definition lists (``../shared/reference/specs/``; a unit test cross-checks each
entry against those files, so a wrong id fails the build):

* RunPod: ``PodCreateInput.gpuTypeIds`` enum (the ids v2 takes in ``gpu.id``);
* Lambda: the instance-type names Lambda offers (``lambda-instance-types.json``);
* Fly: the ``gpu_kind`` values (``fly-supplement.json``);
* Vast: the ``gpu_name`` values of the official client (``vast-official-client.json``).

**Variant rule.** A canonical name is one GPU model with one memory size. Where a provider
sells that model in several form factors, the catalog takes the **SXM** (server-board)
part, else the **PCIe** one; NVL parts are their own name (``h100_nvl``). So ``h100`` is
the H100 SXM everywhere (RunPod ``NVIDIA H100 80GB HBM3``, Lambda ``gpu_Nx_h100_sxm5``,
Vast ``H100 SXM``); ``h100_pcie`` pins the PCIe card; ``h100_sxm`` is an alias of
``h100``. Vast names carry no memory size, so for A100s the Vast search adds a
``gpu_ram`` bound (:data:`VAST_GPU_RAM_MB`): ``a100_80g`` = ``A100 SXM4`` with at least
70 000 MB, ``a100_40g`` = ``A100 SXM4`` below that.

**Lambda sizes.** Lambda sells whole machines named by GPU count (``gpu_8x_h100_sxm5``);
:func:`lambda_instance_type` picks the type whose count equals ``gpu_count``, and a count
Lambda does not sell for that GPU is a validation error on ``gpu_count`` listing the
counts it does (e.g. ``a100_80g`` exists on Lambda only as 8 GPUs).

A GPU a provider does not offer is ``AtlasError(kind="validation")`` on field ``gpu``,
naming the provider and what it offers.
"""

from __future__ import annotations

import math
from enum import StrEnum

from atlas_tasks.errors import ValidationError, validation_error


class Gpu(StrEnum):
    """Canonical GPU names accepted in ``ComputeRequest.gpu`` (``H100_SXM`` is an alias
    of ``H100``)."""

    H200 = "h200"
    GH200 = "gh200"
    H100 = "h100"
    H100_PCIE = "h100_pcie"
    H100_SXM = "h100_sxm"
    H100_NVL = "h100_nvl"
    A100_80G = "a100_80g"
    A100_40G = "a100_40g"
    L40S = "l40s"
    L40 = "l40"
    L4 = "l4"
    A10 = "a10"
    A6000 = "a6000"
    A5000 = "a5000"
    A4000 = "a4000"
    RTX_6000_ADA = "rtx_6000_ada"
    RTX_6000 = "rtx_6000"
    RTX_5090 = "rtx_5090"
    RTX_4090 = "rtx_4090"
    RTX_3090 = "rtx_3090"
    MI300X = "mi300x"


#: Other spellings of a canonical name (normalised by :func:`canonical_gpu`).
GPU_ALIASES: dict[str, str] = {"h100_sxm": "h100"}

#: Lambda instance types per canonical GPU, by GPU count (the only sizes Lambda sells).
LAMBDA_SIZES: dict[str, dict[int, str]] = {
    "gh200": {1: "gpu_1x_gh200"},
    "h100": {n: f"gpu_{n}x_h100_sxm5" for n in (1, 2, 4, 8)},
    "h100_pcie": {1: "gpu_1x_h100_pcie"},
    "a100_80g": {8: "gpu_8x_a100_80gb_sxm4"},
    # SXM first: the one-GPU SXM4 type; Lambda's 2x/4x/8x "gpu_Nx_a100" are SXM4 40 GB too.
    "a100_40g": {1: "gpu_1x_a100_sxm4", 2: "gpu_2x_a100", 4: "gpu_4x_a100", 8: "gpu_8x_a100"},
    "a10": {1: "gpu_1x_a10"},
    "a6000": {n: f"gpu_{n}x_a6000" for n in (1, 2, 4)},
    # Quadro RTX 6000 (24 GB); Lambda spells it without the underscore.
    "rtx_6000": {1: "gpu_1x_rtx6000"},
}

#: Vast ``gpu_ram`` bounds (MB, as offers report it) for names that hide the memory size.
VAST_GPU_RAM_MB: dict[str, dict[str, float]] = {
    "a100_80g": {"gte": 70_000.0},
    "a100_40g": {"lt": 70_000.0},
}

#: canonical → {provider: native id}. Missing = the provider does not offer it. For Lambda
#: the id is the smallest size (see :data:`LAMBDA_SIZES` for the others).
GPU_CATALOG: dict[str, dict[str, str]] = {
    "h200": {"runpod": "NVIDIA H200", "vast": "H200"},
    "gh200": {"vast": "GH200 SXM"},
    "h100": {"runpod": "NVIDIA H100 80GB HBM3", "vast": "H100 SXM"},
    "h100_pcie": {"runpod": "NVIDIA H100 PCIe", "vast": "H100 PCIE"},
    "h100_nvl": {"runpod": "NVIDIA H100 NVL", "vast": "H100 NVL"},
    "a100_80g": {
        "runpod": "NVIDIA A100-SXM4-80GB",
        # ExAtlas says "a100-80gb", which Fly rejects; flyctl's --vm-gpu-kind is this one.
        "fly": "a100-sxm4-80gb",
        "vast": "A100 SXM4",
    },
    # RunPod publishes no 40 GB A100 id (ExAtlas's "NVIDIA A100-SXM4-40GB" is not one).
    "a100_40g": {"fly": "a100-pcie-40gb", "vast": "A100 SXM4"},
    "l40s": {"runpod": "NVIDIA L40S", "fly": "l40s", "vast": "L40S"},
    "l40": {"runpod": "NVIDIA L40", "vast": "L40"},
    "l4": {"runpod": "NVIDIA L4", "vast": "L4"},
    "a10": {"fly": "a10", "vast": "A10"},
    "a6000": {"runpod": "NVIDIA RTX A6000", "vast": "RTX A6000"},
    "a5000": {"runpod": "NVIDIA RTX A5000", "vast": "RTX A5000"},
    "a4000": {"runpod": "NVIDIA RTX A4000", "vast": "RTX A4000"},
    "rtx_6000_ada": {"runpod": "NVIDIA RTX 6000 Ada Generation", "vast": "RTX 6000Ada"},
    "rtx_6000": {"vast": "Q RTX 6000"},
    "rtx_5090": {"runpod": "NVIDIA GeForce RTX 5090", "vast": "RTX 5090"},
    "rtx_4090": {"runpod": "NVIDIA GeForce RTX 4090", "vast": "RTX 4090"},
    "rtx_3090": {"runpod": "NVIDIA GeForce RTX 3090", "vast": "RTX 3090"},
    "mi300x": {"runpod": "AMD Instinct MI300X OAM"},
}
for _canonical, _sizes in LAMBDA_SIZES.items():
    GPU_CATALOG[_canonical]["lambda_labs"] = _sizes[min(_sizes)]
del _canonical, _sizes

#: Lambda instance type → (canonical GPU, GPU count), every size.
_LAMBDA_TYPES: dict[str, tuple[str, int]] = {
    type_name: (canonical, count)
    for canonical, sizes in LAMBDA_SIZES.items()
    for count, type_name in sizes.items()
}


def all_canonical() -> list[str]:
    """Every canonical GPU name, sorted (aliases excluded)."""
    return sorted(GPU_CATALOG)


def canonical_gpu(name: str) -> str:
    """Normalise and check a canonical GPU name (``"H100"`` → ``"h100"``, aliases resolved).

    Raises:
        ValidationError: naming the ``gpu`` field and listing the known names.
    """
    value = str(name).strip().lower().replace("-", "_")
    value = GPU_ALIASES.get(value, value)
    if value not in GPU_CATALOG:
        raise validation_error("gpu", f"unknown GPU {name!r}; known: {', '.join(all_canonical())}")
    return value


def _not_offered(gpu: str, provider: str) -> ValidationError:
    offered = ", ".join(supported_gpus(provider)) or "none"
    return validation_error(
        "gpu",
        f"{provider} does not offer GPU {gpu!r}; {provider} offers: {offered}",
        provider=provider,
    )


def for_provider(gpu: str, provider: str) -> str:
    """The provider's native id for a canonical GPU (for Lambda, the smallest size).

    Raises:
        ValidationError: field ``gpu``, when the provider does not offer that GPU (the
            message names the provider and what it offers).
    """
    native = GPU_CATALOG.get(canonical_gpu(gpu), {}).get(provider)
    if native is None:
        raise _not_offered(gpu, provider)
    return native


def lambda_instance_type(gpu: str, gpu_count: int) -> str:
    """Lambda's instance type for ``gpu_count`` of a canonical GPU (``gpu_4x_h100_sxm5``).

    Raises:
        ValidationError: field ``gpu`` when Lambda does not offer the GPU; field
            ``gpu_count`` when it does not sell that many (the message lists the counts).
    """
    canonical = canonical_gpu(gpu)
    sizes = LAMBDA_SIZES.get(canonical)
    if sizes is None:
        raise _not_offered(gpu, "lambda_labs")
    type_name = sizes.get(gpu_count)
    if type_name is None:
        counts = ", ".join(str(n) for n in sorted(sizes))
        raise validation_error(
            "gpu_count",
            f"lambda_labs sells {canonical} only as {counts} GPU(s) per instance, not {gpu_count}",
            provider="lambda_labs",
        )
    return type_name


def lambda_type_info(type_name: str | None) -> tuple[str, int] | None:
    """``(canonical, gpu_count)`` of a Lambda instance type, or ``None`` if not in the catalog."""
    return _LAMBDA_TYPES.get(type_name or "")


def vast_search_filters(gpu: str) -> dict[str, dict[str, object]]:
    """The Vast ``/bundles/`` filters that select a canonical GPU: ``gpu_name`` and, for
    names that hide the memory size, a ``gpu_ram`` bound in MB.

    Raises:
        ValidationError: field ``gpu`` when Vast does not offer the GPU.
    """
    canonical = canonical_gpu(gpu)
    filters: dict[str, dict[str, object]] = {"gpu_name": {"eq": for_provider(canonical, "vast")}}
    if canonical in VAST_GPU_RAM_MB:
        filters["gpu_ram"] = dict(VAST_GPU_RAM_MB[canonical])
    return filters


def vast_canonical(gpu_name: str | None, gpu_ram_mb: float | None = None) -> str | None:
    """Canonical GPU of a Vast offer or instance (``gpu_ram`` tells A100 sizes apart)."""
    if not gpu_name:
        return None
    for canonical, ids in GPU_CATALOG.items():
        if ids.get("vast") != gpu_name:
            continue
        bound = VAST_GPU_RAM_MB.get(canonical)
        if bound is None or gpu_ram_mb is None or _within(gpu_ram_mb, bound):
            return canonical
    return None


def _within(value: float, bound: dict[str, float]) -> bool:
    return bound.get("gte", -math.inf) <= value < bound.get("lt", math.inf)


def supported_gpus(provider: str) -> list[str]:
    """Canonical names the provider offers (``[]`` for unknown providers)."""
    return sorted(c for c, ids in GPU_CATALOG.items() if provider in ids)


def canonical_for_native(provider: str, native: str | None) -> str | None:
    """Reverse lookup: a provider's native id → canonical name, or ``None``.

    Lambda types of any size resolve (``gpu_8x_h100_sxm5`` → ``h100``); for Vast names
    shared by several sizes the first catalog entry wins (use :func:`vast_canonical`
    with ``gpu_ram`` to tell them apart).
    """
    if not native:
        return None
    if provider == "lambda_labs":
        info = lambda_type_info(native)
        return info[0] if info else None
    for canonical, ids in GPU_CATALOG.items():
        if ids.get(provider) == native:
            return canonical
    return None


__all__ = [
    "GPU_ALIASES",
    "GPU_CATALOG",
    "LAMBDA_SIZES",
    "VAST_GPU_RAM_MB",
    "Gpu",
    "all_canonical",
    "canonical_for_native",
    "canonical_gpu",
    "for_provider",
    "lambda_instance_type",
    "lambda_type_info",
    "supported_gpus",
    "vast_canonical",
    "vast_search_filters",
]
