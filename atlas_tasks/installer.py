"""``atlas-tasks init django|flask``: add to a project what the README otherwise asks you
to add by hand, idempotently (a second run changes nothing), saying what it changed.

Django (``--path`` is the directory of ``manage.py``): ``"atlas_tasks.contrib.django"`` in
``INSTALLED_APPS``, an ``ATLAS`` settings block (secret key and Redis URL read from the
environment, a ``default`` session preset), the URL include in ``ROOT_URLCONF``, and a
``docker-compose.yml`` with Redis, a worker, beat and Flower.

Flask (``--path`` holds ``app.py``): the ``ATLAS_*`` config lines and ``AtlasTasks(app)``
after ``app = Flask(__name__)``, and the same ``docker-compose.yml``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from atlas_tasks.errors import ValidationError

#: Marks every block the installer writes (how a second run knows it is done).
MARKER = "atlas_tasks (added by atlas-tasks init)"

DJANGO_APP = "atlas_tasks.contrib.django"

DJANGO_SETTINGS_BLOCK = f"""

# --- {MARKER} ---
import os as _atlas_os  # noqa: E402

ATLAS = {{
    "REDIS_URL": _atlas_os.environ.get("ATLAS_REDIS_URL", "redis://localhost:6379/0"),
    # A Fernet key (`atlas-tasks keygen`), the same on every web node and worker.
    "SECRET_KEY": _atlas_os.environ.get("ATLAS_SECRET_KEY"),
    "DEFAULT_PROVIDER": _atlas_os.environ.get("ATLAS_DEFAULT_PROVIDER", "runpod"),
    # What a browser may open: it names a preset, never an image or a GPU.
    "SESSION_PRESETS": {{
        "default": {{
            "gpu": "h100",
            "image": "ghcr.io/acme/realtime-inference:latest",
            "ports": [[8000, "http"]],
            "auth": "bearer",
            "idle_ttl_ms": 15 * 60_000,
        }},
    }},
}}
"""

FLASK_BLOCK = f"""
# --- {MARKER} ---
app.config.setdefault("ATLAS_REDIS_URL",
                      os.environ.get("ATLAS_REDIS_URL", "redis://localhost:6379/0"))
app.config.setdefault("ATLAS_SECRET_KEY", os.environ.get("ATLAS_SECRET_KEY"))
app.config.setdefault("ATLAS_SESSION_PRESETS", {{
    "default": {{"gpu": "h100", "image": "ghcr.io/acme/realtime-inference:latest",
                "ports": [[8000, "http"]], "auth": "bearer", "idle_ttl_ms": 15 * 60_000}},
}})
# The owner of a session: Flask-Login's current_user when it is set up, else
# app.config["ATLAS_OWNER"] = lambda request: <the user's id or None>, set here:
# the extension below reads the ATLAS_* keys once.
AtlasTasks(app)
# --- end {MARKER} ---
"""


def compose_file(worker: list[str], beat: list[str]) -> str:
    """A ``docker-compose.yml`` with Redis (AOF, expiry events), worker, beat and Flower."""

    def cmd(args: list[str]) -> str:
        return "[" + ", ".join(f'"{a}"' for a in args) + "]"

    return f"""# {MARKER}
# Redis for atlas_tasks plus its worker, beat and Flower, built from this project's image.
x-atlas-env: &atlas-env
  ATLAS_REDIS_URL: redis://redis:6379/0
  ATLAS_SECRET_KEY: ${{ATLAS_SECRET_KEY:?generate one with `atlas-tasks keygen`}}
  ATLAS_DEFAULT_PROVIDER: ${{ATLAS_DEFAULT_PROVIDER:-runpod}}
  RUNPOD_API_KEY: ${{RUNPOD_API_KEY:-}}

