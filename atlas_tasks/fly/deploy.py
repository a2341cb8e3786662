"""``fly deploy --remote-only``, streamed line by line, with an activity timeout and a cap.

:func:`run_deploy` is the synchronous runner; :func:`atlas_tasks.fly.service.stream_deploy`
(behind the Celery task ``atlas.fly.deploy`` and the caller-side
:func:`atlas_tasks.fly.stream_deploy`) publishes its output on the ticket. The runner:

* flyctl runs in the app directory with stderr merged into stdout, in a **new session**
  (its own process group), so a timeout can kill the whole tree (``killpg``: flyctl and
  whatever it started), not just the direct child.
* Output is read as raw chunks and re-assembled into whole lines (a chunk may end in the
  middle of a line, or hold several); each non-empty line goes to ``on_line`` as soon as
  its newline arrives. ``\\r`` line ends are stripped.
* Two clocks: the **activity timeout** (default 300 s) restarts on every chunk; the
  **absolute cap** (default 1800 s) never does. Either one kills the process group
  (SIGTERM, then SIGKILL after a grace) and raises :class:`AtlasTimeoutError` naming it.
* When flyctl exits, leftovers of its process group (a helper that kept running) are
  killed too, so a deploy never leaves a process behind.

Errors (all :class:`~atlas_tasks.errors.AtlasError`):

* ``validation`` (field ``app_dir``): the directory does not exist / is not a directory.
* ``unsupported``: no ``fly`` (or ``flyctl``) executable on this worker's PATH. It is not
  the caller's input that is wrong but this machine that cannot deploy, hence not
  ``validation``; ExAtlas's ``{:fly_error, :not_found, ...}`` would read as a missing app.
* ``timeout``: ``raw["timeout"]`` is ``"activity"`` or ``"max"``.
* ``provider``: non-zero exit; ``status`` = the exit code, message ends with the last lines.

Output lines may contain secrets (flyctl echoes config and build output), so they are
logged at DEBUG only.
"""

from __future__ import annotations

import codecs
import logging
import os
import selectors
import shutil
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from atlas_tasks import constants as C
from atlas_tasks.config import AtlasSettings, get_settings, resolve_api_key
from atlas_tasks.errors import (
    AtlasError,
    AtlasTimeoutError,
    ProviderError,
    UnsupportedError,
    validation_error,
)

log = logging.getLogger(__name__)

#: The command flyctl runs (the executable is prepended).
DEPLOY_ARGS = ("deploy", "--remote-only")

_READ_SIZE = 65536


class DeployLimits(TypedDict, total=False):
    """The runner's time limits as keywords, passed through unchanged by the layers above
    :func:`run_deploy` (``**limits: Unpack[DeployLimits]``); see :func:`run_deploy`."""

    activity_timeout_s: float | None
    max_timeout_s: float | None
    kill_grace_s: float


@dataclass
class DeployResult:
    """A successful deploy: exit code 0, how many lines were seen, how long it took."""

    code: int
    lines: int
    duration_s: float
    tail: list[str] = field(default_factory=list, repr=False)


