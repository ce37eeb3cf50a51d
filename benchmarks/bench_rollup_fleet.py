"""The rollup agent's step on a fleet (issue 13): many streams, a few datums each, in one batch of
stale marks, timed step by step in one process against the ClickHouse endpoint.

    python benchmarks/bench_rollup_fleet.py [--streams 2000] [--datums 10] [--rounds 3] [--history]
                                            [--spacing-ms 60000] [--lanes 1] [--raw-days 0]
                                            [--cache MIN_POINTS [--fill N]] [--running SERIES]

Per round: the raw rows of `--datums` new datums of each of `--streams` streams (4 samples:
watts, voltage, wattHours, mode; `--spacing-ms` apart, 1 minute by default) are inserted, and the
rollup maintainer is given their stale marks, as the rollup agent is. Printed per round: seconds
of each step of `RollupMaintainer.update_spans` (stale half hours, read raw windows, recompute,
read the stored half hours, their tombstones, the half hours' insert, the cascade in the store)
and streams/s. `--raw-days D` stores D days of raw rows of every stream before the rounds (merged,
as a store that has run a while holds them): what a step's reads of the raw table cost once the
streams have a history, not only the rows of the rounds.
Starts the chDB endpoint in a temp dir unless PIPELINE_CLICKHOUSE_URL is set. Prints figures; it is not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.embedded import stack  # noqa: E402
from pipeline.settings import Settings  # noqa: E402
from pipeline.worker import rollups as worker_rollups  # noqa: E402
from pipeline.worker.batch import column_marks, read_marks  # noqa: E402
from processors.columns import RAW_SCHEMA  # noqa: E402
from processors.datum import Datum  # noqa: E402
from processors.point_cache import PointCache  # noqa: E402
from processors.rollup import Periodicity, RollupRow, bucket_bounds, buckets_between, zone  # noqa: E402
from processors.rollup_running import RunningRollups  # noqa: E402
from processors.rows import RawColumns  # noqa: E402
from sinks import rollups as sink_rollups  # noqa: E402
from sinks.clickhouse import RawSink, connect  # noqa: E402
from tests.integration.helpers import scratch_clickhouse  # noqa: E402

DAY_MS = 86_400_000


class Steps:
    """Seconds per named step, by wrapping the functions the maintainer calls."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name, None)
        if original is None:  # a step this build does not have (comparing builds)
            return

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - t0

        setattr(owner, name, timed)


