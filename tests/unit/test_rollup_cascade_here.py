"""The cascade combined in the worker (`processors.rollup.cascade`) equals the reference's: after
a step changes, adds and empties some half hours, every stale coarser bucket holds what `combine`
gives over the half hours as they now are, and a stored bucket none of whose property's children
is left gets a tombstone. The store's cascade is held to the same reference by
tests/integration/test_rollup_cascade.py."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from processors.rollup import (
    CASCADE_SOURCE,
    PERIODICITIES,
    Periodicity,
    RollupKind,
    RollupRow,
    bucket_bounds,
    buckets_between,
    cascade,
    combine,
    zone,
)
from tests.unit.rollup_rows import random_halfhour

HALF = 1_800_000
DAY = 86_400_000
# 2024-11-01: New York falls back on the 3rd
START = 1_730_419_200_000
ZONES = ("UTC", "America/New_York", "Asia/Kathmandu")
PROPS: tuple[tuple[str, RollupKind], ...] = (("watts", "i"), ("wattHours", "a"), ("mode", "s"), ("tips", "p"))


def levels(halfhours: list[RollupRow], tz: str) -> dict[Periodicity, list[RollupRow]]:
    out: dict[Periodicity, list[RollupRow]] = {"halfhour": halfhours}
    for per in PERIODICITIES[1:]:
        src = CASCADE_SOURCE[per]
        assert src is not None
        out[per] = combine(out[src], per, tz)
    return out


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32))
def test_cascade_here_equals_combine_after_a_step(seed: int) -> None:
    rng = random.Random(seed)
    streams = {node: ZONES[node % len(ZONES)] for node in range(1, rng.randint(2, 4))}
    stored: list[RollupRow] = []
    fresh: list[RollupRow] = []
    emptied: list[RollupRow] = []
    after: dict[int, list[RollupRow]] = {}
    buckets: dict[Periodicity, list[tuple[int, str, int, int]]] = {per: [] for per in PERIODICITIES[1:]}
    for node, tz in streams.items():
        z = zone(tz)
        lo = START + rng.randrange(0, 4 * DAY // HALF) * HALF
        slots = list(buckets_between(lo, lo + rng.randint(1, 3) * DAY, "halfhour", z))
        before = [
            random_halfhour(rng, node, "/s", p, k, s, e) for p, k in PROPS for s, e in slots if rng.random() < 0.5
        ]
        stored += [r for rows in levels(before, tz).values() for r in rows]
        # the step: some half hours recomputed, some emptied (one property may lose every one)
        gone_prop = rng.choice(PROPS)[0] if rng.random() < 0.3 else None
        now: list[RollupRow] = []
        changed: list[RollupRow] = []
        for r in before:
            roll = rng.random()
            if r.property == gone_prop or roll < 0.15:
                emptied.append(RollupRow("halfhour", node, "/s", r.property, r.kind, r.ts_start_ms, r.ts_end_ms))
                changed.append(r)
            elif roll < 0.4:
                new = random_halfhour(rng, node, "/s", r.property, r.kind, r.ts_start_ms, r.ts_end_ms)
                fresh.append(new)
                changed.append(new)
                now.append(new)
            else:
                now.append(r)
        for p, k in PROPS:  # new half hours, some in buckets that had none of the property
            if p != gone_prop:
                for s, e in rng.sample(slots, min(2, len(slots))):
                    # (a half hour is either recomputed or emptied by a step, never both)
                    if not any(r.property == p and r.ts_start_ms == s for r in now + changed):
                        new = random_halfhour(rng, node, "/s", p, k, s, e)
                        fresh.append(new)
                        changed.append(new)
                        now.append(new)
        after[node] = now
        # the stale buckets: every level's bucket holding a changed half hour
        for per in PERIODICITIES[1:]:
            buckets[per] += sorted({(node, "/s", *bucket_bounds(r.ts_start_ms, per, z)) for r in changed})
    rng.shuffle(stored)

    rows, tombstones = cascade(buckets, fresh, emptied, stored)

    want: set[RollupRow] = set()
    live: set[tuple[Periodicity, int, str, int]] = set()
    for node, tz in streams.items():
        for per, got in levels(after[node], tz).items():
            live |= {(per, node, r.property, r.ts_start_ms) for r in got}
            if per != "halfhour":
                stale = {(lo, hi) for n, _s, lo, hi in buckets[per] if n == node}
                want |= {r for r in got if (r.ts_start_ms, r.ts_end_ms) in stale}
    assert sorted(rows, key=RollupRow.key) == sorted(want, key=RollupRow.key)
    # a tombstone for each stored coarser row of a stale bucket that is now empty, and only those
    stale_keys = {(per, n, lo) for per, bs in buckets.items() for n, _s, lo, _hi in bs}
    want_gone = {
        (r.periodicity, r.node_id, r.property, r.ts_start_ms)
        for r in stored
        if (r.periodicity, r.node_id, r.ts_start_ms) in stale_keys
        and (r.periodicity, r.node_id, r.property, r.ts_start_ms) not in live
    }
    assert {(t.periodicity, t.node_id, t.property, t.ts_start_ms) for t in tombstones} == want_gone
    assert all(t.count == 0 and t.avg is None and t.tags == () for t in tombstones)
