"""A deliberately naive reference for processors/rollup.py.

Written apart from the module under test and differently on purpose:
- buckets come from labelling every 15-minute UTC instant with datetime arithmetic (local
  wall-clock label, plus the UTC offset for sub-day periods) and cutting where the label
  changes; no offset arithmetic, no binary search. Every zone offset and transition since 2000
  falls on a quarter hour, which is what makes the 15-minute scan exact;
- every bucket of every level is computed straight from raw rows, by brute force over every
  reading and every consecutive pair: nothing is combined from a finer level;
- sums are exact (fractions.Fraction), so the only rounding compared is the module's.
It shares only the spec with the module (docs/rollups.md), including the tie-breaks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from zoneinfo import ZoneInfo

from processors.rollup import RawPoint, ResetMarker, Tolerances

STEP_MS = 15 * 60 * 1000
LEVELS = ("halfhour", "hour", "day", "week", "month", "year")


def label(u_ms: int, level: str, tz: ZoneInfo) -> object:
    loc = datetime.fromtimestamp(u_ms / 1000, tz)
    if level == "halfhour":
        wall = loc.replace(minute=30 * (loc.minute // 30), second=0, microsecond=0, tzinfo=None)
        return (wall, loc.utcoffset())
    if level == "hour":
        return (loc.replace(minute=0, second=0, microsecond=0, tzinfo=None), loc.utcoffset())
    if level == "day":
        return loc.date()
    if level == "week":
        return loc.date() - timedelta(days=loc.weekday())
    if level == "month":
        return (loc.year, loc.month)
    return loc.year


def buckets_covering(lo_ms: int, hi_ms: int, level: str, tz: ZoneInfo) -> list[tuple[int, int]]:
    """Buckets [s, e) overlapping [lo_ms, hi_ms], found by walking the 15-minute grid."""
    u = lo_ms - lo_ms % STEP_MS
    here = label(u, level, tz)
    while label(u - STEP_MS, level, tz) == here:
        u -= STEP_MS
    out: list[tuple[int, int]] = []
    start = u
    while start <= hi_ms:
        cur = label(start, level, tz)
        v = start + STEP_MS
        while label(v, level, tz) == cur:
            v += STEP_MS
        out.append((start, v))
        start = v
    return out


@dataclass
class RefRow:
    # The figures of processors.rollup.RollupRow, declared again on purpose: the reference shares
    # nothing with the module but the spec, and keeps its sums exact (Fraction).
    count: int = 0
    avg: Fraction | None = None
    min: float | None = None
    max: float | None = None
    diff: Fraction | None = None
    read_diff: Fraction | None = None
    read_start: float | None = None
    read_end: float | None = None
    mode: str | None = None
    status_counts: tuple[tuple[str, int], ...] = ()
    tags: tuple[str, ...] = ()


@dataclass
class Node:
    t: int
    is_reset: bool
    before: float  # the meter value arriving at this node
    after: float  # the meter value leaving it


def latest_points(points: Iterable[RawPoint]) -> list[RawPoint]:
    """Dedupe by replaying in rank order: the last write per (created, property, kind) stays."""

    def rank(p: RawPoint) -> tuple[object, ...]:
        return (
            p.seq,
            0 if p.value is None else 1,
            0.0 if p.value is None else p.value,
            "" if p.text is None else p.text,
            tuple(sorted(p.tags)),
        )

    kept: dict[tuple[int, str, str], RawPoint] = {}
    for p in sorted(points, key=rank):
        kept[(p.created_ms, p.property, p.kind)] = p
    return list(kept.values())


def latest_resets(resets: Iterable[ResetMarker]) -> list[ResetMarker]:
    def rank(r: ResetMarker) -> tuple[object, ...]:
        return (r.seq, sorted(r.final.items()), sorted(r.start.items()))

    kept: dict[int, ResetMarker] = {}
    for r in sorted(resets, key=rank):
        kept[r.created_ms] = r
    return list(kept.values())


def reference(
    points: Iterable[RawPoint],
    resets: Iterable[ResetMarker],
    tz_name: str,
    tol: Tolerances,
    levels: Sequence[str] = LEVELS,
) -> dict[tuple[str, str, str, int], RefRow]:
    """Every row of every level, keyed (level, property, kind, bucket start ms)."""
    tz = ZoneInfo(tz_name)
    pts = latest_points(points)
    rsts = latest_resets(resets)
    all_times = [p.created_ms for p in pts] + [r.created_ms for r in rsts]
    if not all_times:
        return {}
    lo, hi = min(all_times), max(all_times)
    series = sorted(
        {(p.property, p.kind) for p in pts} | {(name, "a") for r in rsts for name in r.final if name in r.start}
    )
    out: dict[tuple[str, str, str, int], RefRow] = {}
    for level in levels:
        for s, e in buckets_covering(lo, hi, level, tz):
            for prop, kind in series:
                mine = [p for p in pts if p.property == prop and p.kind == kind]
                if kind == "a":
                    row = accumulating_bucket(mine, rsts, prop, s, e, tol)
                else:
                    row = simple_bucket(mine, kind, s, e)
                if row is not None:
                    out[(level, prop, kind, s)] = row
    return out


def simple_bucket(mine: list[RawPoint], kind: str, s: int, e: int) -> RefRow | None:
    present = (lambda p: p.text is not None) if kind == "s" else (lambda p: p.value is not None)
    inside = [p for p in mine if s <= p.created_ms < e and present(p)]
    if not inside:
        return None
    tags = tuple(sorted(set().union(*[p.tags for p in inside])))
    if kind == "s":
        tally: dict[str, int] = {}
        for p in inside:
            assert p.text is not None
            tally[p.text] = tally.get(p.text, 0) + 1
        ranked = sorted(tally.items(), key=lambda kv: (-kv[1], kv[0]))
        return RefRow(count=len(inside), mode=ranked[0][0], status_counts=tuple(sorted(tally.items())), tags=tags)
    values = [p.value for p in inside if p.value is not None]
    total = sum((Fraction(v) for v in values), Fraction(0))
    if kind == "p":
        return RefRow(count=len(values), diff=total, tags=tags)
    return RefRow(count=len(values), avg=total / len(values), min=min(values), max=max(values), tags=tags)


def chain(mine: list[RawPoint], resets: list[ResetMarker], prop: str) -> list[Node]:
    nodes = [Node(p.created_ms, False, p.value, p.value) for p in mine if p.value is not None]
    for r in resets:
        if prop in r.final and prop in r.start:
            nodes.append(Node(r.created_ms, True, r.final[prop], r.start[prop]))
    # readings come before a reset at the same instant
    return sorted(nodes, key=lambda n: (n.t, n.is_reset))


def accumulating_bucket(
    mine: list[RawPoint], resets: list[ResetMarker], prop: str, s: int, e: int, tol: Tolerances
) -> RefRow | None:
    nodes = chain(mine, resets, prop)

    def chained(x: int) -> bool:  # the nodes at instant x follow an earlier node closely enough
        earlier = [n.t for n in nodes if n.t < x]
        return bool(earlier) and x - max(earlier) <= tol.lookback_ms

    exists = any(s <= n.t < e for n in nodes)
    clock = Fraction(0)
    read = Fraction(0)
    for i in range(1, len(nodes)):
        a, b = nodes[i - 1], nodes[i]
        gap = b.t - a.t
        increase = Fraction(b.before) - Fraction(a.after)
        if gap <= tol.clock_ms:
            if gap == 0:
                if s <= a.t < e:
                    clock += increase
                    exists = True
            else:
                overlap = min(b.t, e) - max(a.t, s)
                if overlap > 0:
                    clock += increase * overlap / gap
                    exists = True
        if gap <= tol.lookback_ms:
            # a step at one instant opening a new chain counts where the instant is
            opening = gap == 0 and not chained(b.t)
            if (s <= b.t < e) if opening else (s < b.t <= e):
                read += increase
                exists = True
    if not exists:
        return None
    # start: the last node at or before s, if at s or close enough to the node after it
    start: Node | None = None
    at_or_before = [i for i, n in enumerate(nodes) if n.t <= s]
    if at_or_before:
        i = at_or_before[-1]
        if nodes[i].t == s:
            at_s = [n for n in nodes if n.t == s]
            start = at_s[-1] if chained(s) else at_s[0]
        elif i + 1 < len(nodes) and nodes[i + 1].t - nodes[i].t <= tol.lookback_ms:
            start = nodes[i]
    if start is None:
        inside = [n for n in nodes if s <= n.t < e]
        start = inside[0] if inside else None
    # end: the last node before e, or at e when chained to the node before it
    candidates = [n for n in nodes if n.t < e or (n.t == e and chained(e))]
    end = candidates[-1] if candidates and start is not None else None
    readings = [p for p in mine if s <= p.created_ms < e and p.value is not None]
    return RefRow(
        count=len(readings),
        diff=clock,
        read_diff=read,
        read_start=None if start is None else start.after,
        # a reset exactly at e closes this bucket with its final; its start opens the next
        read_end=None if end is None else (end.before if end.t == e else end.after),
        tags=tuple(sorted(set().union(*[p.tags for p in readings]))) if readings else (),
    )


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()
