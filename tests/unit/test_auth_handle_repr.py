"""Printing a Compute (logs, tracebacks, a REPL) never shows its bearer token."""

from __future__ import annotations

from atlas_tasks.auth import mint_token
from atlas_tasks.specs import AuthHandle, Compute


def test_repr_and_str_hide_the_token_and_header() -> None:
    minted = mint_token()
    compute = Compute(
        id="pod-1",
        provider="runpod",
        auth=AuthHandle(
            scheme="bearer", token=minted.token, hash=minted.hash, header=minted.header
        ),
    )
    for text in (repr(compute), str(compute), repr(compute.auth), f"{compute}"):
        assert minted.token not in text
        assert "Bearer " not in text
    assert "bearer" in repr(compute.auth)  # the scheme is still shown
    # Callers still get the secret when they ask for it.
    assert compute.auth is not None and compute.auth.token == minted.token
    assert compute.model_dump()["auth"]["token"] == minted.token
