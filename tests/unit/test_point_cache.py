"""The rollup agent's point cache (processors/point_cache.py) answers what the store would: a
window's points and edge readings, a reading's nearest neighbours; spliced with the store's
points of the changed spans it equals a fresh read; the cache keeps its budget and drops what a
step puts back after it was emptied."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.point_cache import (
    OPEN,
    POINT_SCHEMA,
    SPARSE_FOR_S,
    Held,
    PointCache,
    nearest_readings,
    spliced,
    trimmed,
    window_rows,
)

# One stream's stored points: (property, created) -> (kind, value or None, text, tags).
Store = dict[tuple[str, int], tuple[str, float | None, str, tuple[str, ...]]]

PROPS = ["watts", "wattHours", "mode"]
point = st.tuples(
    st.sampled_from(["i", "a", "s", "p"]),
    st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False)),
    st.sampled_from(["", "on", "off"]),
    st.lists(st.sampled_from(["x", "y"]), max_size=2, unique=True).map(tuple),
)
# instants close together: edges, ties at a tolerance's bound and replaced points are common
stores = st.dictionaries(st.tuples(st.sampled_from(PROPS), st.integers(0, 60)), point, max_size=120)


def rows(store: Store, lo: int = -(10**9), hi: int = 10**9) -> pa.Table:
    """The store's points in [lo, hi) as its read gives them: sorted by property, kind, created."""
    got = sorted(
        (
            {"t": t, "p": p, "k": k, "v": v, "x": x, "g": list(g)}
            for (p, t), (k, v, x, g) in store.items()
            if lo <= t < hi
        ),
        key=lambda r: (r["p"], r["k"], r["t"]),
    )
    return pa.Table.from_pylist(got, schema=POINT_SCHEMA)


def expected_window(store: Store, q: int, start: int, end: int, near: int) -> list[dict[str, Any]]:
    """What sinks.rollups reads of a window, sorted by p, k, t: the points in it, and per property
    the latest reading (kind 'a', with a value) in [start - near, start), the first in
    [end, end + near), with no text."""
    out = [
        {"q": q, "t": t, "p": p, "k": k, "v": v, "x": x, "g": list(g)}
        for (p, t), (k, v, x, g) in store.items()
        if start <= t < end
    ]
    for prop in PROPS:
        readings = sorted(t for (p, t), (k, v, _x, _g) in store.items() if p == prop and k == "a" and v is not None)
        before = [t for t in readings if start - near <= t < start]
        after = [t for t in readings if end <= t < end + near]
        for t in ([before[-1]] if before else []) + ([after[0]] if after else []):
            _k, v, _x, g = store[(prop, t)]
            out.append({"q": q, "t": t, "p": prop, "k": "a", "v": v, "x": "", "g": list(g)})
    return sorted(out, key=lambda r: (r["p"], r["k"], r["t"]))


def content(held: Held) -> dict[tuple[str, str], list[dict[str, Any]]]:
    return {key: g.rows.to_pylist() for key, g in held.groups.items()}


@settings(max_examples=300, deadline=None)
@given(stores, st.integers(0, 60), st.integers(0, 30), st.integers(1, 20))
def test_window_rows_are_what_the_store_reads(store: Store, start: int, length: int, near: int) -> None:
    held = Held.read(0, OPEN, rows(store))
    got = window_rows(held, 7, start, start + length, near)
    assert got.to_pylist() == expected_window(store, 7, start, start + length, near)
    assert got.column_names == ["q", *POINT_SCHEMA.names]


@settings(max_examples=300, deadline=None)
@given(stores, st.integers(0, 60), st.integers(0, 30), st.integers(0, 40), st.booleans(), st.booleans())
def test_nearest_readings_are_the_nearest(
    store: Store, at: int, clock: int, extra: int, before: bool, after: bool
) -> None:
    lookback = clock + extra
    held = Held.read(0, OPEN, rows(store))
    for prop in PROPS:
        readings = [t for (p, t), (k, v, _x, _g) in store.items() if p == prop and k == "a" and v is not None]
        prev = max((t for t in readings if at - clock <= t < at), default=None) if before else None
        nxt = min((t for t in readings if at < t <= at + lookback), default=None) if after else None
        assert nearest_readings(held, prop, at, clock, lookback, before, after) == (prev, nxt)


@settings(max_examples=300, deadline=None)
@given(
    stores,
    stores,
    st.lists(st.tuples(st.sampled_from(PROPS), st.integers(0, 60), st.integers(0, 15)), max_size=6),
    st.integers(0, 30),
    st.sampled_from([45, 61, OPEN]),
)
def test_spliced_equals_a_fresh_read(
    before: Store, written: Store, spans: list[tuple[str, int, int]], lo: int, hi: int
) -> None:
    """Rows written (new, or replacing a stored one of the same property and instant, of any
    kind) inside the spans their marks name: the held points spliced with the store's points of
    those spans are the store's points, as a fresh read gives them."""
    marked = [(p, a, a + n + 1) for p, a, n in spans]
    after = dict(before)
    after.update({(p, t): v for (p, t), v in written.items() if any(p == q and a <= t < b for q, a, b in marked)})
    # the store's points of the spans as the maintainer reads them: overlapping spans of a
    # property merged, one range after another (so a property's kinds come once per range)
    merged: list[tuple[str, int, int]] = []
    for p, a, b in sorted(marked):
        if merged and merged[-1][0] == p and a <= merged[-1][2]:
            merged[-1] = (p, merged[-1][1], max(b, merged[-1][2]))
        else:
            merged.append((p, a, b))
    fresh = pa.concat_tables(
        [rows({k: v for k, v in after.items() if k[0] == p}, a, b) for p, a, b in merged] or [rows({})]
    )
    got = spliced(Held.read(lo, hi, rows(before, lo, hi)), marked, fresh)
    assert (got.lo, got.hi) == (lo, hi)
    assert content(got) == content(Held.read(lo, hi, rows(after, lo, hi)))


