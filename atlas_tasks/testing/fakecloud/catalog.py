"""Static RunPod-like data: GPU types with prices and stock, data centers, valid GPU ids.

Prices are plausible per-GPU hourly figures, not live quotes. ``stock`` uses REST v2's
``AvailabilityLevel`` values (``HIGH``, ``MEDIUM``, ``LOW``, ``NONE``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FakeGpu:
    """One GPU type as the fake prices and describes it."""

    id: str
    display_name: str
    memory_gb: int
    secure_price: float
    community_price: float
    secure_spot_price: float
    community_spot_price: float
    stock: str  # HIGH | MEDIUM | LOW | NONE (v2 AvailabilityLevel)
    secure_cloud: bool = True
    community_cloud: bool = True
    manufacturer: str = "NVIDIA"
    max_gpu_count: int = 8
    #: Serverless pool id (v2 ``GpuType.pool``), ``None`` when not in a serverless pool.
    pool: str | None = None

    @property
    def serverless_price(self) -> float:
        """Serverless list price per GPU-hour (only meaningful with a ``pool``)."""
        return round(self.secure_price * 1.6, 3)

    @property
    def data_centers(self) -> tuple[str, ...]:
        """Data centers offering the GPU (v2 ``dataCenters`` with availability)."""
        return () if self.stock == "NONE" else DATA_CENTERS[:3]

    @property
    def lowest_price(self) -> float:
        """Cheapest on-demand price per GPU-hour over the clouds that offer it."""
        prices = [
            p
            for p, ok in (
                (self.secure_price, self.secure_cloud),
                (self.community_price, self.community_cloud),
            )
            if ok
        ]
        return min(prices)

    @property
    def lowest_spot(self) -> float:
        """Cheapest spot (interruptible) bid per GPU-hour."""
        prices = [
            p
            for p, ok in (
                (self.secure_spot_price, self.secure_cloud),
                (self.community_spot_price, self.community_cloud),
            )
            if ok
        ]
        return min(prices)


GPUS: tuple[FakeGpu, ...] = (
    FakeGpu(
        "NVIDIA H100 80GB HBM3",
        "H100 80GB",
        80,
        2.49,
        2.69,
        1.2,
        1.5,
        "HIGH",
        community_cloud=False,
        pool="HOPPER_141",
    ),
    FakeGpu("NVIDIA H100 PCIe", "H100 PCIe", 80, 2.39, 1.99, 1.4, 1.25, "MEDIUM"),
    FakeGpu(
        "NVIDIA H200",
        "H200 SXM",
        141,
        3.99,
        3.59,
        2.6,
        2.4,
        "LOW",
        community_cloud=False,
        pool="HOPPER_141",
    ),
    FakeGpu(
        "NVIDIA A100 80GB PCIe", "A100 PCIe", 80, 1.64, 1.19, 0.82, 0.6, "HIGH", pool="AMPERE_80"
    ),
    FakeGpu(
        "NVIDIA A100-SXM4-80GB", "A100 SXM", 80, 1.89, 1.39, 0.95, 0.79, "MEDIUM", pool="AMPERE_80"
    ),
    FakeGpu("NVIDIA L40S", "L40S", 48, 0.86, 0.79, 0.53, 0.4, "HIGH", pool="ADA_48_PRO"),
    FakeGpu("NVIDIA L40", "L40", 48, 0.99, 0.69, 0.5, 0.35, "LOW"),
    FakeGpu("NVIDIA L4", "L4", 24, 0.43, 0.39, 0.22, 0.2, "HIGH", pool="ADA_24"),
    FakeGpu("NVIDIA RTX A6000", "RTX A6000", 48, 0.49, 0.33, 0.25, 0.17, "HIGH", pool="AMPERE_48"),
    FakeGpu("NVIDIA RTX A5000", "RTX A5000", 24, 0.27, 0.16, 0.14, 0.1, "MEDIUM", pool="AMPERE_24"),
    FakeGpu("NVIDIA RTX A4000", "RTX A4000", 16, 0.25, 0.17, 0.13, 0.09, "HIGH", pool="AMPERE_16"),
    FakeGpu(
        "NVIDIA RTX 6000 Ada Generation",
        "RTX 6000 Ada",
        48,
        0.77,
        0.74,
        0.45,
        0.4,
        "MEDIUM",
        pool="ADA_48_PRO",
    ),
    FakeGpu(
        "NVIDIA GeForce RTX 4090", "RTX 4090", 24, 0.69, 0.34, 0.35, 0.2, "HIGH", pool="ADA_24"
    ),
    FakeGpu(
        "NVIDIA GeForce RTX 3090",
        "RTX 3090",
        24,
        0.43,
        0.22,
        0.22,
        0.11,
        "MEDIUM",
        pool="AMPERE_24",
    ),
    FakeGpu(
        "AMD Instinct MI300X OAM",
        "MI300X",
        192,
        2.49,
        2.49,
        1.5,
        1.5,
        "NONE",
        community_cloud=False,
        manufacturer="AMD",
    ),
)

GPUS_BY_ID: dict[str, FakeGpu] = {gpu.id: gpu for gpu in GPUS}

#: The GPU ids RunPod accepts in ``gpu.id`` (v2): the list RunPod publishes as the
#: ``PodCreateInput.gpuTypeIds`` enum of its REST definition. ``NVIDIA A100-SXM4-40GB`` is
#: not among them, so a create naming it gets 400 here as at RunPod.
GPU_TYPE_IDS: frozenset[str] = frozenset(
    {
        "NVIDIA GeForce RTX 4090",
        "NVIDIA A40",
        "NVIDIA RTX A5000",
        "NVIDIA GeForce RTX 3090",
        "NVIDIA RTX A4500",
        "NVIDIA RTX A6000",
        "NVIDIA L40S",
        "NVIDIA L4",
        "NVIDIA H100 80GB HBM3",
        "NVIDIA RTX 4000 Ada Generation",
        "NVIDIA A100 80GB PCIe",
        "NVIDIA A100-SXM4-80GB",
        "NVIDIA RTX A4000",
        "NVIDIA RTX 6000 Ada Generation",
        "NVIDIA RTX 2000 Ada Generation",
        "NVIDIA H200",
        "NVIDIA L40",
        "NVIDIA H100 NVL",
        "NVIDIA H100 PCIe",
        "NVIDIA GeForce RTX 3080 Ti",
        "NVIDIA GeForce RTX 3080",
        "NVIDIA GeForce RTX 3070",
        "Tesla V100-PCIE-16GB",
        "AMD Instinct MI300X OAM",
        "NVIDIA RTX A2000",
        "Tesla V100-FHHL-16GB",
        "NVIDIA GeForce RTX 4080 SUPER",
        "Tesla V100-SXM2-16GB",
        "NVIDIA GeForce RTX 4070 Ti",
        "Tesla V100-SXM2-32GB",
        "NVIDIA RTX 4000 SFF Ada Generation",
        "NVIDIA RTX 5000 Ada Generation",
        "NVIDIA GeForce RTX 5090",
        "NVIDIA A30",
        "NVIDIA GeForce RTX 4080",
        "NVIDIA GeForce RTX 5080",
        "NVIDIA GeForce RTX 3090 Ti",
        "NVIDIA B200",
    }
)

#: Data centers picked when a create names none (``dataCenterIds`` values).
DATA_CENTERS: tuple[str, ...] = ("US-TX-3", "EU-RO-1", "CA-MTL-1", "US-KS-2", "EU-SE-1")

#: Fallback prices for enum GPUs the table above does not describe.
DEFAULT_PRICE = 0.5


def gpu_info(gpu_id: str) -> FakeGpu:
    """The table entry for ``gpu_id``, or a generic one for other enum values."""
    known = GPUS_BY_ID.get(gpu_id)
    if known is not None:
        return known
    display = gpu_id.replace("NVIDIA ", "").replace("GeForce ", "")
    return FakeGpu(
        gpu_id,
        display,
        24,
        DEFAULT_PRICE,
        DEFAULT_PRICE * 0.8,
        DEFAULT_PRICE / 2,
        DEFAULT_PRICE / 2.5,
        "MEDIUM",
    )
