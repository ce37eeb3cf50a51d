"""Insert throughput: chDB in-process vs clickhouse-connect through the chDB HTTP endpoint.

    .venv/bin/python benchmarks/bench_chserver.py [--rows 200000] [--repeat 3]

(a) direct: clickhouse-connect's in-process chDB client (same row encoding, no HTTP);
(b) endpoint: clickhouse-connect over HTTP to `python -m pipeline.embedded.chserver`, for each
compression mode. Prints rows/s (best of --repeat) and the ratio b/a.
(c) round trip of a small query (`SELECT 1`) and of a small insert through the endpoint, median
of 50: every set-wise read and every batch pays it (a response held back by Nagle's algorithm
cost 40 ms each before the endpoint set TCP_NODELAY, issue 13).
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import clickhouse_connect

from pipeline.embedded import stack

DDL = """CREATE TABLE {db}.bench (
    ts DateTime64(3, 'UTC'), device LowCardinality(String), source LowCardinality(String),
    value Nullable(Float64), tags Array(String), status Enum8('ok' = 1, 'bad' = 2),
    attrs Map(String, Float64), seq UInt64
) ENGINE = MergeTree ORDER BY (device, ts)"""
COLUMNS = ["ts", "device", "source", "value", "tags", "status", "attrs", "seq"]


def make_rows(n: int) -> list[list[object]]:
    t0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    return [
        [
            t0 + dt.timedelta(milliseconds=i),
            f"dev-{i % 500}",
            f"src-{i % 7}",
            None if i % 11 == 0 else i * 0.5,
            ["a", "b"],
            "ok" if i % 3 else "bad",
            {"watts": i * 1.5},
            i,
        ]
        for i in range(n)
    ]


def best_rate(n: int, repeat: int, insert: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        insert()
        best = min(best, time.perf_counter() - started)
    return n / best


def run(client: clickhouse_connect.driver.Client, db: str, rows: list[list[object]], repeat: int) -> float:
    client.command(f"CREATE DATABASE IF NOT EXISTS {db}")
    client.command(DDL.format(db=db))
    rate = best_rate(len(rows), repeat, lambda: client.insert(f"{db}.bench", rows, column_names=COLUMNS))
    got = client.command(f"SELECT count() FROM {db}.bench")
    assert got == len(rows) * repeat, f"{db}: expected {len(rows) * repeat} rows, found {got}"
    return rate


def median_ms(repeat: int, call: Callable[[], object]) -> float:
    took = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        took.append(time.perf_counter() - started)
    return sorted(took)[len(took) // 2] * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rows = make_rows(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        direct = clickhouse_connect.get_client(dsn=f"chdb://{Path(tmp) / 'direct'}")
        a = run(direct, "direct", rows, args.repeat)
        direct.close()
        print(f"(a) direct chDB insert                  {a:>10,.0f} rows/s   ({args.rows:,} rows)")
        svc = stack.start_clickhouse(Path(tmp) / "endpoint")
        try:
            for label, compress in (("lz4 (default)", True), ("zstd", "zstd"), ("none", False)):
                client = clickhouse_connect.get_client(dsn=svc.url, compress=compress)
                db = f"endpoint_{label.split()[0]}"
                b = run(client, db, rows, args.repeat)
                client.close()
                print(f"(b) endpoint, compress={label:<14}{b:>10,.0f} rows/s   b/a = {b / a:.2f}")
            client = clickhouse_connect.get_client(dsn=svc.url)
            one = rows[:1]
            q = median_ms(50, lambda: client.query("SELECT 1"))
            i = median_ms(50, lambda: client.insert("endpoint_lz4.bench", one, column_names=COLUMNS))
            client.close()
            print(f"(c) endpoint round trip, median of 50: SELECT 1 {q:.1f} ms, one-row insert {i:.1f} ms")
        finally:
            svc.stop()


if __name__ == "__main__":
    main()
