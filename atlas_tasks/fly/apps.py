"""Find Fly apps in a project tree by reading their ``fly.toml``.

The app name is read with three multiline regexes, tried in order (ExAtlas's rules, see
``reference/provider-apis.md`` §4.3), not with a TOML parser: a ``fly.toml`` that flyctl
itself accepts but a strict TOML parser rejects must still be found.

* ``app = "my-app"``  → ``my-app`` (double quotes, no whitespace inside)
* ``app = 'my-app'``  → ``my-app`` (single quotes, no whitespace inside)
* ``app = my-app  # comment`` → ``my-app`` (bare, stops at a quote, ``#`` or whitespace)

So ``app = "my app"`` matches none of them and the file is skipped, like a file without
an ``app`` line.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

#: The config file flyctl reads in an app directory.
FLY_TOML = "fly.toml"

_APP_PATTERNS = (
    re.compile(r"""^\s*app\s*=\s*"([^"\s]+)\"""", re.MULTILINE),
    re.compile(r"""^\s*app\s*=\s*'([^'\s]+)'""", re.MULTILINE),
    re.compile(r"""^\s*app\s*=\s*([^"'\s#]+)""", re.MULTILINE),
)


def app_name_from_toml(text: str) -> str | None:
    """The app name of a ``fly.toml`` text, or ``None`` when it names no (valid) app."""
    for pattern in _APP_PATTERNS:
        match = pattern.search(text)
        if match:
            return match.group(1)
    return None


def read_app_name(directory: str | os.PathLike[str]) -> str | None:
    """The app named by ``<directory>/fly.toml``; ``None`` if absent or unreadable."""
    try:
        text = (Path(directory) / FLY_TOML).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return app_name_from_toml(text)


def discover_apps(path: str | os.PathLike[str], max_depth: int = 1) -> list[tuple[str, str]]:
    """Every ``(app, dir)`` under ``path``, sorted by app name.

    Args:
        path: project root. Not a directory → ``[]``.
        max_depth: how many directory levels below ``path`` to look in (0 = ``path`` only).
            Hidden directories (``.git``...) are not entered.

    Returns:
        ``(app_name, absolute_dir)`` pairs sorted by app name (then directory).
    """
    root = Path(path)
    if not root.is_dir():
        return []
    found: list[tuple[str, str]] = []
    _walk(root.resolve(), max(0, int(max_depth)), found)
    return sorted(found)


def _walk(directory: Path, depth_left: int, found: list[tuple[str, str]]) -> None:
    app = read_app_name(directory)
    if app is not None:
        found.append((app, str(directory)))
    elif (directory / FLY_TOML).is_file():
        log.debug("skipping %s: no app name in fly.toml", directory)
    if depth_left <= 0:
        return
    try:
        children = sorted(
            p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
    except OSError:
        return
    for child in children:
        _walk(child, depth_left - 1, found)


__all__ = ["FLY_TOML", "app_name_from_toml", "discover_apps", "read_app_name"]
