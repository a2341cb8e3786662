"""App discovery from ``fly.toml`` (reference §4.3 rules)."""

from __future__ import annotations

from pathlib import Path

import pytest

from atlas_tasks.fly import discover_apps
from atlas_tasks.fly.apps import app_name_from_toml


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('app = "my-app"\n', "my-app"),
        ("app = 'single-quoted'\n", "single-quoted"),
        ("app = bare-name  # a comment\n", "bare-name"),
        ("app=tight#comment\n", "tight"),
        ('  app   =   "indented"\nprimary_region = "cdg"\n', "indented"),
        ('# fly.toml\nprimary_region = "cdg"\n\napp = "later-line"\n', "later-line"),
        ('app = "my app"\n', None),  # a quoted name with a space is not a name
        ("app = 'my app'\n", None),
        ('primary_region = "cdg"\n', None),  # no app line
        ('application = "x"\n', None),
        ('[build]\n  app = "nested"\n', "nested"),  # multiline ^, as ExAtlas
        ("", None),
    ],
)
def test_app_name_rules(text: str, expected: str | None) -> None:
    assert app_name_from_toml(text) == expected


def _app(root: Path, rel: str, toml: str) -> Path:
    directory = root / rel if rel else root
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "fly.toml").write_text(toml)
    return directory


def test_discover_sorted_by_app_with_depth(tmp_path: Path) -> None:
    _app(tmp_path, "", 'app = "root-app"\n')
    web = _app(tmp_path, "web", "app = zeta  # web\n")
    api = _app(tmp_path, "api", "app = 'alpha'\n")
    _app(tmp_path, "broken", 'app = "has space"\n')
    _app(tmp_path, "noapp", 'primary_region = "cdg"\n')
    _app(tmp_path, "services/worker", 'app = "deep"\n')
    (tmp_path / "empty").mkdir()
    (tmp_path / "README.md").write_text("not a dir")

    root = str(tmp_path.resolve())
    assert discover_apps(tmp_path) == [
        ("alpha", str(api.resolve())),
        ("root-app", root),
        ("zeta", str(web.resolve())),
    ]
    assert discover_apps(tmp_path, max_depth=0) == [("root-app", root)]
    assert [a for a, _ in discover_apps(str(tmp_path), max_depth=2)] == [
        "alpha",
        "deep",
        "root-app",
        "zeta",
    ]


def test_not_a_directory_gives_nothing(tmp_path: Path) -> None:
    assert discover_apps(tmp_path / "missing") == []
    file = tmp_path / "fly.toml"
    file.write_text('app = "x"\n')
    assert discover_apps(file) == []
