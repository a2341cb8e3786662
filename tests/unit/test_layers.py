"""The package's layers hold (import-linter contracts in pyproject.toml), and the check bites.

The contracts: a lower layer never imports a higher one (errors/constants < config/specs <
infrastructure < providers < deps/events < features < Celery wiring < entry points), and
the feature services, stores and records never import Celery, the Celery app or the tasks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    # lint-imports finds the package on sys.path: the tree under `root` goes first.
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_package_keeps_its_layers() -> None:
    out = _lint_imports(ROOT)
    assert out.returncode == 0, out.stdout[-4000:]
    assert "0 broken" in out.stdout


@pytest.mark.parametrize(
    ("module", "bad_import", "contract"),
    [
        # settings (bottom) reaching up to the providers
        ("config.py", "import atlas_tasks.providers", "Layers"),
        # a provider reaching up to the Celery wiring
        ("providers/base.py", "import atlas_tasks.celery_app", "Layers"),
        # a feature service (created if it does not exist yet) importing Celery
        ("jobs/service.py", "import celery", "Services"),
        ("jobs/store.py", "from atlas_tasks.tasks import compute", "Services"),
        ("deps.py", "from celery import shared_task", "Services"),
    ],
)
def test_a_wrong_import_breaks_a_contract(
    tmp_path: Path, module: str, bad_import: str, contract: str
) -> None:
    shutil.copytree(
        ROOT / "atlas_tasks",
        tmp_path / "atlas_tasks",
        ignore=shutil.ignore_patterns("__pycache__", "static"),
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "atlas_tasks" / module
    text = target.read_text() if target.exists() else '"""A service."""\n'
    target.write_text(f"{text}\n{bad_import}  # noqa\n")
    out = _lint_imports(tmp_path)
    assert out.returncode == 1, out.stdout[-4000:]
    broken = [line for line in out.stdout.splitlines() if " BROKEN" in line]
    assert any(line.startswith(contract) for line in broken), out.stdout[-4000:]
