"""Commands that move or read datums: ingest, simulate, replay, recompute, sql, topic-name."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.cli.common import embedded_defaults, ms
from pipeline.settings import Settings
from pipeline.wire.topics import Topics

if TYPE_CHECKING:  # the command imports what it runs when it runs (a fast `pipeline --help`)
    from processors.catalog_versions import TimezoneAt


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ingest = sub.add_parser(
        "ingest",
        help="publish datum files to their per-source topics",
        description="Read files of datums and publish them, streaming, in constant memory. "
        "--format json: SolarNetwork datum JSON, one object per line. --format lp: InfluxDB line "
        "protocol (oTherm uploads): measurement and a tag give the source (for oTherm's "
        "otherm-data/monitoring-data/weather-data, the equipment tag: /otherm-data/<uuid>), fields "
        "give samples (numbers instantaneous, text and booleans status), -999 means missing. "
        "Bad lines go to the dead-letter topic with file, line number and reason; the rest "
        "continue. Prints lines read, datums sent and lines rejected. JSON lines may also be "
        'SolarNetwork auxiliary records: a meter Reset stored ({"type":"Reset","final":{"a":...},'
        '"start":{"a":...},...}), deleted ("action":"delete") or moved ({"from":...,"to":...}); '
        "the rollups around it are recomputed (docs/rollups.md).",
    )
    ingest.add_argument("files", nargs="+", type=Path, help="files to read ('-' for stdin)")
    ingest.add_argument("--format", choices=["json", "lp"], default="json")
    ingest.add_argument(
        "--no-confirm",
        action="store_true",
        help="do not wait until the pipeline has stored what was sent (then a crash of the "
        "broker can lose what the report counts as sent)",
    )
    ingest.add_argument(
        "--precision",
        choices=["ns", "us", "ms", "s"],
        default="ns",
        help="lp: unit of the timestamps (oTherm writes s)",
    )
    ingest.add_argument("--node-id", type=int, default=None, help="lp: node of every datum (default 1)")
    ingest.add_argument("--node-tag", help="lp: take the node id from this tag instead")
    ingest.add_argument(
        "--source-tag",
        action="append",
        default=[],
        metavar="MEASUREMENT=TAG",
        help="lp: the tag naming the source for a measurement (repeatable; '*=TAG' for every other measurement)",
    )
    ingest.add_argument(
        "--source-template",
        default="/{measurement}/{source}",
        help="lp: sourceId template; {measurement}, {source} and tag keys",
    )
    ingest.add_argument(
        "--sentinel",
        action="append",
        type=float,
        default=None,
        help="lp: a value meaning 'missing' (repeatable; default -999)",
    )
    ingest.set_defaults(func=cmd_ingest)

    sim = sub.add_parser(
        "simulate",
        help="run a fleet of simulated gateways (meters, inverters, weather, heat pumps)",
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

    rec = sub.add_parser(
        "recompute",
        help="recompute every rollup level of one stream for a time range from raw",
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

    replay = sub.add_parser(
        "replay",
        help="send stored or dead-lettered datums through the pipeline again",
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

    sql = sub.add_parser("sql", help="run ClickHouse SQL against the configured store")
    sql.add_argument("query", help="the SQL; SELECT results print as tab-separated rows")
    sql.set_defaults(func=cmd_sql)

    topics = sub.add_parser("topic-name", help="print the topic a sourceId maps to")
    topics.add_argument("source_id")
    topics.set_defaults(func=lambda s, a: print(Topics.of_settings(s).source(a.source_id)))


def cmd_ingest(settings: Settings, args: argparse.Namespace) -> int:
    settings = embedded_defaults(settings)
    from pipeline.gateway.ingest import ingest_files
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
            node_id=node_id,
            node_tag=args.node_tag,
            source_tags=tags,
            default_source_tag=default_tag,
            source_template=args.source_template,
            sentinels=frozenset(args.sentinel if args.sentinel is not None else [-999.0]),
        )
    with Progress(None, unit="lines", description="ingest") as bar:
        report = ingest_files(
            settings,
            args.files,
            args.format,
            progress=bar,
            mapping=mapping,
            precision=args.precision,
            confirm=not args.no_confirm,
        )
        bar.update(report.lines_read - bar.n)
    print(report.summary())
    unconfirmed = report.datums_unconfirmed + report.auxiliary_unconfirmed + report.letters_unconfirmed
    return 0 if report.lines_rejected == 0 and unconfirmed == 0 else 1


def cmd_simulate(settings: Settings, args: argparse.Namespace) -> int:
    settings = embedded_defaults(settings)
    from pipeline.gateway.simulate import simulate
    from processors.simulate import FleetSpec

    now = int(time.time() * 1000)
    backfill_ms = int(args.backfill * 3_600_000)
    start = (now - backfill_ms) // 60_000 * 60_000
    spec = FleetSpec(
        nodes=args.nodes, interval_s=args.interval, seed=args.seed, start_ms=start, bad_ratio=args.bad_ratio
    )
    report = simulate(settings, spec, backfill_ms, args.realtime, now_ms=now)
    print(report.summary())
    return 0


def cmd_replay_store(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.gateway.replay import replay_store
    from pipeline.progress import Progress

    settings = embedded_defaults(settings)
    with Progress(None, unit="datums", description="replay store") as bar:
        report = replay_store(settings, ms(args.t_from), ms(args.t_to), args.node, args.source, bar)
    print(report.summary())
    return 0


def cmd_replay_deadletter(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.gateway.replay import replay_deadletters
    from pipeline.progress import Progress

    settings = embedded_defaults(settings)
    with Progress(None, unit="letters", description="replay deadletter") as bar:
        report = replay_deadletters(settings, args.stage, args.rule, bar)
    print(report.summary())
    return 0


def cmd_recompute(settings: Settings, args: argparse.Namespace) -> int:  # rollups

    from pipeline.progress import Progress
    from pipeline.worker.rollups import recompute_range
    from processors.rollup import buckets_between
    from sinks.clickhouse import connect
    from sinks.rollups import ensure_rollup_schema

    settings = embedded_defaults(settings)
    start, end = ms(args.t_from), ms(args.t_to)
    from pipeline.history.link import MetadataLink

    # the history log: the node's time zone, and which datastreams are PULSE (summed)
    link = MetadataLink(settings.postgres_dsn)
    try:
        link.migrate()  # a fresh store: an empty log, not an error
        catalog = link.catalog()
    finally:
        link.close()
    pulse = catalog.catalogs[-1].pulse_datastreams()
    timezone_at: TimezoneAt = catalog.timezone_at
    if args.tz:
        tz_name: str = args.tz

        def fixed_zone(node_id: int, created_ms: int) -> str:
            return tz_name

        timezone_at = fixed_zone
    client = connect(settings.clickhouse_url)
    ensure_rollup_schema(client, settings.clickhouse_cluster)
    tz = timezone_at(args.node, start)
    days = sum(1 for _ in buckets_between(start, end, "day", tz))
    with Progress(days, unit="days", description=f"recompute {args.node} {args.source} ({tz})") as bar:
        written = recompute_range(
            client,
            args.node,
            args.source,
            start,
            end,
            timezone_at,
            progress=bar,
            pulse=pulse,
            cluster=settings.clickhouse_cluster,
        )
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
