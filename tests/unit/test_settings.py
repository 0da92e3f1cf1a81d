"""The settings: one pydantic model built from the RIVERDELTA_* variables in one place."""

from __future__ import annotations

import pytest

from riverdelta.config.settings import (
    ConfigError,
    Environment,
    KafkaProtocol,
    SaslMechanism,
    ValidationEngine,
    load_settings,
)

pytestmark = pytest.mark.unit


def test_defaults_follow_from_the_values_they_depend_on(tmp_path):
    s = load_settings({"RIVERDELTA_HOME": str(tmp_path), "RIVERDELTA_KAFKA_PORT": "19092"})
    assert (s.env, s.validation_engine) == (Environment.EMBEDDED, ValidationEngine.AUTO)
    assert s.cache == tmp_path / "cache"
    assert (s.kafka_controller_port, s.kafka_internal_port, s.kafka_tls_port) == (
        19093,
        19094,
        19095,
    )
    assert s.kafka_bootstrap == "127.0.0.1:19092"
    assert (s.lake, s.control) == (f"{tmp_path}/lake", tmp_path / "lake" / "_ops")
    assert s.s3_endpoint is None  # the embedded profile's "" is no endpoint


def test_empty_and_unrelated_variables_are_ignored(tmp_path):
    s = load_settings(
        {
            "RIVERDELTA_HOME": str(tmp_path),
            "RIVERDELTA_SPARK_MASTER": "",
            "RIVERDELTA_DEMO_EVENTS": "5",  # read by the demo itself, not a setting
        }
    )
    assert s.spark_master == "local[2]"


def test_sasl_mechanism_only_with_sasl_and_scram_by_default(tmp_path):
    env = {"RIVERDELTA_HOME": str(tmp_path), "RIVERDELTA_KAFKA_SASL_MECHANISM": "plain"}
    assert load_settings(env).kafka_sasl_mechanism is None
    s = load_settings({**env, "RIVERDELTA_KAFKA_SECURITY": "sasl_ssl"})
    assert (s.kafka_security_protocol, s.kafka_sasl_mechanism) == (
        KafkaProtocol.SASL_SSL,
        SaslMechanism.PLAIN,
    )
    del env["RIVERDELTA_KAFKA_SASL_MECHANISM"]
    s = load_settings({**env, "RIVERDELTA_KAFKA_SECURITY": "SASL_PLAINTEXT"})
    assert s.kafka_sasl_mechanism == "SCRAM-SHA-512"  # the enums are strings


def test_settings_are_frozen(tmp_path):
    s = load_settings({"RIVERDELTA_HOME": str(tmp_path)})
    with pytest.raises(ValueError, match="frozen"):
        s.lake = "elsewhere"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"RIVERDELTA_VALIDATION_ENGINE": "duck"},
            r"^RIVERDELTA_VALIDATION_ENGINE='duck': expected",
        ),
        ({"RIVERDELTA_KAFKA_TLS_PORT": "x"}, r"^RIVERDELTA_KAFKA_TLS_PORT='x' is not an integer$"),
        ({"RIVERDELTA_ENV": "compose", "RIVERDELTA_KAFKA_REPLICATION_FACTOR": "1"}, "between 1"),
    ],
)
def test_a_bad_variable_is_one_config_error_line(tmp_path, env, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_settings({"RIVERDELTA_HOME": str(tmp_path), **env})
    assert "\n" not in str(err.value)
