"""Chaos suite settings: the mode (``ci`` by default, ``long``) and the seed.

``ATLAS_CHAOS=long`` / ``ATLAS_CHAOS_SEED=N`` work with any pytest command line. The
options ``--chaos-mode=long`` / ``--chaos-seed=N`` are registered here, so pytest accepts
them when ``tests/chaos`` is named on the command line (``pytest tests/chaos
--chaos-mode=long``). Both are read at configure time because the autouse fixture of
``tests/conftest.py`` clears every ``ATLAS_*`` variable before each test runs.
"""

from __future__ import annotations

import os

import pytest

from tests.support.chaos import ChaosConfig

_ENV = pytest.StashKey[dict[str, str]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos-mode",
        choices=("ci", "long"),
        default=None,
        help="chaos suite size: ci (230 planned, ≥ 200 spawned, ~40 s of chaos; default) or long "
        "(560 planned, ~90 s). Also ATLAS_CHAOS=long.",
    )
    parser.addoption(
        "--chaos-seed",
        type=int,
        default=None,
        help="seed of the session plan and the fake cloud's faults (also ATLAS_CHAOS_SEED).",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "chaos: fault/kill/restart suite against a real local cluster "
        "(runs in CI; ATLAS_CHAOS=long for the long mode)",
    )
    config.stash[_ENV] = {
        k: v for k, v in os.environ.items() if k in ("ATLAS_CHAOS", "ATLAS_CHAOS_SEED")
    }


@pytest.fixture(scope="session")
def chaos_config(pytestconfig: pytest.Config) -> ChaosConfig:
    """The run's :class:`ChaosConfig`: the mode's preset, with the seed if one is given."""
    env = pytestconfig.stash[_ENV]
    mode = pytestconfig.getoption("--chaos-mode", None) or env.get("ATLAS_CHAOS") or "ci"
    seed = pytestconfig.getoption("--chaos-seed", None) or env.get("ATLAS_CHAOS_SEED")
    overrides = {"seed": int(seed)} if seed else {}
    return ChaosConfig.long(**overrides) if mode == "long" else ChaosConfig.ci(**overrides)
