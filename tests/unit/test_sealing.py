"""Sealing: what travels to workers is encrypted with ATLAS_SECRET_KEY."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from atlas_tasks.config import AtlasSettings
from atlas_tasks.errors import ValidationError
from atlas_tasks.sealing import generate_key, seal, unseal


def test_round_trip_hides_plaintext() -> None:
    settings = AtlasSettings(secret_key=SecretStr(generate_key()))
    token = seal({"secret": "tok-123", "n": 1}, settings)
    assert "tok-123" not in token
    assert unseal(token, settings) == {"secret": "tok-123", "n": 1}


def test_missing_key_names_the_setting() -> None:
    with pytest.raises(ValidationError) as info:
        seal({"a": 1}, AtlasSettings())
    assert info.value.field == "ATLAS_SECRET_KEY"
    assert "atlas-tasks keygen" in str(info.value)


def test_bad_key_and_wrong_key_are_validation_errors() -> None:
    with pytest.raises(ValidationError):
        seal({"a": 1}, AtlasSettings(secret_key=SecretStr("not-a-key")))
    token = seal({"a": 1}, AtlasSettings(secret_key=SecretStr(generate_key())))
    with pytest.raises(ValidationError) as info:
        unseal(token, AtlasSettings(secret_key=SecretStr(generate_key())))
    assert "same key" in str(info.value)


def test_validation_field_survives_to_dict() -> None:
    from atlas_tasks.errors import AtlasError

    err = ValidationError("gpu: bad", field="gpu")
    back = AtlasError.from_dict(err.to_dict())
    assert isinstance(back, ValidationError) and back.field == "gpu"
    assert AtlasError.from_dict({"kind": "bogus"}).kind == "unknown"
