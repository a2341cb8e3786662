"""The Fly token chain: order, caching, invalidate/refresh, manual override, single flight."""

from __future__ import annotations

import os
import stat
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import redis

from atlas_tasks.config import AtlasSettings
from atlas_tasks.errors import AtlasError, TransportError, UnauthorizedError, ValidationError
from atlas_tasks.fly.token_storage import (
    MemoryTokenStorage,
    RedisTokenStorage,
    TokenKind,
    TokenRecord,
)
from atlas_tasks.fly.tokens import FlyTokens, read_config_token, run_token_cli
from atlas_tasks.sealing import generate_key

APP = "my-app"

FAKE_FLY = """\
import os, sys, time
with open(os.environ["FAKE_FLY_LOG"], "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
mode = os.environ.get("FAKE_FLY_MODE", "ok")
time.sleep(float(os.environ.get("FAKE_FLY_DELAY", "0")))
if mode == "fail":
    print("Error: not logged in", file=sys.stderr)
    sys.exit(1)
if mode == "hang":
    print(os.getpid(), flush=True)
    time.sleep(60)
print("some warning", file=sys.stderr)
print("")
print(f"FlyV1 cli-{sys.argv[-1]}-{os.getpid()}")
"""


@pytest.fixture
def fake_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake ``fly`` on PATH; returns the file where it logs each invocation."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "fly"
    script.write_text(f"#!{sys.executable}\n{textwrap.dedent(FAKE_FLY)}")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "fly-calls.log"
    log.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_FLY_LOG", str(log))
    return log


def calls(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line]


def settings(tmp_path: Path, **extra: object) -> AtlasSettings:
    values: dict[str, object] = {
        "fly_config_file": str(tmp_path / "config.yml"),
        "fly_cli_timeout_s": 5.0,
        **extra,
    }
    return AtlasSettings(**values)  # type: ignore[arg-type]


