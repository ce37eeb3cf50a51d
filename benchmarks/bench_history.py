"""Metadata history log: time-travel and diff latency on a loaded history.

    .venv/bin/python benchmarks/bench_history.py [--versions 10000] [--entities 100000]

Loads, with sinks.history.import_events (binary COPY, one transaction):
  - one hot site with --versions versions (history-aware: a rename an hour);
  - one node time zone with --versions bitemporal versions (half set_valid of a day each,
    half corrections of those days);
  - --entities other sites, one version each.
Then prints the median and worst latency of: state-at-T and diff for the hot site (target
< 50 ms), valid-at for the hot time zone, and the full state over all entities (target < 1 s).
Starts its own embedded PostgreSQL in a temp dir unless PIPELINE_POSTGRES_DSN is set (then a
scratch database is created and dropped there). Prints figures; it is not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from pipeline.embedded import stack
from processors.metadata import MetadataEvent, parse_event
from sinks import history

T0 = datetime(2020, 1, 1, tzinfo=UTC)
DAY0 = datetime(2024, 1, 1, tzinfo=UTC)


def event(
    entity: str,
    key: dict[str, Any],
    op: str,
    value: dict[str, Any] | None,
    valid_from: datetime | None = None,
    valid_to: datetime | None = None,
) -> MetadataEvent:
    return parse_event(
        {
            "event_id": str(uuid.uuid4()),
            "entity": entity,
            "key": key,
            "op": op,
            "value": value,
            "valid_from": None if valid_from is None else valid_from.isoformat(),
            "valid_to": None if valid_to is None else valid_to.isoformat(),
            "author": "bench",
            "comment": "",
            "produced_at": T0.isoformat(),
        }
    )


def build(versions: int, entities: int) -> tuple[list[MetadataEvent], list[datetime]]:
    events: list[MetadataEvent] = []
    times: list[datetime] = []

    def add(e: MetadataEvent, t: datetime) -> None:
        events.append(e)
        times.append(t)

    add(event("node", {"node_id": 1}, "upsert", {"name": "hot"}), T0)
    for i in range(versions):  # the hot site: one version an hour
        add(event("site", {"site_id": "hot"}, "upsert", {"name": f"hot v{i}"}), T0 + timedelta(hours=1 + i))
    half = versions // 2
    for i in range(half):  # the hot node's time zone: a day each, then each corrected
        add(
            event(
                "node_timezone",
                {"node_id": 1},
                "set_valid",
                {"tz": "UTC"},
                DAY0 + timedelta(days=i),
                DAY0 + timedelta(days=i + 1),
            ),
            T0 + timedelta(hours=1 + i, minutes=30),
        )
    for i in range(versions - half):
        add(
            event(
                "node_timezone",
                {"node_id": 1},
                "correct",
                {"tz": "Europe/Oslo"},
                DAY0 + timedelta(days=i),
                DAY0 + timedelta(days=i + 1),
            ),
            T0 + timedelta(hours=1 + half + i, minutes=30),
        )
    end = T0 + timedelta(hours=versions + 2)
    for j in range(entities):  # many sites, one version each, spread over the same period
        add(event("site", {"site_id": f"site-{j:06d}"}, "upsert", {"name": f"Site {j}"}), end + timedelta(seconds=j))
    return events, times


def timed(fn: Callable[[], object], runs: int) -> tuple[float, float, object]:
    samples = []
    out: object = None
    for _ in range(runs):
        t = time.perf_counter()
        out = fn()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples), max(samples), out


def run(dsn: str, versions: int, entities: int, runs: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        history.migrate(conn)
        t = time.perf_counter()
        events, times = build(versions, entities)
        built = time.perf_counter() - t
        t = time.perf_counter()
        results = history.import_events(conn, events, times)
        loaded = time.perf_counter() - t
        bad = [r for r in results if r.status != "applied"]
        assert not bad, bad[:3]
        conn.execute("ANALYZE")
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM history.versions),"
            " (SELECT count(*) FROM history.valid_versions),"
            " (SELECT count(*) FROM history.transactions)"
        ).fetchone()
        print(
            f"built {len(events):,} events in {built:.1f} s; import_events (COPY) "
            f"{loaded:.1f} s = {len(events) / loaded:,.0f} events/s"
        )
        print(
            f"rows: versions {counts[0]:,}, valid_versions {counts[1]:,}, "  # type: ignore[index]
            f"transactions {counts[2]:,}"
        )  # type: ignore[index]

        hot = {"site_id": "hot"}
        mid = T0 + timedelta(hours=versions // 2, minutes=10)
        later = mid + timedelta(hours=24)
        end = T0 + timedelta(hours=versions + 2) + timedelta(seconds=entities + 10)
        rows: list[tuple[str, float, float, str]] = []

        def measure(
            label: str, fn: Callable[[], object], target_ms: float | None, describe: Callable[[Any], str]
        ) -> None:
            med, worst, out = timed(fn, runs)
            verdict = "" if target_ms is None else ("ok" if med < target_ms else "OVER")
            rows.append((label, med, worst, f"{describe(out)} {verdict}".strip()))

        measure(
            "state_at hot site (10k versions)",
            lambda: history.state_at(conn, mid, "site", hot),
            50,
            lambda o: f"-> {o[0].value['name']!r}",
        )
        measure(
            "diff hot site, 24 h apart",
            lambda: history.diff(conn, mid, later, "site", hot),
            50,
            lambda o: f"-> {len(o)} change(s)",
        )
        measure(
            "diff hot site, first to last",
            lambda: history.diff(conn, T0, end, "site", hot),
            50,
            lambda o: f"-> {len(o)} change(s)",
        )
        measure(
            "valid_at hot tz, known now",
            lambda: history.valid_at(conn, "node_timezone", {"node_id": 1}, DAY0 + timedelta(days=100, hours=5)),
            50,
            lambda o: f"-> {o.value['tz']!r}",
        )
        measure(
            "valid_at hot tz, known at mid",
            lambda: history.valid_at(conn, "node_timezone", {"node_id": 1}, DAY0 + timedelta(days=100, hours=5), mid),
            50,
            lambda o: f"-> {o.value['tz']!r}",
        )
        measure(
            "state_at hot tz (5k intervals out)",  # a 5k-row answer, not a lookup
            lambda: history.state_at(conn, mid, "node_timezone", {"node_id": 1}),
            None,
            lambda o: f"-> {len(o):,} intervals",
        )
        measure(
            f"state_at everything ({entities:,}+ entities)",
            lambda: history.state_at(conn, end),
            1000,
            lambda o: f"-> {len(o):,} rows",
        )
        measure(
            "state_at sites only", lambda: history.state_at(conn, end, "site"), 1000, lambda o: f"-> {len(o):,} rows"
        )
        measure(
            "diff everything, last hour",
            lambda: history.diff(conn, end - timedelta(hours=1), end),
            1000,
            lambda o: f"-> {len(o):,} changes",
        )
        measure(
            "diff everything, whole history",
            lambda: history.diff(conn, T0, end),
            None,
            lambda o: f"-> {len(o):,} changes",
        )
        one = [event("site", {"site_id": f"live-{i}"}, "upsert", {"name": "x"}) for i in range(runs * 10)]
        it = iter(one)
        measure(
            "apply_event (one transaction each)", lambda: history.apply_event(conn, next(it)), None, lambda o: o.status
        )
        it2 = iter(one)
        measure("apply_event duplicate", lambda: history.apply_event(conn, next(it2)), None, lambda o: o.status)

        width = max(len(r[0]) for r in rows)
        print(f"\n{'query':<{width}}  median ms  worst ms")
        for label, med, worst, note in rows:
            print(f"{label:<{width}}  {med:9.2f}  {worst:8.2f}  {note}")
        plan = conn.execute(
            "EXPLAIN ANALYZE SELECT value FROM history.valid_versions WHERE entity = %s"
            " AND key = %s AND valid @> %s::timestamptz AND tx @> 'infinity'::timestamptz",
            ("node_timezone", '{"node_id":1}', DAY0 + timedelta(days=100, hours=5)),
        ).fetchall()
        print("\nvalid_at plan:\n  " + "\n  ".join(r[0] for r in plan))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--versions", type=int, default=10_000)
    ap.add_argument("--entities", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    external = os.environ.get("PIPELINE_POSTGRES_DSN")
    if external:
        name = f"bench_history_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(external, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        try:
            run(f"{external.rpartition('/')[0]}/{name}", args.versions, args.entities, args.runs)
        finally:
            with psycopg.connect(external, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        return
    with tempfile.TemporaryDirectory(prefix="bench_history_") as tmp:
        pg = stack.start_postgres(Path(tmp) / "postgres")
        try:
            run(pg.url, args.versions, args.entities, args.runs)
        finally:
            pg.stop()


if __name__ == "__main__":
    main()
