"""The cascade computed in the store (`sinks.rollups.cascade_sql`, issue 13) equals the pure
`processors.rollup.combine`, field for field and bit for bit, on random half hours of every kind
in zones with daylight saving and a 45-minute offset; a stored parent whose children are all
gone gets a tombstone, one with children is replaced. So does the cascade combined in the
worker from the stored rows (`sinks.rollups.combine_here`), which a step with few buckets takes."""

from __future__ import annotations

import random
from typing import Any

import pytest

from processors.rollup import (
    CASCADE_SOURCE,
    PERIODICITIES,
    Periodicity,
    RollupKind,
    RollupRow,
    bucket_bounds,
    buckets_between,
    combine,
    zone,
)
from sinks.rollups import RollupSink, RollupWrite, read_rollups
from tests.integration.helpers import schema_client
from tests.unit.rollup_rows import random_halfhour

pytestmark = pytest.mark.integration

HALF = 1_800_000
DAY = 86_400_000
FAR = 4_102_444_800_000
ZONES = ("UTC", "America/New_York", "Asia/Kathmandu", "Australia/Lord_Howe")
# 2024-11-01: New York falls back on the 3rd, Lord Howe springs forward by half an hour on 6 Oct
START = 1_730_419_200_000


def parents(rows: list[RollupRow], per: Periodicity, tz: str) -> set[tuple[int, int]]:
    z = zone(tz)
    return {bucket_bounds(r.ts_start_ms, per, z) for r in rows}


@pytest.mark.parametrize(("seed", "where"), [(0, "store"), (1, "store"), (2, "worker"), (3, "worker"), (4, "store")])
def test_cascade_in_the_store_equals_combine(clickhouse_url: str, ch_database: str, seed: int, where: str) -> None:
    client: Any = schema_client(f"{clickhouse_url.rstrip('/')}/{ch_database}")
    rng = random.Random(seed)
    sink = RollupSink(client, combine_buckets=0 if where == "store" else 1_000_000)
    kinds: tuple[RollupKind, ...] = ("i", "a", "s", "p")
    streams = {(1000 * seed + k, f"/c/{k}"): ZONES[k % len(ZONES)] for k in range(12)}
    halfhours: dict[tuple[int, str], list[RollupRow]] = {}
    garbage: list[RollupRow] = []
    for (node, source), tz in streams.items():
        z = zone(tz)
        lo = START + rng.randrange(0, 3 * DAY // HALF) * HALF
        slots = list(buckets_between(lo, lo + rng.randint(1, 5) * DAY, "halfhour", z))
        rows = []
        for prop, kind in (("watts", "i"), ("wattHours", "a"), ("mode", "s"), ("tips", "p")):
            assert kind in kinds
            rows += [random_halfhour(rng, node, source, prop, kind, s, e) for s, e in slots if rng.random() < 0.6]
        halfhours[(node, source)] = rows
        # Stale parents stored before: one of a property with children (replaced), one of a
        # property none is left for (tombstoned), each with figures the cascade must not keep.
        day = bucket_bounds(slots[0][0], "day", z)
        garbage.append(RollupRow("day", node, source, "watts", "i", *day, 999, 1.0, 1.0, 1.0))
        garbage.append(RollupRow("day", node, source, "gone", "i", *day, 5, 2.0, 2.0, 2.0))
    # in several inserts, shuffled: the store reads the children in no particular order
    stored = [r for rows in halfhours.values() for r in rows] + garbage
    rng.shuffle(stored)
    for k in range(0, len(stored), len(stored) // 6 + 1):
        sink.write(RollupWrite(stored[k : k + len(stored) // 6 + 1]))

    cascade: dict[Periodicity, list[tuple[int, str, int, int]]] = {}
    for per in PERIODICITIES[1:]:
        src = CASCADE_SOURCE[per]
        assert src is not None
        cascade[per] = [
            (node, source, lo, hi)
            for (node, source), rows in halfhours.items()
            for lo, hi in sorted(parents(rows, per, streams[(node, source)]))
        ]
        # a stream whose node changed zone is two tasks, whose buckets may coincide (Amsterdam and
        # Paris): a bucket named twice is combined once
        cascade[per] += cascade[per][::3]
    written = sink.write(RollupWrite([], [], cascade))

    coarser = emptied = 0
    for (node, source), tz in streams.items():
        want = {"halfhour": halfhours[(node, source)]}
        for per in PERIODICITIES[1:]:
            src = CASCADE_SOURCE[per]
            assert src is not None
            want[per] = combine(want[src], per, tz)
            coarser += len(want[per])
        got = read_rollups(client, [(node, source, [(p, 0, FAR) for p in PERIODICITIES])])
        expected = sorted((r for rows in want.values() for r in rows), key=RollupRow.key)
        assert sorted(got, key=RollupRow.key) == expected, f"{node}{source} in {tz}"
        # the emptied parent is a tombstone: hidden from the view, but stored
        gone = client.query(
            f"SELECT count, deleted FROM rollup_raw FINAL WHERE node_id = {node} AND property = 'gone'"
        ).result_rows
        assert [tuple(r) for r in gone] == [(0, 1)]
        live = {(r.periodicity, r.property, r.ts_start_ms) for r in expected}
        # "gone", and "watts" where that day drew no half hour of it
        emptied += sum((g.periodicity, g.property, g.ts_start_ms) not in live for g in garbage if g.node_id == node)
    # what the store reports written: every coarser row and a tombstone per emptied parent
    assert written == coarser + emptied
