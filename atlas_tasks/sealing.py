"""Encrypt what must travel through the broker or sit in Redis (``ATLAS_SECRET_KEY``).

The raw bearer token is minted in the web process and must reach the worker that creates
the pod; per-call API keys must reach whichever worker terminates it later. Both travel
and rest Fernet-encrypted (AES-128-CBC + HMAC-SHA256, from ``cryptography``), so Redis,
broker messages, results and Flower never show them in the clear.
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from atlas_tasks.config import AtlasSettings, get_settings
from atlas_tasks.errors import ValidationError


def generate_key() -> str:
    """A fresh key for ``ATLAS_SECRET_KEY`` (urlsafe base64 of 32 random bytes)."""
    return Fernet.generate_key().decode()


def _fernet(settings: AtlasSettings | None = None) -> Fernet:
    settings = settings or get_settings()
    if settings.secret_key is None or not settings.secret_key.get_secret_value():
        raise ValidationError(
            "ATLAS_SECRET_KEY: not set; secrets that travel to workers are encrypted with it. "
            "Generate one with `atlas-tasks keygen` and give every web node and worker the same.",
            field="ATLAS_SECRET_KEY",
        )
    try:
        return Fernet(settings.secret_key.get_secret_value().encode())
    except (ValueError, TypeError) as exc:
        raise ValidationError(
            "ATLAS_SECRET_KEY: must be 32 url-safe base64-encoded bytes "
            "(generate with `atlas-tasks keygen`)",
            field="ATLAS_SECRET_KEY",
        ) from exc


def seal(data: dict[str, Any], settings: AtlasSettings | None = None) -> str:
    """Encrypt a JSON-serialisable dict into an opaque token string."""
    return _fernet(settings).encrypt(json.dumps(data, separators=(",", ":")).encode()).decode()


def unseal(token: str, settings: AtlasSettings | None = None) -> dict[str, Any]:
    """Decrypt :func:`seal` output.

    Raises:
        ValidationError: wrong key (workers and web nodes must share ``ATLAS_SECRET_KEY``)
            or a corrupted value.
    """
    try:
        raw = _fernet(settings).decrypt(token.encode())
    except InvalidToken as exc:
        raise ValidationError(
            "ATLAS_SECRET_KEY: cannot decrypt a sealed payload; every web node and worker "
            "must share the same key",
            field="ATLAS_SECRET_KEY",
        ) from exc
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValidationError("sealed payload: not an object", field="sealed")
    return value