def raw_history(streams: int, base_ms: int, days: float, spacing_ms: int) -> pa.Table:
    """`days` of raw rows before base_ms of every stream of `fleet_rows`, its three numbers (watts,
    voltage, wattHours; not the status), as the raw table's Arrow columns (built whole: tens of
    millions of rows, no Python object per row)."""
    per = int(days * DAY_MS // spacing_ms)
    k = np.arange(-per, 0, dtype=np.int64)
    stream = np.repeat(np.arange(streams, dtype=np.int64), per)
    ks = np.tile(k, streams)
    created = base_ms + ks * spacing_ms + stream
    node = (1 + stream // 10).astype(np.uint64)
    source = pa.array([f"/F/{s % 10}" for s in range(10)], pa.string()).take(pa.array(stream % 10))
    tables = []
    for prop, kind, value in (
        ("watts", "i", 1000.0 + ks % 300),
        ("voltage", "i", 230.0 + ks % 5),
        ("wattHours", "a", 1e6 + (ks + per) * 17.0),
    ):
        n = len(created)
        columns = {
            "node_id": pa.array(node),
            "source_id": source,
            "created": pa.array(created),
            "property": pa.repeat(prop, n),
            "kind": pa.repeat(kind, n),
            "value": pa.array(value.astype(np.float64)),
        }
        tables.append(
            pa.Table.from_arrays(
                [columns[f.name] if f.name in columns else pa.nulls(n, f.type) for f in RAW_SCHEMA],
                schema=RAW_SCHEMA,
            )
        )
    return pa.concat_tables(tables)


def fleet_rows(streams: int, datums: int, base_ms: int, k0: int, spacing_ms: int = 60_000) -> RawColumns:
    rows = RawColumns()
    for s in range(streams):
        node, source = 1 + s // 10, f"/F/{s % 10}"
        for k in range(k0, k0 + datums):
            i = {"watts": 1000.0 + k % 300, "voltage": 230.0 + k % 5}
            rows.add_datum(
                Datum(node, source, base_ms + k * spacing_ms + s, i, {"wattHours": 1e6 + k * 17.0}, {"mode": "auto"})
            )
    return rows


def history(streams: int, base_ms: int, tz: str) -> Iterator[RollupRow]:
    """The rollups a year of history leaves stored before `base_ms`, per stream and property: each
    month of the year so far, each day of the month so far, each hour of the day so far, the weeks
    and the year. A recompute at `base_ms` cascades into the parents of these rows, so what it
    reads (or what the store reads) is what a stream that has run since January makes it read."""
    z = zone(tz)
    spans: list[tuple[Periodicity, int, int]] = []
    year = bucket_bounds(base_ms, "year", z)
    month, day, hour = (bucket_bounds(base_ms, p, z) for p in ("month", "day", "hour"))
    for per, lo, hi in (("month", year[0], month[0]), ("day", month[0], day[0]), ("hour", day[0], hour[0])):
        spans += [(per, s, e) for s, e in buckets_between(lo, hi, per, z)]
    spans += [("week", s, e) for s, e in buckets_between(year[0], base_ms, "week", z)]
    spans.append(("year", *year))
    for s in range(streams):
        node, source = 1 + s // 10, f"/F/{s % 10}"
        for per, lo, hi in spans:
            n = max(1, (hi - lo) // 60_000)
            yield RollupRow(per, node, source, "watts", "i", lo, hi, n, 1100.0, 1000.0, 1299.0)
            yield RollupRow(per, node, source, "voltage", "i", lo, hi, n, 232.0, 230.0, 234.0)
            yield RollupRow(per, node, source, "wattHours", "a", lo, hi, n, diff=17.0 * n, read_diff=17.0 * n,
                            read_start=1e6, read_end=1e6 + 17.0 * n)  # fmt: skip
            yield RollupRow(per, node, source, "mode", "s", lo, hi, n, mode="auto", status_counts=(("auto", n),))


@contextlib.contextmanager
def endpoint(work: Path) -> Iterator[str]:
    import os

    url = os.environ.get("PIPELINE_CLICKHOUSE_URL", "")
    if url:
        yield url
        return
    svc = stack.start_clickhouse(work / "ch", log_dir=work)
    try:
        yield svc.url
    finally:
        svc.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=2000)
    ap.add_argument("--datums", type=int, default=10, help="new datums per stream per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--spacing-ms", type=int, default=60_000, help="time between a stream's datums")
    ap.add_argument("--lanes", type=int, default=1, help="rollup lanes (streams recomputed side by side)")
    ap.add_argument(
        "--history",
        action="store_true",
        help="store the rollups of the year so far first (a stream running since January)",
    )
    ap.add_argument("--raw-days", type=float, default=0.0, help="days of raw rows per stream stored first")
    ap.add_argument(
        "--cache",
        type=int,
        default=0,
        metavar="MIN_POINTS",
        help="hold the streams' points between rounds (a point cache holding streams with at least MIN_POINTS)",
    )
    ap.add_argument("--fill", type=int, default=0, help="streams a step may read into the cache (0: the worker's)")
    ap.add_argument(
        "--running",
        type=int,
        default=0,
        metavar="SERIES",
        help="hold up to SERIES series as running rollups (processors/rollup_incremental.py; 0: none)",
    )
    args = ap.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        endpoint(Path(tmp)) as url,
        scratch_clickhouse(url, "rf") as (db, client),
    ):
        raw = RawSink(client)
        # lane 0 on the scratch client, each further lane its own client (as the worker's)
        clients = [client, *(connect(f"{url.rstrip('/')}/{db}") for _ in range(args.lanes - 1))]
        cache = (
            PointCache(50_000_000, max_streams=args.streams, min_points=args.cache) if args.cache or args.fill else None
        )
        if args.fill:
            worker_rollups.CACHE_FILL_STREAMS = args.fill
        running = RunningRollups(args.running) if args.running else None
        maintainer = worker_rollups.RollupLanes(
            [
                worker_rollups.RollupMaintainer(c, lambda _node, _ms: "Pacific/Auckland", cache=cache, running=running)
                for c in clients
            ],
            Settings().rollup_lane_streams,
        )
        steps = Steps()
        m = worker_rollups.RollupMaintainer
        steps.wrap(m, "_hold", "hold")
        steps.wrap(m, "stale_of_spans", "stale half hours")
        steps.wrap(worker_rollups, "read_series_for_recompute", "read raw windows")
        steps.wrap(worker_rollups, "read_resets", "read resets")
        steps.wrap(worker_rollups._Plan, "fill", "recompute half hours")
        steps.wrap(worker_rollups, "read_rollups", "read stored rollups")
        steps.wrap(m, "_with_stored_cases", "stored half hours' keys")
        steps.wrap(worker_rollups._Plan, "halfhours", "tombstones")
        steps.wrap(sink_rollups, "cascade_stage", "cascade in the store")
        # the half hours' insert alone (RollupSink.write also runs the cascade, timed above)
        steps.wrap(sink_rollups, "write_rollups", "insert")
        steps.wrap(m, "_append", "running: append")
        steps.wrap(m, "_cold", "running: seed and append (cold)")
        steps.wrap(worker_rollups, "read_prefixes", "running: read prefixes")
        steps.wrap(worker_rollups, "read_processed_after", "running: read counted after")
        steps.wrap(worker_rollups, "read_readings_before", "running: read readings before")
        base = (int(time.time() * 1000) // DAY_MS - 3) * DAY_MS
        if args.history:
            t0 = time.perf_counter()
            rows = list(history(args.streams, base, "Pacific/Auckland"))
            for k in range(0, len(rows), 200_000):
                sink_rollups.write_rollups(client, rows[k : k + 200_000])
            print(f"history: {len(rows):,} stored rollup rows of the year so far ({time.perf_counter() - t0:.1f} s)")
        if args.raw_days:
            t0 = time.perf_counter()
            past = raw_history(args.streams, base, args.raw_days, args.spacing_ms)
            for k in range(0, past.num_rows, 1_000_000):
                raw.write(past.slice(k, 1_000_000), base - DAY_MS)
            client.command("OPTIMIZE TABLE datum_raw FINAL")
            print(
                f"raw history: {past.num_rows:,} rows, {args.raw_days:g} days of every stream, stored and merged "
                f"({time.perf_counter() - t0:.1f} s)"
            )
            del past
        print(
            f"{args.streams:,} streams x {args.datums} datums per round (4 samples), one batch of marks per round,"
            f" {args.lanes} lane(s) (with more than one, a step's seconds add up the lanes')"
        )
        for r in range(args.rounds):
            rows = fleet_rows(args.streams, args.datums, base, r * args.datums, args.spacing_ms)
            stamp = int(time.time() * 1000)
            raw.write(rows, stamp)
            spans, _ = read_marks([v for _, v in column_marks(rows, stamp)])
            steps.seconds.clear()
            t0, c0 = time.perf_counter(), time.process_time()
            written = maintainer.update_spans(spans)
            total, cpu = time.perf_counter() - t0, time.process_time() - c0
            parts = ", ".join(f"{k} {v:.2f}" for k, v in steps.seconds.items())
            print(
                f"round {r}: {total:.2f} s for {args.streams:,} streams ({args.streams / total:,.0f} streams/s,"
                f" {args.streams * args.datums / total:,.0f} datums/s), {written:,} rows written, {cpu:.2f} s of this"
                f" process's CPU; {parts}"
            )
            if running is not None:
                print(
                    f"  running rollups: {running.seeded:,} series seeded, {running.appended:,} appends so far"
                    f" ({running.one_at_a_time:,} one series at a time)"
                )


if __name__ == "__main__":
    main()