class LineSplitter:
    """Turns arbitrary byte chunks into whole text lines (UTF-8, invalid bytes replaced)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""

    def feed(self, chunk: bytes) -> list[str]:
        """Lines completed by ``chunk`` (without their ``\\n`` / ``\\r\\n``)."""
        self._buffer += self._decoder.decode(chunk)
        if "\n" not in self._buffer:
            return []
        *complete, self._buffer = self._buffer.split("\n")
        return [line.rstrip("\r") for line in complete]

    def flush(self) -> list[str]:
        """The unterminated last line, if any (at end of output)."""
        rest = self._buffer + self._decoder.decode(b"", final=True)
        self._buffer = ""
        return [rest.rstrip("\r")] if rest else []


def find_fly_executable(settings: AtlasSettings | None = None) -> str:
    """Absolute path of flyctl (``ATLAS_FLY_EXECUTABLE``, default ``fly``, then ``flyctl``).

    Raises:
        UnsupportedError: not found on ``PATH``.
    """
    settings = settings or get_settings()
    name = settings.fly_executable
    candidates = [name] + (["flyctl"] if name == "fly" else [])
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return found
    raise UnsupportedError(
        f"fly executable {name!r} not found in PATH; install flyctl on this worker or set "
        "ATLAS_FLY_EXECUTABLE",
        provider="fly",
    )


def resolve_deploy_dir(
    project_path: str | os.PathLike[str] | None, app_dir: str | os.PathLike[str]
) -> Path:
    """``app_dir`` if absolute, else joined to ``project_path``; must be a directory.

    Raises:
        ValidationError: (field ``app_dir``) empty, missing or not a directory.
    """
    if not str(app_dir).strip():
        raise validation_error("app_dir", "must name a directory")
    path = Path(app_dir)
    if not path.is_absolute() and project_path:
        path = Path(project_path) / path
    if not path.is_dir():
        raise validation_error("app_dir", f"{str(path)!r} is not a directory")
    return path.resolve()


def deploy_env(
    settings: AtlasSettings | None = None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Environment of flyctl: this process's, plus ``FLY_API_TOKEN`` when one is configured.

    The token comes from ``ATLAS_FLY_API_TOKEN`` or ``FLY_API_TOKEN`` (a deploy token).
    Without one, flyctl uses its own login (``~/.fly/config.yml``). Read-only tokens from
    the token chain are deliberately not used: they cannot deploy.
    """
    env = dict(os.environ if base is None else base)
    token = resolve_api_key("fly", settings=settings or get_settings())
    if token:
        env["FLY_API_TOKEN"] = token
    return env


def run_deploy(
    app_dir: str | os.PathLike[str],
    *,
    project_path: str | os.PathLike[str] | None = None,
    on_line: Callable[[str], None] | None = None,
    activity_timeout_s: float | None = None,
    max_timeout_s: float | None = None,
    kill_grace_s: float = C.FLY_DEPLOY_KILL_GRACE_S,
    executable: str | None = None,
    args: tuple[str, ...] = DEPLOY_ARGS,
    env: Mapping[str, str] | None = None,
    settings: AtlasSettings | None = None,
) -> DeployResult:
    """Run ``fly deploy --remote-only`` in ``app_dir`` and stream its output.

    Args:
        app_dir: app directory, absolute or relative to ``project_path``.
        project_path: project root for a relative ``app_dir``.
        on_line: called with each non-empty output line, in order, as it arrives.
        activity_timeout_s: kill after this long without output (default from settings).
        max_timeout_s: kill after this long in total (default from settings).
        kill_grace_s: SIGTERM → SIGKILL delay for the process group.
        executable: flyctl path (default: :func:`find_fly_executable`).
        args: flyctl arguments (tests and ``fly deploy`` variants).
        env: process environment (default: :func:`deploy_env`).

    Raises:
        AtlasError: see the module docstring (validation / unsupported / timeout / provider).
    """
    settings = settings or get_settings()
    directory = resolve_deploy_dir(project_path, app_dir)
    exe = executable or find_fly_executable(settings)
    activity = activity_timeout_s or settings.fly_deploy_activity_timeout_s
    cap = max_timeout_s or settings.fly_deploy_max_timeout_s
    try:
        proc = subprocess.Popen(
            [exe, *args],
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else deploy_env(settings),
            start_new_session=True,
            close_fds=True,
        )
    except FileNotFoundError as exc:
        raise UnsupportedError(f"fly executable {exe!r} not found", provider="fly") from exc
    except OSError as exc:
        raise UnsupportedError(f"cannot run {exe!r}: {exc.strerror}", provider="fly") from exc
    log.info("fly deploy started in %s (pid %d)", directory, proc.pid)
    started = time.monotonic()
    try:
        code, count, tail, fired = _pump(proc, on_line, activity, cap, started)
    finally:
        # Whatever happened (success, timeout, an exception from on_line, a soft time
        # limit), nothing of this process group may outlive the deploy.
        _kill_group(proc, kill_grace_s)
    duration = time.monotonic() - started
    if fired is not None:
        limit = activity if fired == "activity" else cap
        what = "no output" if fired == "activity" else "running"
        log.warning(
            "fly deploy in %s killed: %s timeout (%s for %.0fs)", directory, fired, what, limit
        )
        raise AtlasTimeoutError(
            f"fly deploy {fired} timeout: {what} for {limit:g}s; process group killed",
            provider="fly",
            raw={"timeout": fired, "limit_s": limit},
        )
    if code != 0:
        log.warning(
            "fly deploy in %s failed with exit code %d after %.1fs", directory, code, duration
        )
        shown = "\n".join(tail) or "(no output)"
        raise ProviderError(
            f"fly deploy exited with code {code}; last output:\n{shown}",
            provider="fly",
            status=code,
            raw={"exit_code": code},
        )
    log.info("fly deploy in %s succeeded (%d lines, %.1fs)", directory, count, duration)
    return DeployResult(code=0, lines=count, duration_s=duration, tail=list(tail))


