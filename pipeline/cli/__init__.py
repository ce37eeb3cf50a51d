"""`pipeline`: the command line. `pipeline --help` and `pipeline COMMAND --help` are its manual."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from pipeline.cli import data, metadata, services, tokens
from pipeline.cli.services import worker_count
from pipeline.settings import Settings, settings_reference
from pipeline.wire.topics import TopicMapError, Topics

__all__ = ["build_parser", "main", "worker_count"]

log = logging.getLogger("pipeline")
_URL_VARS = ("KAFKA_BOOTSTRAP", "CLICKHOUSE_URL", "POSTGRES_DSN")

EPILOG = "Environment variables (all optional):\n" + "\n".join(
    f"  {name:<34} {doc} (default: {default or ('embedded' if name.endswith(_URL_VARS) else 'empty')})"
    for name, default, doc in settings_reference()
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, os.environ.get("PIPELINE_LOG_LEVEL", "info").upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    settings = Settings.from_env(config_file=args.config)
    if getattr(args, "data_dir", None):
        settings = replace(settings, data_dir=Path(args.data_dir))
    try:
        Topics.of_settings(settings)  # a topic map that cannot be read stops every command, not a worker later
    except TopicMapError as exc:
        print(f"pipeline: {exc}", file=sys.stderr)
        return 2
    try:
        return int(args.func(settings, args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a clear one-line error, the traceback only at debug level
        if _is_connection_error(exc):
            log.debug("details", exc_info=True)
            print(f"pipeline: cannot reach a service: {exc}", file=sys.stderr)
            return 1
        raise


def _is_connection_error(exc: BaseException) -> bool:
    import psycopg
    from clickhouse_connect.driver.exceptions import OperationalError

    return isinstance(exc, (OperationalError, ConnectionError, psycopg.OperationalError))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pipeline",
        description="Device telemetry pipeline: SolarNetwork datums on Kafka, Faust agents, "
        "ClickHouse and a PostgreSQL history log.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="TOML file of settings (keys as in the list below, lower case)")
    sub = p.add_subparsers(title="commands", metavar="COMMAND")

    for group in (services, data, metadata, tokens):
        group.register(sub)
    return p
