"""The ``atlas-tasks`` command line, through click's CliRunner."""

from __future__ import annotations

import sys
import types
from collections.abc import Sequence
from typing import Any, ClassVar, NoReturn

import pytest
from click.testing import CliRunner

import atlas_tasks
from atlas_tasks import cli
from atlas_tasks.providers import registry
from atlas_tasks.providers.base import StubProvider


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    # Wide enough that rich does not wrap or ellipsize table cells.
    monkeypatch.setenv("COLUMNS", "250")
    return CliRunner()


class DummyStub(StubProvider):
    name: ClassVar[str] = "dummy"


def test_version(runner: CliRunner) -> None:
    result = runner.invoke(cli.cli, ["version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"atlas-tasks {atlas_tasks.__version__}"


def test_main_entry_point(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["version"])
    assert info.value.code == 0
    assert atlas_tasks.__version__ in capsys.readouterr().out


def test_providers_table(runner: CliRunner) -> None:
    result = runner.invoke(cli.cli, ["providers"])
    assert result.exit_code == 0, result.output
    for name in ("runpod", "fly", "lambda_labs", "vast", "mock"):
        assert name in result.output
    mock_line = next(line for line in result.output.splitlines() if " mock " in line)
    assert "ready" in mock_line
    for cap in ("http_proxy", "network_volumes", "raw_tcp", "serverless", "spot", "webhooks"):
        assert cap in mock_line


def test_providers_survives_a_broken_provider(runner: CliRunner) -> None:
    saved = dict(registry._registry)
    registry._registry["broken"] = "atlas_tasks.no_such_module:Nope"
    try:
        result = runner.invoke(cli.cli, ["providers"])
    finally:
        registry._registry.clear()
        registry._registry.update(saved)
    assert result.exit_code == 0, result.output
    broken = next(line for line in result.output.splitlines() if " broken " in line)
    assert "unavailable" in broken
    assert "mock" in result.output


def test_gpus_catalog_table(runner: CliRunner) -> None:
    result = runner.invoke(cli.cli, ["gpus"])
    assert result.exit_code == 0, result.output
    h100 = next(line for line in result.output.splitlines() if "│ h100 " in line)
    assert "NVIDIA H100 80GB HBM3" in h100 and "gpu_1x_h100_sxm5" in h100
    a100 = next(line for line in result.output.splitlines() if "│ a100_80g " in line)
    assert "a100-sxm4-80gb" in a100


def test_gpus_for_provider_shows_prices(runner: CliRunner) -> None:
    result = runner.invoke(cli.cli, ["gpus", "--provider", "mock"])
    assert result.exit_code == 0, result.output
    assert "mock-h100" in result.output
    assert "Mock H100" in result.output
    assert "$0.00/h" in result.output
    assert "80 GB" in result.output


def test_gpus_error_is_a_message_not_a_traceback(runner: CliRunner) -> None:
    result = runner.invoke(cli.cli, ["gpus", "--provider", "nimbus"])
    assert result.exit_code == 1
    assert "unknown provider 'nimbus'" in result.output
    assert "Traceback" not in result.output


def test_gpus_unsupported_provider(runner: CliRunner) -> None:
    atlas_tasks.register_provider("dummy", DummyStub)
    try:
        result = runner.invoke(cli.cli, ["gpus", "--provider", "dummy"])
    finally:
        registry._registry.pop("dummy", None)
    assert result.exit_code == 1
    assert "[dummy] unsupported" in result.output
    assert "Traceback" not in result.output


def test_fakecloud_passes_options(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    fake = types.ModuleType("atlas_tasks.testing.fakecloud")
    fake.serve = lambda **kw: calls.append(kw)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "atlas_tasks.testing.fakecloud", fake)
    result = runner.invoke(
        cli.cli,
        [
            "fakecloud",
            "--port",
            "9999",
            "--latency",
            "0.1",
            "--error-rate",
            "0.2",
            "--rate-limit-rate",
            "0.3",
            "--create-500-rate",
            "0.4",
            "--api-key",
            "k1",
            "--api-key",
            "k2",
            "--seed",
            "7",
        ],
    )
    assert result.exit_code == 0, result.output
    assert calls == [
        {
            "host": "127.0.0.1",
            "port": 9999,
            "latency_s": 0.1,
            "error_rate": 0.2,
            "rate_limit_rate": 0.3,
            "create_500_after_create_rate": 0.4,
            "api_keys": ["k1", "k2"],
            "seed": 7,
        }
    ]


def test_fakecloud_defaults(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    fake = types.ModuleType("atlas_tasks.testing.fakecloud")
    fake.serve = lambda **kw: calls.append(kw)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "atlas_tasks.testing.fakecloud", fake)
    assert runner.invoke(cli.cli, ["fakecloud"]).exit_code == 0
    assert calls[0]["host"] == "127.0.0.1" and calls[0]["port"] == 8710
    assert "api_keys" not in calls[0] and calls[0]["seed"] is None


def test_missing_optional_module_is_reported(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "atlas_tasks.demo", None)  # import raises
    result = runner.invoke(cli.cli, ["demo"])
    assert result.exit_code == 1
    assert "the demo is not available" in result.output


def test_demo_exit_code(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("atlas_tasks.demo")
    fake.run = lambda: 3  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "atlas_tasks.demo", fake)
    assert runner.invoke(cli.cli, ["demo"]).exit_code == 3


class _Exec(Exception):
    def __init__(self, argv: Sequence[str]) -> None:
        super().__init__(argv)
        self.argv = list(argv)


def _fake_exec(argv: Sequence[str]) -> NoReturn:
    raise _Exec(argv)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["worker"], ["worker", "-E", "-Q", "compute,jobs,fly,maintenance", "--loglevel", "INFO"]),
        (
            ["worker", "-l", "DEBUG", "--concurrency", "2"],
            [
                "worker",
                "-E",
                "-Q",
                "compute,jobs,fly,maintenance",
                "--loglevel",
                "DEBUG",
                "--concurrency",
                "2",
            ],
        ),
        (["beat"], ["beat", "--loglevel", "INFO"]),
        (["flower"], ["flower", "--port=5555"]),
        (
            ["flower", "--port", "6000", "--basic-auth=u:p"],
            ["flower", "--port=6000", "--basic-auth=u:p"],
        ),
    ],
)
def test_celery_wrappers_exec_celery(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, args: list[str], expected: list[str]
) -> None:
    monkeypatch.setattr(cli, "_exec", _fake_exec)
    result = runner.invoke(cli.cli, args)
    assert isinstance(result.exception, _Exec), result.output
    assert result.exception.argv == [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "atlas_tasks.celery_app",
        *expected,
    ]


def test_fakecloud_options_are_accepted_by_the_real_fake_cloud() -> None:
    # The option names the CLI passes must be ones the fake cloud's config knows.
    from atlas_tasks.testing.fakecloud.config import split_options

    config = split_options(
        latency_s=0.0,
        error_rate=0.1,
        rate_limit_rate=0.2,
        create_500_after_create_rate=0.3,
        seed=1,
        api_keys=["k"],
    )
    assert config.api_keys == frozenset({"k"})


def test_keygen_prints_a_usable_fernet_key() -> None:
    from click.testing import CliRunner
    from cryptography.fernet import Fernet

    from atlas_tasks.cli import cli

    result = CliRunner().invoke(cli, ["keygen"])
    assert result.exit_code == 0
    Fernet(result.output.strip().encode())  # raises if not a valid key
