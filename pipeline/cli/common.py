"""What every command shares: the embedded defaults, required settings, times, JSON output."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from pipeline.settings import Settings
from processors.metadata import parse_time


def need(settings: Settings, *what: str) -> None:
    missing = [w for w in what if not getattr(settings, w)]
    if missing:
        names = ", ".join("PIPELINE_" + m.upper() for m in missing)
        raise SystemExit(f"pipeline: {names} not set; start the stack with `pipeline up` or set them")


def embedded_defaults(settings: Settings) -> Settings:
    """Where `pipeline up` puts the embedded services: fill in what is not set (the embedded
    ClickHouse endpoint with the writer's credentials `up` made in the data directory)."""
    from pipeline.embedded.stack import embedded_clickhouse_url

    return replace(
        settings,
        kafka_bootstrap=settings.kafka_bootstrap or f"127.0.0.1:{settings.kafka_port}",
        clickhouse_url=settings.clickhouse_url
        or embedded_clickhouse_url(settings.data_dir.resolve(), settings.clickhouse_port),
        postgres_dsn=settings.postgres_dsn or f"postgresql://postgres@127.0.0.1:{settings.postgres_port}/postgres",
    )


def ms(text: str) -> int:
    """An ISO 8601 instant as epoch milliseconds (UTC when it has no offset)."""
    t = datetime.fromisoformat(text)
    return int((t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp() * 1000)


def parse_when(text: str) -> datetime:
    """A transaction or data time of the history commands: ISO 8601 with offset, or 'now'."""
    return datetime.now(UTC) if text == "now" else parse_time(text, "time")


def history_conn(settings: Settings) -> Any:
    import psycopg

    return psycopg.connect(embedded_defaults(settings).postgres_dsn, autocommit=True)


def print_json(doc: Any) -> None:
    print(json.dumps(doc, default=str, ensure_ascii=False))
