"""docker-compose.yml is correct by construction: parsed, and every command resolves to a
real entry point of this project (no Docker engine is needed to check that)."""

from __future__ import annotations

import importlib
import importlib.util
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from atlas_tasks.config import AtlasSettings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    assert isinstance(command, list), "use exec-form commands"
    return [str(c) for c in command]


def test_services_present(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"redis", "fakecloud", "worker", "beat", "flower"}


def test_redis_has_aof_and_expiry_events(compose: dict[str, Any]) -> None:
    cmd = _command(compose["services"]["redis"])
    assert cmd[0] == "redis-server"
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert "x" in cmd[cmd.index("--notify-keyspace-events") + 1]


def test_exactly_one_beat(compose: dict[str, Any]) -> None:
    beats = [
        name
        for name, svc in compose["services"].items()
        if "workers.beat" in " ".join(_command(svc)) or " beat" in " ".join(_command(svc))
    ]
    assert beats == ["beat"]
    assert compose["services"]["beat"]["deploy"]["replicas"] == 1


def test_every_command_resolves_to_a_real_entry_point(compose: dict[str, Any]) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for name, service in compose["services"].items():
        if name == "redis":
            continue
        cmd = _command(service)
        if cmd[:2] == ["python", "-m"]:
            module = importlib.import_module(cmd[2])
            assert callable(getattr(module, "main", None)), f"{name}: no {cmd[2]}.main()"
        else:
            target = scripts[cmd[0]]
            module_name, _, attr = target.partition(":")
            cli_module = importlib.import_module(module_name)
            assert callable(getattr(cli_module, attr)), f"{name}: {target} is not callable"
            assert cmd[1] in cli_module.cli.commands, f"{name}: no `{cmd[0]} {cmd[1]}`"
        assert service.get("build") == "." and "image" in service


def test_worker_sends_events_for_flower() -> None:
    from workers import worker

    args = worker.argv([])
    assert args[0] == "worker" and "-E" in args
    assert set(args[args.index("-Q") + 1].split(",")) == {"compute", "jobs", "fly", "maintenance"}


def test_environment_names_real_settings(compose: dict[str, Any]) -> None:
    fields = set(AtlasSettings.model_fields)
    env = compose["x-atlas-env"]
    for key in env:
        if key.startswith("ATLAS_"):
            assert key.removeprefix("ATLAS_").lower() in fields, key
    assert "ATLAS_SECRET_KEY" in env and ":?" in env["ATLAS_SECRET_KEY"]


def test_dockerfile_ships_package_and_workers() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "COPY atlas_tasks" in text and "COPY workers" in text
    assert importlib.util.find_spec("workers.flower") is not None


def test_flower_is_on_loopback_with_basic_auth(compose: dict[str, Any]) -> None:
    flower = compose["services"]["flower"]
    # Published on the host's loopback only: "0.0.0.0:5555" or a bare "5555:5555" would
    # expose task arguments and worker control to the network.
    for port in flower["ports"]:
        assert str(port).startswith("127.0.0.1:"), port
    auth = flower["environment"]["FLOWER_BASIC_AUTH"]
    assert auth.startswith("${FLOWER_BASIC_AUTH:?"), "compose must refuse to start without it"


def test_init_compose_keeps_flower_on_loopback_with_auth() -> None:
    # `atlas-tasks init` writes a compose file into the user's project: its Flower must be
    # as locked down as ours (it can revoke tasks and shut workers down).
    from atlas_tasks.installer import compose_file

    generated = yaml.safe_load(compose_file(["atlas-tasks", "worker"], ["atlas-tasks", "beat"]))
    flower = generated["services"]["flower"]
    assert all(str(p).startswith("127.0.0.1:") for p in flower["ports"]), flower["ports"]
    assert "FLOWER_BASIC_AUTH" in flower["environment"]
    assert ":?" in flower["environment"]["FLOWER_BASIC_AUTH"]  # compose refuses without it
    assert flower["environment"]["ATLAS_SECRET_KEY"].startswith("${ATLAS_SECRET_KEY")
    # The user's image holds the installed package only (no `workers/`): every service
    # runs an `atlas-tasks` command.
    from atlas_tasks.cli import cli

    for name in ("worker", "beat", "flower"):
        command = _command(generated["services"][name])
        assert command[0] == "atlas-tasks" and command[1] in cli.commands, command
    # supervised like ours, and Redis expires idle clocks promptly
    assert all(svc["restart"] == "unless-stopped" for svc in generated["services"].values())
    assert "--hz" in _command(generated["services"]["redis"])
