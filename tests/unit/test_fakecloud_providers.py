"""The fake cloud's providers behind one protocol, in one list (in-process, no server)."""

from __future__ import annotations

import httpx
import pytest

from atlas_tasks.testing.fakecloud import FakeCloud
from atlas_tasks.testing.fakecloud.app import mounted_prefixes
from atlas_tasks.testing.fakecloud.lambda_labs import DEFAULT_SSH_KEY, INSTANCE_TYPES
from atlas_tasks.testing.fakecloud.providers import PROVIDERS, provider_named


def test_every_provider_is_in_the_list_in_route_order() -> None:
    assert [p.name for p in PROVIDERS] == ["runpod", "lambda_labs", "vast", "fly_logs", "fly"]
    cloud = FakeCloud()
    assert mounted_prefixes(cloud.app) == ["/_admin", "/fly", "/lambda", "/runpod", "/vast"]
    # Every block of the admin state comes from the list (RunPod's at the top level).
    state = cloud.state()
    for provider in PROVIDERS:
        if provider.snapshot_key is not None:
            assert provider.snapshot_key in state
    assert {"pods", "totals", "rate_limit", "faults_injected"} <= set(state)
    with pytest.raises(KeyError, match="known: runpod, lambda_labs"):
        provider_named("aws")


def test_reset_and_age_walk_every_provider() -> None:
    kind = INSTANCE_TYPES[0]
    with (
        FakeCloud() as cloud,
        httpx.Client(headers={"Authorization": f"Bearer {cloud.api_key}"}, timeout=10) as http,
    ):
        pod = http.post(
            f"{cloud.runpod_rest_url}/v2/pods",
            json={"name": "a", "image": "busybox", "gpu": {"id": "NVIDIA H100 80GB HBM3"}},
        ).json()
        launched = http.post(
            f"{cloud.lambda_labs_url}/instance-operations/launch",
            json={
                "region_name": kind.regions[0],
                "instance_type_name": kind.name,
                "ssh_key_names": [DEFAULT_SSH_KEY],
                "name": "b",
            },
        )
        assert launched.status_code == 200, launched.text
        instance_id = launched.json()["data"]["instance_ids"][0]
        before = cloud.state()["pods"][0]["created_at"]
        cloud.age("runpod", pod["id"], 600)
        assert cloud.state()["pods"][0]["created_at"] == pytest.approx(before - 600)
        cloud.age("lambda_labs", instance_id, 600)
        with pytest.raises(KeyError):
            cloud.age("vast", "12345", 1)
        with pytest.raises(KeyError):
            cloud.age("nope", "x", 1)
        cloud.reset()
        state = cloud.state()
        assert state["pods"] == [] and state["lambda_labs"]["instances"] == []
