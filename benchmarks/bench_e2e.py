"""End to end: datums/s from the producer until every rollup level is caught up, with the sample
datamodels bound (every sample validated and scored), and in the same run the two ceilings the
worker sits between: consume+decode (a plain aiokafka consumer decoding every batch, no Faust, no
store) and store-only (the same raw rows inserted straight through the same ClickHouse endpoint
by clickhouse-connect's fastest path, `insert_arrow`).

    python benchmarks/bench_e2e.py [--shape dense|fleet] [--datums N] [--workers 1|2]
                                   [--paced-seconds 30] [--nodes N --sources S --spacing-ms MS]

Shapes (streams are (node, source); topics are per source name, so they stay few):
  dense  1 node x 20 sources, a datum per source every second
  fleet  2,000 nodes x 10 sources = 20,000 streams, a datum per stream every minute

Phases, one worker set throughout:
  1. the sample datamodels and bindings published; the workers started; one tick of every stream
     sent and waited for (catalog loaded, partitions assigned, rollups written once);
  2. max rate: N datums sent at once; timed until every raw row is in the `datum` view and the
     watts rollups of every level (halfhour ... year) count every datum;
  3. consume+decode ceiling over the same topics (workers idle);
  4. the durable default: N datums stored as a gateway that trusts broker acks sees it, then N
     through a producer that waits for the workers' commits (`pipeline ingest` does that);
  5. paced at half the rate of 2: per chunk sent every ~0.1 s, the time from send to visible in
     the `datum` view and in the halfhour rollup (polled every 0.1 s unless --poll-s), p50/p99;
  6. workers stopped; store-only ceiling: the raw rows of phase 2 read back as Arrow and inserted
     into a copy of the raw table in chunks of the worker's largest batch.

Worker RSS is printed after phase 1, 2 and 5; the CPU seconds of the workers and of the store
endpoint (when started here) over phase 2, per datum. The polls of what is queryable ask the
raw and rollup tables' plain counts first and the FINAL views only once those say the wait may be
over, so they do not load the store they time. PIPELINE_* variables of settings the benchmark
does not set itself (batch sizes, rollup lanes) are passed on to the workers.

Run time on 2 cores: dense about 2 minutes; the full fleet (200,000 datums) about 3 minutes on
2026-12-01 (its rollups caught up after about 40 s; an earlier build had not caught up
within 15 minutes): --timeout bounds phase 2 and prints the figures reached. Starts its own
embedded stack (Tansu, PostgreSQL, the chDB endpoint) in a temp dir unless PIPELINE_KAFKA_BOOTSTRAP,
PIPELINE_CLICKHOUSE_URL and PIPELINE_POSTGRES_DSN are set. Prints figures; it is not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402
from aiokafka import AIOKafkaConsumer  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from pipeline.embedded import stack  # noqa: E402
from pipeline.history.events import datamodel_events  # noqa: E402
from pipeline.settings import Settings  # noqa: E402
from pipeline.wire.codec import decode_columns  # noqa: E402
from pipeline.wire.producer import DatumProducer, end_offsets  # noqa: E402
from processors.datum import Datum  # noqa: E402
from processors.rollup import PERIODICITIES  # noqa: E402
from sinks.clickhouse import RAW_TABLE, connect, ensure_schema  # noqa: E402
from tests.integration.helpers import (  # noqa: E402
    ROOT,
    publish_metadata,
    scratch_stores,
    settings_for,
    tuning_from_env,
    wait_for_catalog,
    worker_process,
)

DATAMODELS = ROOT / "schemas" / "datamodels"
HALFHOUR_MS = 1_800_000
DAY_MS = 86_400_000
SAMPLES_PER_DATUM = 4  # watts, voltage, wattHours, mode
SCORED_PER_DATUM = 3  # voltage, wattHours and mode have a qRating in energy-meter.json
SHAPES = {"dense": (1, 20, 1_000), "fleet": (2_000, 10, 60_000)}  # nodes, sources, spacing


@dataclass(frozen=True)
class Shape:
    """nodes x sources streams, bound to the sample `energy-meter` datamodel by `/S*/**/M*`."""

    nodes: int
    sources: int
    spacing_ms: int
    base_ms: int

    @property
    def streams(self) -> int:
        return self.nodes * self.sources

    def created(self, tick: int) -> int:
        return self.base_ms + tick * self.spacing_ms

    def tick(self, tick: int, nodes: range | None = None) -> list[Datum]:
        """One datum per stream (of `nodes`, default all) at a tick: samples an energy meter sends."""
        t = self.created(tick)
        out = []
        for node in nodes or range(1, self.nodes + 1):
            for s in range(1, self.sources + 1):
                w = 1_000.0 + (node * 37 + s * 11 + tick) % 4_000
                out.append(
                    Datum(
                        node,
                        f"/S1/B1/M{s}",
                        t,
                        {"watts": w, "voltage": 228.0 + (tick + s) % 5},
                        {"wattHours": 1_000_000.0 + tick * 10.0 + s},
                        {"mode": "auto"},
                    )
                )
        return out

    def ticks(self, first: int, count: int) -> list[Datum]:
        return [d for k in range(first, first + count) for d in self.tick(k)]

    def first_tick_at_or_after(self, ms: int) -> int:
        return -(-(ms - self.base_ms) // self.spacing_ms)


# --- the stack and the workers ------------------------------------------------------------------


@contextlib.contextmanager
def services(work: Path) -> Iterator[tuple[str, str, str]]:
    kafka = os.environ.get("PIPELINE_KAFKA_BOOTSTRAP", "")
    ch = os.environ.get("PIPELINE_CLICKHOUSE_URL", "")
    pg = os.environ.get("PIPELINE_POSTGRES_DSN", "")
    started: list[stack.Service] = []
    try:
        if not kafka:
            started.append(stack.start_tansu(log_dir=work))
            kafka = started[-1].url
        if not ch:
            started.append(stack.start_clickhouse(work / "ch", log_dir=work))
            ch = started[-1].url
            STORE_PIDS.extend(p.pid for p in [started[-1].proc] if p is not None)
        if not pg:
            started.append(stack.start_postgres(work / "pg"))
            pg = started[-1].url
        yield kafka, ch, pg
    finally:
        for svc in reversed(started):
            svc.stop()


class RssSampler(threading.Thread):
    """Worker RSS every `every_s` through the paced phase: the half-load memory figure is its
    own (the max-rate phase before it grows the batch buffers once)."""

    def __init__(self, pids: list[int], every_s: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.pids, self.every_s = pids, every_s
        self.samples: list[list[float]] = [[] for _ in pids]
        self.halt = threading.Event()

    def run(self) -> None:
        while True:
            for k, pid in enumerate(self.pids):
                self.samples[k].append(rss_mib(pid))
            if self.halt.wait(self.every_s):
                break

    def stop(self) -> None:
        self.halt.set()
        self.join(30)

    def summary(self) -> list[str]:
        out = []
        for got in self.samples:
            if len(got) < 2:
                out.append("too short to sample")
                continue
            first, last, half = got[0], got[-1], got[len(got) // 2]
            after = ""
            if len(got) * self.every_s > 120:
                # after the first minute: what the phase settles to once its batches and caches have
                # grown; and each minute's median (a batch in flight lifts a sample for a moment)
                k = int(60 / self.every_s)
                settled = got[k:]
                medians = [statistics.median(got[m : m + k]) for m in range(0, len(got) - k + 1, k)]
                after = (
                    f"; after its first minute {min(settled):.0f}-{max(settled):.0f} MiB"
                    f" ({(max(settled) - min(settled)) / min(settled):.1%} apart); median of each minute"
                    f" {', '.join(f'{v:.0f}' for v in medians)} MiB"
                    f" ({(max(medians) - min(medians)) / min(medians):.1%} apart)"
                )
            out.append(
                f"{first:.0f} MiB at its start, {last:.0f} MiB at its end ({(last - first) / first:+.1%}; second half "
                f"{(last - half) / half:+.1%}), range {min(got):.0f}-{max(got):.0f} MiB ({len(got)} samples "
                f"{self.every_s:g} s apart){after}"
            )
        return out


def cpu_s(pids: Sequence[int]) -> float:
    """CPU seconds (user + system) the processes have used so far."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


