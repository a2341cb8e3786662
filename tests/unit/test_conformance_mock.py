"""The shipped conformance suite, run against the in-memory mock provider."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from atlas_tasks.providers.base import Provider
from atlas_tasks.providers.mock import MockProvider
from atlas_tasks.testing.conformance import ProviderConformance


class TestMockMemoryConformance(ProviderConformance):
    @pytest.fixture
    def provider(self) -> Iterator[Provider]:
        MockProvider.reset()
        yield MockProvider()
        MockProvider.reset()


class TestThreeLineSubclass(ProviderConformance):
    """The documented three-line form works as is (state shared with the class above)."""

    @pytest.fixture
    def provider(self) -> Provider:
        return MockProvider()


def test_base_class_is_not_collected_and_demands_a_provider(tmp_path: Path) -> None:
    (tmp_path / "test_forgot.py").write_text(
        "from atlas_tasks.testing.conformance import ProviderConformance\n\n"
        "class TestForgot(ProviderConformance):\n"
        "    pass\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    # One error per inherited test: the base class itself is never collected (not Test*).
    tests = [n for n in dir(ProviderConformance) if n.startswith("test_")]
    assert len(tests) >= 12
    assert f"{len(tests)} errors" in result.stdout, result.stdout[-2000:]
    assert "must override the `provider` fixture" in result.stdout
