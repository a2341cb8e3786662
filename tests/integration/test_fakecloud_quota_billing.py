"""The fake cloud's per-key quota, per-pod billing and pinned GPU utilisation, over HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from atlas_tasks.testing.fakecloud import FakeCloud

H100 = "NVIDIA H100 80GB HBM3"


@pytest.fixture(scope="module")
def two_keys() -> Iterator[FakeCloud]:
    with FakeCloud(api_keys=["key-a", "key-b"], rate_limit_per_minute=3) as running:
        yield running


def _client(base: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def test_quota_is_per_key_and_per_provider_api(two_keys: FakeCloud) -> None:
    two_keys.reset()
    with (
        _client(f"{two_keys.runpod_rest_url}/v2", "key-a") as a,
        _client(f"{two_keys.runpod_rest_url}/v2", "key-b") as b,
        _client(two_keys.lambda_labs_url, "key-a") as lam,
    ):
        remaining = [a.get("/pods").headers["RateLimit"] for _ in range(3)]
        assert [r.split(";")[1] for r in remaining] == ["r=2", "r=1", "r=0"]
        refused = a.get("/pods")
        assert refused.status_code == 429
        assert refused.json()["status"] == 429
        assert 55 <= int(refused.headers["Retry-After"]) <= 60  # the window opened just now
        assert two_keys.state()["rate_limit"]["refused"] == {"rest": 1}
        assert two_keys.state()["totals"]["rate_limited"] == 1
        assert b.get("/pods").status_code == 200  # another key has its own window
        assert lam.get("/instances").status_code == 200  # another API counts apart
        # The admin state names keys by hash only.
        assert "key-a" not in str(two_keys.state()["rate_limit"])


def test_quota_changes_at_run_time_and_reset_restores_it(two_keys: FakeCloud) -> None:
    two_keys.reset()
    admin = f"{two_keys.url}/_admin/rate-limit"
    assert httpx.post(admin, json={"per_minute": None}).json()["per_minute"] is None
    with _client(f"{two_keys.runpod_rest_url}/v2", "key-a") as a:
        assert all(a.get("/pods").status_code == 200 for _ in range(6))
        assert a.get("/pods").headers["RateLimit-Policy"] == '"minute";q=600;w=60'
    assert httpx.post(admin, json={"per_minute": 0}).status_code == 400
    assert httpx.post(admin, json={}).status_code == 400
    two_keys.reset()
    assert httpx.get(admin).json()["per_minute"] == 3


def test_billing_follows_price_and_running_time(cloud: FakeCloud) -> None:
    with _client(f"{cloud.runpod_rest_url}/v2", cloud.api_key) as api:
        pod = api.post(
            "/pods", json={"name": "b", "image": "busybox", "gpu": {"id": H100, "count": 2}}
        ).json()
        cloud.age_pod(pod["id"], 1800)  # ran half an hour
        bill = api.get("/billing/pods", params={"podId": pod["id"]}).json()
        assert bill["records"][0]["gpuAmount"] == pytest.approx(pod["cost"] / 2, rel=1e-3)
        assert api.post(f"/pods/{pod['id']}/action", json={"action": "stop"}).status_code == 200
        cloud.age_pod(pod["id"], 7200)  # two hours stopped: not billed
        stopped = api.get("/billing/pods", params={"podId": pod["id"]}).json()
        amount = stopped["records"][0]["totalAmount"]
        assert amount == pytest.approx(pod["cost"] / 2, rel=1e-3)
        assert api.post(f"/pods/{pod['id']}/action", json={"action": "start"}).status_code == 200
        cloud.age_pod(pod["id"], 3600)  # another hour running after the restart
        assert api.delete(f"/pods/{pod['id']}").status_code == 204
        final = api.get("/billing/pods").json()
        record = next(r for r in final["records"] if r["podId"] == pod["id"])
        assert record["totalAmount"] == pytest.approx(pod["cost"] * 1.5, rel=1e-3)
        assert final["metadata"]["totals"]["totalAmount"] >= record["totalAmount"]


def test_gpu_utilisation_can_be_pinned_per_pod(cloud: FakeCloud) -> None:
    with _client(f"{cloud.runpod_rest_url}/v2", cloud.api_key) as api:
        pod = api.post(
            "/pods", json={"name": "g", "image": "busybox", "gpu": {"id": H100, "count": 2}}
        ).json()
        admin = f"{cloud.url}/_admin/pods/{pod['id']}/gpu"
        assert httpx.post(admin, json={"util": 2, "memoryUtil": [10, 20]}).status_code == 200
        gpus = api.get(f"/pods/{pod['id']}").json()["runtime"]["gpus"]
        assert gpus == [{"util": 2, "memoryUtil": 10}, {"util": 2, "memoryUtil": 20}]
        assert httpx.post(admin, json={"util": 150}).status_code == 400
        assert httpx.post(admin, json={}).status_code == 400
        assert httpx.post(f"{cloud.url}/_admin/pods/nope/gpu", json={"util": 1}).status_code == 404
        cloud.set_gpu_util(pod["id"], None)  # unpinned: the synthetic load again
        assert api.get(f"/pods/{pod['id']}").json()["runtime"]["gpus"][0]["util"] >= 20
        with pytest.raises(KeyError):
            cloud.set_gpu_util("nope", 1)
