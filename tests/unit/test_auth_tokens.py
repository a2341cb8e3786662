"""Bearer tokens: minting, hashing (known vectors), constant-time validation."""

from __future__ import annotations

import re
from typing import Any

import pytest

from atlas_tasks.auth import (
    MintedToken,
    mint_token,
    new_signing_secret,
    signing_env,
    token_from_raw,
    token_hash,
    token_valid,
)
from atlas_tasks.constants import PRESHARED_KEY_ENV, SIGNING_SECRET_ENV

# FIPS 180-2 test vectors.
SHA256_ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
SHA256_EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_token_hash_matches_known_sha256_vectors() -> None:
    assert token_hash("abc") == SHA256_ABC
    assert token_hash("") == SHA256_EMPTY


def test_token_hash_encodes_text_as_utf8() -> None:
    # sha256 of the two bytes c3 a9 (UTF-8 "é"), not of latin-1 e9.
    assert token_hash("é") == "4a99557e4033c3539de2eb65472017cad5f9557f7a0625a09f1c3f6e2ba69c4c"
    assert token_hash("é") != token_hash("e")


def test_mint_token_shape() -> None:
    minted = mint_token()
    assert isinstance(minted, MintedToken)
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", minted.token)
    assert minted.hash == token_hash(minted.token)
    assert re.fullmatch(r"[0-9a-f]{64}", minted.hash)
    assert minted.header == f"Authorization: Bearer {minted.token}"
    assert minted.env == {PRESHARED_KEY_ENV: minted.token}


def test_mint_token_is_random() -> None:
    assert len({mint_token().token for _ in range(50)}) == 50


def test_minted_token_repr_hides_the_raw_token() -> None:
    minted = mint_token()
    assert minted.token not in repr(minted)
    assert minted.hash in repr(minted)


def test_token_from_raw_wraps_an_existing_token() -> None:
    minted = token_from_raw("abc")
    assert minted.hash == SHA256_ABC
    assert minted.env == {PRESHARED_KEY_ENV: "abc"}


def test_token_valid_true_for_the_right_token() -> None:
    minted = mint_token()
    assert token_valid(minted.token, minted.hash) is True
    assert token_valid("abc", SHA256_ABC) is True
    # A hash stored upper-case still matches.
    assert token_valid("abc", SHA256_ABC.upper()) is True


def test_token_valid_false_for_a_wrong_token() -> None:
    minted = mint_token()
    assert token_valid(minted.token + "x", minted.hash) is False
    assert token_valid("abd", SHA256_ABC) is False
    assert token_valid(mint_token().token, minted.hash) is False


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [
        (None, SHA256_ABC),
        ("", SHA256_ABC),
        ("abc", None),
        ("abc", ""),
        (None, None),
    ],
)
def test_token_valid_false_for_missing_values(candidate: Any, expected: Any) -> None:
    assert token_valid(candidate, expected) is False


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [
        (b"abc", SHA256_ABC),  # bytes are not a token
        (123, SHA256_ABC),
        (["abc"], SHA256_ABC),
        ("abc", 123),
        ("abc", b"ba7816bf"),
        ("abc", "é" * 64),  # non-ASCII hash: compare_digest would raise TypeError
        ("abc", SHA256_ABC[:-1]),
    ],
)
def test_token_valid_false_and_never_raises_for_wrong_types(candidate: Any, expected: Any) -> None:
    assert token_valid(candidate, expected) is False


def test_new_signing_secret_and_env() -> None:
    secret = new_signing_secret()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", secret)
    assert secret != new_signing_secret()
    assert signing_env(secret) == {SIGNING_SECRET_ENV: secret}
