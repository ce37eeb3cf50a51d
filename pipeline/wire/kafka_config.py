"""How every Kafka client of the pipeline connects: one place for the bootstrap servers and the
security settings (TLS, SASL/SCRAM), so the producer, the admin client, the readers and Faust
all speak to a locked-down broker the same way (issue 14).

    PIPELINE_KAFKA_SECURITY_PROTOCOL  PLAINTEXT (default) | SSL | SASL_PLAINTEXT | SASL_SSL
    PIPELINE_KAFKA_SASL_MECHANISM     SCRAM-SHA-512 (default) | SCRAM-SHA-256 | PLAIN
    PIPELINE_KAFKA_SASL_USERNAME, PIPELINE_KAFKA_SASL_PASSWORD
    PIPELINE_KAFKA_SSL_CAFILE         the CA bundle that signed the brokers' certificates
"""

from __future__ import annotations

import ssl
from typing import Any

from pipeline.settings import Settings

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")


class KafkaConfigError(ValueError):
    pass


def _checked(settings: Settings) -> tuple[str, str]:
    protocol = settings.kafka_security_protocol.strip().upper() or "PLAINTEXT"
    if protocol not in PROTOCOLS:
        raise KafkaConfigError(f"kafka_security_protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
    mechanism = settings.kafka_sasl_mechanism.strip().upper()
    if protocol.startswith("SASL"):
        if mechanism not in MECHANISMS:
            raise KafkaConfigError(f"kafka_sasl_mechanism must be one of {', '.join(MECHANISMS)}, not {mechanism!r}")
        if not settings.kafka_sasl_username or not settings.kafka_sasl_password:
            raise KafkaConfigError(f"{protocol} needs kafka_sasl_username and kafka_sasl_password")
    return protocol, mechanism


def client_config(settings: Settings) -> dict[str, Any]:
    """confluent-kafka (librdkafka) settings to reach the brokers; add a client's own to it."""
    protocol, mechanism = _checked(settings)
    out: dict[str, Any] = {"bootstrap.servers": settings.kafka_bootstrap}
    if protocol != "PLAINTEXT":
        out["security.protocol"] = protocol
    if protocol.startswith("SASL"):
        out.update(
            {
                "sasl.mechanism": mechanism,
                "sasl.username": settings.kafka_sasl_username,
                "sasl.password": settings.kafka_sasl_password,
            }
        )
    if protocol.endswith("SSL") and settings.kafka_ssl_cafile:
        out["ssl.ca.location"] = str(settings.kafka_ssl_cafile)
    return out


def faust_credentials(settings: Settings) -> Any:
    """Faust's `broker_credentials` for the same settings (None: plaintext)."""
    protocol, mechanism = _checked(settings)
    if protocol == "PLAINTEXT":
        return None
    from faust.auth import SASLCredentials, SSLCredentials

    context = None
    if protocol.endswith("SSL"):
        context = ssl.create_default_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
        )
    if protocol == "SSL":
        return SSLCredentials(context)
    return SASLCredentials(
        username=settings.kafka_sasl_username,
        password=settings.kafka_sasl_password,
        ssl_context=context,
        mechanism=mechanism,
    )
