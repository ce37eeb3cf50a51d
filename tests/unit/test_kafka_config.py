"""Every Kafka client gets the same security settings (pipeline/wire/kafka_config.py)."""

from __future__ import annotations

import pytest

from pipeline.settings import Settings
from pipeline.wire.kafka_config import KafkaConfigError, client_config, faust_credentials
from pipeline.wire.producer import producer_config


def settings(**kw: str) -> Settings:
    return Settings.from_env(
        {"PIPELINE_KAFKA_BOOTSTRAP": "k1:9093,k2:9093", **{f"PIPELINE_{k.upper()}": v for k, v in kw.items()}}
    )


def test_plaintext_is_the_bootstrap_alone() -> None:
    assert client_config(settings()) == {"bootstrap.servers": "k1:9093,k2:9093"}
    assert faust_credentials(settings()) is None


def test_sasl_scram_over_tls_reaches_the_producer_and_faust() -> None:
    s = settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="pipe",
        kafka_sasl_password="pw",
        kafka_ssl_cafile="/etc/ssl/certs/ca-certificates.crt",
    )
    want = {
        "bootstrap.servers": "k1:9093,k2:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "pipe",
        "sasl.password": "pw",
        "ssl.ca.location": "/etc/ssl/certs/ca-certificates.crt",
    }
    assert client_config(s) == want
    assert {k: producer_config(s)[k] for k in want} == want
    creds = faust_credentials(s)
    assert (creds.username, creds.password, creds.mechanism.value, creds.protocol.value) == (
        "pipe",
        "pw",
        "SCRAM-SHA-512",
        "SASL_SSL",
    )
    assert creds.ssl_context is not None


@pytest.mark.parametrize(
    "kw",
    [
        {"kafka_security_protocol": "SASL_SSL"},
        {"kafka_security_protocol": "TLS"},
        {
            "kafka_security_protocol": "SASL_PLAINTEXT",
            "kafka_sasl_username": "u",
            "kafka_sasl_password": "p",
            "kafka_sasl_mechanism": "GSSAPI",
        },
    ],
)
def test_incomplete_or_unknown_security_is_refused_at_start(kw: dict[str, str]) -> None:
    with pytest.raises(KafkaConfigError):
        client_config(settings(**kw))