@settings(max_examples=100, deadline=None)
@given(stores, st.integers(0, 70))
def test_trimmed_equals_a_read_from_later(store: Store, lo: int) -> None:
    got = trimmed(Held.read(0, OPEN, rows(store)), lo)
    assert got.lo == lo and content(got) == content(Held.read(lo, OPEN, rows(store, lo)))


def held_of(n: int) -> Held:
    return Held.read(0, OPEN, rows({("watts", t): ("i", 1.0, "", ()) for t in range(n)}))


def test_budget_drops_the_streams_used_longest_ago() -> None:
    cache = PointCache(max_points=25)
    cache.put([((1, "a"), held_of(10)), ((1, "b"), held_of(10))], cache.generation)
    assert set(cache.take([(1, "a")])) == {(1, "a")}  # a used last: b goes first
    cache.put([((1, "c"), held_of(10))], cache.generation)
    assert set(cache.take([(1, "a"), (1, "b"), (1, "c")])) == {(1, "a"), (1, "c")}
    assert cache.points == 20 and len(cache) == 2
    cache.put([((1, "d"), held_of(30))], cache.generation)  # alone over the budget: not held
    assert cache.points <= 25 and (1, "d") not in cache.take([(1, "d")])


def test_what_a_step_puts_back_after_the_cache_was_emptied_is_dropped() -> None:
    cache = PointCache(max_points=100)
    step = cache.generation
    cache.clear()  # a rebalance while the step ran
    cache.put([((1, "a"), held_of(5))], step)
    assert cache.take([(1, "a")]) == {} and cache.points == 0
    cache.put([((1, "a"), held_of(5))], cache.generation)
    assert set(cache.take([(1, "a")])) == {(1, "a")}


def test_other_pulse_datastreams_empty_the_cache() -> None:
    cache = PointCache(max_points=100)
    cache.use_pulse(frozenset())
    cache.put([((1, "a"), held_of(5))], cache.generation)
    cache.use_pulse(frozenset())
    assert cache.take([(1, "a")])
    cache.use_pulse(frozenset({"pulse"}))
    assert cache.take([(1, "a")]) == {}


def test_covers_only_inside_what_was_read() -> None:
    held = Held.read(3, 10, rows({}))
    assert held.covers(3, 10) and held.covers(4, 9)
    assert not held.covers(2, 10) and not held.covers(3, 11)


def readings(*instants: int) -> Held:
    return Held.read(0, OPEN, rows({("wh", t): ("a", float(t), "", ()) for t in instants}))


def test_edges_are_the_nearest_readings_outside_the_window() -> None:
    got = window_rows(readings(*range(11)), 0, 4, 6, 3).column("t").to_pylist()
    assert got == [3, 4, 5, 6]  # the latest before, the first after


def test_tolerances_include_their_bounds() -> None:
    held = readings(10, 20, 30)
    assert nearest_readings(held, "wh", 20, 10, 10, True, True) == (10, 30)
    assert nearest_readings(held, "wh", 20, 9, 9, True, True) == (None, None)
    assert nearest_readings(held, "wh", 20, 10, 10, False, False) == (None, None)


def test_sparse_streams_are_read_whole_for_a_while() -> None:
    cache = PointCache(max_points=100)
    cache.too_sparse([(1, "a")], 1000.0)
    assert cache.is_sparse((1, "a"), 1000.0 + SPARSE_FOR_S - 1) and not cache.is_sparse((1, "b"), 1000.0)
    assert not cache.is_sparse((1, "a"), 1000.0 + SPARSE_FOR_S)  # tried again: it may have grown dense
    cache.too_sparse([(1, "a")], 2000.0)
    cache.clear()
    assert not cache.is_sparse((1, "a"), 2000.0)


def test_span_is_from_oldest_to_newest() -> None:
    assert readings().span() == 0 and readings(5).span() == 0
    held = Held.read(
        0, OPEN, rows({("wh", 7): ("a", 1.0, "", ()), ("w", 3): ("i", 1.0, "", ()), ("w", 4): ("i", 1.0, "", ())})
    )
    assert held.span() == 4


def test_a_read_of_several_ranges_is_one_group_per_property_and_kind() -> None:
    """read_points sorts within each range: a property's kinds come once per range."""
    store: Store = {("wh", t): ("a" if t % 2 else "i", float(t), "", ()) for t in range(10)}
    read = pa.concat_tables([rows(store, 0, 5), rows(store, 5, 10)])
    assert read.column("k").to_pylist() == ["a", "a", "i", "i", "i", "a", "a", "a", "i", "i"]  # two runs each
    assert content(Held.read(0, 10, read)) == content(Held.read(0, 10, rows(store)))
