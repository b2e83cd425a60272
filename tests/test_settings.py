"""Settings are frozen, validated, and loadable from the environment."""

from __future__ import annotations

import dataclasses

import pytest

from bastion import ConfigurationError, IdempotencySettings


def test_defaults_follow_the_design() -> None:
    """Defaults: the mutating methods, 24 h records, 5xx not stored, fail closed."""
    settings = IdempotencySettings()
    assert settings.methods == {"POST", "PUT", "PATCH", "DELETE"}
    assert settings.ttl_seconds == 86_400
    assert settings.store_server_errors is False
    assert settings.fail_open is False


def test_settings_are_frozen() -> None:
    """A settings object cannot be changed after it is built."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        IdempotencySettings().ttl_seconds = 1  # type: ignore[misc]


def test_from_env_reads_every_kind_of_field() -> None:
    """Numbers, booleans and comma-separated collections parse from their variables."""
    settings = IdempotencySettings.from_env(
        {
            "BASTION_IDEMPOTENCY_TTL_SECONDS": "3600",
            "BASTION_IDEMPOTENCY_MAX_KEY_LENGTH": "64",
            "BASTION_IDEMPOTENCY_WAIT": "yes",
            "BASTION_IDEMPOTENCY_METHODS": "post, put",
            "BASTION_IDEMPOTENCY_REQUIRE_KEY": "/api/*,/v2/*",
            "BASTION_IDEMPOTENCY_RELEASE_STATUSES": "429",
            "UNRELATED": "x",
        }
    )
    assert settings.ttl_seconds == 3600.0
    assert settings.max_key_length == 64
    assert settings.wait is True
    assert settings.methods == {"POST", "PUT"}
    assert settings.require_key == ("/api/*", "/v2/*")
    assert settings.release_statuses == {429}


def test_overrides_win_over_environment() -> None:
    """Keyword overrides beat the environment."""
    settings = IdempotencySettings.from_env(
        {"BASTION_IDEMPOTENCY_WAIT": "true"}, wait=False, lease_seconds=5
    )
    assert settings.wait is False
    assert settings.lease_seconds == 5


@pytest.mark.parametrize(
    ("name", "value"),
    [("BASTION_IDEMPOTENCY_WAIT", "maybe"), ("BASTION_IDEMPOTENCY_TTL_SECONDS", "soon")],
)
def test_unparsable_values_name_the_variable(name: str, value: str) -> None:
    """A bad value fails at start-up with the variable's name in the message."""
    with pytest.raises(ConfigurationError, match=name):
        IdempotencySettings.from_env({name: value})


@pytest.mark.parametrize(
    "options",
    [
        {"ttl_seconds": 0},
        {"lease_seconds": -1},
        {"lease_seconds": 100, "ttl_seconds": 10},
        {"max_key_length": 0},
        {"header_name": " "},
        {"header_name": "Idempotency Key"},
        {"header_name": "clé"},
        {"lease_seconds": 0.001},
        {"max_response_bytes": -1},
    ],
)
def test_impossible_settings_are_refused(options: dict[str, object]) -> None:
    """Settings that cannot work raise ConfigurationError when built."""
    with pytest.raises(ConfigurationError):
        IdempotencySettings(**options)  # type: ignore[arg-type]
