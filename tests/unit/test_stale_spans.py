"""The stale half hours found from compact marks (one span per stream, property, kind and half
hour) equal those found from every changed row, on random streams: accumulating readings whose
neighbours stale other half hours, reset times (stored or deleted), DST ends, a +05:45 zone, a
node that changes zone. The store's neighbour lookup is an in-memory stand-in with the same
contract as `sinks.rollups.read_neighbours` (the SQL itself is covered by the
integration tests)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.worker.batch import read_marks, stale_marks
from pipeline.worker.rollups import BOTH, RollupMaintainer
from processors.rollup import DEFAULT_TOLERANCES, Tolerances
from processors.stale_marks import HALFHOUR_MS
from sinks.rollups import NeighbourRequest

MIN = 60_000
HOUR = 60 * MIN
EU_END = 1_729_990_800_000  # 2024-10-27T01:00Z, Europe's DST end
NY_END = 1_730_613_600_000  # 2024-11-03T06:00Z, New York's
NL_END = 1_730_608_200_000  # 2024-11-03T04:30Z, St John's (-02:30 to -03:30)
SWITCH = EU_END + 7 * HALFHOUR_MS  # node 5 moves from Amsterdam to Lord Howe here (a half-hour edge)
ZONES = {1: "UTC", 2: "America/New_York", 3: "Asia/Kathmandu", 4: "America/St_Johns"}
PROPS = ("wh", "e")


def timezone_at(node: int, ms: int) -> str:
    if node == 5:
        return "Europe/Amsterdam" if ms < SWITCH else "Australia/Lord_Howe"
    return ZONES[node]


Stored = dict[tuple[int, str, str], list[int]]  # (node, source, property) -> times


def store_lookup(readings: Stored, resets: Stored) -> Any:
    """read_neighbours over in-memory readings and reset times."""

    def read(
        _client: object, requests: Sequence[NeighbourRequest], clock: int, lookback: int
    ) -> list[tuple[int | None, int | None]]:
        out: list[tuple[int | None, int | None]] = []
        for r in requests:
            key = (r.node_id, r.source_id, r.property)
            nodes = readings.get(key, []) + resets.get(key, [])
            before = [t for t in nodes if r.at_ms - clock <= t < r.at_ms]
            after = [t for t in nodes if r.at_ms < t <= r.at_ms + lookback]
            out.append(
                (
                    max(before, default=None) if r.before else None,
                    min(after, default=None) if r.after else None,
                )
            )
        return out

    return read


INSTANT = st.builds(
    lambda at, minutes, jitter: at + minutes * MIN + jitter,
    st.sampled_from([EU_END, NY_END, NL_END, SWITCH]),
    st.integers(-9 * 60, 9 * 60),
    st.sampled_from([0, 0, 1, -1, 999, 29_999]),
)
STREAM = st.tuples(st.integers(1, 5), st.sampled_from(["/m", "/n"]))
# bursts: a few changes of one stream and property within minutes, so half hours hold several
BURST = st.tuples(
    STREAM,
    INSTANT,
    st.sampled_from(PROPS + ("w", "mode")),
    st.sampled_from("aaais"),
    st.lists(st.integers(0, 50 * MIN), min_size=1, max_size=6),
)


@settings(max_examples=400, deadline=None)
@given(
    bursts=st.lists(BURST, min_size=1, max_size=8),
    extra=st.lists(st.tuples(STREAM, st.sampled_from(PROPS), INSTANT), max_size=40),
    reset_times=st.lists(st.tuples(STREAM, st.sampled_from(PROPS), INSTANT), max_size=4),
    unstored=st.frozensets(st.integers(0, 39), max_size=8),
    parts=st.integers(1, 3),
    tight=st.booleans(),
)
def test_compact_marks_stale_the_same_half_hours_as_every_row(
    bursts: list[tuple[tuple[int, str], int, str, str, list[int]]],
    extra: list[tuple[tuple[int, str], str, int]],
    reset_times: list[tuple[tuple[int, str], str, int]],
    unstored: frozenset[int],
    parts: int,
    tight: bool,
) -> None:
    rows = [(node, source, c + d, prop, kind) for (node, source), c, prop, kind, ds in bursts for d in ds]
    # the store: changed readings (but a few: deleted resets are changes no longer stored), others
    readings: Stored = {}
    for k, (node, source, c, prop, kind) in enumerate(rows):
        if kind == "a" and k not in unstored:
            readings.setdefault((node, source, prop), []).append(c)
    for (node, source), prop, c in extra:
        readings.setdefault((node, source, prop), []).append(c)
    resets: Stored = {}
    for (node, source), prop, c in reset_times:
        resets.setdefault((node, source, prop), []).append(c)
    tol = Tolerances(clock_ms=20 * MIN, lookback_ms=3 * HOUR) if tight else DEFAULT_TOLERANCES
    maintainer = RollupMaintainer(mock.sentinel.client, timezone_at, tol)

    with mock.patch("pipeline.worker.rollups.read_neighbours", store_lookup(readings, resets)):
        # every row, grouped as the per-row maintainer did
        per_row: dict[tuple[int, str, str], list[tuple[str, str, int, int]]] = {}
        for node, source, c, prop, kind in rows:
            per_row.setdefault((node, source, timezone_at(node, c)), []).append((prop, kind, c, BOTH))
        tasks = list(per_row)
        want = dict(zip(tasks, maintainer.stale_halfhours([(*t, per_row[t]) for t in tasks]), strict=True))
        # the marks of the same changes, produced in `parts` batches, read back together
        values = [value for k in range(parts) for _, value in stale_marks(rows[k::parts], 1_700_000_000_000 + k)]
        spans, _ = read_marks(values)
        got = maintainer.stale_of_spans(spans)

    assert got == want
    assert len(spans) <= len(rows)
