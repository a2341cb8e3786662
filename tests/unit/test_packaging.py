"""What ``pip install atlas-tasks`` puts into site-packages, and what a plain install needs.

* The wheel holds the ``atlas_tasks`` package only: ``workers/`` (the checkout's process
  entry points) must not land in site-packages under that generic name.
* Everything outside the ``[testing]`` / ``[dashboard]`` extras imports without Starlette,
  uvicorn or pytest, so callers and workers run on a plain install; the commands that need
  an extra say which one.
"""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
from setuptools.config.pyprojecttoml import apply_configuration
from setuptools.dist import Distribution

import atlas_tasks

ROOT = Path(__file__).resolve().parents[2]

#: Installed only by the extras: a plain install must not need them.
EXTRA_ONLY = ("starlette", "uvicorn", "pytest")

#: Modules that belong to an extra (and may import EXTRA_ONLY) or to a framework
#: integration whose framework is the user's own dependency.
BEHIND_AN_EXTRA = (
    "atlas_tasks.testing",  # [testing]: fake cloud, conformance suites, local stack
    "atlas_tasks.demo",  # [testing]: runs the local stack
    "atlas_tasks.dashboard.app",  # [dashboard]: the standalone Starlette ops page
)


def _wheel_packages() -> list[str]:
    dist = Distribution()
    apply_configuration(dist, ROOT / "pyproject.toml")
    return list(dist.packages or [])


def test_wheel_holds_atlas_tasks_and_no_top_level_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    # setuptools resolves [tool.setuptools.packages.find] relative to the project root.
    monkeypatch.chdir(ROOT)
    packages = _wheel_packages()
    top_level = {name.split(".", 1)[0] for name in packages}
    assert top_level == {"atlas_tasks"}, sorted(top_level)
    # The shipped extras are in it; the repository-only harness is not.
    assert {"atlas_tasks.testing", "atlas_tasks.testing.fakecloud", "atlas_tasks.dashboard"} <= set(
        packages
    )
    assert not any(name.startswith(("tests", "bench", "workers")) for name in packages)


def _plain_modules() -> list[str]:
    names = ["atlas_tasks"]
    for info in pkgutil.walk_packages(atlas_tasks.__path__, "atlas_tasks."):
        # __main__ runs the CLI when imported.
        if not info.name.startswith(BEHIND_AN_EXTRA) and not info.name.endswith("__main__"):
            names.append(info.name)
    return names


def test_plain_import_path_needs_no_extra() -> None:
    """Importing every module outside the extras (the worker's task modules included)
    loads neither Starlette, nor uvicorn, nor pytest."""
    modules = [*_plain_modules(), "workers.worker", "workers.beat"]
    assert "atlas_tasks.celery_app" in modules and "atlas_tasks.tasks.compute" in modules
    code = (
        "import importlib, json, sys\n"
        # The Django integration's modules import django.contrib.auth: it needs settings.
        "try:\n"
        "    import django\n"
        "    from django.conf import settings\n"
        "    settings.configure(INSTALLED_APPS=['django.contrib.auth',\n"
        "                                       'django.contrib.contenttypes'])\n"
        "    django.setup()\n"
        "except ImportError:\n"
        "    pass\n"
        f"for name in {modules!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError as exc:  # a framework integration whose framework is absent\n"
        "        if exc.name not in ('django', 'flask', 'flask_login', 'flower'):\n"
        "            raise\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {EXTRA_ONLY!r})))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize(
    ("argv", "extra"),
    [
        (["fakecloud", "--port", "0"], "testing"),
        (["demo"], "testing"),
        (["dashboard", "--insecure-localhost"], "dashboard"),
    ],
)
def test_command_without_its_extra_names_the_extra(argv: list[str], extra: str) -> None:
    # Starlette and uvicorn made unimportable, as on a plain install.
    code = (
        "import sys\n"
        "sys.modules['starlette'] = None\n"
        "sys.modules['uvicorn'] = None\n"
        "from atlas_tasks.cli import main\n"
        f"main({argv!r})\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert f"pip install 'atlas-tasks[{extra}]'" in out.stderr
    assert "Traceback" not in out.stderr