def _pump(
    proc: subprocess.Popen[bytes],
    on_line: Callable[[str], None] | None,
    activity: float,
    cap: float,
    started: float,
) -> tuple[int, int, deque[str], str | None]:
    """Read output until EOF/exit or a timeout. Returns (code, lines, tail, fired)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    splitter = LineSplitter()
    tail: deque[str] = deque(maxlen=C.FLY_DEPLOY_TAIL_LINES)
    count = 0
    last_output = started
    exited_at: float | None = None

    def emit(lines: list[str]) -> None:
        nonlocal count
        for line in lines:
            if not line.strip():
                continue
            count += 1
            tail.append(line)
            log.debug("fly deploy [%d]: %s", count, line)
            if on_line is not None:
                on_line(line)

    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            now = time.monotonic()
            if now - started >= cap:
                return -1, count, tail, "max"
            if now - last_output >= activity:
                return -1, count, tail, "activity"
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > 1.0:
                # flyctl is gone but something it started still holds the pipe open:
                # stop waiting for EOF (the group is killed by the caller).
                break
            wait = min(cap - (now - started), activity - (now - last_output), 0.25)
            if not sel.select(max(0.0, wait)):
                continue
            try:
                chunk = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                continue
            if not chunk:
                break  # EOF: every writer closed the pipe
            last_output = time.monotonic()
            emit(splitter.feed(chunk))
    emit(splitter.flush())
    try:
        code = proc.wait(timeout=max(0.0, min(5.0, cap - (time.monotonic() - started))))
    except subprocess.TimeoutExpired:
        return -1, count, tail, "max"
    return code, count, tail, None


def _kill_group(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace_s``, reap the child."""
    pgid = proc.pid  # start_new_session: the child leads its own group
    if _group_alive(pgid):
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _group_alive(pgid):
            if proc.poll() is None:
                try:
                    proc.wait(timeout=0.05)
                except subprocess.TimeoutExpired:
                    pass
            else:
                time.sleep(0.05)
        _signal_group(pgid, signal.SIGKILL)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
        log.error("fly deploy pid %d did not die after SIGKILL", proc.pid)
    if proc.stdout is not None:
        proc.stdout.close()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a group we cannot signal is not ours
        return False
    return True


def error_of(exc: BaseException) -> AtlasError:
    """``exc`` as an :class:`AtlasError` (unexpected exceptions become kind ``unknown``)."""
    if isinstance(exc, AtlasError):
        return exc
    return AtlasError(f"fly deploy failed: {type(exc).__name__}", kind="unknown", provider="fly")


__all__ = [
    "DEPLOY_ARGS",
    "DeployResult",
    "LineSplitter",
    "deploy_env",
    "error_of",
    "find_fly_executable",
    "resolve_deploy_dir",
    "run_deploy",
]