# the embedded store endpoint's process, when this run started it (its CPU is counted)
STORE_PIDS: list[int] = []


RUNNING_METRICS = (
    "pipeline_rollup_running_series",
    "pipeline_rollup_running_appends_total",
    "pipeline_rollup_running_seeded_total",
    "pipeline_rollup_running_fallbacks_total",
    "pipeline_rollup_running_one_at_a_time_total",
)


def scraped(port: int, names: Sequence[str]) -> list[float]:
    """Samples from a worker's /metrics, in the order named ([] if it has none of them)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return []
    found = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name in names}
    return [found.get(n, 0.0) for n in names] if found else []


def rss_mib(pid: int) -> float:
    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.Error:
        return float("nan")


class NotCaughtUp(Exception):
    pass


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> float:
    """Poll until check() holds; the perf_counter instant it first held."""
    deadline = time.perf_counter() + timeout
    while True:
        if check():
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise NotCaughtUp(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# --- what is queryable --------------------------------------------------------------------------


def raw_count(client: Any, expect: int = 0) -> int:
    """Datums in the `datum` view (one watts row each), exactly once it holds `expect` or more;
    below that, possibly an upper bound. The view's count (FINAL over millions of rows, ~0.1 s of
    the store's cores) is asked only once the raw table's plain count, which is never below it,
    reaches `expect`: a poll every 0.2 s must not load the store it measures."""
    plain = int(client.command("SELECT count() FROM datum_raw WHERE property = 'watts'"))
    if plain < expect:
        return plain
    return int(client.command("SELECT count() FROM datum WHERE property = 'watts'"))


def level_counts(client: Any, expect: int = 0) -> dict[str, int]:
    """Datums counted by the watts rollups of each level (a coarser level sums the finer counts),
    exactly for a level whose count reaches `expect`, else possibly an upper bound. As for raw
    rows: the plain table's sums are never below the view's (counts are never negative and FINAL
    keeps a subset of the rows), so the view is asked only for the levels that may be complete."""
    by_level = "SELECT periodicity, sum(count) FROM {} WHERE property = 'watts' {}GROUP BY periodicity"
    got = {str(p): int(c) for p, c in client.query(by_level.format("rollup_raw", "")).result_rows}
    ready = sorted(p for p, c in got.items() if c >= expect)
    if ready:
        names = ", ".join(f"'{p}'" for p in ready)
        exact = client.query(by_level.format("rollup", f"AND periodicity IN ({names}) ")).result_rows
        got.update({p: 0 for p in ready} | {str(p): int(c) for p, c in exact})
    return got


def wait_caught_up(client: Any, expect: int, t0: float, timeout: float = 1800) -> tuple[float, dict[str, float]]:
    """Seconds from t0 until every raw row is visible, and until each level counts every datum."""
    raw_at = wait_until(lambda: raw_count(client, expect) >= expect, timeout, f"{expect} datums in the datum view")
    levels: dict[str, float] = {}

    def all_levels() -> bool:
        got = level_counts(client, expect)
        now = time.perf_counter()
        for per in PERIODICITIES:
            if per not in levels and got.get(per, 0) >= expect:
                levels[per] = now - t0
        return len(levels) == len(PERIODICITIES)

    try:
        wait_until(
            all_levels, timeout - (raw_at - t0), f"rollups of every level counting {expect} datums", interval=0.5
        )
    except NotCaughtUp as exc:
        raise NotCaughtUp(
            f"{exc}; raw rows all visible after {raw_at - t0:.1f} s, rollups counting {level_counts(client)}"
        ) from None
    return raw_at - t0, levels


# --- ceilings -----------------------------------------------------------------------------------


async def consume_ceiling(settings: Settings, topics: list[str], expect: int) -> float:
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=settings.max_message_bytes,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    got = 0
    t0 = time.perf_counter()
    try:
        while got < expect:
            batches = await consumer.getmany(timeout_ms=500, max_records=1000)
            for msgs in batches.values():
                for msg in msgs:
                    got += len(decode_columns(msg.value))
    finally:
        await consumer.stop()
    return got / (time.perf_counter() - t0)


def store_ceiling(client: Any, lo_ms: int, hi_ms: int, chunk_rows: int) -> tuple[int, float]:
    """The raw rows stored for created in [lo_ms, hi_ms), read back as Arrow (untimed), then
    inserted with insert_arrow into a copy of the raw table (same engine), `chunk_rows` per
    insert. Returns (rows, rows/s)."""
    cols = (
        "node_id, source_id, created, property, kind, value, text, tags, datastream, score, "
        "performance, label, quality, max_score, ttl_days"
    )
    table = client.query_arrow(
        f"SELECT {cols} FROM {RAW_TABLE} FINAL WHERE created >= fromUnixTimestamp64Milli(toInt64({lo_ms}), 'UTC') "
        f"AND created < fromUnixTimestamp64Milli(toInt64({hi_ms}), 'UTC') ORDER BY created, node_id, source_id",
        use_strings=True,
    )
    client.command(f"CREATE TABLE store_ceiling AS {RAW_TABLE}")
    names = [c.strip() for c in cols.split(",")]
    t0 = time.perf_counter()
    for start in range(0, table.num_rows, chunk_rows):
        client.insert_arrow("store_ceiling", table.slice(start, chunk_rows).select(names))
    rate = table.num_rows / (time.perf_counter() - t0)
    stored = int(client.command("SELECT count() FROM store_ceiling"))
    client.command("DROP TABLE store_ceiling")
    if stored != table.num_rows:
        raise SystemExit(f"store-only ceiling: {stored} of {table.num_rows} rows stored")
    return table.num_rows, rate


# --- paced: created -> queryable ----------------------------------------------------------------


@dataclass
class Chunk:
    key: int
    datums: list[Datum]
    needs: list[tuple[tuple[int, int], int]]  # ((halfhour bucket, node group), datums counted by then)
    first_ms: int = 0  # the earliest created of its datums
    sent: float = 0.0
    raw_at: float = 0.0
    rollup_at: float = 0.0


def paced_chunks(
    shape: Shape,
    first_tick: int,
    rate: float,
    seconds: float,
    interval_s: float = 0.1,
) -> tuple[list[Chunk], int, int, int]:
    """Chunks of about rate * interval_s datums, in time order: whole ticks when a tick is
    smaller than that (dense), else a tick split into groups of nodes (fleet). Returns the chunks
    and the (ticks per chunk, chunks per tick, nodes per chunk) their SQL key is made of."""
    want = max(1.0, rate * interval_s)
    per_tick = shape.streams
    if want >= per_tick:
        tpc, npc = max(1, round(want / per_tick)), shape.nodes
    else:
        tpc, limit = 1, max(1, int(want // shape.sources))
        npc = max(d for d in range(1, shape.nodes + 1) if shape.nodes % d == 0 and d <= limit)
    cpt = shape.nodes // npc
    total = max(1, int(rate * seconds / (tpc * npc * shape.sources)))
    cum: dict[tuple[int, int], int] = {}
    chunks = []
    for k in range(total):
        t0, g = first_tick + (k // cpt) * tpc, k % cpt
        nodes = range(1 + g * npc, 1 + (g + 1) * npc)
        datums = [d for t in range(t0, t0 + tpc) for d in shape.tick(t, nodes)]
        touched: dict[tuple[int, int], int] = {}
        for d in datums:
            b = (d.created_ms // HALFHOUR_MS, g)
            cum[b] = cum.get(b, 0) + 1
            touched[b] = cum[b]
        chunks.append(Chunk(k, datums, sorted(touched.items()), min(d.created_ms for d in datums)))
    return chunks, tpc, cpt, npc


def paced(
    settings: Settings,
    shape: Shape,
    first_tick: int,
    rate: float,
    seconds: float,
    tail_s: float = 300.0,
    poll_s: float = 0.1,
) -> tuple[list[Chunk], float, list[tuple[float, float]]]:
    """Send the chunks on schedule from this thread; poll what is visible from another. Returns
    the chunks, the rate they were sent at and the seconds each poll took (raw, rollups)."""
    chunks, tpc, cpt, npc = paced_chunks(shape, first_tick, rate, seconds)
    stats: list[tuple[float, float]] = []
    lo = shape.created(first_tick)
    key = (
        f"intDiv(toUnixTimestamp64Milli(created) - {lo}, {shape.spacing_ms * tpc}) * {cpt} + intDiv(node_id - 1, {npc})"
    )
    # The rows the `datum` view shows are the raw table's distinct keys (FINAL keeps one row per
    # key): counted without FINAL, so a poll every 0.1 s does not merge millions of rows.
    # Each poll reads only from the oldest chunk still pending on: the store the poller measures
    # should not spend its cores re-reading what is already known (chunks complete about in order).
    raw_sql = (
        f"SELECT {key} AS k, uniqExact(node_id, source_id, created) FROM datum_raw WHERE property = 'watts' "
        "AND created >= fromUnixTimestamp64Milli(toInt64({since}), 'UTC') GROUP BY k"
    )
    rollup_sql = (
        f"SELECT intDiv(toUnixTimestamp64Milli(ts_start), {HALFHOUR_MS}) AS b, intDiv(node_id - 1, {npc}) "
        f"AS g, sum(count) FROM rollup WHERE periodicity = 'halfhour' AND property = 'watts' "
        "AND ts_start >= fromUnixTimestamp64Milli(toInt64({since}), 'UTC') GROUP BY b, g"
    )
    client = connect(settings.clickhouse_url)
    done = threading.Event()

    def poll() -> None:
        pending = list(chunks)
        while pending and not done.is_set():
            t = time.perf_counter()
            # from the oldest chunk each query still waits for (a rollup: from its half hour's start)
            raw_since = min((ch.first_ms for ch in pending if not ch.raw_at), default=None)
            roll_since = min((ch.first_ms for ch in pending if not ch.rollup_at), default=None)
            raw: dict[int, int] = {}
            if raw_since is not None:
                raw = {int(k): int(c) for k, c in client.query(raw_sql.format(since=raw_since)).result_rows}
            t_raw = time.perf_counter()
            roll: dict[tuple[int, int], int] = {}
            if roll_since is not None:
                since = max(lo, roll_since // HALFHOUR_MS * HALFHOUR_MS)
                roll = {
                    (int(b), int(g)): int(c) for b, g, c in client.query(rollup_sql.format(since=since)).result_rows
                }
            now = time.perf_counter()
            stats.append((t_raw - t, now - t_raw))
            for ch in pending:
                if ch.sent and not ch.raw_at and raw.get(ch.key, 0) >= len(ch.datums):
                    ch.raw_at = now
                if ch.sent and not ch.rollup_at and all(roll.get(b, 0) >= n for b, n in ch.needs):
                    ch.rollup_at = now
            pending = [ch for ch in pending if not (ch.raw_at and ch.rollup_at)]
            time.sleep(poll_s)

    poller = threading.Thread(target=poll, daemon=True)
    producer = DatumProducer(settings)
    poller.start()
    t0 = time.perf_counter()
    ahead = 0  # datums sent before this chunk
    for ch in chunks:
        delay = t0 + ahead / rate - time.perf_counter()
        ahead += len(ch.datums)
        if delay > 0:
            time.sleep(delay)
        ch.sent = time.perf_counter()
        producer.send(ch.datums)
    producer.flush()
    send_rate = ahead / (time.perf_counter() - t0)
    poller.join(tail_s)
    done.set()
    poller.join(5)
    producer.close()
    return chunks, send_rate, stats


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


def durable(settings: Settings, client: Any, shape: Shape, next_tick: int, ticks: int, warm: int, n: int) -> None:
    t2 = time.perf_counter()
    plain = DatumProducer(settings)
    plain.send(shape.ticks(next_tick, ticks))
    plain.flush()
    wait_until(lambda: raw_count(client, warm + 2 * n) >= warm + 2 * n, 1800, "the broker-acked datums", interval=0.1)
    plain_s = time.perf_counter() - t2
    t3 = time.perf_counter()
    confirming = DatumProducer(settings)
    confirming.send(shape.ticks(next_tick + ticks, ticks))
    confirming.flush()
    acked_s = time.perf_counter() - t3
    outcome = confirming.confirm(900)
    confirmed_s = time.perf_counter() - t3
    confirming.close()
    print(f"stored, broker acks: {n / plain_s:>11,.0f} datums/s  (a running worker; sent, then polled until queryable)")
    print(
        f"stored, confirmed:  {outcome.confirmed_datums / confirmed_s:>12,.0f} datums/s  (the same, the "
        f"producer waiting for the commits: broker-acked after {acked_s:.1f}s, all confirmed after "
        f"{confirmed_s:.1f}s; {outcome.unconfirmed_datums} unconfirmed)"
    )
    print(
        f"ratio confirmed/broker acks: {(outcome.confirmed_datums / confirmed_s) / (n / plain_s):.3f}"
        "  (the cost of the durable default: the wait for the next offset commit)"
    )
    # rollups of phase 4 caught up before the paced phase starts, so it measures only itself
    wait_caught_up(client, warm + 3 * n, time.perf_counter())


# --- the run ------------------------------------------------------------------------------------


def run(args: argparse.Namespace, kafka: str, ch: str, pg_url: str, work: Path) -> None:
    nodes, sources, spacing = SHAPES[args.shape]
    today = int(time.time() * 1000) // DAY_MS * DAY_MS
    shape = Shape(args.nodes or nodes, args.sources or sources, args.spacing_ms or spacing, today - 10 * DAY_MS)
    ticks = max(1, args.datums // shape.streams)
    n = ticks * shape.streams
    print(
        f"shape {args.shape}: {shape.nodes} nodes x {shape.sources} sources = {shape.streams:,} streams, "
        f"{shape.spacing_ms / 1000:g} s apart; {n:,} datums ({SAMPLES_PER_DATUM} samples each, bound to "
        f"energy-meter); {args.workers} worker(s); {os.cpu_count()} cores"
    )
    with scratch_stores(ch, pg_url, "b") as (db, _, dsn):
        # the deployment's session timeout, not the tests' shorter one (a group joins faster on Tansu)
        session_s = Settings.from_env({}).session_timeout_s
        settings = settings_for(
            kafka, ch, db, f"{db}.", topic_partitions=4, postgres_dsn=dsn, session_timeout_s=session_s
        )
        settings = settings._with(tuning_from_env())
        run_in(args, settings, shape, ticks, n, work)


def run_in(args: argparse.Namespace, settings: Settings, shape: Shape, ticks: int, n: int, work: Path) -> None:
    client = connect(settings.clickhouse_url)
    ensure_schema(client)
    events = datamodel_events(sorted(DATAMODELS.glob("*.json")), "bench", "sample datamodels")
    publish_metadata(settings, events)
    producer = DatumProducer(settings)
    topics = sorted({producer.topics.source(f"/S1/B1/M{s}") for s in range(1, shape.sources + 1)})
    producer.admin.ensure(topics)  # subscribed from the start: no rebalance when data comes

    with contextlib.ExitStack() as workers:
        procs = []
        ports: list[int] = []
        for k in range(args.workers):
            log = work / f"worker-{k}.log"
            mine = replace(settings, metrics_port=stack.free_port()) if k else settings
            procs.append((workers.enter_context(worker_process(mine, log)), log))
            ports.append(mine.metrics_port)
        for _, log in procs:
            wait_for_catalog(settings.postgres_dsn, len(events), log)
        # 1. warm-up: a tick of node 1's streams, one on every topic, stored and rolled up
        # (partitions assigned, catalog applied); the other nodes' streams are new in phase 2
        t = time.perf_counter()
        producer.send(shape.tick(0, range(1, 2)))
        producer.flush()
        warm = shape.sources
        wait_caught_up(client, warm, t, timeout=600)
        print(f"warm-up:            {time.perf_counter() - t:>8.1f} s  (a datum on every topic, rollups included)")
        rss_start = [rss_mib(p.pid) for p, _ in procs]

        # 2. max rate: everything sent at once
        datums = shape.ticks(1, ticks)
        worker_pids = [p.pid for p, _ in procs]
        cpu0 = cpu_s(worker_pids), cpu_s(STORE_PIDS)
        t0 = time.perf_counter()
        producer.send(datums)
        producer.flush()
        produce_s = time.perf_counter() - t0
        try:
            raw_s, levels = wait_caught_up(client, warm + n, t0, args.timeout)
        except NotCaughtUp as exc:
            done = raw_count(client) - warm
            print(
                f"NOT CAUGHT UP: {exc}; {done:,} of {n:,} datums raw-visible; end to end below "
                f"{n / args.timeout:,.0f} datums/s; worker RSS {[round(rss_mib(p.pid)) for p, _ in procs]} MiB"
            )
            return
        e2e = n / max(levels.values())
        cpu_w, cpu_store = cpu_s(worker_pids) - cpu0[0], cpu_s(STORE_PIDS) - cpu0[1]
        print(f"produce:            {n / produce_s:>12,.0f} datums/s  ({producer.messages_sent:,} messages so far)")
        print(f"raw rows visible:   {n / raw_s:>12,.0f} datums/s  (all in the datum view after {raw_s:.1f} s)")
        print("rollups caught up:  " + ", ".join(f"{p} {levels[p]:.1f} s" for p in PERIODICITIES))
        print(f"end to end:         {e2e:>12,.0f} datums/s  (sent -> every level of the rollups counts every datum)")
        # what a datum costs in CPU is steadier than a rate on a noisy host: compare builds by it
        print(
            f"CPU, phase 2:       workers {cpu_w:.1f} s ({cpu_w / n * 1e6:.1f} us/datum)"
            + (f", store endpoint {cpu_store:.1f} s ({cpu_store / n * 1e6:.1f} us/datum)" if STORE_PIDS else "")
            + f", of {max(levels.values()) * (os.cpu_count() or 1):.1f} s the cores had"
        )
        stored = client.query(
            "SELECT count(), countIf(datastream != ''), countIf(score IS NOT NULL) FROM datum"
        ).result_rows[0]
        print(
            f"rows stored:        {int(stored[0]):>12,}  ({int(stored[1]):,} bound to a datastream, "
            f"{int(stored[2]):,} scored; expected {SAMPLES_PER_DATUM * (warm + n):,} and "
            f"{SCORED_PER_DATUM * (warm + n) - shape.streams:,}: a stream's first wattHours reading has no "
            "rate to score)"
        )
        print(f"worker RSS after phase 2: {[round(rss_mib(p.pid)) for p, _ in procs]} MiB")

        # 3. consume+decode ceiling, the workers idle
        ceiling = asyncio.run(consume_ceiling(settings, topics, warm + n))
        print(f"consume+decode:     {ceiling:>12,.0f} datums/s  (aiokafka getmany + columnar decode, no store)")

        # 4. the durable default against the running workers: n datums stored as a gateway that
        # trusts broker acks sees it (poll the store), then n through a producer that waits until
        # the workers have committed past every message (stored or dead-lettered)
        if not args.skip_durable:
            durable(settings, client, shape, 1 + ticks, ticks, warm, n)

        # 5. paced at half the measured maximum, from a fresh half hour after phase 4's ticks
        last = shape.created(1 + 3 * ticks)
        first = shape.first_tick_at_or_after((last // HALFHOUR_MS + 2) * HALFHOUR_MS)
        sampler = RssSampler([p.pid for p, _ in procs])
        sampler.start()
        cpu0 = cpu_s(worker_pids), cpu_s(STORE_PIDS), cpu_s([os.getpid()])
        t_paced = time.perf_counter()
        chunks, send_rate, polls = paced(
            settings, shape, first, args.paced_rate or e2e / 2, args.paced_seconds, poll_s=args.poll_s
        )
        paced_wall = time.perf_counter() - t_paced
        paced_cpu = cpu_s(worker_pids) - cpu0[0], cpu_s(STORE_PIDS) - cpu0[1], cpu_s([os.getpid()]) - cpu0[2]
        sampler.stop()
        raw_lat = [c.raw_at - c.sent for c in chunks if c.raw_at]
        roll_lat = [c.rollup_at - c.sent for c in chunks if c.rollup_at]
        behind = [c.rollup_at - c.raw_at for c in chunks if c.rollup_at and c.raw_at]
        size = statistics.mean(len(c.datums) for c in chunks)
        print(
            f"paced:              {send_rate:>12,.0f} datums/s for {args.paced_seconds:g} s  ({len(chunks)} "
            f"chunks of {size:,.0f} datums; "
            + (f"as asked, {e2e:,.0f} measured)" if args.paced_rate else f"half of {e2e:,.0f})")
        )
        print(
            f"created->queryable: raw p50 {pct(raw_lat, 50):.2f} s, p99 {pct(raw_lat, 99):.2f} s; halfhour "
            f"rollup p50 {pct(roll_lat, 50):.2f} s, p99 {pct(roll_lat, 99):.2f} s; rollup behind raw p99 "
            f"{pct(behind, 99):.2f} s  ({len(chunks) - len(raw_lat)} chunks never raw-visible, "
            f"{len(chunks) - len(roll_lat)} never in the rollup; polled every ~{args.poll_s:g} s)"
        )
        # whether the paced phase had the cores to itself: a rate the pipeline cannot sustain
        # shows as cores busy and latencies that grow
        print(
            f"CPU, paced:         workers {paced_cpu[0]:.1f} s"
            + (f", store endpoint {paced_cpu[1]:.1f} s" if STORE_PIDS else "")
            + f", this benchmark {paced_cpu[2]:.1f} s, of {paced_wall * (os.cpu_count() or 1):.1f} s the cores had "
            f"({paced_wall:.1f} s, until the last chunk was in the rollups); {len(polls)} polls of the store, "
            f"{sum(r for r, _ in polls):.1f} s in the raw queries, {sum(q for _, q in polls):.1f} s in the rollup ones"
        )
        rss_end = [rss_mib(p.pid) for p, _ in procs]
        for k, (a, b) in enumerate(zip(rss_start, rss_end, strict=True)):
            print(
                f"worker {k} RSS:       {a:>8.0f} MiB after warm-up, {b:.0f} MiB after the paced phase "
                f"({(b - a) / a:+.1%})"
            )
        for k, line in enumerate(sampler.summary()):
            print(f"worker {k} RSS, paced: {line}")
        for k, port in enumerate(ports):
            got = scraped(port, RUNNING_METRICS)
            if got:
                print(
                    f"worker {k} running rollups: {got[0]:,.0f} series held, {got[1]:,.0f} series steps appended"
                    f" ({got[4]:,.0f} one series at a time),"
                    f" {got[2]:,.0f} series seeded, {got[3]:,.0f} stream steps sent to the store's recompute"
                )

        deadletter = producer.topics.deadletter
        letters = (
            sum(end_offsets(settings.kafka_bootstrap, deadletter, [0]).values())
            if deadletter in producer.admin.existing()
            else 0
        )
        print(f"dead letters:       {letters:>12,}")
    producer.close()

    # 6. store-only ceiling, the workers stopped: phase 2's raw rows through the same endpoint
    rows, rows_s = store_ceiling(
        client, shape.created(1), shape.created(1 + ticks), settings.batch_max_datums * SAMPLES_PER_DATUM
    )
    store = rows_s / SAMPLES_PER_DATUM
    print(
        f"store-only:         {store:>12,.0f} datums/s  ({rows:,} raw rows, {rows_s:,.0f} rows/s, insert_arrow "
        f"of {settings.batch_max_datums * SAMPLES_PER_DATUM:,} rows per insert)"
    )
    print(f"ratio end to end/consume+decode: {e2e / ceiling:.3f}")
    print(f"ratio end to end/store-only:     {e2e / store:.3f}")
    print(f"ratio end to end/lower ceiling:  {e2e / min(ceiling, store):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="dense")
    ap.add_argument("--datums", type=int, default=200_000, help="datums of the max-rate phase (whole ticks)")
    ap.add_argument("--workers", type=int, default=1, help="worker processes to start")
    ap.add_argument("--paced-seconds", type=float, default=30.0, help="length of the paced phase")
    ap.add_argument(
        "--poll-s", type=float, default=0.1, help="pause between the paced phase's polls of what is queryable"
    )
    ap.add_argument(
        "--paced-rate", type=float, help="datums/s of the paced phase (default: half the measured end to end)"
    )
    ap.add_argument("--skip-durable", action="store_true", help="leave out phase 4 (the durable default)")
    ap.add_argument(
        "--timeout",
        type=float,
        default=1200.0,
        help="seconds the max-rate phase may take; past it, the figures reached are printed",
    )
    ap.add_argument("--nodes", type=int, help="override the shape's node count")
    ap.add_argument("--sources", type=int, help="override the shape's sources per node")
    ap.add_argument("--spacing-ms", type=int, help="override the shape's datum spacing")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with services(work) as (kafka, ch, pg):
            run(args, kafka, ch, pg, work)


if __name__ == "__main__":
    main()
