"""Bearer tokens: minted raw once, stored only as a SHA-256 hash, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

from atlas_tasks.constants import PRESHARED_KEY_ENV, SIGNING_SECRET_ENV


@dataclass(frozen=True)
class MintedToken:
    """A freshly minted bearer token.

    Attributes:
        token: the raw token (43 url-safe chars). Hand it to the client once; never store it.
        hash: lowercase hex SHA-256 of ``token``; this is what you persist.
        header: ready-to-send ``Authorization: Bearer <token>`` line.
        env: ``{"ATLAS_PRESHARED_KEY": token}`` to inject into the pod.
    """

    token: str = field(repr=False)
    hash: str
    header: str = field(repr=False)
    env: dict[str, str] = field(repr=False)


def token_hash(token: str) -> str:
    """Lowercase hex SHA-256 of a token (what the registry keeps)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def mint_token() -> MintedToken:
    """Mint a 256-bit bearer token (base64url, unpadded)."""
    token = secrets.token_urlsafe(32)
    return token_from_raw(token)


def token_from_raw(token: str) -> MintedToken:
    """Wrap an existing raw token (e.g. one minted by the caller and decrypted in a worker)."""
    return MintedToken(
        token=token,
        hash=token_hash(token),
        header=f"Authorization: Bearer {token}",
        env={PRESHARED_KEY_ENV: token},
    )


def token_valid(candidate: str | None, expected_hash: str | None) -> bool:
    """True when ``candidate`` hashes to ``expected_hash``; constant time, never raises."""
    if not candidate or not expected_hash or not isinstance(candidate, str):
        return False
    try:
        return hmac.compare_digest(token_hash(candidate), expected_hash.lower())
    except (TypeError, AttributeError):
        return False


def new_signing_secret() -> str:
    """A fresh signed-URL secret: 32 random bytes, base64url, unpadded."""
    return secrets.token_urlsafe(32)


def signing_env(secret: str) -> dict[str, str]:
    """``{"ATLAS_SIGNING_SECRET": secret}`` to inject into the pod."""
    return {SIGNING_SECRET_ENV: secret}