class BrokenStorage(MemoryTokenStorage):
    """Writes fail with ``error``."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def put(self, app: str, kind: TokenKind, record: TokenRecord) -> None:
        raise self.error


def test_config_file_parsing(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text('access_token: "FlyV1 abc"\nwire_guard_state: {}\n')
    assert read_config_token(config) == "FlyV1 abc"
    config.write_text("other: 1\naccess_token:   plain-token   \n")
    assert read_config_token(config) == "plain-token"
    config.write_text("other: 1\n")
    assert read_config_token(config) is None
    assert read_config_token(tmp_path / "missing.yml") is None


def test_chain_order(tmp_path: Path, fake_cli: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = MemoryTokenStorage()
    s = settings(tmp_path)
    tokens = FlyTokens(storage, settings=s, cluster_lock=False)
    future = int(time.time()) + 3600
    storage.put(APP, "cached", TokenRecord("stored-tok", future))
    monkeypatch.setenv("FLY_API_TOKEN", "env-tok")
    (tmp_path / "config.yml").write_text("access_token: config-tok\n")
    tokens.set_manual(APP, "manual-tok")

    first = tokens.resolve(APP)
    assert (first.token, first.source) == ("stored-tok", "storage")
    assert tokens.resolve(APP).source == "memory"

    storage.delete(APP, "cached")
    tokens.clear_memory()
    assert (tokens.resolve(APP).token, tokens.resolve(APP).source) == ("env-tok", "memory")
    tokens.clear_memory()
    assert tokens.resolve(APP).source == "env"
    assert storage.get(APP, "cached") is None  # env tokens are not copied to storage

    monkeypatch.delenv("FLY_API_TOKEN")
    tokens.clear_memory()
    result = tokens.resolve(APP)
    assert (result.token, result.source) == ("config-tok", "config")
    assert storage.get(APP, "cached").token == "config-tok"  # type: ignore[union-attr]
    assert result.expires_at is not None and result.expires_at > time.time() + 23 * 3600

    (tmp_path / "config.yml").unlink()
    storage.delete(APP, "cached")
    tokens.clear_memory()
    assert calls(fake_cli) == []
    result = tokens.resolve(APP)
    assert result.source == "cli" and result.token is not None
    assert result.token.startswith(f"FlyV1 cli-{APP}-")  # last non-empty stdout line
    assert calls(fake_cli) == [f"tokens create readonly -a {APP}"]
    assert storage.get(APP, "cached").token == result.token  # type: ignore[union-attr]

    storage.delete(APP, "cached")
    tokens.clear_memory()
    monkeypatch.setenv("FAKE_FLY_MODE", "fail")
    assert (tokens.resolve(APP).token, tokens.resolve(APP).source) == ("manual-tok", "manual")

    tokens.clear_manual(APP)
    assert tokens.resolve(APP).source == "none"
    with pytest.raises(UnauthorizedError) as info:
        tokens.get(APP)
    assert "no_token_available" in str(info.value)


def test_config_file_can_be_disabled(tmp_path: Path) -> None:
    (tmp_path / "config.yml").write_text("access_token: config-tok\n")
    s = settings(tmp_path, fly_config_file_enabled=False, fly_executable="no-such-fly")
    assert (
        FlyTokens(MemoryTokenStorage(), settings=s, cluster_lock=False).resolve(APP).source
        == "none"
    )


def test_expired_storage_entry_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = MemoryTokenStorage()
    storage.put(APP, "cached", TokenRecord("old", int(time.time()) - 1))
    monkeypatch.setenv("FLY_API_TOKEN", "env-tok")
    tokens = FlyTokens(storage, settings=settings(tmp_path), cluster_lock=False)
    assert tokens.get(APP) == "env-tok"


def test_cli_timeout_is_a_miss_and_kills_the_cli(
    tmp_path: Path, fake_cli: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FLY_MODE", "hang")
    s = settings(tmp_path, fly_cli_timeout_s=0.5)
    tokens = FlyTokens(MemoryTokenStorage(), settings=s, cluster_lock=False)
    tokens.set_manual(APP, "manual-tok")
    started = time.monotonic()
    assert tokens.resolve(APP).source == "manual"
    assert time.monotonic() - started < 3
    assert run_token_cli(APP, settings=s) is None


def test_invalidate_skips_the_rejected_token(
    tmp_path: Path, fake_cli: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = MemoryTokenStorage()
    monkeypatch.setenv("FLY_API_TOKEN", "env-tok")
    tokens = FlyTokens(storage, settings=settings(tmp_path), cluster_lock=False)
    assert tokens.get(APP) == "env-tok"
    tokens.invalidate(APP, "env-tok")
    result = tokens.resolve(APP)
    assert result.source == "cli"  # the env token got a 401: do not offer it again
    # invalidating without a token forgets what is cached but skips nothing
    tokens.invalidate(APP)
    assert storage.get(APP, "cached") is None
    assert tokens.resolve(APP).source == "cli"


def test_invalidate_keeps_a_newer_stored_token(tmp_path: Path) -> None:
    storage = MemoryTokenStorage()
    tokens = FlyTokens(
        storage, settings=settings(tmp_path, fly_executable="none"), cluster_lock=False
    )
    storage.put(APP, "cached", TokenRecord("newer", int(time.time()) + 60))
    tokens.invalidate(APP, "older")
    assert storage.get(APP, "cached") is not None
    tokens.invalidate(APP, "newer")
    assert storage.get(APP, "cached") is None


def test_refresh_is_atomic_per_rejected_token(tmp_path: Path, fake_cli: Path) -> None:
    tokens = FlyTokens(MemoryTokenStorage(), settings=settings(tmp_path), cluster_lock=False)
    first = tokens.get(APP)
    results: list[str] = []
    barrier = threading.Barrier(6)

    def refresh() -> None:
        barrier.wait()
        results.append(tokens.refresh(APP, first))

    threads = [threading.Thread(target=refresh) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and results[0] != first
    assert len(calls(fake_cli)) == 2  # the first get + exactly one refresh


def test_refresh_without_any_source_raises(tmp_path: Path) -> None:
    tokens = FlyTokens(
        MemoryTokenStorage(), settings=settings(tmp_path, fly_executable="none"), cluster_lock=False
    )
    with pytest.raises(UnauthorizedError):
        tokens.refresh(APP)


def test_set_manual_raises_persist_failures(tmp_path: Path) -> None:
    tokens = FlyTokens(
        BrokenStorage(OSError("disk full")), settings=settings(tmp_path), cluster_lock=False
    )
    with pytest.raises(AtlasError) as info:
        tokens.set_manual(APP, "tok")
    assert "persist failed" in str(info.value) and info.value.kind == "unknown"
    tokens = FlyTokens(
        BrokenStorage(TransportError("redis down")), settings=settings(tmp_path), cluster_lock=False
    )
    with pytest.raises(TransportError) as info2:
        tokens.set_manual(APP, "tok")
    assert "persist failed" in str(info2.value)
    with pytest.raises(ValidationError):
        tokens.set_manual(APP, "  ")
    with pytest.raises(ValidationError):
        tokens.get("../x")


def test_cached_write_failures_are_only_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "config.yml").write_text("access_token: config-tok\n")
    tokens = FlyTokens(
        BrokenStorage(OSError("read-only fs")), settings=settings(tmp_path), cluster_lock=False
    )
    assert tokens.get(APP) == "config-tok"
    assert "could not store" in caplog.text and "config-tok" not in caplog.text


def test_result_repr_hides_the_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLY_API_TOKEN", "env-secret")
    result = FlyTokens(
        MemoryTokenStorage(), settings=settings(tmp_path), cluster_lock=False
    ).resolve(APP)
    assert "env-secret" not in repr(result)


def test_cli_runs_once_across_resolvers_sharing_redis(
    tmp_path: Path, fake_cli: Path, monkeypatch: pytest.MonkeyPatch, redis_client: redis.Redis
) -> None:
    # Eight independent resolvers (as in eight worker processes) ask at the same moment.
    monkeypatch.setenv("FAKE_FLY_DELAY", "0.5")
    s = settings(tmp_path, secret_key=generate_key())
    resolvers = [
        FlyTokens(RedisTokenStorage(redis_client, s), settings=s, redis_client=redis_client)
        for _ in range(8)
    ]
    results: list[tuple[str | None, str]] = []
    barrier = threading.Barrier(len(resolvers))

    def resolve(tokens: FlyTokens) -> None:
        barrier.wait()
        r = tokens.resolve(APP)
        results.append((r.token, r.source))

    threads = [threading.Thread(target=resolve, args=(t,)) for t in resolvers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls(fake_cli)) == 1
    assert len({token for token, _ in results}) == 1 and results[0][0] is not None
    assert {source for _, source in results} == {"cli"}
    assert redis_client.get("atlas:fly:token-lock:my-app") is None  # released


def test_without_a_usable_store_the_cli_still_runs(
    tmp_path: Path, fake_cli: Path, redis_client: redis.Redis
) -> None:
    # The Redis store needs ATLAS_SECRET_KEY; without it, resolution still works (no
    # durable cache, no cluster lock) instead of every waiter giving up.
    s = settings(tmp_path)
    tokens = FlyTokens(RedisTokenStorage(redis_client, s), settings=s, redis_client=redis_client)
    result = tokens.resolve(APP)
    assert result.source == "cli" and len(calls(fake_cli)) == 1
    assert redis_client.keys("atlas:fly:*") == []
