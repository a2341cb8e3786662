"""The fake cloud's start-up banner names every provider's base URL (each one answers
there) and the Lambda SSH key name the fake expects."""

from __future__ import annotations

import re

import httpx

from atlas_tasks.testing.fakecloud import FakeCloud
from atlas_tasks.testing.fakecloud.config import FakeCloudConfig
from atlas_tasks.testing.fakecloud.lambda_labs import DEFAULT_SSH_KEY
from atlas_tasks.testing.fakecloud.server import banner


def test_banner_lists_every_provider_and_the_lambda_ssh_key() -> None:
    text = banner("http://127.0.0.1:8765", FakeCloudConfig())
    for label in (
        "RunPod REST v2",
        "RunPod runtime",
        "Lambda Labs",
        "Vast.ai",
        "Fly Machines",
        "Fly logs",
        "admin",
        "api key",
    ):
        assert label in text, label
    assert "http://127.0.0.1:8765/fly" in text
    assert f"Lambda SSH key  {DEFAULT_SSH_KEY}" in text
    assert "fake-key" in text


def test_banner_urls_are_where_the_fake_answers() -> None:
    with FakeCloud() as cloud:
        text = banner(cloud.url, cloud.config)
        labels = r"RunPod REST v2|Lambda Labs|Vast\.ai|Fly Machines"
        urls = dict(re.findall(rf"^  ({labels})\s+(\S+)", text, re.MULTILINE))
        assert urls == {
            "RunPod REST v2": cloud.runpod_rest_url,
            "Lambda Labs": cloud.lambda_labs_url,
            "Vast.ai": cloud.vast_url,
            "Fly Machines": cloud.fly_url,
        }
        headers = {"Authorization": f"Bearer {cloud.api_key}"}
        assert httpx.get(f"{urls['RunPod REST v2']}/v2/pods", headers=headers).status_code == 200
        assert httpx.get(f"{urls['Lambda Labs']}/instances", headers=headers).status_code == 200
        assert httpx.get(f"{urls['Vast.ai']}/instances/", headers=headers).status_code == 200
        assert (
            httpx.get(
                f"{urls['Fly Machines']}/v1/apps/atlas-fake/machines", headers=headers
            ).status_code
            == 200
        )


def test_banner_names_each_setting_next_to_the_value_env_sets() -> None:
    # The README says to copy the base URLs from the banner: each row must carry the value
    # FakeCloud.env() sets and the setting's name (the Fly logs row once showed a full
    # logs path, wrong as ATLAS_FLY_API_URL).
    with FakeCloud() as cloud:
        text = banner(cloud.url, cloud.config)
        env = cloud.env()
    rows = {
        m.group(2): m.group(1)
        for m in re.finditer(r"^  .+?\s{2,}(\S+)\s+(ATLAS_[A-Z_]+)", text, re.MULTILINE)
    }
    for name in (
        "ATLAS_RUNPOD_BASE_URL",
        "ATLAS_RUNPOD_RUNTIME_URL",
        "ATLAS_LAMBDA_LABS_BASE_URL",
        "ATLAS_VAST_BASE_URL",
        "ATLAS_FLY_BASE_URL",
        "ATLAS_FLY_API_URL",
        "ATLAS_LAMBDA_LABS_SSH_KEY_NAME",
    ):
        assert rows.get(name) == env[name], (name, rows.get(name), env[name])
