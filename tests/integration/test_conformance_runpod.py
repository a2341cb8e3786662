"""The shipped conformance suite against the RunPod provider over real HTTP (the fake
cloud speaking RunPod REST v2)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from atlas_tasks.config import AtlasSettings
from atlas_tasks.providers import Provider, get_provider
from atlas_tasks.testing.conformance import ProviderConformance
from atlas_tasks.testing.fakecloud import FakeCloud

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cloud() -> Iterator[FakeCloud]:
    with FakeCloud() as running:
        yield running


class TestRunPodConformance(ProviderConformance):
    @pytest.fixture
    def provider(self, cloud: FakeCloud) -> Provider:
        settings = AtlasSettings(
            runpod_base_url=cloud.runpod_rest_url,
            runpod_runtime_url=cloud.runpod_runtime_url,
            runpod_api_key=cloud.api_key,
        )
        return get_provider("runpod", settings=settings, cache=False)
