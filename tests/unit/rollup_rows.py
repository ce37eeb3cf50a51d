"""Random half-hour rollup rows of every kind, for the tests that hold a cascade (in the store or
in the worker) to `processors.rollup.combine`."""

from __future__ import annotations

import random

from processors.rollup import RollupKind, RollupRow, _mode

STATUSES = ("auto", "manual", "off", "Ω-mode", "")


def random_halfhour(
    rng: random.Random, node: int, source: str, prop: str, kind: RollupKind, s: int, e: int
) -> RollupRow:
    n = rng.randint(1, 30)
    tags = tuple(sorted(rng.sample(("x", "y", "zz"), rng.randint(0, 2))))
    if kind == "i":
        lo, hi = sorted(rng.uniform(-1e3, 1e4) for _ in range(2))
        return RollupRow("halfhour", node, source, prop, kind, s, e, n, rng.uniform(lo, hi), lo, hi, tags=tags)
    if kind == "p":
        return RollupRow("halfhour", node, source, prop, kind, s, e, n, diff=rng.uniform(0, 50), tags=tags)
    if kind == "s":
        # few values, small counts: ties in the merged counts are common
        counts = sorted({v: rng.randint(1, 3) for v in rng.sample(STATUSES, rng.randint(1, 3))}.items())
        return RollupRow(
            "halfhour", node, source, prop, kind, s, e, n, mode=_mode(counts), status_counts=tuple(counts), tags=tags
        )
    # accumulating: a reading at either edge or not (a half hour between readings has none)
    start = rng.uniform(0, 1e6) if rng.random() < 0.7 else None
    end = rng.uniform(0, 1e6) if rng.random() < 0.7 else None
    return RollupRow(
        "halfhour", node, source, prop, kind, s, e, n, diff=rng.uniform(0, 500), read_diff=rng.uniform(0, 500),
        read_start=start, read_end=end, tags=tags,
    )  # fmt: skip
