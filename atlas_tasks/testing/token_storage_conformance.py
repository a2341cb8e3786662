"""Conformance suite for Fly token storage backends (shipped, like the provider suite).

A backend passes by overriding one fixture::

    import pytest
    from atlas_tasks.testing.token_storage_conformance import TokenStorageConformance

    class TestMyStorage(TokenStorageConformance):
        @pytest.fixture
        def storage(self, tmp_path):
            return MyStorage(tmp_path)

The seven tests are ExAtlas's ``TokenStorageConformance``: empty get, cached round trip,
overwrite, delete, delete of an absent entry, manual round trip with no expiry, and
cached/manual independence. Each test gets a fresh ``storage`` (a new, empty store).
"""

from __future__ import annotations

import time

import pytest

from atlas_tasks.fly.token_storage import TokenRecord, TokenStorage

#: App name used by the suite.
APP = "conformance-app"


class TokenStorageConformance:
    """Base class of a storage backend's conformance test (not collected by itself)."""

    @pytest.fixture
    def storage(self) -> TokenStorage:
        """The backend under test, empty. Override in the subclass."""
        raise NotImplementedError("override the `storage` fixture to return your backend")

    @staticmethod
    def _future(seconds: int = 3600) -> int:
        return int(time.time()) + seconds

    def test_get_on_empty_store_returns_none(self, storage: TokenStorage) -> None:
        assert storage.get(APP, "cached") is None
        assert storage.get(APP, "manual") is None

    def test_cached_put_then_get_round_trips(self, storage: TokenStorage) -> None:
        expires = self._future()
        storage.put(APP, "cached", TokenRecord(token="tok-1", expires_at=expires))
        assert storage.get(APP, "cached") == TokenRecord(token="tok-1", expires_at=expires)

    def test_second_put_overwrites(self, storage: TokenStorage) -> None:
        storage.put(APP, "cached", TokenRecord(token="tok-1", expires_at=self._future()))
        expires = self._future(7200)
        storage.put(APP, "cached", TokenRecord(token="tok-2", expires_at=expires))
        assert storage.get(APP, "cached") == TokenRecord(token="tok-2", expires_at=expires)

    def test_delete_removes_the_entry(self, storage: TokenStorage) -> None:
        storage.put(APP, "cached", TokenRecord(token="tok-1", expires_at=self._future()))
        storage.delete(APP, "cached")
        assert storage.get(APP, "cached") is None

    def test_delete_of_absent_entry_is_ok(self, storage: TokenStorage) -> None:
        storage.delete(APP, "cached")
        storage.delete(APP, "manual")
        assert storage.get(APP, "cached") is None

    def test_manual_put_without_expiry_round_trips(self, storage: TokenStorage) -> None:
        storage.put(APP, "manual", TokenRecord(token="manual-tok", expires_at=None))
        assert storage.get(APP, "manual") == TokenRecord(token="manual-tok", expires_at=None)

    def test_cached_and_manual_are_independent(self, storage: TokenStorage) -> None:
        storage.put(APP, "cached", TokenRecord(token="c", expires_at=self._future()))
        storage.put(APP, "manual", TokenRecord(token="m", expires_at=None))
        storage.delete(APP, "cached")
        assert storage.get(APP, "cached") is None
        assert storage.get(APP, "manual") == TokenRecord(token="m", expires_at=None)


__all__ = ["APP", "TokenStorageConformance"]
