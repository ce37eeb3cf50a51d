"""`pipeline`: the command line. `pipeline --help` and `pipeline COMMAND --help` are its manual."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline.settings import Settings, settings_reference

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

    up = sub.add_parser(
        "up", help="start the whole pipeline (embedded services unless URLs are set)",
        description="Start the Tansu broker, embedded PostgreSQL and the ClickHouse HTTP endpoint "
        "(each only if its URL is not set), then the Faust worker(s). Prints where everything "
        "listens; Ctrl-C or SIGTERM drains in-flight batches and stops everything.",
    )
    up.add_argument("--data-dir", help="where embedded services keep their data (default: ./data)")
    up.add_argument("--demo", action="store_true", help="also load sample data and run the simulator")
    up.add_argument("--workers", type=int, default=None,
                    help="Faust worker processes (default: PIPELINE_WORKERS, else one per core)")
    up.set_defaults(func=cmd_up)

    worker = sub.add_parser("worker", help="run one Faust worker against the configured services")
    worker.set_defaults(func=cmd_worker)

    ingest = sub.add_parser(
        "ingest", help="publish datum files to their per-source topics",
        description="Read files of datums and publish them, streaming, in constant memory. "
        "--format json: SolarNetwork datum JSON, one object per line. --format lp: InfluxDB line "
        "protocol (oTherm uploads): measurement and a tag give the source (for oTherm's "
        "otherm-data/monitoring-data/weather-data, the equipment tag: /otherm-data/<uuid>), fields "
        "give samples (numbers instantaneous, text and booleans status), -999 means missing. "
        "Bad lines go to the dead-letter topic with file, line number and reason; the rest "
        "continue. Prints lines read, datums sent and lines rejected. JSON lines may also be "
        "SolarNetwork auxiliary records: a meter Reset stored ({\"type\":\"Reset\",\"final\":{\"a\":...},"
        "\"start\":{\"a\":...},...}), deleted (\"action\":\"delete\") or moved ({\"from\":...,\"to\":...}); "
        "the rollups around it are recomputed (docs/rollups.md).",
    )
    ingest.add_argument("files", nargs="+", type=Path, help="files to read ('-' for stdin)")
    ingest.add_argument("--format", choices=["json", "lp"], default="json")
    ingest.add_argument("--no-confirm", action="store_true",
                        help="do not wait until the pipeline has stored what was sent (then a crash of the "
                             "broker can lose what the report counts as sent)")
    ingest.add_argument("--precision", choices=["ns", "us", "ms", "s"], default="ns",
                        help="lp: unit of the timestamps (oTherm writes s)")
    ingest.add_argument("--node-id", type=int, default=None, help="lp: node of every datum (default 1)")
    ingest.add_argument("--node-tag", help="lp: take the node id from this tag instead")
    ingest.add_argument("--source-tag", action="append", default=[], metavar="MEASUREMENT=TAG",
                        help="lp: the tag naming the source for a measurement (repeatable; "
                        "'*=TAG' for every other measurement)")
    ingest.add_argument("--source-template", default="/{measurement}/{source}",
                        help="lp: sourceId template; {measurement}, {source} and tag keys")
    ingest.add_argument("--sentinel", action="append", type=float, default=None,
                        help="lp: a value meaning 'missing' (repeatable; default -999)")
    ingest.set_defaults(func=cmd_ingest)

    sim = sub.add_parser(
        "simulate", help="run a fleet of simulated gateways (meters, inverters, weather, heat pumps)",
        description="Publish datums of a simulated fleet: energy meters, PV inverters, weather "
        "stations (real TMY weather from pvlib when installed) and oTherm ground-source heat "
        "pumps. Sends --backfill hours of history as fast as possible, then (with --realtime) "
        "one datum per device every --interval seconds until Ctrl-C.",
    )
    sim.add_argument("--nodes", type=int, default=3, help="nodes (sites), each with its devices (default 3)")
    sim.add_argument("--interval", type=float, default=60.0, help="seconds between samples (default 60)")
    sim.add_argument("--backfill", type=float, default=24.0, help="hours of history to send first (default 24)")
    sim.add_argument("--realtime", action="store_true", help="keep sending as time passes")
    sim.add_argument("--bad-ratio", type=float, default=0.0, help="fraction of datums with a faulty value")
    sim.add_argument("--seed", type=int, default=0)
    sim.set_defaults(func=cmd_simulate)

    meta = sub.add_parser("metadata", help="publish metadata changes to the metadata topic")
    meta_sub = meta.add_subparsers(title="metadata commands", metavar="ACTION")
    apply_p = meta_sub.add_parser(
        "apply", help="publish metadata events (JSON array or one object per line)",
        description="Check every event against the event schema (docs/history.md), then publish "
        "them to the metadata topic; a worker applies them to the PostgreSQL history log in order. "
        "One bad event refuses the whole file.",
    )
    apply_p.add_argument("files", nargs="+", type=Path)
    apply_p.set_defaults(func=cmd_metadata_apply)
    dm = meta_sub.add_parser(
        "datamodels", help="register OpenGate datamodel files and a bindings.json",
        description="Check datamodel files (every template rule) and bindings.json, then publish "
        "them as datamodel and source_binding events. A bad file refuses the whole set. The same "
        "content gives the same event ids, so publishing twice changes nothing.",
    )
    dm.add_argument("files", nargs="+", type=Path, help="datamodel JSON files, bindings.json, or a directory")
    dm.add_argument("--author", default=os.environ.get("USER", "pipeline"), help="who makes the change")
    dm.add_argument("--comment", default="", help="why (EBAS's --transcomment)")
    dm.set_defaults(func=cmd_metadata_datamodels)

    setp = sub.add_parser(
        "set", help="send a value to a device datastream (WRITE access only)",
        description="A set operation: accepted only for datastreams whose access includes WRITE and "
        "whose JSON Schema the value satisfies; accepted commands go to the node's command topic "
        "(node.<id>.commands) for its gateway. Refusals print their reason and exit 2.",
    )
    setp.add_argument("node_id", type=int)
    setp.add_argument("datastream", help="datastream identifier, e.g. energy.meter.relay")
    setp.add_argument("value", help="the value as JSON (e.g. 5000, '\"open\"')")
    setp.add_argument("--source", help="sourceId of the device (needed when bindings use patterns)")
    setp.set_defaults(func=cmd_set)

    tok = sub.add_parser("token", help="API security tokens (SolarNetwork policies, SNWS2 signing)")
    tok_sub = tok.add_subparsers(title="token commands", metavar="ACTION")
    tcreate = tok_sub.add_parser(
        "create", help="make a token; its secret is printed once, never stored",
        description="Write a security_token to the history log and print its id and secret as JSON. "
        "The secret is shown only here: the log keeps SHA-256('SNWS2' + secret), which verifies SNWS2 "
        "signatures (docs/security.md). A read token reads datums within its policy; a node token posts "
        "datums of its nodes (--node required).",
    )
    tcreate.add_argument("--type", choices=["read", "node"], default="read")
    tcreate.add_argument("--node", type=int, action="append", default=[], help="a node ID the token may touch")
    tcreate.add_argument("--source", action="append", default=[],
                         help="a source ID or Ant pattern (/S1/**) the token may touch")
    tcreate.add_argument("--min-aggregation", help="the finest aggregation it may read (e.g. Hour)")
    tcreate.add_argument("--api-path", action="append", default=[], help="an Ant pattern of API paths allowed")
    tcreate.add_argument("--expires", help="not valid after this instant (ISO 8601 with offset)")
    tcreate.add_argument("--name", default="", help="a label for people")
    tcreate.add_argument("--author", default=os.environ.get("USER", "pipeline"), help="who makes the change")
    tcreate.set_defaults(func=cmd_token_create)
    tlist = tok_sub.add_parser("list", help="tokens in force: id, type, policy (no secrets)")
    tlist.set_defaults(func=cmd_token_list)
    trevoke = tok_sub.add_parser("revoke", help="revoke a token (a delete in the history log)")
    trevoke.add_argument("token_id")
    trevoke.add_argument("--author", default=os.environ.get("USER", "pipeline"), help="who makes the change")
    trevoke.add_argument("--comment", default="", help="why")
    trevoke.set_defaults(func=cmd_token_revoke)

    hist = sub.add_parser("history", help="time travel in the metadata history log")
    hist_sub = hist.add_subparsers(title="history commands", metavar="ACTION")
    state = hist_sub.add_parser("state", help="the metadata as recorded at transaction time T (EBAS --state)")
    state.add_argument("--at", required=True, help="transaction time, ISO 8601 with offset, or 'now'")
    state.add_argument("--entity", help="only this entity type (e.g. node, datastream_template)")
    state.set_defaults(func=cmd_history_state)
    hdiff = hist_sub.add_parser("diff", help="what was added, changed and deleted between two states (EBAS --diff)")
    hdiff.add_argument("--from", dest="t_from", required=True, help="ISO 8601 transaction time")
    hdiff.add_argument("--to", dest="t_to", default="now", help="ISO 8601 transaction time (default now)")
    hdiff.add_argument("--entity", help="only this entity type")
    hdiff.set_defaults(func=cmd_history_diff)
    valid = hist_sub.add_parser("valid", help="which value held for data time T, as known at transaction time K")
    valid.add_argument("entity")
    valid.add_argument("key", help='the key as JSON, e.g. \'{"node_id": 1}\'')
    valid.add_argument("--data-time", required=True)
    valid.add_argument("--known-at", default=None)
    valid.set_defaults(func=cmd_history_valid)

    # --- rollups (pipeline/rollups.py) ---
    rec = sub.add_parser(
        "recompute", help="recompute every rollup level of one stream for a time range from raw",
        description="Recompute the half hours overlapping [--from, --to) of one stream from the raw "
        "rows, then cascade hour, day, week, month and year; buckets found empty get tombstones. "
        "The node's time zone comes from the history log (UTC without one) unless --tz is given.",
    )
    rec.add_argument("--node", type=int, required=True)
    rec.add_argument("--source", required=True)
    rec.add_argument("--from", dest="t_from", required=True, help="ISO 8601 (with offset; UTC if none)")
    rec.add_argument("--to", dest="t_to", required=True, help="ISO 8601, exclusive")
    rec.add_argument("--tz", help="IANA zone to use instead of the node's")
    rec.set_defaults(func=cmd_recompute)
    # --- end rollups ---

    replay = sub.add_parser(
        "replay", help="send stored or dead-lettered datums through the pipeline again",
        description="Re-publish datums to their source topics, with a progress bar. `replay store` "
        "rebuilds the datums stored in ClickHouse for a time range: the workers validate and score "
        "them again with the template versions valid at each datum's time and store them over the "
        "old rows, and their rollups are recomputed. `replay deadletter` re-sends the datums and "
        "JSON lines kept on the dead-letter topic (after fixing a template or binding); letters "
        "without a datum (corrupt envelopes, line-protocol lines) are counted, not sent.",
    )
    replay_sub = replay.add_subparsers(title="sources", metavar="SOURCE")
    rstore = replay_sub.add_parser("store", help="datums stored in ClickHouse for a time range")
    rstore.add_argument("--from", dest="t_from", required=True, help="ISO 8601 (with offset; UTC if none)")
    rstore.add_argument("--to", dest="t_to", required=True, help="ISO 8601, exclusive")
    rstore.add_argument("--node", type=int, help="only this node")
    rstore.add_argument("--source", help="only this sourceId")
    rstore.set_defaults(func=cmd_replay_store)
    rdead = replay_sub.add_parser("deadletter", help="datums kept on the dead-letter topic")
    rdead.add_argument("--stage", help="only letters of this stage (ingest, envelope, validation, ...)")
    rdead.add_argument("--rule", help="only letters with this rule id among their reasons")
    rdead.set_defaults(func=cmd_replay_deadletter)

    api = sub.add_parser(
        "api", help="serve the OpenOrg time-series HTTP API at /api/timeseries",
        description="Serve the OpenOrg time-series API (GET /api/timeseries, OpenAPI at /api/timeseries/openapi.json) "
        "on PIPELINE_API_HOST:PIPELINE_API_PORT, reading raw data and rollups from ClickHouse and node "
        "time zones from the history log. `pipeline up` starts it.",
    )
    api.set_defaults(func=cmd_api)

    sql = sub.add_parser("sql", help="run ClickHouse SQL against the configured store")
    sql.add_argument("query", help="the SQL; SELECT results print as tab-separated rows")
    sql.set_defaults(func=cmd_sql)

    topics = sub.add_parser("topic-name", help="print the topic a sourceId maps to")
    topics.add_argument("source_id")
    topics.set_defaults(func=lambda s, a: print(_topics(s).source(a.source_id)))
    return p


def _topics(settings: Settings):  # noqa: ANN202 - tiny helper
    from pipeline.topics import Topics

    return Topics(settings.topic_prefix)


def _need(settings: Settings, *what: str) -> None:
    missing = [w for w in what if not getattr(settings, w)]
    if missing:
        names = ", ".join("PIPELINE_" + m.upper() for m in missing)
        raise SystemExit(f"pipeline: {names} not set; start the stack with `pipeline up` or set them")


def embedded_defaults(settings: Settings) -> Settings:
    """Where `pipeline up` puts the embedded services: fill in what is not set (the embedded
    ClickHouse endpoint with the writer's credentials `up` made in the data directory)."""
    from pipeline.stack import embedded_clickhouse_url

    return replace(
        settings,
        kafka_bootstrap=settings.kafka_bootstrap or f"127.0.0.1:{settings.kafka_port}",
        clickhouse_url=settings.clickhouse_url
        or embedded_clickhouse_url(settings.data_dir.resolve(), settings.clickhouse_port),
        postgres_dsn=settings.postgres_dsn
        or f"postgresql://postgres@127.0.0.1:{settings.postgres_port}/postgres",
    )


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    _need(settings, "kafka_bootstrap", "clickhouse_url")
    from pipeline.worker import run_worker

    run_worker(settings)
    return 0


def _ms(text: str) -> int:
    from datetime import UTC, datetime

    t = datetime.fromisoformat(text)
    return int((t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp() * 1000)


def cmd_replay_store(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.progress import Progress
    from pipeline.replay import replay_store

    settings = embedded_defaults(settings)
    with Progress(None, unit="datums", description="replay store") as bar:
        report = replay_store(settings, _ms(args.t_from), _ms(args.t_to), args.node, args.source, bar)
    print(report.summary())
    return 0


def cmd_replay_deadletter(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.progress import Progress
    from pipeline.replay import replay_deadletters

    settings = embedded_defaults(settings)
    with Progress(None, unit="letters", description="replay deadletter") as bar:
        report = replay_deadletters(settings, args.stage, args.rule, bar)
    print(report.summary())
    return 0


def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    _need(settings, "clickhouse_url")
    from pipeline.api import serve

    serve(settings)
    return 0


def cmd_recompute(settings: Settings, args: argparse.Namespace) -> int:  # rollups

    from pipeline.progress import Progress
    from pipeline.rollups import recompute_range
    from processors.rollup import buckets_between
    from sinks.clickhouse import connect
    from sinks.rollups import ensure_rollup_schema

    settings = embedded_defaults(settings)
    start, end = _ms(args.t_from), _ms(args.t_to)
    from pipeline.metadata import MetadataLink

    # the history log: the node's time zone, and which datastreams are PULSE (summed)
    link = MetadataLink(settings.postgres_dsn)
    try:
        link.migrate()  # a fresh store: an empty log, not an error
        catalog = link.load()
    finally:
        link.close()
    pulse = catalog.catalogs[-1].pulse_datastreams()
    if args.tz:
        tz_name: str = args.tz

        def timezone_at(node: int, at: int) -> str:
            return tz_name
    else:
        timezone_at = catalog.timezone_at
    client = connect(settings.clickhouse_url)
    ensure_rollup_schema(client)
    tz = timezone_at(args.node, start)
    days = sum(1 for _ in buckets_between(start, end, "day", tz))
    with Progress(days, unit="days", description=f"recompute {args.node} {args.source} ({tz})") as bar:
        written = recompute_range(client, args.node, args.source, start, end, timezone_at, progress=bar,
                                  pulse=pulse)
    print(f"recomputed {days} day(s) of {args.node} {args.source} in {tz}: {written} row(s) written")
    return 0


def cmd_sql(settings: Settings, args: argparse.Namespace) -> int:
    settings = embedded_defaults(settings)
    from sinks.clickhouse import connect

    client = connect(settings.clickhouse_url)
    result = client.query(args.query) if _returns_rows(args.query) else None
    if result is None:
        print(client.command(args.query))
        return 0
    print("\t".join(result.column_names))
    for row in result.result_rows:
        print("\t".join(str(v) for v in row))
    return 0


def _returns_rows(query: str) -> bool:
    head = query.lstrip().split(None, 1)[0].upper() if query.strip() else ""
    return head in {"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS"}


def cmd_ingest(settings: Settings, args: argparse.Namespace) -> int:
    settings = embedded_defaults(settings)
    from pipeline.ingest import ingest_files
    from pipeline.progress import Progress

    mapping = None
    if args.format == "lp":
        from processors.lp_mapping import OTHERM_SOURCE_TAGS, LineProtocolMapping

        tags = dict(OTHERM_SOURCE_TAGS)
        default_tag = None
        for spec in args.source_tag:
            measurement, sep, tag = spec.partition("=")
            if not sep or not tag:
                raise SystemExit(f"pipeline ingest: --source-tag wants MEASUREMENT=TAG, got {spec!r}")
            if measurement == "*":
                default_tag = tag
            else:
                tags[measurement] = tag
        node_id = None if args.node_tag else (args.node_id if args.node_id is not None else 1)
        mapping = LineProtocolMapping(
            node_id=node_id, node_tag=args.node_tag, source_tags=tags, default_source_tag=default_tag,
            source_template=args.source_template,
            sentinels=frozenset(args.sentinel if args.sentinel is not None else [-999.0]),
        )
    with Progress(None, unit="lines", description="ingest") as bar:
        report = ingest_files(settings, args.files, args.format, progress=bar, mapping=mapping,
                              precision=args.precision, confirm=not args.no_confirm)
        bar.update(report.lines_read - bar.n)
    print(report.summary())
    return 0 if report.lines_rejected == 0 and report.datums_unconfirmed == 0 else 1


def cmd_simulate(settings: Settings, args: argparse.Namespace) -> int:
    settings = embedded_defaults(settings)
    from pipeline.simulate import simulate
    from processors.simulate import FleetSpec

    now = int(time.time() * 1000)
    backfill_ms = int(args.backfill * 3_600_000)
    start = (now - backfill_ms) // 60_000 * 60_000
    spec = FleetSpec(nodes=args.nodes, interval_s=args.interval, seed=args.seed, start_ms=start,
                     bad_ratio=args.bad_ratio)
    report = simulate(settings, spec, backfill_ms, args.realtime, now_ms=now)
    print(report.summary())
    return 0


def _publish_events(settings: Settings, events: list[dict[str, Any]]) -> None:
    import json

    from pipeline.producer import DatumProducer

    producer = DatumProducer(settings)
    topic = producer.topics.metadata
    producer.admin.ensure([topic])
    for e in events:
        producer.send_raw(topic, json.dumps(e, separators=(",", ":")).encode(),
                          key=f"{e['entity']}:{json.dumps(e['key'], sort_keys=True)}".encode())
    producer.flush()
    print(f"published {len(events)} metadata event(s) to {topic}")


def cmd_set(settings: Settings, args: argparse.Namespace) -> int:
    import json

    from pipeline.metadata import send_set_request

    settings = embedded_defaults(settings)
    try:
        value = json.loads(args.value)
    except json.JSONDecodeError:
        value = args.value  # a bare word is a string
    result = send_set_request(settings, args.node_id, args.datastream, value, args.source,
                              os.environ.get("USER", "pipeline"))
    _print_json(result)
    return 0 if result["accepted"] else 2


def cmd_metadata_apply(settings: Settings, args: argparse.Namespace) -> int:
    settings = embedded_defaults(settings)
    from pipeline.metadata import read_event_file
    from processors.metadata import MetadataEventError

    try:
        events = [e for path in args.files for e in read_event_file(path)]
    except (MetadataEventError, ValueError) as exc:
        print(f"pipeline metadata apply: refused, nothing published: {exc}", file=sys.stderr)
        return 2
    _publish_events(settings, events)
    return 0


def cmd_metadata_datamodels(settings: Settings, args: argparse.Namespace) -> int:
    settings = embedded_defaults(settings)
    from pipeline.metadata import datamodel_events

    paths: list[Path] = []
    for p in args.files:
        paths.extend(sorted(p.glob("*.json")) if p.is_dir() else [p])
    try:
        events = datamodel_events(paths, args.author, args.comment)
    except ValueError as exc:  # DatamodelError, BindingError, MetadataEventError, JSON errors
        print(f"pipeline metadata datamodels: refused, nothing published: {exc}", file=sys.stderr)
        return 2
    _publish_events(settings, events)
    return 0


def _time(text: str | None) -> Any:
    from datetime import UTC, datetime

    from processors.metadata import parse_time

    if text is None:
        return None
    return datetime.now(UTC) if text == "now" else parse_time(text, "time")


def _history_conn(settings: Settings) -> Any:
    import psycopg

    return psycopg.connect(embedded_defaults(settings).postgres_dsn, autocommit=True)


def _print_json(doc: Any) -> None:
    import json

    print(json.dumps(doc, default=str, ensure_ascii=False))


def _apply_token_event(settings: Settings, token_id: str, op: str, value: dict[str, Any] | None,
                       author: str, comment: str) -> Any:
    """Apply a security_token event to the history log at once (not through the metadata topic):
    the secret is printed only once the token is stored, and a revoke holds when this returns."""
    import uuid
    from datetime import UTC, datetime

    from processors.metadata import parse_event
    from sinks import history

    event = parse_event({
        "event_id": str(uuid.uuid4()), "entity": "security_token", "key": {"token_id": token_id}, "op": op,
        "value": value, "author": author, "comment": comment, "produced_at": datetime.now(UTC).isoformat(),
    })
    with _history_conn(settings) as conn:
        history.migrate(conn)
        return history.apply_event(conn, event)


def cmd_token_create(settings: Settings, args: argparse.Namespace) -> int:
    import secrets

    from processors.security_policy import PolicyError, TokenType
    from processors.tokens import make_token, policy_from_options

    try:
        policy = policy_from_options(args.node, args.source, args.min_aggregation, args.api_path, args.expires)
        made = make_token(TokenType.NODE if args.type == "node" else TokenType.READ_NODE_DATA, policy,
                          secrets.choice, args.name)
    except PolicyError as exc:
        print(f"pipeline token create: refused: {exc}", file=sys.stderr)
        return 2
    result = _apply_token_event(settings, made.token_id, "upsert", made.value, args.author, args.name)
    if result.status != "applied":
        print(f"pipeline token create: refused by the history log: {result.reason}", file=sys.stderr)
        return 2
    _print_json({"tokenId": made.token_id, "tokenSecret": made.secret, "type": made.value["type"],
                 "policy": made.value["policy"], "note": "the secret is shown only now"})
    return 0


def cmd_token_list(settings: Settings, args: argparse.Namespace) -> int:
    from processors.tokens import public_view
    from sinks import history

    with _history_conn(settings) as conn:
        history.migrate(conn)
        for token_id, value in history.current_tokens(conn).items():
            _print_json(public_view(token_id, value))
    return 0


def cmd_token_revoke(settings: Settings, args: argparse.Namespace) -> int:
    result = _apply_token_event(settings, args.token_id, "delete", None, args.author, args.comment)
    if result.status != "applied":
        print(f"pipeline token revoke: refused: {result.reason}", file=sys.stderr)
        return 2
    _print_json({"tokenId": args.token_id, "revoked": True})
    return 0


def cmd_history_state(settings: Settings, args: argparse.Namespace) -> int:
    from sinks import history

    with _history_conn(settings) as conn:
        for row in history.state_at(conn, _time(args.at), args.entity):
            _print_json({"entity": row.entity, "key": row.key, "value": row.value,
                         "valid": row.valid.as_json() if row.valid else None, "known_since": row.known_since})
    return 0


def cmd_history_diff(settings: Settings, args: argparse.Namespace) -> int:
    from sinks import history

    with _history_conn(settings) as conn:
        for ch in history.diff(conn, _time(args.t_from), _time(args.t_to), args.entity):
            _print_json({"change": ch.kind, "entity": ch.entity, "key": ch.key, "valid_from": ch.valid_from,
                         "before": ch.before.value if ch.before else None,
                         "after": ch.after.value if ch.after else None})
    return 0


def cmd_history_valid(settings: Settings, args: argparse.Namespace) -> int:
    import json

    from sinks import history

    with _history_conn(settings) as conn:
        row = history.valid_at(conn, args.entity, json.loads(args.key), _time(args.data_time), _time(args.known_at))
    if row is None:
        print("no value", file=sys.stderr)
        return 1
    _print_json({"entity": row.entity, "key": row.key, "value": row.value,
                 "valid": row.valid.as_json() if row.valid else None, "known_since": row.known_since})
    return 0


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline import stack
    from sinks.clickhouse import ensure_schema, wait_for

    args.workers = worker_count(args.workers, settings)
    data_dir = settings.data_dir.resolve()
    try:  # before anything in the data directory is touched
        lock = stack.DataDirLock(data_dir).acquire()
    except stack.DataDirInUse as exc:
        print(f"pipeline up: {exc}", file=sys.stderr)
        return 1
    logs = data_dir / "logs"
    supervisor = stack.Supervisor()
    services: list[stack.Service] = []  # embedded ones, in start order
    workers: list[stack.Service] = []
    others: list[stack.Service] = []  # api, simulate
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if not settings.kafka_bootstrap:
            services.append(stack.tansu(settings.kafka_port, log_dir=logs))
        if not settings.postgres_dsn:
            services.append(stack.postgres(data_dir / "postgres", settings.postgres_port))
        embedded_clickhouse = not settings.clickhouse_url
        if embedded_clickhouse:
            # only its users get in: the pipeline's writer, and a reader for the API (issue 14)
            services.append(stack.clickhouse(data_dir / "clickhouse", settings.clickhouse_port, log_dir=logs,
                                             users_file=stack.clickhouse_users_file(data_dir)))
        for svc in services:
            supervisor.add(svc.start())
        settings = embedded_defaults(settings)
        ensure_schema(wait_for(settings.clickhouse_url))
        env = {**os.environ, **settings.as_env()}

        def child(name: str, argv: list[str], restart: bool = True, **extra: str) -> stack.Service:
            child_env = {**env, **extra}
            svc = stack.Service(name, "", spawn=lambda: stack.spawn_process(argv, logs / f"{name}.log", child_env),
                                log_file=logs / f"{name}.log")
            return supervisor.add(svc.start(), restart=restart)

        for n in range(args.workers):
            # each worker its own metrics port: base, base+1, ...
            port = settings.metrics_port + n if settings.metrics_port else 0
            workers.append(child(f"worker-{n}", [sys.executable, "-m", "pipeline.cli", "worker"],
                                 PIPELINE_METRICS_PORT=str(port)))
        if settings.api_port:
            # the API only reads ClickHouse: as the read-only user on the embedded endpoint
            reader = {"PIPELINE_CLICKHOUSE_URL": stack.embedded_clickhouse_url(
                data_dir, settings.clickhouse_port, user=stack.CLICKHOUSE_READER)} if embedded_clickhouse else {}
            others.append(child("api", [sys.executable, "-m", "pipeline.cli", "api"], **reader))
        if args.demo:
            # the sample datamodels and bindings go through the metadata topic like any change
            from pipeline.resources import schemas_dir

            models = schemas_dir("datamodels")  # in the tree, or inside an installed wheel
            subprocess.run([sys.executable, "-m", "pipeline.cli", "metadata", "datamodels", str(models),
                            "--author", "demo", "--comment", "sample datamodels"], env=env, check=True,
                           preexec_fn=stack.dies_with_parent())
            bindings = json.loads((models / "bindings.json").read_text())["bindings"]
            _wait_for_bindings(settings.postgres_dsn, timeout=120, count=len(bindings))
            # a day of history from a small fleet, then live data every 10 s; not restarted: it
            # would send its day of history again
            others.insert(0, child("simulate", [sys.executable, "-m", "pipeline.cli", "simulate", "--nodes", "3",
                                                "--interval", "10", "--backfill", "24", "--realtime",
                                                "--bad-ratio", "0.01"], restart=False))
        print(_banner(settings, data_dir, args.workers), flush=True)
        while not stopping:
            supervisor.check()  # restarts what died, with backoff, on the same ports
            time.sleep(0.25)
        print("pipeline: stopping (draining in-flight batches)...", flush=True)
        return 0
    except stack.StackError as exc:
        print(f"pipeline up: {exc}", file=sys.stderr)
        return 1
    finally:
        # the producer first, then the workers drain, then the API, then the services they used
        simulate = [s for s in others if s.name == "simulate"]
        supervisor.stop([simulate, workers, [s for s in others if s not in simulate],
                         *([s] for s in reversed(services))])
        lock.release()
        print("pipeline: stopped", flush=True)


def worker_count(requested: int | None, settings: Settings) -> int:
    """--workers, else PIPELINE_WORKERS, else one per core this process may run on: a worker is
    one Python process (one event loop, the GIL), so it keeps at most one core busy."""
    if requested:
        return requested
    if settings.workers > 0:
        return settings.workers
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # no affinity on this platform
        return os.cpu_count() or 1


def _wait_for_bindings(dsn: str, timeout: float, count: int = 1) -> None:
    """Until a worker has applied `count` of the demo's bindings: data sent before would go
    unvalidated (the datamodels come first in the events, so they are there too)."""
    import psycopg

    from sinks import history

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                if len(history.current_catalog(conn).bindings) >= count:
                    return
        except psycopg.Error:
            pass  # schema not migrated yet: the worker does it on start
        time.sleep(0.5)
    raise SystemExit("pipeline up --demo: the sample datamodels were not applied in time; see logs/worker-0.log")


def _without_password(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def _banner(settings: Settings, data_dir: Path, workers: int) -> str:
    return "\n".join(
        [
            "pipeline is up:",
            f"  Kafka bootstrap    {settings.kafka_bootstrap}",
            f"  ClickHouse HTTP    {_without_password(settings.clickhouse_url)}"
            "   (try: pipeline sql 'SELECT count() FROM datum')",
            f"  PostgreSQL         {settings.postgres_dsn}",
            f"  Prometheus metrics http://127.0.0.1:{settings.metrics_port}/metrics" if settings.metrics_port else "",
            f"  time-series API    http://{settings.api_host}:{settings.api_port}/api/timeseries"
            if settings.api_port else "",
            f"  Faust workers      {workers}",
            f"  data directory     {data_dir}",
            "Ctrl-C to stop.",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
