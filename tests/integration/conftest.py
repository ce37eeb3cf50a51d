"""Session-scoped real services for integration tests.

Each service comes from an environment variable when it is set (an external Kafka, ClickHouse
or PostgreSQL), otherwise the embedded one is started on a free port. Never a silent skip.
Every test gets its own uuid-named ClickHouse database, PostgreSQL database and topic prefix.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import clickhouse_connect
import psycopg
import pytest

from pipeline.embedded import stack
from pipeline.settings import Settings
from tests.integration.helpers import settings_for


@pytest.fixture(scope="session")
def services_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


def _external_or_embedded(variable: str, start: Callable[[], stack.Service]) -> Iterator[str]:
    """The service named by the environment variable when it is set, else an embedded one (stopped after)."""
    external = os.environ.get(variable)
    if external:
        yield external
        return
    svc = start()
    yield svc.url
    svc.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(services_dir: Path) -> Iterator[str]:
    yield from _external_or_embedded(
        "PIPELINE_TEST_KAFKA_BOOTSTRAP", lambda: stack.start_tansu(log_dir=services_dir / "logs")
    )


@pytest.fixture(scope="session")
def clickhouse_url(services_dir: Path) -> Iterator[str]:
    yield from _external_or_embedded(
        "PIPELINE_TEST_CLICKHOUSE_URL",
        lambda: stack.start_clickhouse(services_dir / "clickhouse", log_dir=services_dir / "logs"),
    )


@pytest.fixture(scope="session")
def postgres_url(services_dir: Path) -> Iterator[str]:
    yield from _external_or_embedded(
        "PIPELINE_TEST_POSTGRES_DSN", lambda: stack.start_postgres(services_dir / "postgres")
    )


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture
def ch_database(clickhouse_url: str, unique: str) -> Iterator[str]:
    """A fresh ClickHouse database for one test, dropped afterwards."""
    name = f"t_{unique}"
    client = clickhouse_connect.get_client(dsn=clickhouse_url)
    client.command(f"CREATE DATABASE {name}")
    yield name
    client.command(f"DROP DATABASE IF EXISTS {name}")
    client.close()


@pytest.fixture
def pg_dsn(postgres_url: str, unique: str) -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    name = f"t_{unique}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = postgres_url.rpartition("/")
    yield f"{base}/{name}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def topic_prefix(unique: str) -> str:
    return f"t{unique}."


@pytest.fixture
def worker_settings(
    kafka_bootstrap: str, clickhouse_url: str, ch_database: str, topic_prefix: str, pg_dsn: str, tmp_path: Path
) -> Settings:
    """Settings on this test's own stores (its ClickHouse database, topic prefix and PostgreSQL
    database), with a data directory in tmp_path."""
    return settings_for(kafka_bootstrap, clickhouse_url, ch_database, topic_prefix)._with(
        {"postgres_dsn": pg_dsn, "data_dir": str(tmp_path / "data")}
    )
