"""The GPU catalog: canonical GPU names and each provider's native identifier.

Canonical names are plain lowercase strings (``"h100"``, ``"a100_80g"``) so they travel
through JSON task arguments unchanged. Table from the reference notes §6, with the
corrections §6/§9 call for: Fly's ``a100-80gb`` is not a valid ``gpu_kind`` (the real one
is ``a100-sxm4-80gb``), and Vast names are sent with spaces as its API expects.
"""

from __future__ import annotations

from enum import StrEnum

from atlas_tasks.errors import validation_error


class Gpu(StrEnum):
    """Canonical GPU names accepted in ``ComputeRequest.gpu``."""

    H200 = "h200"
    H100 = "h100"
    H100_PCIE = "h100_pcie"
    H100_SXM = "h100_sxm"
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
    RTX_4090 = "rtx_4090"
    RTX_3090 = "rtx_3090"
    MI300X = "mi300x"


#: canonical → {provider: native id}. Missing = the provider does not offer it.
GPU_CATALOG: dict[str, dict[str, str]] = {
    "h200": {"runpod": "NVIDIA H200", "vast": "H200"},
    "h100": {"runpod": "NVIDIA H100 80GB HBM3", "lambda_labs": "gpu_1x_h100_pcie", "vast": "H100"},
    "h100_pcie": {"runpod": "NVIDIA H100 PCIe"},
    "h100_sxm": {"lambda_labs": "gpu_1x_h100_sxm5"},
    "a100_80g": {
        "runpod": "NVIDIA A100 80GB PCIe",
        "lambda_labs": "gpu_1x_a100_sxm4_80gb",
        # ExAtlas says "a100-80gb", which Fly rejects; flyctl's --vm-gpu-kind is this one.
        "fly": "a100-sxm4-80gb",
        "vast": "A100 80GB",
    },
    "a100_40g": {
        # Not in the v1 gpuTypeIds enum (reference §6); kept because GraphQL still lists it.
        "runpod": "NVIDIA A100-SXM4-40GB",
        "lambda_labs": "gpu_1x_a100_sxm4",
        "fly": "a100-pcie-40gb",
        "vast": "A100",
    },
    "l40s": {"runpod": "NVIDIA L40S", "fly": "l40s"},
    "l40": {"runpod": "NVIDIA L40"},
    "l4": {"runpod": "NVIDIA L4"},
    "a10": {"lambda_labs": "gpu_1x_a10", "fly": "a10"},
    "a6000": {"runpod": "NVIDIA RTX A6000", "lambda_labs": "gpu_1x_a6000", "vast": "RTX A6000"},
    "a5000": {"runpod": "NVIDIA RTX A5000"},
    "a4000": {"runpod": "NVIDIA RTX A4000"},
    "rtx_6000_ada": {"runpod": "NVIDIA RTX 6000 Ada Generation"},
    "rtx_6000": {"lambda_labs": "gpu_1x_rtx_6000"},
    "rtx_4090": {"runpod": "NVIDIA GeForce RTX 4090", "vast": "RTX 4090"},
    "rtx_3090": {"runpod": "NVIDIA GeForce RTX 3090", "vast": "RTX 3090"},
    "mi300x": {"runpod": "AMD Instinct MI300X OAM"},
}


def all_canonical() -> list[str]:
    """Every canonical GPU name, sorted."""
    return sorted(GPU_CATALOG)


def canonical_gpu(name: str) -> str:
    """Normalise and check a canonical GPU name (``"H100"`` → ``"h100"``).

    Raises:
        ValidationError: naming the ``gpu`` field and listing the known names.
    """
    value = str(name).strip().lower().replace("-", "_")
    if value not in GPU_CATALOG:
        raise validation_error("gpu", f"unknown GPU {name!r}; known: {', '.join(all_canonical())}")
    return value


def for_provider(gpu: str, provider: str) -> str:
    """The provider's native id for a canonical GPU.

    Raises:
        ValidationError: field ``gpu``, when the provider does not offer that GPU.
    """
    native = GPU_CATALOG.get(canonical_gpu(gpu), {}).get(provider)
    if native is None:
        offered = ", ".join(supported_gpus(provider)) or "none"
        raise validation_error(
            "gpu", f"{provider} has no GPU {gpu!r}; it offers: {offered}", provider=provider
        )
    return native


def supported_gpus(provider: str) -> list[str]:
    """Canonical names the provider offers (``[]`` for unknown providers)."""
    return sorted(c for c, ids in GPU_CATALOG.items() if provider in ids)


def canonical_for_native(provider: str, native: str | None) -> str | None:
    """Reverse lookup: a provider's native id → canonical name, or ``None``."""
    if not native:
        return None
    for canonical, ids in GPU_CATALOG.items():
        if ids.get(provider) == native:
            return canonical
    return None


__all__ = [
    "GPU_CATALOG",
    "Gpu",
    "all_canonical",
    "canonical_for_native",
    "canonical_gpu",
    "for_provider",
    "supported_gpus",
]
