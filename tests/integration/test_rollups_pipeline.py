"""Rollups computed while data flows, on the real services, against the independent reference
(tests/unit/rollup_reference.py): shuffled, late and duplicated datums, gaps longer than the
clock tolerance, meter resets, a New York node across the end of DST, a worker restart in the
middle and then two workers sharing the partitions."""

from __future__ import annotations

import json
import random
import signal
import time
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import sinks.auxiliary
import sinks.clickhouse
import sinks.rollups
from pipeline import cli
from pipeline.embedded.stack import free_port
from pipeline.settings import Settings
from pipeline.wire.producer import DatumProducer
from pipeline.wire.topics import Topics
from pipeline.worker.batch import Stamps
from pipeline.worker.rollups import RollupLanes, RollupMaintainer, recompute_range
from processors.auxiliary import AuxChange, AuxKey, AuxRecord
from processors.datum import Datum
from processors.point_cache import PointCache
from processors.rollup import (
    DEFAULT_TOLERANCES,
    PERIODICITIES,
    RawPoint,
    ResetMarker,
    RollupRow,
    points_from_datum,
)
from processors.rollup_running import MAX_POINTS, RunningRollups
from processors.rows import RawColumns
from sinks.clickhouse import RawSink
from sinks.rollups import COMBINE_BUCKETS, ensure_rollup_schema, mark_rolled_up, read_rollups, write_rollups
from tests.integration.helpers import (
    model_events,
    publish_metadata,
    read_topic,
    schema_client,
    settings_in_env,
    wait_for,
    worker_process,
)
from tests.samples import metadata_event
from tests.unit import rollup_reference as ref
from tests.unit.test_rollup import assert_matches

pytestmark = pytest.mark.integration

MIN = 60_000
HOUR = 60 * MIN
T0 = 1_730_376_000_000  # 2024-10-31T12:00Z: a month end, then New York's DST end on 3 November
SPAN = 4 * 24 * HOUR
FAR = 4_102_444_800_000  # 2100
EXAMPLE = (9, "/ex/meter")


def gen_stream(rng: random.Random, node: int, source: str, n: int, sparse: bool = False) -> list[Datum]:
    """Readings minutes apart with gaps of hours (a day and more when sparse); i, a and s."""
    out: list[Datum] = []
    t = T0 + rng.randrange(0, HOUR)
    wh = rng.uniform(0, 1000)
    for _ in range(n):
        if t >= T0 + SPAN:
            break
        wh += rng.uniform(0, 50)
        out.append(
            Datum(
                node,
                source,
                t,
                i={"watts": round(rng.uniform(-5, 500), 3)},
                a={"wattHours": round(wh, 3)},
                s={"mode": rng.choice(["auto", "eco", "off"])},
                tags=tuple(rng.sample(["x", "y"], rng.randrange(0, 2))),
            )
        )
        r = rng.random()
        if r < 0.04:
            t += rng.randrange(2 * HOUR, 6 * HOUR)  # longer than the clock tolerance
        elif sparse and r < 0.1:
            t += rng.randrange(20 * HOUR, 40 * HOUR)
        else:
            t += rng.randrange(MIN, 25 * MIN) + rng.randrange(1000)
    return out


def example() -> list[Datum]:
    """200 Wh at 09:59 and 500 Wh at 10:02 (UTC)."""
    nine = T0 - 2 * HOUR - MIN  # 09:59Z
    return [Datum(*EXAMPLE, nine, a={"wh": 200.0}), Datum(*EXAMPLE, nine + 3 * MIN, a={"wh": 500.0})]


