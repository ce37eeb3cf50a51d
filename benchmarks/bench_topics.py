"""Many source topics (issue 16): what one worker does with 100, 1,000, 5,000 per-source topics on
the embedded broker, where the subscription grows by a topic scan (faust-streaming #62) and every
new topic costs a consumer-group rebalance.

    python benchmarks/bench_topics.py [--topics 100 1000 5000] [--workers 1] [--partitions 4]
                                      [--datums 200000] [--new-sources 5] [--timeout 900]
                                      [--groups G]

With `--groups G` the N sources are /S<i mod G>/B<i>/M1 and the topic-mapping rule
`PIPELINE_TOPIC_MAP='/S*/** = S{1}'` puts them in G group topics (datumgroup.S<k>): N sources,
G topics; a new source of an existing group then needs no topic and no rebalance.

Per topic count N, a fresh Tansu broker (everything in memory) and fresh databases; the sample
datamodels bound (sources /S1/B<i>/M1 match `/S*/**/M*`, so datums are validated, scored and
rolled up as in bench_e2e). One datum = 4 samples (watts, voltage, wattHours, mode).

  1. create:  N source topics (`--partitions` each) in requests of 500; one datum sent to each.
  2. startup: the worker(s) started; seconds until the partitions are assigned (the worker log's
     "Setting newly assigned partitions") and until the first datum of every one of the N sources
     is in the `datum` view. Worker RSS (VmRSS) then.
  3. throughput: `--datums` datums round-robin over all N sources sent at once; datums/s until
     every raw row is queryable (and seconds until the rollups count them all); then the same count
     over 20 of the sources, for the ratio N/20 topics. Worker RSS then.
  4. new source (last: the rebalance it causes may crash the worker, faust-streaming #94), with a
     steady background stream running (node 2 on the first source's topic, a datum every 50 ms,
     created = send time): `--new-sources` times, a new source's topic created and one datum sent;
     seconds until its row is queryable (`SELECT count() FROM datum WHERE source_id = ...`, polled
     every 0.1 s). For each:
       - scan: until the worker logs "subscribing to 1 new source topic(s)";
       - no partitions: from aiokafka's "Revoking previously assigned partitions" to the next
         "Setting newly assigned partitions" (the eager protocol's stop-the-world window, from the
         worker's log timestamps, ms);
       - stall: the background stream's worst send->stored latency (`inserted - created`) among
         datums sent between the topic's creation and its row being queryable, minus the stream's
         median latency over a 10 s baseline before any new topic (what a rebalance adds);
       - gap: the longest interval between consecutive store times of the background stream in
         that window (baseline: the same over the 10 s before; a batch is closed every 0.5 s).
     A worker that crashes (its log says so, or it exits) is restarted, as a supervisor would, and
     given RECOVER_S to store the datum; the crash is printed and the sample left out. Worker RSS
     at the end.

Prints a table per topic count; a step that fails or times out is printed as such and the next
topic count still runs. Starts Tansu per count, and ClickHouse (chDB endpoint) and PostgreSQL once,
in a temp dir, unless PIPELINE_KAFKA_BOOTSTRAP (then topics of every count share that broker),
PIPELINE_CLICKHOUSE_URL and PIPELINE_POSTGRES_DSN are set. Prints figures; it is not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import re
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_e2e import DATAMODELS, NotCaughtUp, level_counts, raw_count, wait_caught_up  # noqa: E402

from pipeline.embedded import stack  # noqa: E402
from pipeline.history.events import datamodel_events  # noqa: E402
from pipeline.settings import Settings  # noqa: E402
from pipeline.wire.producer import DatumProducer  # noqa: E402
from processors.datum import Datum  # noqa: E402
from processors.rollup import PERIODICITIES  # noqa: E402
from sinks.clickhouse import RAW_TABLE, connect, ensure_schema  # noqa: E402
from tests.integration.helpers import (  # noqa: E402
    publish_metadata,
    scratch_stores,
    settings_for,
    tuning_from_env,
    worker_process,
)

DAY_MS = 86_400_000
CREATE_CHUNK = 500
SMALL = 20  # the topic count of the comparison run
RECOVER_S = 180.0  # how long a worker restarted after a crash is given to store the datum
BG_NODE = 2
BG_EVERY_S = 0.05
LOG_TS = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")
REVOKE = "Revoking previously assigned partitions"
ASSIGN = "Setting newly assigned partitions"


GROUP_MAP = "/S*/** = S{1}"  # --groups: the topic-mapping rule, one topic per /S<k>


def source_id(i: int, groups: int = 0) -> str:
    return f"/S{i % groups}/B{i}/M1" if groups else f"/S1/B{i}/M1"


def vm_rss_mib(pid: int) -> float:
    """VmRSS of /proc/<pid>/status, MiB (nan once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class Ticks:
    """Per-source datum clock: every datum of a stream 1 s after the previous, from 10 days ago."""

    def __init__(self) -> None:
        self.base = int(time.time() * 1000) // DAY_MS * DAY_MS - 10 * DAY_MS
        self.next: dict[str, int] = {}

    def datum(self, node: int, source: str) -> Datum:
        k = self.next.get(source, 0)
        self.next[source] = k + 1
        return reading(node, source, self.base + k * 1000, k)


def reading(node: int, source: str, created_ms: int, k: int) -> Datum:
    return Datum(
        node,
        source,
        created_ms,
        {"watts": 1_000.0 + k % 4_000, "voltage": 228.0 + k % 5},
        {"wattHours": 1_000_000.0 + k * 10.0},
        {"mode": "auto"},
    )


def log_events(path: Path, needle: str, after: float, contains: str = "") -> list[float]:
    """Wall-clock times (epoch s, from the log's own timestamps) of log entries (a line with a
    timestamp and the lines that follow it: Faust prints partition sets as tables) whose first line
    has `needle` and whose text has `contains`, logged at or after `after`."""
    out = []
    ts, first, text = 0.0, "", [""]
    for line in [*path.read_text(errors="replace").splitlines(), "[0000-01-01 00:00:00,000]"]:
        m = LOG_TS.match(line)
        if m:
            if needle in first and (not contains or contains in "\n".join(text)) and ts >= after - 0.0005:
                out.append(ts)
            with contextlib.suppress(ValueError):
                ts = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()  # the worker's local time
            first, text = line, [line]
        else:
            text.append(line)
    return out


def count(client: Any, sql: str) -> int:
    return int(client.command(sql))


def poll(check: Any, timeout: float, interval: float = 0.1, guard: Any = None) -> float | None:
    """time.time() when check() first held; None after timeout. guard() is called before every try."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if guard is not None:
            guard()
        if check():
            return time.time()
        time.sleep(interval)
    return None


class Background(threading.Thread):
    """A datum every BG_EVERY_S on an existing topic (node 2's stream of the first source), created
    = the send instant (ms), flushed one by one: a steady stream whose stalls show the rebalances."""

    def __init__(self, settings: Settings, source: str) -> None:
        super().__init__(daemon=True)
        self.producer = DatumProducer(settings)
        self.source = source
        self.halt = threading.Event()
        self.sent = 0

    def run(self) -> None:
        last = 0
        while not self.halt.is_set():
            now = max(int(time.time() * 1000), last + 1)
            last = now
            self.producer.send([reading(BG_NODE, self.source, now, self.sent)])
            self.producer.flush(10)
            self.sent += 1
            self.halt.wait(BG_EVERY_S)

    def stop(self) -> int:
        self.halt.set()
        self.join(30)
        self.producer.close()
        return self.sent


@dataclass
class NewSource:
    latency: float | None  # s, create+send -> queryable
    scan: float | None = None  # s, -> "subscribing to 1 new source topic(s)"
    no_partitions_ms: float | None = None
    stall: float | None = None
    gap: float | None = None
    crashed: bool = False


@dataclass
class Result:
    topics: int  # sources, each its own topic unless --groups
    partitions: int
    topic_count: int = 0
    lines: list[tuple[str, str]] = field(default_factory=list)
    failed: str = ""

    def add(self, what: str, value: str) -> None:
        self.lines.append((what, value))
        print(f"  {what:<34} {value}", flush=True)


def bg_rows(client: Any, lo: float, hi: float) -> list[tuple[float, float]]:
    """(created, inserted) epoch seconds of the background stream's datums created in [lo, hi)."""
    rows = client.query(
        f"SELECT toUnixTimestamp64Milli(created), toUnixTimestamp64Milli(inserted) FROM {RAW_TABLE} FINAL "
        f"WHERE node_id = {BG_NODE} AND property = 'watts' "
        f"AND created >= fromUnixTimestamp64Milli(toInt64({int(lo * 1000)}), 'UTC') "
        f"AND created < fromUnixTimestamp64Milli(toInt64({int(hi * 1000)}), 'UTC') ORDER BY created"
    ).result_rows
    return [(int(c) / 1000, int(i) / 1000) for c, i in rows]


def longest_gap(rows: list[tuple[float, float]]) -> float:
    stored = sorted({i for _, i in rows})
    return max((b - a for a, b in zip(stored, stored[1:], strict=False)), default=float("nan"))


def fmt(values: list[float | None], unit: str = "s", scale: float = 1.0, digits: int = 1) -> str:
    got = [v * scale for v in values if v is not None]
    missing = len(values) - len(got)
    if not got:
        return f"none of {len(values)}"
    text = f"median {statistics.median(got):.{digits}f} {unit}, max {max(got):.{digits}f} {unit}"
    return text + (f"  ({missing} of {len(values)} not seen)" if missing else "")


# --- one topic count ----------------------------------------------------------------------------


def run_count(args: argparse.Namespace, n: int, kafka: str, ch: str, pg_url: str, work: Path) -> Result:
    res = Result(n, args.partitions)
    with scratch_stores(ch, pg_url, f"t{n}") as (db, _, dsn):
        defaults = Settings.from_env({})  # the deployment's, not the tests' (0.5 s scans, 6 s sessions)
        scan_s, session_s = defaults.topic_scan_interval_s, defaults.session_timeout_s
        settings = settings_for(
            kafka,
            ch,
            db,
            f"{db}.",
            topic_partitions=args.partitions,
            postgres_dsn=dsn,
            topic_scan_interval_s=scan_s,
            session_timeout_s=session_s,
            topic_map=GROUP_MAP if args.groups else "",
        )
        settings = settings._with(tuning_from_env({"topic_map"}))
        try:
            measure(args, res, settings, work / db)
        except Exception as exc:  # a limit reached is a finding: print it, go on with the next count
            res.failed = f"{type(exc).__name__}: {exc}"
            res.add("FAILED", res.failed)
            traceback.print_exc()
    return res


def measure(args: argparse.Namespace, res: Result, settings: Settings, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    n = res.topics
    client = connect(settings.clickhouse_url)
    ensure_schema(client)
    events = datamodel_events(sorted(DATAMODELS.glob("*.json")), "bench", "sample datamodels")
    publish_metadata(settings, events)
    producer = DatumProducer(settings)
    ticks = Ticks()
    sources = [source_id(i, args.groups) for i in range(1, n + 1)]
    sent = 0  # datums sent so far (every one is expected in the datum view)

    # 1. the topics, and a datum on each
    t = time.perf_counter()
    names = sorted({producer.topics.source(s) for s in sources})
    for start in range(0, len(names), CREATE_CHUNK):
        producer.admin.ensure(names[start : start + CREATE_CHUNK])
    create_s = time.perf_counter() - t
    pattern = producer.topics.source_pattern
    listed = sum(1 for name in producer.admin.existing() if pattern.match(name))
    res.topic_count = len(names)
    res.add(
        "create topics",
        f"{len(names):,} for {n:,} sources: {create_s:.1f} s ({len(names) / create_s:,.0f} topics/s;"
        f" {listed:,} listed by the broker)",
    )
    producer.send([ticks.datum(1, s) for s in sources])
    producer.flush(120)
    sent += n

    # 2. startup
    t_start = time.time()
    workers = Workers(settings, args.workers, work)
    try:
        phases(args, res, settings, client, producer, ticks, sources, sent, workers, t_start)
    finally:
        if workers.crashes:
            res.add("worker crashes", f"{len(workers.crashes)}: " + " | ".join(c[:160] for c in workers.crashes))
        workers.close()
    producer.close()


def phases(
    args: argparse.Namespace,
    res: Result,
    settings: Settings,
    client: Any,
    producer: DatumProducer,
    ticks: Ticks,
    sources: list[str],
    sent: int,
    workers: Workers,
    t_start: float,
) -> None:
    n = len(sources)

    def assigned_all() -> bool:
        return all(log_events(log, ASSIGN, t_start) for log in workers.logs)

    def first_of_each() -> bool:
        return count(client, "SELECT uniqExact(source_id) FROM datum WHERE node_id = 1") >= n

    at = poll(assigned_all, args.timeout, 0.5, workers.check)
    assigned = max((log_events(log, ASSIGN, t_start) or [0.0])[0] for log in workers.logs)
    res.add("startup: partitions assigned", f"{assigned - t_start:.1f} s" if at else "not within the timeout")
    stored_at = poll(first_of_each, args.timeout, 0.5, workers.check)
    if stored_at is None:
        got = count(client, "SELECT uniqExact(source_id) FROM datum WHERE node_id = 1")
        raise NotCaughtUp(f"startup: first datum of {got:,} of {n:,} sources stored after {args.timeout:.0f} s")
    res.add("startup: first datum of all stored", f"{stored_at - t_start:.1f} s (all {n:,} sources)")
    res.add("RSS after subscribing", workers.rss())

    # 3. throughput: round-robin over all N, then over 20 (each after the rollups caught up)
    settle(client, sent, args.timeout)
    rates = {}
    for label, over in ((f"{n:,} sources", sources), (f"{SMALL} sources", sources[:SMALL])):
        datums = [ticks.datum(1, over[k % len(over)]) for k in range(args.datums)]
        t0p = time.perf_counter()
        producer.send(datums)
        producer.flush(300)
        produce_s = time.perf_counter() - t0p
        sent += len(datums)
        expect = sent
        raw_at = poll(lambda e=expect: raw_count(client) >= e, args.timeout, 0.2, workers.check)
        if raw_at is None:
            res.add(f"e2e over {label}", f"NOT CAUGHT UP after {args.timeout:.0f} s: {raw_count(client):,} of {sent:,}")
            break
        raw_s = time.perf_counter() - t0p - (time.time() - raw_at)
        try:
            _, levels = wait_caught_up(client, sent, t0p, args.timeout)
        except NotCaughtUp as exc:
            res.add(f"e2e over {label}", f"raw {len(datums) / raw_s:,.0f} datums/s; rollups NOT CAUGHT UP: {exc}")
            break
        rates[label] = len(datums) / raw_s
        res.add(
            f"e2e over {label}",
            f"{rates[label]:,.0f} datums/s raw-queryable ({raw_s:.1f} s; produced in {produce_s:.1f} s; "
            f"rollups all levels after {max(levels.values()):.1f} s)",
        )
    if len(rates) == 2:
        r_n, r_small = rates.values()
        res.add(f"ratio {n:,} / {SMALL} sources", f"{r_n / r_small:.2f}")
    res.add("RSS after the throughput runs", workers.rss())
    workers.check()
    settle(client, sent, args.timeout)

    # 4. new sources (last: a rebalance may crash the worker), with a background stream on the first source's topic
    bg = Background(settings, sources[0])
    bg.start()
    time.sleep(10.0)
    t_new0 = time.time()
    news: list[NewSource] = []
    windows: list[tuple[float, float]] = []
    try:
        for j in range(args.new_sources):
            src = f"/S1/N{j}/M1"
            topic = producer.topics.source(src)
            t0 = time.time()
            producer.send([ticks.datum(1, src)])  # creates its topic (TopicAdmin.ensure), then sends
            producer.flush(30)
            sent += 1

            def stored(s: str = src) -> bool:
                return count(client, f"SELECT count() FROM datum WHERE source_id = '{s}'") > 0

            log0 = workers.logs[0]
            crashed = False
            try:
                done = poll(stored, args.timeout, 0.1, workers.check)
            except WorkerCrashed as exc:
                crashed = True
                res.add(f"  new source {j}: WORKER CRASHED", f"{str(exc)[:200]}; restarted")
                workers.restart(exc.args[1])
                done = poll(stored, RECOVER_S, 0.1, workers.check)
                if done is None:
                    res.add(
                        "  restarted worker",
                        f"its datum not stored within {RECOVER_S:.0f} s (see its log: {workers.logs[exc.args[1]]})",
                    )
            news.append(NewSource(done - t0 if done else None, crashed=crashed))
            windows.append((t0, done or time.time()))
            scans = log_events(log0, "subscribing to 1 new source topic", t0, topic)
            news[-1].scan = scans[0] - t0 if scans else None
            revokes = log_events(log0, REVOKE, t0)
            if revokes and not crashed:
                assigns = log_events(log0, ASSIGN, revokes[0], topic)
                news[-1].no_partitions_ms = (assigns[0] - revokes[0]) if assigns else None
            if done is None:
                break
            time.sleep(3.0)  # let the group settle before the next one
    finally:
        sent += bg.stop()
    time.sleep(2.0)
    base = bg_rows(client, t_new0 - 10.0, t_new0)
    base_lat = statistics.median(i - c for c, i in base) if base else float("nan")
    for ns, (lo, hi) in zip(news, windows, strict=True):
        rows = bg_rows(client, lo, hi)
        if rows:
            ns.stall = max(i - c for c, i in rows) - base_lat
            ns.gap = longest_gap(bg_rows(client, lo - 1.0, hi + 1.0))
    ok = [x for x in news if not x.crashed]
    crashed_note = f"; {len(news) - len(ok)} more with a worker crash, left out" if len(ok) < len(news) else ""
    res.add("new source -> queryable", fmt([x.latency for x in ok]) + f"  ({len(ok)} sources{crashed_note})")
    if len(ok) < len(news):
        res.add("  the others (crash, restart)", fmt([x.latency for x in news if x.crashed]))
    res.add("  topic scan noticed it", fmt([x.scan for x in ok]))
    res.add("  no partitions (log, revoke->assign)", fmt([x.no_partitions_ms for x in ok], "ms", 1000, 0))
    res.add("  background stall (max - baseline)", fmt([x.stall for x in ok]))
    res.add(
        "  background longest store gap",
        fmt([x.gap for x in ok]) + f"  (baseline {longest_gap(base):.2f} s, latency {base_lat:.2f} s)",
    )

    res.add("RSS at the end", workers.rss())
    workers.check()


CRASHED = ("Crashed reason=", "We experienced a crash")


class WorkerCrashed(Exception):
    pass


class Workers:
    """The worker processes (tests/integration/helpers.worker_process), each with its log. `check`
    raises WorkerCrashed when one exited or its log says Faust crashed (a crashed Faust worker was
    seen to stay alive, consuming nothing); `restart` replaces one, as a supervisor would."""

    def __init__(self, settings: Settings, count: int, work: Path) -> None:
        self.settings, self.work = settings, work
        self.ctx: list[Any] = [None] * count
        self.procs: list[Any] = [None] * count
        self.logs: list[Path] = [work] * count
        self.read: list[int] = [0] * count
        self.starts = 0
        self.crashes: list[str] = []
        for k in range(count):
            self.start(k)

    def start(self, k: int) -> None:
        self.starts += 1
        self.logs[k] = self.work / f"worker-{k}.{self.starts}.log"
        mine = replace(self.settings, metrics_port=stack.free_port()) if self.starts > 1 else self.settings
        self.ctx[k] = worker_process(mine, self.logs[k])
        self.procs[k] = self.ctx[k].__enter__()
        self.read[k] = 0

    def restart(self, k: int) -> None:
        self.ctx[k].__exit__(None, None, None)
        self.start(k)

    def close(self) -> None:
        for c in self.ctx:
            c.__exit__(None, None, None)

    def check(self) -> None:
        for k, proc in enumerate(self.procs):
            with self.logs[k].open("rb") as f:  # only what was logged since the last check
                f.seek(self.read[k])
                new = f.read().decode(errors="replace")
                self.read[k] += len(new.encode(errors="replace"))
            why = next((line for line in new.splitlines() if any(c in line for c in CRASHED)), "")
            if proc.poll() is not None:
                why = why or f"exited with {proc.returncode}"
            if why:
                self.crashes.append(why)
                raise WorkerCrashed(f"worker {k} (pid {proc.pid}): {why[:300]}", k)

    def rss(self) -> str:
        return " / ".join(f"{vm_rss_mib(p.pid):.0f} MiB" for p in self.procs)


def settle(client: Any, expect: int, timeout: float) -> None:
    """Untimed: every datum sent so far raw-visible and rolled up, so the next phase measures itself."""
    try:
        wait_caught_up(client, expect, time.perf_counter(), timeout)
    except NotCaughtUp as exc:
        raise NotCaughtUp(f"before the throughput phase: {exc}; rollups {level_counts(client)}") from None


def table(results: list[Result]) -> None:
    print("\n=== summary ===")
    for r in results:
        print(
            f"\n{r.topics:,} sources in {r.topic_count:,} topics x {r.partitions} partitions"
            + (" -- FAILED" if r.failed else "")
        )
        for what, value in r.lines:
            print(f"  {what:<38} {value}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--topics", type=int, nargs="+", default=[100, 1_000, 5_000], help="source topic counts")
    ap.add_argument("--workers", type=int, default=1, help="worker processes")
    ap.add_argument("--partitions", type=int, default=Settings.from_env({}).topic_partitions, help="per topic")
    ap.add_argument("--datums", type=int, default=200_000, help="datums of each throughput run")
    ap.add_argument("--new-sources", type=int, default=5, help="brand-new sources timed one after another")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds any one wait may take")
    ap.add_argument("--groups", type=int, default=0, help="G: the topic-mapping rule puts the sources in G topics")
    ap.add_argument("--keep-logs", help="a folder for the worker and service logs (default: a temp dir)")
    args = ap.parse_args()
    print(
        f"{os.cpu_count()} cores; {args.workers} worker(s); {args.partitions} partitions per topic; "
        f"{args.datums:,} datums per throughput run; PERIODICITIES {', '.join(PERIODICITIES)}",
        flush=True,
    )
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep_logs or tmp)
        shared_kafka = os.environ.get("PIPELINE_KAFKA_BOOTSTRAP", "")
        with stores(work) as (ch, pg):
            for n in args.topics:
                in_topics = f" in {args.groups} topics" if args.groups else ""
                print(f"\n--- {n:,} sources{in_topics} ---", flush=True)
                with broker(shared_kafka, work / f"tansu-{n}") as kafka:
                    results.append(run_count(args, n, kafka, ch, pg, work))
    table(results)


@contextlib.contextmanager
def stores(work: Path) -> Iterator[tuple[str, str]]:
    """ClickHouse (the chDB endpoint) and PostgreSQL, shared by every topic count, unless given."""
    ch = os.environ.get("PIPELINE_CLICKHOUSE_URL", "")
    pg = os.environ.get("PIPELINE_POSTGRES_DSN", "")
    started: list[stack.Service] = []
    try:
        if not ch:
            started.append(stack.start_clickhouse(work / "ch", log_dir=work))
            ch = started[-1].url
        if not pg:
            started.append(stack.start_postgres(work / "pg"))
            pg = started[-1].url
        yield ch, pg
    finally:
        for svc in reversed(started):
            svc.stop()


@contextlib.contextmanager
def broker(shared: str, log_dir: Path) -> Iterator[str]:
    """A fresh Tansu per topic count (it keeps everything in memory), unless one is given."""
    if shared:
        yield shared
        return
    log_dir.mkdir(parents=True, exist_ok=True)
    svc = stack.start_tansu(log_dir=log_dir)
    try:
        yield svc.url
    finally:
        svc.stop()


if __name__ == "__main__":
    main()
