"""The ``fly deploy`` runner against a fake ``fly`` executable written into tmp_path."""

from __future__ import annotations

import os
import stat
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from atlas_tasks import events
from atlas_tasks.config import AtlasSettings, reset_settings
from atlas_tasks.errors import AtlasTimeoutError, ProviderError, UnsupportedError, ValidationError
from atlas_tasks.fly import stream_deploy, subscribe_deploy
from atlas_tasks.fly.deploy import LineSplitter, deploy_env, find_fly_executable, run_deploy
from atlas_tasks.redis_conn import reset_redis_clients

#: ``install(body)`` writes a fake fly with this body and puts it first on PATH.
Installer = Callable[[str], Path]

PRELUDE = """\
import os, subprocess, sys, time
def say(text, end="\\n"):
    sys.stdout.write(text + end)
    sys.stdout.flush()
"""


def write_fly(bin_dir: Path, body: str) -> Path:
    """A fake ``fly`` (Python script) in ``bin_dir``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / "fly"
    path.write_text(f"#!{sys.executable}\n{PRELUDE}{textwrap.dedent(body)}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "project" / "api"
    directory.mkdir(parents=True)
    (directory / "fly.toml").write_text('app = "api"\n')
    return directory


@pytest.fixture
def on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Installer:
    """Install a fake fly on PATH: ``on_path(body)``."""
    bin_dir = tmp_path / "bin"

    def install(body: str) -> Path:
        path = write_fly(bin_dir, body)
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        return path

    return install


def gone(pid: int, timeout: float = 3.0) -> bool:
    """True once ``pid`` no longer exists (or is a zombie about to be reaped by init)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def pids_in(lines: list[str]) -> list[int]:
    return [int(line.split()[1]) for line in lines if line.startswith("pid ")]


# ---------------------------------------------------------------------- line splitting


def test_line_splitter_reassembles_partial_chunks_and_crlf() -> None:
    s = LineSplitter()
    assert s.feed(b"hel") == []
    assert s.feed(b"lo\nwor") == ["hello"]
    assert s.feed(b"ld\r\n\nlast") == ["world", ""]
    # a multi-byte character split across chunks is not mangled
    snow = "☃".encode()
    assert s.feed(b" " + snow[:1]) == []
    assert s.feed(snow[1:] + b"\n") == ["last ☃"]
    assert s.feed(b"tail") == []
    assert s.flush() == ["tail"]
    assert s.flush() == []


# ---------------------------------------------------------------------- runner


def test_lines_arrive_in_order_as_they_are_printed(on_path: Installer, app_dir: Path) -> None:
    on_path("""
        assert sys.argv[1:] == ["deploy", "--remote-only"], sys.argv
        say("cwd " + os.getcwd())
        for i in range(1, 6):
            say(f"line {i}")
            time.sleep(0.05)
        say("")                              # blank lines are not published
        sys.stdout.write("par"); sys.stdout.flush(); time.sleep(0.1)
        sys.stdout.write("tial\\r\\n"); sys.stdout.flush()
        sys.stderr.write("from stderr\\n"); sys.stderr.flush()
        sys.stdout.write("no newline at the end"); sys.stdout.flush()
    """)
    seen: list[tuple[float, str]] = []
    result = run_deploy(app_dir, on_line=lambda line: seen.append((time.monotonic(), line)))
    lines = [line for _, line in seen]
    assert lines == [
        f"cwd {app_dir.resolve()}",
        "line 1",
        "line 2",
        "line 3",
        "line 4",
        "line 5",
        "partial",
        "from stderr",
        "no newline at the end",
    ]
    assert result.code == 0 and result.lines == 9
    # streamed, not collected at the end: line 1 arrived well before line 5
    assert seen[5][0] - seen[1][0] >= 0.15


def test_relative_app_dir_is_joined_to_project(on_path: Installer, app_dir: Path) -> None:
    on_path('say("cwd " + os.getcwd())')
    seen: list[str] = []
    run_deploy("api", project_path=app_dir.parent, on_line=seen.append)
    assert seen == [f"cwd {app_dir.resolve()}"]


def test_activity_timeout_kills_the_process_tree(on_path: Installer, app_dir: Path) -> None:
    on_path("""
        child = subprocess.Popen(["sleep", "300"])
        say(f"pid {os.getpid()}")
        say(f"pid {child.pid}")
        time.sleep(300)
    """)
    seen: list[str] = []
    started = time.monotonic()
    with pytest.raises(AtlasTimeoutError) as info:
        run_deploy(
            app_dir, on_line=seen.append, activity_timeout_s=0.6, max_timeout_s=30, kill_grace_s=0.5
        )
    assert 0.5 < time.monotonic() - started < 5
    assert info.value.kind == "timeout" and info.value.raw["timeout"] == "activity"
    assert "activity timeout" in str(info.value)
    pids = pids_in(seen)
    assert len(pids) == 2
    assert all(gone(pid) for pid in pids), pids


def test_activity_timer_is_reset_by_output(on_path: Installer, app_dir: Path) -> None:
    on_path("""
        for i in range(6):
            say(f"tick {i}")
            time.sleep(0.2)
    """)
    result = run_deploy(app_dir, activity_timeout_s=0.5, max_timeout_s=30)
    assert result.lines == 6  # 1.2 s in total, never 0.5 s silent