def deliveries(rng: random.Random, datums: list[Datum], parts: int) -> list[list[Datum]]:
    """Messages in a messy order: roughly by time, shuffled within, a fifth held back to arrive
    late, and some datums sent twice."""
    late = [d for d in datums if rng.random() < 0.2]
    late_ids = {id(d) for d in late}
    early = [d for d in datums if id(d) not in late_ids]
    early += rng.sample(datums, len(datums) // 10)  # duplicates
    early.sort(key=lambda d: d.created_ms + rng.randrange(0, 3 * HOUR))
    size = max(1, len(early) // parts)
    msgs = [early[k : k + size] for k in range(0, len(early), size)]
    rng.shuffle(late)
    msgs += [late[k : k + size] for k in range(0, len(late), size)]
    for m in msgs:
        rng.shuffle(m)
    return msgs


def scraped(port: int, name: str) -> float:
    """A sample's value from a worker's /metrics (0 if it has none)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def stored(client: Any, node: int, source: str) -> list[RollupRow]:
    return read_rollups(client, [(node, source, [(p, 0, FAR) for p in PERIODICITIES])])


def expected(
    datums: list[Datum], tz: str, resets: Sequence[ResetMarker] = (), pulse: frozenset[str] = frozenset()
) -> dict[tuple[str, str, str, int], ref.RefRow]:
    points: list[RawPoint] = [p for d in datums for p in points_from_datum(d, pulse=pulse)]
    return ref.reference(points, resets, tz, DEFAULT_TOLERANCES)


def scale(datums: list[Datum], resets: Sequence[ResetMarker] = ()) -> float:
    values = [abs(v) for d in datums for v in (*d.i.values(), *d.a.values())]
    values += [abs(v) for r in resets for v in (*r.final.values(), *r.start.values())]
    return max(values, default=1.0)


def check(
    client: Any,
    streams: dict[tuple[int, str], tuple[list[Datum], str]],
    resets: dict[tuple[int, str], list[ResetMarker]] | None = None,
    pulse: frozenset[str] = frozenset(),
) -> None:
    for (node, source), (datums, tz) in streams.items():
        rs = (resets or {}).get((node, source), [])
        assert_matches(
            stored(client, node, source), expected(datums, tz, rs, pulse), scale(datums, rs), f"{node}{source}"
        )


def gen_resets(rng: random.Random, datums: list[Datum], n: int) -> list[ResetMarker]:
    """Meter resets at random instants between the stream's first and last reading."""
    lo, hi = datums[0].created_ms, datums[-1].created_ms
    return [
        ResetMarker(
            rng.randrange(lo, hi),
            {"wattHours": round(rng.uniform(500, 3000), 3)},
            {"wattHours": round(rng.uniform(0, 10), 3)},
        )
        for _ in range(n)
    ]


def reset_change(node: int, source: str, r: ResetMarker, action: str = "store") -> AuxChange:
    key = AuxKey(node, source, "Reset", r.created_ms)
    if action == "delete":
        return AuxChange("delete", removed=key)
    return AuxChange("store", record=AuxRecord(key, dict(r.final), dict(r.start)))


STAMPS = Stamps()


def roll_up(client: Any, sink: RawSink, maintainer: RollupMaintainer | RollupLanes, cols: RawColumns) -> None:
    """A raw batch as the worker stores and rolls it up: stamped, stored, its buckets recomputed,
    then recorded in the rollup ledger (running rollups seeded for a stream's first step look
    there for points the stored rows already count)."""
    stamp = STAMPS.next()
    sink.write(cols, stamp)
    maintainer.update(cols)
    mark_rolled_up(client, {(n, s, stamp) for n, s in zip(cols.node_id, cols.source_id, strict=True)})


def meter_datum(node: int, source: str, t: int) -> Datum:
    """A meter's datum at t: an instantaneous, an accumulating and a status sample."""
    return Datum(node, source, t, i={"watts": 1.0 + t % 7}, a={"wattHours": t / 1000.0}, s={"mode": "on"})


def check_example(client: Any) -> None:
    rows = {(r.periodicity, r.ts_start_ms): r for r in stored(client, *EXAMPLE)}
    nine = T0 - 3 * HOUR
    assert rows[("hour", nine)].diff == pytest.approx(100.0)
    assert rows[("hour", nine + HOUR)].diff == pytest.approx(200.0)
    assert rows[("day", nine - 9 * HOUR)].diff == pytest.approx(300.0)


@pytest.mark.parametrize(
    ("lanes", "cache_points", "combine_buckets", "split", "running"),
    [
        (1, 0, 0, False, 0),
        (2, 0, COMBINE_BUCKETS, False, 0),
        (1, 2_000_000, COMBINE_BUCKETS, False, 0),
        (2, 2_000_000, 0, False, 0),
        (1, 600, COMBINE_BUCKETS, False, 0),
        (1, 0, 0, True, 0),
        (1, 0, 0, False, 100_000),
        (2, 2_000_000, COMBINE_BUCKETS, True, 6),
    ],
)
def test_maintainer_on_shuffled_batches_matches_reference(
    clickhouse_url: str,
    ch_database: str,
    pg_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    lanes: int,
    cache_points: int,
    combine_buckets: int,
    split: bool,
    running: int,
) -> None:
    """The maintainer alone (no broker): raw batches stored in a messy order, each followed by
    update(); then `recompute_range` over everything changes nothing. With 2 lanes (every batch
    split from one stream a lane, each lane its own client) the rows are the same. With a point
    cache (shared by the lanes; one too small for every stream, so streams leave and come back)
    too. The cascade combined by the store (combine_buckets 0) or in the worker (a batch's few
    buckets): the same rows. `split`: every set-wise read and cascade stage cut into statements
    of a few ranges (a fleet's step is cut at RANGES_CHUNK and CASCADE_TEXT_BYTES): the same rows.
    `running`: series held as running rollups (6: fewer than the streams have, so streams leave
    and come back): the same rows."""
    if split:
        for module in (sinks.clickhouse, sinks.rollups, sinks.auxiliary):
            monkeypatch.setattr(module, "RANGES_CHUNK", 8)
        monkeypatch.setattr(sinks.rollups, "CASCADE_TEXT_BYTES", 1000)
    client = schema_client(f"{clickhouse_url.rstrip('/')}/{ch_database}")
    rng = random.Random(7)
    zones = {1: "UTC", 2: "America/New_York", 3: "Asia/Kathmandu", EXAMPLE[0]: "UTC"}
    streams = {
        (1, "/m/a"): gen_stream(rng, 1, "/m/a", 150),
        (2, "/m/ny"): gen_stream(rng, 2, "/m/ny", 150),
        (3, "/m/sparse"): gen_stream(rng, 3, "/m/sparse", 80, sparse=True),
        EXAMPLE: example(),
    }
    clients = [client, *(schema_client(f"{clickhouse_url.rstrip('/')}/{ch_database}") for _ in range(lanes - 1))]
    # these streams are sparse (minutes apart): held whatever their size
    cache = PointCache(cache_points, min_points=0) if cache_points else None
    held = RunningRollups(running) if running else None
    maintainer = RollupLanes(
        [
            RollupMaintainer(
                c, lambda node, _ms: zones[node], cache=cache, combine_buckets=combine_buckets, running=held
            )
            for c in clients
        ],
        min_streams=1,
    )
    sink = RawSink(client)
    all_datums = [d for ds in streams.values() for d in ds]
    timings = []
    for msg in deliveries(rng, all_datums, 12):
        cols = RawColumns()
        for d in msg:
            cols.add_datum(d)
        t0 = time.perf_counter()
        roll_up(client, sink, maintainer, cols)
        timings.append(time.perf_counter() - t0)
    print(
        f"rollup update: {len(timings)} batches, mean {sum(timings) / len(timings) * 1000:.0f} ms, "
        f"max {max(timings) * 1000:.0f} ms"
    )
    if cache is not None:
        print(f"point cache: {cache.served} windows served, {cache.filled} streams read in, {cache.respliced} spans")
        # it answered most windows and took in changes: the test exercises it
        assert cache.served > cache.filled and cache.respliced > 0
    if held is not None:
        print(f"running rollups: {held.seeded} series seeded, {held.appended} appends, {held.fell_back} fell back")
        assert held.seeded and held.appended  # the test exercises them
    want = {k: (ds, zones[k[0]]) for k, ds in streams.items()}
    check(client, want)
    check_example(client)
    before = {k: sorted(stored(client, *k), key=RollupRow.key) for k in streams}
    for node, source in streams:
        recompute_range(client, node, source, T0 - DAY, T0 + SPAN + DAY, lambda n, _ms: zones[n])
    # the command line does the same
    monkeypatch.setenv("PIPELINE_CLICKHOUSE_URL", f"{clickhouse_url.rstrip('/')}/{ch_database}")
    monkeypatch.setenv("PIPELINE_POSTGRES_DSN", pg_dsn)  # PULSE datastreams come from the history log
    assert (
        cli.main(
            [
                "recompute",
                "--node",
                "2",
                "--source",
                "/m/ny",
                "--from",
                "2024-10-30T00:00:00Z",
                "--to",
                "2024-11-06T00:00:00-05:00",
                "--tz",
                "America/New_York",
            ]
        )
        == 0
    )
    assert {k: sorted(stored(client, *k), key=RollupRow.key) for k in streams} == before


def test_running_rollups_of_readings_in_time_order_equal_a_full_recompute(
    clickhouse_url: str, ch_database: str
) -> None:
    """Datums arriving in time order, a few per stream a step (a fleet's shape): after seeding,
    the steps append to running rollups, and every level they store is what the reference
    computes, and bit for bit what `recompute_range` over everything then stores (it changes
    nothing). Days and a month's end in UTC, New York across the end of DST, Kathmandu."""
    client = schema_client(f"{clickhouse_url.rstrip('/')}/{ch_database}")
    rng = random.Random(11)
    zones = {1: "UTC", 2: "America/New_York", 3: "Asia/Kathmandu"}
    streams = {(n, f"/m/{n}"): gen_stream(rng, n, f"/m/{n}", 400) for n in zones}
    held = RunningRollups(100_000)
    maintainer = RollupMaintainer(client, lambda node, _ms: zones[node], running=held)
    sink = RawSink(client)
    ordered = sorted((d for ds in streams.values() for d in ds), key=lambda d: d.created_ms)
    k = stream_steps = 0
    while k < len(ordered):
        size = rng.randrange(1, 10)
        cols = RawColumns()
        for d in ordered[k : k + size]:
            cols.add_datum(d)
        stream_steps += len({(d.node_id, d.source_id) for d in ordered[k : k + size]})
        k += size
        roll_up(client, sink, maintainer, cols)
    print(f"running rollups: {held.seeded} series seeded, {held.appended} appends, {held.fell_back} fell back")
    # each stream's first step seeds its three series (nothing before them: none counted yet) and
    # appends; every later step appends to them (gaps longer than the clock tolerance, DST and
    # month ends included): no step goes to the store
    assert (held.seeded, held.fell_back) == (9, 0)
    assert held.appended == 3 * stream_steps
    check(client, {key: (ds, zones[key[0]]) for key, ds in streams.items()})
    before = {key: sorted(stored(client, *key), key=RollupRow.key) for key in streams}
    for node, source in streams:
        recompute_range(client, node, source, T0 - DAY, T0 + SPAN + DAY, lambda n, _ms: zones[n])
    assert {key: sorted(stored(client, *key), key=RollupRow.key) for key in streams} == before


@pytest.mark.parametrize("combine_buckets", [0, COMBINE_BUCKETS])
def test_a_stored_half_hour_no_raw_row_is_left_for_gets_a_tombstone(
    clickhouse_url: str, ch_database: str, combine_buckets: int
) -> None:
    """A stale half hour stored with a property its raw rows no longer have (as after a rewrite
    by hand, or rows gone): the recompute hides it with a tombstone and keeps the others, with
    the cascade in the store (a fleet's step, whose stored half hours are first read as keys
    only) as in the worker."""
    client = schema_client(f"{clickhouse_url.rstrip('/')}/{ch_database}")
    node, source, start = 77, "/gone/meter", T0
    write_rollups(
        client,
        [
            RollupRow("halfhour", node, source, "gone", "i", start, start + 30 * MIN, 3, 1.0, 1.0, 1.0),
            RollupRow("halfhour", node, source, "watts", "i", start, start + 30 * MIN, 9, 9.0, 9.0, 9.0),
        ],
    )
    cols = RawColumns()
    for k in range(3):
        cols.add_datum(Datum(node, source, start + k * MIN, {"watts": 5.0 + k}, {}, {}))
    RawSink(client).write(cols)
    RollupMaintainer(client, lambda _node, _ms: "UTC", combine_buckets=combine_buckets).update(cols)
    halfhours = {r.property: r for r in stored(client, node, source) if r.periodicity == "halfhour"}
    assert set(halfhours) == {"watts"}
    assert (halfhours["watts"].count, halfhours["watts"].avg) == (3, 6.0)
    tombstones = client.query(
        f"SELECT count, deleted FROM rollup_raw FINAL WHERE node_id = {node} AND property = 'gone'"
    ).result_rows
    assert [tuple(r) for r in tombstones] == [(0, 1)]


DAY = 24 * HOUR


def test_running_rollups_count_only_the_series_they_kept(clickhouse_url: str, ch_database: str) -> None:
    """A step where one stream appends and another, read with it, goes back to the store (more
    points a series than the arrays take a step): the appends counted are the first stream's
    three series, not the other's too; both streams' rows equal the reference."""
    client = schema_client(f"{clickhouse_url.rstrip('/')}/{ch_database}")
    held = RunningRollups(100)
    maintainer = RollupMaintainer(client, lambda _node, _ms: "UTC", running=held)
    sink = RawSink(client)

    def datum(node: int, t: int) -> Datum:
        return meter_datum(node, f"/c/{node}", t)

    def step(datums: list[Datum]) -> None:
        cols = RawColumns()
        for d in datums:
            cols.add_datum(d)
        roll_up(client, sink, maintainer, cols)

    sent = {1: [datum(1, T0)], 2: [datum(2, T0)]}
    step([*sent[1], *sent[2]])
    assert (held.seeded, held.appended) == (6, 6)  # seeded and appended on their first step
    sent[1].append(datum(1, T0 + MIN))
    sent[2] += [datum(2, T0 + 1000 * (k + 1)) for k in range(MAX_POINTS + 1)]
    step([sent[1][-1], *sent[2][1:]])
    assert (held.appended, held.fell_back) == (6 + 3, 1)
    check(client, {(n, f"/c/{n}"): (ds, "UTC") for n, ds in sent.items()})


def test_a_first_step_is_not_seeded_where_the_store_counts_a_later_reading(
    clickhouse_url: str, ch_database: str
) -> None:
    """After a restart (running rollups empty) a late reading arrives: the stream's first step
    would seed at its half hour and stop at the late reading, leaving out the later readings the
    stored rows count. The rollup ledger lists their batches, so the step goes to the store's
    recompute and every level equals the reference. Negative control: a stream whose earlier
    batches are not in the ledger (as if never rolled up) is seeded, and its rows miss the later
    readings: the ledger is what keeps them."""
    client = schema_client(f"{clickhouse_url.rstrip('/')}/{ch_database}")
    held = RunningRollups(100)
    maintainer = RollupMaintainer(client, lambda _node, _ms: "UTC", running=held)
    sink = RawSink(client)

    def datum(node: int, t: int) -> Datum:
        return meter_datum(node, f"/l/{node}", t)

    sent = {n: [datum(n, T0 + k * MIN) for k in range(6)] for n in (1, 2)}
    for n, datums in sent.items():
        for d in datums:
            cols = RawColumns()
            cols.add_datum(d)
            if n == 1:
                roll_up(client, sink, maintainer, cols)
            else:  # stored and rolled up, but not in the ledger
                sink.write(cols, STAMPS.next())
                maintainer.update(cols)
    held.clear()  # a restart: no running rollups
    seeded, fell_back = held.seeded, held.fell_back
    late = {n: datum(n, T0 + 2 * MIN + 30_000) for n in (1, 2)}
    cols = RawColumns()
    for n in (1, 2):
        cols.add_datum(late[n])
        sent[n].append(late[n])
    roll_up(client, sink, maintainer, cols)
    assert (held.seeded - seeded, held.fell_back - fell_back) == (3, 1)  # stream 2 seeded, stream 1 refused
    check(client, {(1, "/l/1"): (sent[1], "UTC")})
    with pytest.raises(AssertionError):
        check(client, {(2, "/l/2"): (sent[2], "UTC")})


def test_a_worker_appends_readings_in_time_order_by_running_rollups(worker_settings: Settings, tmp_path: Path) -> None:
    """A real worker given datums in time order, a few per stream a send (a fleet's gateways):
    its rollup agent seeds each stream once and appends every later step without the store's
    recompute (the worker's counters say so), and every level equals the reference."""
    client = schema_client(worker_settings.clickhouse_url)
    rng = random.Random(5)
    streams = {(n, f"/r/{n}"): (gen_stream(rng, n, f"/r/{n}", 150), "UTC") for n in (1, 2, 3)}
    ordered = sorted((d for ds, _ in streams.values() for d in ds), key=lambda d: d.created_ms)
    producer = DatumProducer(worker_settings)
    port = worker_settings.metrics_port
    with worker_process(worker_settings, tmp_path / "worker.log"):
        # the first datums of every stream, rolled up (and so seeded) before the rest come
        producer.send(ordered[:6])
        producer.flush()

        def seeded_so_far() -> float:
            try:
                return scraped(port, "pipeline_rollup_running_seeded_total")
            except OSError:
                return 0.0  # its metrics not served yet

        wait_for(lambda: seeded_so_far() >= 9, 60, "the streams seeded")
        for k in range(6, len(ordered), 6):
            producer.send(ordered[k : k + 6])
            producer.flush()
            time.sleep(0.05)

        def settled() -> bool:
            try:
                check(client, streams)
            except AssertionError:
                return False
            return True

        try:
            wait_for(settled, 90, "rollups equal to the reference")
        finally:
            check(client, streams)
        appended = scraped(port, "pipeline_rollup_running_appends_total")
        seeded = scraped(port, "pipeline_rollup_running_seeded_total")
        fell = scraped(port, "pipeline_rollup_running_fallbacks_total")
        print(f"running rollups: {appended:.0f} series steps appended, {seeded:.0f} seeded, {fell:.0f} fallbacks")
        # seeded once, and every later step appended (a step sent to the store seeds again)
        assert (seeded, fell) == (9, 0) and appended >= 3
    assert "Traceback" not in (tmp_path / "worker.log").read_text()


def test_pipeline_rollups_match_reference_across_a_restart(worker_settings: Settings, tmp_path: Path) -> None:
    # rollup lanes from one stream a lane: the workers' batches of marks split into two lanes
    # and every stream's points held between steps (these streams are sparse: minutes apart)
    settings = worker_settings._with({"rollup_lanes": 2, "rollup_lane_streams": 1, "rollup_cache_min_points": 0})
    client = schema_client(settings.clickhouse_url)
    # node 2 keeps New York time from before the data on
    publish_metadata(
        settings,
        [
            metadata_event("node", {"node_id": 2}, "upsert", {"name": "ny"}),
            metadata_event(
                "node_timezone", {"node_id": 2}, "set_valid", {"tz": "America/New_York"}, "2024-01-01T00:00:00Z"
            ),
        ],
    )
    rng = random.Random(11)
    streams = {
        (1, "/p/a"): (gen_stream(rng, 1, "/p/a", 120), "UTC"),
        (2, "/p/ny"): (gen_stream(rng, 2, "/p/ny", 120), "America/New_York"),
        (3, "/p/sparse"): (gen_stream(rng, 3, "/p/sparse", 60, sparse=True), "UTC"),
        EXAMPLE: (example(), "UTC"),
    }
    all_datums = [d for ds, _ in streams.values() for d in ds]
    msgs = deliveries(rng, all_datums, 8)
    distinct = len({d.key for d in all_datums})
    producer = DatumProducer(settings)
    # meter resets on two streams, sent among the datums (some twice), before and after the restart
    resets = {k: gen_resets(rng, streams[k][0], 3) for k in [(1, "/p/a"), (2, "/p/ny")]}
    reset_msgs = [(k, r) for k, rs in resets.items() for r in rs]
    reset_msgs += rng.sample(reset_msgs, 2)
    rng.shuffle(reset_msgs)
    split = len(reset_msgs) // 2

    def send_resets(part: list[tuple[tuple[int, str], ResetMarker]]) -> None:
        for (node, source), r in part:
            producer.send_auxiliary(reset_change(node, source, r))

    def stored_datums() -> int:
        return int(client.command("SELECT count(DISTINCT node_id, source_id, created) FROM datum"))

    half = len(msgs) // 2
    with worker_process(settings, tmp_path / "worker1.log") as first:
        send_resets(reset_msgs[:split])
        for m in msgs[:half]:
            producer.send(m)
        producer.flush()
        n_first = len({d.key for m in msgs[:half] for d in m})
        wait_for(lambda: stored_datums() >= n_first, 60, "the first half stored")
        first.send_signal(signal.SIGTERM)
        first.wait(30)
    # the second half with two workers sharing the partitions
    other = settings._with({"metrics_port": free_port(), "api_port": free_port()})  # a port each, as in `up`
    with worker_process(settings, tmp_path / "worker2.log"), worker_process(other, tmp_path / "worker3.log"):
        for m in msgs[half:]:
            producer.send(m)
        send_resets(reset_msgs[split:])
        producer.flush()
        wait_for(lambda: stored_datums() == distinct, 60, f"{distinct} datums stored")

        def settled() -> bool:
            try:
                check(client, streams, resets)
            except AssertionError:
                return False
            return True

        # the rollups of a batch are written before it is acked, so they follow the raw rows
        try:
            wait_for(settled, 30, "rollups equal to the reference")
        finally:
            check(client, streams, resets)  # the precise difference, if any
        check_example(client)
        # the held points answered windows (the test exercises the cache)
        served = sum(scraped(s.metrics_port, "pipeline_rollup_cache_windows_total") for s in (settings, other))
        assert served > 0
    log = "".join((tmp_path / f"worker{n}.log").read_text() for n in (1, 2, 3))
    assert "Traceback" not in log


PULSE_MODEL = {
    "identifier": "rain-gauge",
    "name": "Rain gauge",
    "version": "1.0",
    "description": "A tipping-bucket rain gauge and a meter",
    "allowedResourceTypes": ["entity.device"],
    "categories": [
        {
            "identifier": "rain",
            "name": "Rain",
            "datastreams": [
                {
                    "identifier": "rain.gauge.tips",
                    "name": "Tips",
                    "description": "Bucket tips since the last datum",
                    "period": "PULSE",
                    "access": "READ",
                    "schema": {"type": "number", "minimum": 0},
                },
                {
                    "identifier": "rain.gauge.wh",
                    "name": "Energy",
                    "description": "Meter reading",
                    "period": "CUMULATIVE",
                    "access": "READ",
                    "schema": {"type": "number"},
                },
            ],
        }
    ],
}


def test_reset_inside_an_hour_moved_and_deleted_and_pulse_sums(
    worker_settings: Settings,
    pg_dsn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`pipeline ingest` of datums and a SolarNetwork Reset line: the hour holding the reset
    counts the meter's increase on both sides of it; moving and deleting the reset recompute the
    hours around it; a PULSE datastream's values are summed. Every state against the reference."""

    settings = worker_settings
    client = settings_in_env(settings, monkeypatch)
    ensure_rollup_schema(client)
    bindings = {
        "bindings": [
            {
                "node_id": 5,
                "source_pattern": "/r/**",
                "datamodel": "rain-gauge",
                "properties": {"tips": "rain.gauge.tips", "wh": "rain.gauge.wh"},
            }
        ]
    }
    publish_metadata(
        settings,
        [
            metadata_event("node", {"node_id": 5}, "upsert", {"name": "rain"}),
            *model_events(tmp_path, PULSE_MODEL, bindings, "pulse"),
        ],
    )

    noon = T0  # 2024-10-31T12:00Z
    readings = {0: 100.0, 40 * MIN: 25.0, 70 * MIN: 45.0, 130 * MIN: 60.0}  # the meter restarts at 12:20
    datums = [Datum(5, "/r/meter", noon + dt, a={"wh": wh}) for dt, wh in readings.items()]
    tips = [Datum(5, "/r/rain", noon + k * 7 * MIN, i={"tips": float(k % 4)}) for k in range(20)]
    reset = ResetMarker(noon + 20 * MIN, {"wh": 115.0}, {"wh": 5.0})
    lines = [
        json.dumps(
            {"nodeId": d.node_id, "sourceId": d.source_id, "created": d.created_ms, "samples": {"i": d.i, "a": d.a}}
        )
        for d in datums + tips
    ]
    lines.append(
        json.dumps(
            {
                "nodeId": 5,
                "sourceId": "/r/meter",
                "type": "Reset",
                "created": "2024-10-31 12:20:00Z",
                "final": {"a": {"wh": 115}},
                "start": {"a": {"wh": 5}},
            }
        )
    )
    lines.append(json.dumps({"nodeId": 5, "sourceId": "/r/meter", "type": "Reset", "created": "nope"}))
    (tmp_path / "in.json").write_text("\n".join(lines) + "\n")
    pulse = frozenset({"tips"})
    hour = ("hour", "wh", "a", noon)

    def settled(want_resets: list[ResetMarker]) -> bool:
        try:
            check(client, {(5, "/r/meter"): (datums, "UTC")}, {(5, "/r/meter"): want_resets})
            check(client, {(5, "/r/rain"): (tips, "UTC")}, pulse=pulse)
        except AssertionError:
            return False
        return True

    def ingest(text: str) -> None:
        path = tmp_path / f"change-{uuid.uuid4().hex}.json"
        path.write_text(text + "\n")
        assert cli.main(["ingest", str(path)]) == 0

    with worker_process(settings, tmp_path / "worker.log"):
        cli.services._wait_for_bindings(pg_dsn, 60)  # the rain gauge's datastreams decide what PULSE is
        assert cli.main(["ingest", str(tmp_path / "in.json")]) == 1  # 1: a line was rejected
        try:
            wait_for(lambda: settled([reset]), 60, "rollups with the reset")
        finally:
            check(client, {(5, "/r/meter"): (datums, "UTC")}, {(5, "/r/meter"): [reset]})
            check(client, {(5, "/r/rain"): (tips, "UTC")}, pulse=pulse)
        rows = {(r.periodicity, r.property, r.kind, r.ts_start_ms): r for r in stored(client, 5, "/r/meter")}
        # 100 → 115 before the reset, 5 → 25 after it, and 20 of the 12:40 → 13:10 pair's 30
        # minutes (25 → 45): 15 + 20 + 13.33 Wh in the 12:00 hour, not −61.67 as without it
        assert rows[hour].diff == pytest.approx(15 + 20 + 20 * 20 / 30)
        # reading: 100 at 12:00 to 25 at 12:40 (the latest at or before 13:00) across the reset
        assert rows[hour].read_diff == pytest.approx(35.0)
        rain = {(r.periodicity, r.ts_start_ms): r for r in stored(client, 5, "/r/rain") if r.property == "tips"}
        assert rain[("day", noon - 12 * HOUR)].kind == "p"
        assert rain[("day", noon - 12 * HOUR)].diff == pytest.approx(sum(d.i["tips"] for d in tips))

        # move the reset to 13:20, after the 13:10 reading: the 12:00 hour goes negative again
        moved = ResetMarker(noon + 80 * MIN, {"wh": 50.0}, {"wh": 2.0})
        ingest(
            json.dumps(
                {
                    "from": {"nodeId": 5, "sourceId": "/r/meter", "type": "Reset", "created": "2024-10-31T12:20:00Z"},
                    "to": {
                        "nodeId": 5,
                        "sourceId": "/r/meter",
                        "type": "Reset",
                        "created": "2024-10-31T13:20:00Z",
                        "final": {"a": {"wh": 50}},
                        "start": {"a": {"wh": 2}},
                    },
                }
            )
        )
        wait_for(lambda: settled([moved]), 60, "rollups with the moved reset")
        rows = {(r.periodicity, r.property, r.kind, r.ts_start_ms): r for r in stored(client, 5, "/r/meter")}
        assert rows[hour].diff == pytest.approx(25 - 100 + 20 * 20 / 30)

        # delete it: the readings alone
        ingest(
            json.dumps(
                {
                    "action": "delete",
                    "nodeId": 5,
                    "sourceId": "/r/meter",
                    "type": "Reset",
                    "created": "2024-10-31T13:20:00Z",
                }
            )
        )
        wait_for(lambda: settled([]), 60, "rollups without resets")
        assert int(client.command("SELECT count() FROM datum_auxiliary")) == 0
        # a producer other than `pipeline ingest` sending garbage: the agent dead-letters it, goes on
        raw = DatumProducer(settings)
        raw.send_raw(Topics(settings.topic_prefix).auxiliary, b"{not json", key=b"x")
        raw.flush()
        letters = wait_for(
            lambda: [
                lt
                for lt in read_topic(settings.kafka_bootstrap, Topics(settings.topic_prefix).deadletter, 2, 5)
                if lt["stage"] == "auxiliary"
            ],
            60,
            "the auxiliary dead letter",
        )
        assert letters[0]["reasons"][0]["rule"] == "aux.syntax" and letters[0]["origin"]["topic"].endswith(
            "pipeline.datum-auxiliary"
        )
    # the bad Reset line went to the dead letters with its rule
    letters = read_topic(settings.kafka_bootstrap, Topics(settings.topic_prefix).deadletter, 2)
    assert any(r["rule"] == "aux.created" for letter in letters for r in letter["reasons"])
    assert "Traceback" not in (tmp_path / "worker.log").read_text()
