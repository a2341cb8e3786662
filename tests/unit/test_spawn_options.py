"""Validation of the cost-guardrail options of ``orchestrator.spawn``: each bad value is a
``ValidationError`` naming its field, raised before anything touches Redis or the broker."""

from __future__ import annotations

from typing import Any

import pytest

from atlas_tasks import orchestrator
from atlas_tasks.errors import ValidationError
from atlas_tasks.providers import provider_class
from atlas_tasks.specs import Capability

SPAWN: dict[str, Any] = {"gpu": "h100", "image": "me/infer:1"}


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"max_lifetime_ms": 0}, "max_lifetime_ms"),
        ({"max_lifetime_ms": -5}, "max_lifetime_ms"),
        ({"max_lifetime_ms": True}, "max_lifetime_ms"),
        ({"max_lifetime_ms": 1.5}, "max_lifetime_ms"),
        ({"tenant_id": ""}, "tenant_id"),
        ({"tenant_id": "has space"}, "tenant_id"),
        ({"tenant_id": ["x"]}, "tenant_id"),
        ({"gpu_idle_below_pct": 5}, "gpu_idle_window_ms"),
        ({"gpu_idle_window_ms": 60_000}, "gpu_idle_below_pct"),
        ({"gpu_idle_below_pct": 0, "gpu_idle_window_ms": 60_000}, "gpu_idle_below_pct"),
        ({"gpu_idle_below_pct": 100.5, "gpu_idle_window_ms": 60_000}, "gpu_idle_below_pct"),
        ({"gpu_idle_below_pct": True, "gpu_idle_window_ms": 60_000}, "gpu_idle_below_pct"),
        ({"gpu_idle_below_pct": 5, "gpu_idle_window_ms": 0}, "gpu_idle_window_ms"),
    ],
)
def test_bad_option_names_its_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        orchestrator.spawn(provider="runpod", **SPAWN, **options)
    assert err.value.field == field


def test_gpu_idle_reaping_needs_a_provider_reporting_utilisation() -> None:
    assert str(Capability.GPU_UTILIZATION) in provider_class("runpod").capabilities()
    assert str(Capability.GPU_UTILIZATION) not in provider_class("vast").capabilities()
    with pytest.raises(ValidationError) as err:
        orchestrator.spawn(
            provider="vast", **SPAWN, gpu_idle_below_pct=5, gpu_idle_window_ms=60_000
        )
    assert err.value.field == "gpu_idle_below_pct"
    assert "utilisation" in str(err.value)