def test_absolute_cap_fires_even_with_steady_output(on_path: Installer, app_dir: Path) -> None:
    on_path("""
        child = subprocess.Popen(["sleep", "300"])
        say(f"pid {os.getpid()}")
        say(f"pid {child.pid}")
        while True:
            say("still working")
            time.sleep(0.05)
    """)
    seen: list[str] = []
    started = time.monotonic()
    with pytest.raises(AtlasTimeoutError) as info:
        run_deploy(
            app_dir, on_line=seen.append, activity_timeout_s=5, max_timeout_s=0.8, kill_grace_s=0.5
        )
    assert time.monotonic() - started < 4
    assert info.value.raw["timeout"] == "max"
    assert "max timeout" in str(info.value)
    assert all(gone(pid) for pid in pids_in(seen))


def test_sigterm_ignoring_flyctl_is_killed_after_the_grace(
    on_path: Installer, app_dir: Path
) -> None:
    on_path("""
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        say(f"pid {os.getpid()}")
        time.sleep(300)
    """)
    seen: list[str] = []
    with pytest.raises(AtlasTimeoutError):
        run_deploy(app_dir, on_line=seen.append, activity_timeout_s=0.3, kill_grace_s=0.3)
    assert gone(pids_in(seen)[0])


def test_nonzero_exit_is_a_provider_error_with_the_tail(on_path: Installer, app_dir: Path) -> None:
    on_path("""
        for i in range(1, 41):
            say(f"output {i:02d}")
        say("Error: failed to fetch an image or build from source")
        sys.exit(3)
    """)
    with pytest.raises(ProviderError) as info:
        run_deploy(app_dir)
    err = info.value
    assert (err.kind, err.status, err.provider) == ("provider", 3, "fly")
    assert "exited with code 3" in str(err)
    assert "failed to fetch an image" in str(err) and "output 40" in str(err)
    assert "output 05" not in str(err)  # only the tail


def test_leftover_helper_holding_the_pipe_is_killed_after_exit(
    on_path: Installer, app_dir: Path
) -> None:
    on_path("""
        child = subprocess.Popen(["sleep", "300"])   # inherits stdout
        say(f"pid {child.pid}")
    """)
    seen: list[str] = []
    started = time.monotonic()
    result = run_deploy(app_dir, on_line=seen.append, kill_grace_s=0.3)
    assert result.code == 0
    assert time.monotonic() - started < 4
    assert gone(pids_in(seen)[0])


def test_missing_executable_is_unsupported(
    tmp_path: Path, app_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(UnsupportedError) as info:
        run_deploy(app_dir)
    assert "not found in PATH" in str(info.value) and info.value.kind == "unsupported"
    with pytest.raises(UnsupportedError):
        find_fly_executable(AtlasSettings(fly_executable="no-such-flyctl"))


def test_flyctl_name_is_a_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_fly(tmp_path / "bin", "")
    path.rename(tmp_path / "bin" / "flyctl")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert find_fly_executable(AtlasSettings()) == str(tmp_path / "bin" / "flyctl")


def test_bad_directory_is_a_validation_error_naming_app_dir(
    on_path: Installer, tmp_path: Path
) -> None:
    on_path("")
    for bad in (tmp_path / "missing", ""):
        with pytest.raises(ValidationError) as info:
            run_deploy(bad)
        assert info.value.field == "app_dir"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValidationError):
        run_deploy(a_file)


def test_token_is_passed_through_env(
    on_path: Installer, app_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_path('say("token=" + os.environ.get("FLY_API_TOKEN", "none"))')
    seen: list[str] = []
    run_deploy(app_dir, on_line=seen.append)
    assert seen == ["token=none"]
    monkeypatch.setenv("FLY_API_TOKEN", "deploy-tok")
    reset_settings()
    assert deploy_env()["FLY_API_TOKEN"] == "deploy-tok"
    seen.clear()
    run_deploy(app_dir, on_line=seen.append)
    assert seen == ["token=deploy-tok"]


def test_line_contents_never_logged_above_debug(
    on_path: Installer, app_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    on_path("""
        say("FLY_API_TOKEN=FlyV1 supersecret")
        sys.exit(2)
    """)
    caplog.set_level("INFO")
    with pytest.raises(ProviderError):
        run_deploy(app_dir)
    assert "supersecret" not in caplog.text


# ---------------------------------------------------------------------- events


def test_stream_deploy_publishes_lines_then_exit(
    on_path: Installer, app_dir: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATLAS_REDIS_URL", redis_url)
    reset_settings()
    reset_redis_clients()
    on_path("""
        for i in range(1, 4):
            say(f"step {i}")
    """)
    stream_deploy(None, app_dir, "deploy-ok")
    got = list(subscribe_deploy("deploy-ok", timeout=5))
    assert [e.type for e in got] == ["started", "line", "line", "line", "exit"]
    assert [(e.data["n"], e.data["line"]) for e in got if e.type == "line"] == [
        (1, "step 1"),
        (2, "step 2"),
        (3, "step 3"),
    ]
    assert got[-1].data == {"ok": True, "code": 0, "error": None}

    on_path("""
        say("boom")
        sys.exit(7)
    """)
    with pytest.raises(ProviderError):
        stream_deploy(None, app_dir, "deploy-bad")
    exit_event = events.history("deploy-bad", topic="deploy")[-1]
    assert exit_event.type == "exit"
    assert exit_event.data["ok"] is False and exit_event.data["code"] == 7
    assert exit_event.data["error"]["kind"] == "provider"

    with pytest.raises(ValidationError):
        stream_deploy(None, app_dir / "nope", "deploy-dir")
    last = events.history("deploy-dir", topic="deploy")[-1]
    assert last.data["error"]["kind"] == "validation" and last.data["code"] is None
    reset_redis_clients()