services:
  redis:
    image: redis:7
    restart: unless-stopped
    command: ["redis-server", "--appendonly", "yes", "--appendfsync", "everysec",
              "--notify-keyspace-events", "Ex", "--hz", "100"]
    volumes: [redis-data:/data]
  worker:
    build: .
    restart: unless-stopped
    command: {cmd(worker)}
    environment: *atlas-env
    depends_on: [redis]
  beat:
    build: .
    restart: unless-stopped
    command: {cmd(beat)}
    environment: *atlas-env
    depends_on: [redis]
  flower:
    # Needs `atlas_tasks[flower]` in the image. Flower shows task arguments and can revoke
    # tasks and shut workers down: basic auth is required and the host publishes it on
    # loopback only (reach it through an SSH tunnel or a TLS reverse proxy).
    build: .
    restart: unless-stopped
    # `atlas-tasks flower`, not `python -m workers.flower`: the wheel installs no `workers`
    # package; Flower reads FLOWER_ADDRESS / FLOWER_BASIC_AUTH from the environment.
    command: ["atlas-tasks", "flower"]
    environment:
      <<: *atlas-env
      FLOWER_PORT: "5555"
      FLOWER_ADDRESS: 0.0.0.0
      FLOWER_BASIC_AUTH: ${{FLOWER_BASIC_AUTH:?set user:password for Flower's basic auth}}
    ports: ["127.0.0.1:5555:5555"]
    depends_on: [redis]

volumes:
  redis-data:
"""


@dataclass
class Change:
    """One file the installer changed (or would change with ``--dry-run``)."""

    path: Path
    what: str
    new_text: str


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise ValidationError(f"path: cannot read {path}: {exc}", field="path") from None


def _django_files(root: Path) -> tuple[Path, Path]:
    """``(settings.py, root urls.py)`` of the project at ``root``."""
    if not (root / "manage.py").is_file():
        raise ValidationError(
            f"path: no manage.py in {root} (pass --path to the Django project's directory)",
            field="path",
        )
    candidates = sorted(root.glob("*/settings.py"))
    if len(candidates) != 1:
        raise ValidationError(
            f"path: expected one */settings.py under {root}, found {len(candidates)}", field="path"
        )
    settings = candidates[0]
    match = re.search(r"^ROOT_URLCONF\s*=\s*['\"]([\w.]+)['\"]", _read(settings), re.M)
    if not match:
        raise ValidationError(f"path: no ROOT_URLCONF in {settings}", field="path")
    urls = root / (match.group(1).replace(".", "/") + ".py")
    if not urls.is_file():
        raise ValidationError(f"path: ROOT_URLCONF file {urls} not found", field="path")
    return settings, urls


def plan_django(root: Path) -> list[Change]:
    """The changes ``init django`` makes under ``root`` (empty when already done)."""
    settings, urls = _django_files(root)
    changes: list[Change] = []
    text = _read(settings)
    new = text
    if f'"{DJANGO_APP}"' not in new and f"'{DJANGO_APP}'" not in new:
        new, count = re.subn(
            r"(INSTALLED_APPS\s*=\s*\[\s*\n)", rf'\1    "{DJANGO_APP}",\n', new, count=1
        )
        if not count:
            raise ValidationError(f"path: no INSTALLED_APPS = [ list in {settings}", field="path")
    if MARKER not in new:
        new = new.rstrip("\n") + "\n" + DJANGO_SETTINGS_BLOCK
    if new != text:
        changes.append(
            Change(
                settings, f"added {DJANGO_APP} to INSTALLED_APPS and the ATLAS settings block", new
            )
        )
    text = _read(urls)
    if f"{DJANGO_APP}.urls" not in text:
        new = text
        if not re.search(r"^from django\.urls import .*\binclude\b", new, re.M):
            new, count = re.subn(
                r"^from django\.urls import (.*)$",
                r"from django.urls import include, \1",
                new,
                count=1,
                flags=re.M,
            )
            if not count:
                new = "from django.urls import include, path\n" + new
        new, count = re.subn(
            r"(urlpatterns\s*=\s*\[\s*\n)",
            rf'\1    path("atlas/", include("{DJANGO_APP}.urls")),\n',
            new,
            count=1,
        )
        if not count:
            new += f'\nurlpatterns += [path("atlas/", include("{DJANGO_APP}.urls"))]\n'
        changes.append(Change(urls, 'added path("atlas/", include(...)) to urlpatterns', new))
    changes += _compose(
        root, ["python", "manage.py", "atlas", "worker"], ["python", "manage.py", "atlas", "beat"]
    )
    return changes


def plan_flask(root: Path, app_file: str = "app.py") -> list[Change]:
    """The changes ``init flask`` makes under ``root`` (empty when already done)."""
    path = root / app_file
    text = _read(path)
    changes: list[Change] = []
    if MARKER not in text:
        match = re.search(r"^(\w+)\s*=\s*Flask\(.*\)\s*$", text, re.M)
        if not match or match.group(1) != "app":
            raise ValidationError(f"path: no `app = Flask(...)` line in {path}", field="path")
        block = FLASK_BLOCK
        new = text[: match.end()] + "\n" + block + text[match.end() :]
        imports = ""
        if not re.search(r"^import os$", new, re.M):
            imports += "import os\n"
        imports += "from atlas_tasks.contrib.flask import AtlasTasks\n"
        first = re.search(r"^(from|import) ", new, re.M)
        at = first.start() if first else 0
        new = new[:at] + imports + new[at:]
        changes.append(Change(path, "added the ATLAS_* config and AtlasTasks(app)", new))
    changes += _compose(root, ["atlas-tasks", "worker"], ["atlas-tasks", "beat"])
    return changes


def _compose(root: Path, worker: list[str], beat: list[str]) -> list[Change]:
    path = root / "docker-compose.yml"
    if path.exists():
        return []  # never overwrite the project's own compose file
    return [
        Change(
            path,
            "wrote docker-compose.yml (redis, worker, beat, flower)",
            compose_file(worker, beat),
        )
    ]


def run(framework: str, root: Path, *, dry_run: bool = False) -> list[Change]:
    """Plan and (unless ``dry_run``) apply the changes; returns them.

    Raises:
        ValidationError: unknown framework or a project the installer cannot read.
    """
    if framework == "django":
        changes = plan_django(root)
    elif framework == "flask":
        changes = plan_flask(root)
    else:
        raise ValidationError(f"framework: {framework!r} is not django or flask", field="framework")
    if not dry_run:
        for change in changes:
            change.path.write_text(change.new_text)
    return changes


__all__ = ["MARKER", "Change", "plan_django", "plan_flask", "run"]
