"""Rollup throughput: one year of 1-minute readings of 3 properties (i, a, s) of one stream,
recomputed into every level (halfhour from raw, then the cascade), one run.

    .venv/bin/python benchmarks/bench_rollup.py
"""

from __future__ import annotations

import random
import time

from processors.rollup import (
    MINUTE_MS,
    PERIODICITIES,
    RawPoint,
    ResetMarker,
    recompute,
    rollup_all,
)

TZ = "America/New_York"
START_MS = 1_704_085_200_000  # 2024-01-01T00:00:00-05:00


def stream(minutes: int) -> tuple[list[RawPoint], list[ResetMarker]]:
    rng = random.Random(7)
    points: list[RawPoint] = []
    meter = 0.0
    for k in range(minutes):
        t = START_MS + k * MINUTE_MS + rng.randint(0, 999)
        watts = rng.uniform(0, 5000)
        meter += watts / 60
        points.append(RawPoint(t, "watts", "i", watts))
        points.append(RawPoint(t, "wattHours", "a", meter))
        points.append(RawPoint(t, "mode", "s", text=rng.choice(("auto", "auto", "off"))))
    resets = [ResetMarker(START_MS + 200 * 24 * 60 * MINUTE_MS, {"wattHours": meter}, {"wattHours": 0.0})]
    return points, resets


def main() -> None:
    minutes = 366 * 24 * 60
    points, resets = stream(minutes)
    end = START_MS + minutes * MINUTE_MS
    t0 = time.perf_counter()
    levels = rollup_all(points, resets, START_MS, end, TZ)
    cascade = time.perf_counter() - t0
    rows = sum(len(r) for r in levels.values())
    print(f"{len(points):,} raw points (1 stream, 3 properties, 1 year of minutes), {TZ}")
    print(
        f"all levels by cascade: {cascade:.2f} s, {len(points) / cascade:,.0f} raw points/s, "
        f"{rows:,} rows ({', '.join(f'{p} {len(levels[p])}' for p in PERIODICITIES)})"
    )
    t0 = time.perf_counter()
    hour = recompute(points, resets, START_MS, end, "hour", TZ)
    direct = time.perf_counter() - t0
    print(f"hour level straight from raw: {direct:.2f} s, {len(points) / direct:,.0f} raw points/s, {len(hour):,} rows")


if __name__ == "__main__":
    main()
