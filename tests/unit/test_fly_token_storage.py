"""Token storage backends: the shipped conformance suite plus backend-specific guarantees."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
import redis

from atlas_tasks.config import AtlasSettings
from atlas_tasks.errors import ValidationError
from atlas_tasks.fly.token_storage import (
    FileTokenStorage,
    MemoryTokenStorage,
    RedisTokenStorage,
    TokenRecord,
    TokenStorage,
    storage_from_settings,
)
from atlas_tasks.sealing import generate_key
from atlas_tasks.testing.token_storage_conformance import TokenStorageConformance


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class TestMemoryStorage(TokenStorageConformance):
    @pytest.fixture
    def storage(self) -> TokenStorage:
        return MemoryTokenStorage()


class TestFileStorage(TokenStorageConformance):
    @pytest.fixture
    def storage(self, tmp_path: Path) -> TokenStorage:
        return FileTokenStorage(tmp_path / "tokens")


class TestRedisStorage(TokenStorageConformance):
    @pytest.fixture
    def storage(self, redis_client: redis.Redis) -> TokenStorage:
        return RedisTokenStorage(redis_client, AtlasSettings(secret_key=generate_key()))


def test_the_base_fixture_must_be_overridden() -> None:
    class Incomplete(TokenStorageConformance):
        pass

    fixture = Incomplete.storage.__wrapped__  # type: ignore[attr-defined]
    with pytest.raises(NotImplementedError):
        fixture(Incomplete())


# ---------------------------------------------------------------------- file store


def test_file_store_directory_0700_and_files_0600(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # the most permissive umask must not leak through
    try:
        directory = tmp_path / "a" / "tokens"
        store = FileTokenStorage(directory)
        store.put("api", "cached", TokenRecord("secret-1", int(time.time()) + 60))
        store.put("api", "manual", TokenRecord("secret-2", None))
    finally:
        os.umask(old_umask)
    assert _mode(directory) == 0o700
    files = sorted(directory.iterdir())
    assert [f.name for f in files] == ["api.cached.json", "api.manual.json"]  # no temp files
    assert all(_mode(f) == 0o600 for f in files)


def test_file_store_tightens_an_existing_directory(tmp_path: Path) -> None:
    directory = tmp_path / "tokens"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)
    FileTokenStorage(directory)
    assert _mode(directory) == 0o700


def test_file_store_overwrite_is_atomic_and_keeps_0600(tmp_path: Path) -> None:
    store = FileTokenStorage(tmp_path / "tokens")
    store.put("api", "cached", TokenRecord("one", int(time.time()) + 60))
    path = store.path("api", "cached")
    inode = path.stat().st_ino
    store.put("api", "cached", TokenRecord("two", int(time.time()) + 60))
    assert path.stat().st_ino != inode  # replaced by rename, never rewritten in place
    assert _mode(path) == 0o600
    assert store.get("api", "cached").token == "two"  # type: ignore[union-attr]


def test_file_store_corrupt_cached_reads_absent_but_corrupt_manual_raises(tmp_path: Path) -> None:
    store = FileTokenStorage(tmp_path / "tokens")
    store.path("api", "cached").write_text("{not json")
    assert store.get("api", "cached") is None
    assert not store.path("api", "cached").exists()
    store.path("api", "manual").write_text('{"token": 5}')
    with pytest.raises(ValidationError) as info:
        store.get("api", "manual")
    assert info.value.field == "fly_token_dir"


@pytest.mark.parametrize("app", ["../etc", "a/b", ".hidden", "", "x" * 200, "a..b"])
def test_app_names_cannot_escape_the_directory(tmp_path: Path, app: str) -> None:
    store = FileTokenStorage(tmp_path / "tokens")
    with pytest.raises(ValidationError) as info:
        store.put(app, "manual", TokenRecord("t"))
    assert info.value.field == "app"


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        MemoryTokenStorage().get("api", "other")  # type: ignore[arg-type]
    assert info.value.field == "kind"


def test_record_repr_hides_the_token() -> None:
    assert "secret" not in repr(TokenRecord("secret", 5))


# ---------------------------------------------------------------------- redis store


def test_redis_store_seals_values_and_expires_cached_entries(redis_client: redis.Redis) -> None:
    settings = AtlasSettings(secret_key=generate_key())
    store = RedisTokenStorage(redis_client, settings)
    store.put("api", "cached", TokenRecord("FlyV1 plain-secret", int(time.time()) + 100))
    store.put("api", "manual", TokenRecord("FlyV1 manual-secret", None))
    for key in redis_client.keys("atlas:fly:token:*"):
        assert "secret" not in str(redis_client.get(key))
    assert 90_000 < redis_client.pttl("atlas:fly:token:api:cached") <= 100_000
    assert redis_client.pttl("atlas:fly:token:api:manual") == -1
    # a store with another key cannot read them: as good as absent
    other = RedisTokenStorage(redis_client, AtlasSettings(secret_key=generate_key()))
    assert other.get("api", "cached") is None


def test_redis_store_needs_a_secret_key(redis_client: redis.Redis) -> None:
    store = RedisTokenStorage(redis_client, AtlasSettings())
    with pytest.raises(ValidationError) as info:
        store.put("api", "manual", TokenRecord("t"))
    assert info.value.field == "ATLAS_SECRET_KEY"


def test_storage_from_settings(tmp_path: Path) -> None:
    assert isinstance(storage_from_settings(AtlasSettings()), RedisTokenStorage)
    assert isinstance(
        storage_from_settings(AtlasSettings(fly_token_store="memory")), MemoryTokenStorage
    )
    store = storage_from_settings(
        AtlasSettings(fly_token_store="file", fly_token_dir=str(tmp_path / "t"))
    )
    assert isinstance(store, FileTokenStorage) and store.directory == tmp_path / "t"
