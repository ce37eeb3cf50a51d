"""Stale marks, old against new, in one run: encode (the datum agent, after storing a batch) plus
decode (the rollup agent) of the marks of one 20,000-datum batch of 4 samples each (80,000 raw
rows), 20 streams a datum per second each (dense), and 20,000 streams one datum each (fleet).

    old  one JSON mark per stream, one (property, kind, created) entry per stored row, read back
         into per-row columns (pipeline/worker/app.py before issue 13)
    new  one binary mark per stream, one (property, kind, first, last) span per half hour
         (processors/stale_marks.py), read back into spans per stream
    bundled  the same marks bundled per partition of the stale topic (4 partitions), as the
         worker sent them until 2026-12-03; read twice, as two batches' marks of the same
         streams are (joined)
    arrays   the columnar path's marks (`stored_marks` of the Arrow rows): per partition one bundle
         of arrays (version 3, `column_bundles`), read twice likewise

    .venv/bin/python benchmarks/bench_stale_marks.py [--repeat 7]

Prints the best of --repeat runs of each, in milliseconds, the ratio, and the bytes produced.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.wire.topics import stream_key  # noqa: E402
from pipeline.worker.batch import (  # noqa: E402
    bundle_marks,
    column_bundles,
    column_marks,
    read_marks,
    stored_marks,
)
from processors.columns import raw_table  # noqa: E402
from processors.datum import Datum  # noqa: E402
from processors.rows import RawColumns  # noqa: E402
from processors.stale_marks import MarkColumns  # noqa: E402

START_MS = 1_767_225_600_000  # 2026-01-01T00:00Z
DATUMS = 20_000
Change = tuple[int, str, int, str, str]


# -- the old format, as pipeline/worker/app.py had it ----------------------------------------------


def old_stale_marks(changes: Iterable[Change], inserted_ms: int | None = None) -> list[tuple[bytes, bytes]]:
    by_stream: dict[tuple[int, str], list[tuple[str, str, int]]] = {}
    for node, source, created, prop, kind in changes:
        by_stream.setdefault((node, source), []).append((prop, kind, created))
    marks = []
    for (node, source), items in by_stream.items():
        doc: dict[str, Any] = {"node": node, "source": source, "changes": items}
        if inserted_ms is not None:
            doc["inserted"] = inserted_ms
        marks.append((stream_key(node, source), json.dumps(doc).encode()))
    return marks


def old_read_marks(values: Sequence[bytes]) -> tuple[RawColumns, set[tuple[int, str, int]]]:
    rows = RawColumns()
    batches: set[tuple[int, str, int]] = set()
    for value in values:
        mark = json.loads(value)
        for prop, kind, created in mark["changes"]:
            rows.node_id.append(mark["node"])
            rows.source_id.append(mark["source"])
            rows.created.append(created)
            rows.property.append(prop)
            rows.kind.append(kind)
        if mark.get("inserted") is not None:
            batches.add((int(mark["node"]), str(mark["source"]), int(mark["inserted"])))
    return rows, batches


def old_round(rows: RawColumns, stamp: int) -> int:
    changes = list(zip(rows.node_id, rows.source_id, rows.created, rows.property, rows.kind, strict=True))
    marks = old_stale_marks(changes, stamp)
    old_read_marks([v for _, v in marks])
    return sum(len(v) for _, v in marks)


def new_round(rows: RawColumns, stamp: int) -> int:
    marks = column_marks(rows, stamp)
    read_marks([v for _, v in marks])
    return sum(len(v) for _, v in marks)


def partition_of(key: bytes) -> int:
    return hash(key) % 4


def bundled_round(rows: RawColumns, stamp: int) -> int:
    messages = bundle_marks([(key, value) for key, value in column_marks(rows, stamp)], partition_of)
    read_marks([v for *_, v in messages] * 2)
    return sum(len(v) for *_, v in messages)


def arrays_round(rows: RawColumns, stamp: int) -> int:
    marks = stored_marks(TABLES[id(rows)], stamp)
    assert isinstance(marks, MarkColumns)
    messages = column_bundles(marks, partition_of)
    read_marks([v for *_, v in messages] * 2)
    return sum(len(v) for *_, v in messages)


TABLES: dict[int, Any] = {}  # each batch's rows as the columnar path's Arrow table, made once


# -- the batches ---------------------------------------------------------------------------------


def batch(streams: int, spacing_ms: int) -> RawColumns:
    rows = RawColumns()
    for k in range(DATUMS):
        s = k % streams
        node, source = (1, f"/S{s}/meter") if streams <= 100 else (1 + s // 10, f"/S{s % 10}/meter")
        d = Datum(
            node,
            source,
            START_MS + (k // streams) * spacing_ms + k % 7,
            i={"watts": 100.0 + k % 50, "current": 1.5},
            a={"wattHours": float(k)},
            s={"mode": "auto"},
        )
        rows.add_datum(d)
    return rows


def best(fn: Callable[[RawColumns, int], int], rows: RawColumns, repeat: int) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        size = fn(rows, 1_767_225_600_123)
        times.append(time.perf_counter() - t0)
    return min(times) * 1000, size


Round = Callable[[RawColumns, int], int]


def compare(title: str, before: tuple[str, Round], after: tuple[str, Round], rows: RawColumns, repeat: int) -> None:
    """Print the best time and the bytes of both, and after/before of each."""
    (b_name, b_fn), (a_name, a_fn) = before, after
    b_ms, b_bytes = best(b_fn, rows, repeat)
    a_ms, a_bytes = best(a_fn, rows, repeat)
    print(
        f"{title}: {b_name} {b_ms:7.1f} ms {b_bytes:>9,} B | {a_name} {a_ms:6.1f} ms {a_bytes:>9,} B | "
        f"{a_name}/{b_name} time {a_ms / b_ms:.3f}, bytes {a_bytes / b_bytes:.3f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    for name, streams, spacing in (("dense", 20, 1000), ("fleet", 20_000, 60_000)):
        rows = batch(streams, spacing)
        TABLES[id(rows)] = raw_table(rows)
        title = f"{name:5} {DATUMS} datums x 4 samples ({len(rows)} rows), {streams} streams"
        compare(title, ("old JSON", old_round), ("new binary", new_round), rows, args.repeat)
        title = f"{name:5} encoded, bundled per partition, read twice"
        compare(title, ("marks bundled", bundled_round), ("bundles of arrays", arrays_round), rows, args.repeat)


if __name__ == "__main__":
    main()
