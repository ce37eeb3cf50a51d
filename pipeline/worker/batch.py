"""One batch of the datum agent, without I/O but for `prepare`: messages decoded straight into
columns, checked and scored (processors/), split into what to store, what to mark stale and what
to dead-letter; the stale marks' encoding; the dead letters of units the committer isolates.
The Faust app (app.py) drives it; tests and the wheel smoke test call it directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa
from faust.types import EventT

from pipeline.wire.codec import (
    SCHEMA_HEADER,
    DeadLetter,
    DecodeError,
    Origin,
    decode_batch,
    decode_columns,
)
from pipeline.wire.topics import stream_key
from pipeline.worker.commit import Isolated, describe, stage_named
from processors.catalog_versions import VersionedCatalog
from processors.columns import RAW_SCHEMA, DatumColumns, accept_columns, concat_raw, first_accumulating, raw_table
from processors.datum import Datum, Rejection
from processors.rows import RawColumns, Scoring, accept_batch
from processors.stale_marks import (
    Change,
    MarkColumns,
    SpanColumns,
    bundle,
    decode_marks,
    encode_columns,
    mark_columns,
)

StreamKey = tuple[int, str]  # (node, source)
PartitionKey = tuple[str, int]  # (topic, partition)


@dataclass
class BatchOutcome:
    # raw rows to store, and samples of NEVER-stored datastreams (latest values): Arrow columns
    # of processors.columns.RAW_SCHEMA
    rows: pa.Table = field(default_factory=RAW_SCHEMA.empty_table)
    latest: pa.Table = field(default_factory=RAW_SCHEMA.empty_table)
    letters: list[DeadLetter] = field(default_factory=list)
    datums: int = 0
    accepted: int = 0
    newest_created_ms: int = 0
    # stored, but already past their datastream's storage period (a backfill): rolled up, raw expires
    samples_expired: int = 0
    datums_expired: int = 0
    # per stream of the batch, the topic partition its datums came from
    partitions: dict[StreamKey, PartitionKey] = field(default_factory=dict)


def streams_of(cols: DatumColumns) -> set[StreamKey]:
    """The (node, source) streams of a message's datums: one, as the producer sends them
    (pipeline/wire/producer.py), checked without a set of every datum."""
    n = len(cols)
    if not n:
        return set()
    node, source = int(cols.node_id[0]), cols.source_id[0]
    if cols.source_id.count(source) == n and bool((cols.node_id == node).all()):
        return {(node, source)}
    return set(zip(cols.node_id.tolist(), cols.source_id, strict=True))


def header(headers: Any, name: str) -> str | None:
    if not headers:
        return None
    items = headers.items() if isinstance(headers, dict) else headers
    for key, value in items:
        if key == name:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


@dataclass
class Part:
    """A unit of a datum batch: a whole message (decoded when processed), or some of the datums
    of one message (once a failing message is being narrowed down to the datum at fault)."""

    message: Any
    datums: list[Datum] | None = None

    @property
    def origin(self) -> Origin:
        msg = self.message
        return Origin(msg.topic, msg.partition, msg.offset)


@dataclass
class _Run:
    """Consecutive parts of a batch checked together: whole messages as columns, or the datums
    of one part (a failing message narrowed down), which go through the reference."""

    origins: list[Origin]
    columns: list[DatumColumns] = field(default_factory=list)
    datums: list[Datum] | None = None

    @cached_property
    def merged(self) -> DatumColumns:
        """The run's datums as one set of columns, built once."""
        return DatumColumns.from_datums(self.datums) if self.datums is not None else DatumColumns.concat(self.columns)


def process_parts(
    parts: Sequence[Part],
    now_ms: int,
    catalog: VersionedCatalog | None = None,
    scoring: Scoring | None = None,
    prepare: Callable[[dict[tuple[int, str], int]], None] | None = None,
) -> BatchOutcome:
    """Decode and check parts of a batch (pure, but for `prepare`).

    Whole messages are decoded straight into columns and checked together (processors/columns.py);
    parts already taken apart into datums go through the reference, in their place in the batch.
    `prepare` sees, before any datum is accepted, per stream the first created of a datum with an
    accumulating sample (the worker loads the rate baselines of streams it has not seen since it
    started)."""
    out = BatchOutcome()
    scoring = scoring if scoring is not None else Scoring()
    runs: list[_Run] = []
    for part in parts:
        origin = part.origin
        if part.datums is not None:
            runs.append(_Run([origin], datums=part.datums))
            out.datums += len(part.datums)
            out.partitions.update(((d.node_id, d.source_id), (origin.topic, origin.partition)) for d in part.datums)
            continue
        msg = part.message
        try:
            with stage_named("decode"):
                cols = decode_columns(msg.value, header(msg.headers, SCHEMA_HEADER))
        except DecodeError as exc:
            out.letters.append(DeadLetter([Rejection(exc.rule, str(exc))], origin, payload=bytes(msg.value or b"")))
            continue
        if not runs or runs[-1].datums is not None:
            runs.append(_Run([]))
        runs[-1].origins.append(origin)
        runs[-1].columns.append(cols)
        out.datums += len(cols)
        out.partitions.update(dict.fromkeys(streams_of(cols), (origin.topic, origin.partition)))
    if prepare is not None:
        with stage_named("rates"):
            prepare(first_accumulating(DatumColumns.concat([run.merged for run in runs]), now_ms))
    rows: list[pa.Table] = []
    latest: list[pa.Table] = []
    for run in runs:
        with stage_named("check"):
            if run.datums is None:
                cols = run.merged
                message_of = np.repeat(np.arange(len(run.columns)), [len(c) for c in run.columns])
                got, refused = accept_columns(cols, now_ms, catalog, scoring, message_of)
                rows.append(got.rows)
                latest.append(got.latest)
                counts = (got.datums_accepted, got.samples_expired, got.datums_expired)
                letters = [
                    DeadLetter(reasons, run.origins[m], datum=datum, stage=stage)
                    for m, datum, reasons, stage in refused
                ]
                newest = int(cols.created.max()) if len(cols) else 0
            else:
                result = accept_batch(run.datums, now_ms, catalog, scoring)
                rows.append(raw_table(result.rows))
                latest.append(raw_table(result.latest))
                counts = (result.datums_accepted, result.samples_expired, result.datums_expired)
                letters = [
                    DeadLetter(reasons, run.origins[0], datum=datum, stage=stage)
                    for datum, reasons, stage in result.refused
                ]
                newest = max((d.created_ms for d in run.datums), default=0)
        out.accepted += counts[0]
        out.samples_expired += counts[1]
        out.datums_expired += counts[2]
        out.letters += letters
        out.newest_created_ms = max(out.newest_created_ms, newest)
    out.rows = concat_raw([t for t in rows if t.num_rows])
    out.latest = concat_raw([t for t in latest if t.num_rows])
    return out


def process_messages(
    messages: Sequence[Any],
    now_ms: int,
    catalog: VersionedCatalog | None = None,
    scoring: Scoring | None = None,
    prepare: Callable[[dict[tuple[int, str], int]], None] | None = None,
) -> BatchOutcome:
    """Decode and check a batch of Kafka messages (anything with topic/partition/offset/value/headers)."""
    return process_parts([Part(m) for m in messages], now_ms, catalog, scoring, prepare)


def split_part(part: Part) -> list[Part] | None:
    """A failing message, taken apart into one part per datum (None: it has no parts)."""
    if part.datums is not None:
        return [Part(part.message, [d]) for d in part.datums] if len(part.datums) > 1 else None
    msg = part.message
    try:
        datums = decode_batch(msg.value, header(msg.headers, SCHEMA_HEADER))
    except DecodeError:
        return None
    return [Part(msg, [d]) for d in datums] if len(datums) > 1 else [Part(msg, datums)]


def internal_letter(isolated: Isolated[Part]) -> DeadLetter:
    """The dead letter of a datum (or message) that made a stage throw."""
    part = isolated.unit
    reason = Rejection(f"internal.{isolated.stage}", describe(isolated.error))
    if part.datums is not None and len(part.datums) == 1:
        return DeadLetter([reason], part.origin, datum=part.datums[0], stage="internal")
    return DeadLetter([reason], part.origin, payload=bytes(part.message.value or b""), stage="internal")


def event_letter(isolated: Isolated[EventT[Any]]) -> DeadLetter:
    """The dead letter of a whole event (a mark, a reset record, a metadata event) that made a stage throw."""
    msg = isolated.unit.message
    return DeadLetter(
        [Rejection(f"internal.{isolated.stage}", describe(isolated.error))],
        Origin(msg.topic, msg.partition, msg.offset),
        payload=bytes(msg.value or b""),
        stage="internal",
    )


def stale_marks(changes: Iterable[Change], inserted_ms: int | None = None) -> list[tuple[bytes, bytes]]:
    """One mark per stream, keyed by stream: per (property, kind, half hour) the first and last
    created of the changed readings or resets (processors/stale_marks.py), and the stamp of the
    raw batch that changed them (the rollup ledger's key), if any."""
    rows = list(changes)
    return [
        (stream_key(node, source), value)
        for node, source, value in encode_columns(
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
            [r[3] for r in rows],
            [r[4] for r in rows],
            inserted_ms,
        )
    ]


def table_marks(rows: pa.Table, inserted_ms: int | None = None) -> MarkColumns:
    """The stale marks of raw rows as an Arrow table (`mark_columns`: Arrow's grouping)."""
    return mark_columns(
        rows.column("node_id"),
        rows.column("source_id"),
        rows.column("created").to_numpy(),
        rows.column("property"),
        rows.column("kind"),
        inserted_ms,
    )


def column_marks(rows: pa.Table | RawColumns, inserted_ms: int | None = None) -> list[tuple[bytes, bytes]]:
    """`stale_marks` of stored rows, read straight from their columns (Arrow: `table_marks`)."""
    if isinstance(rows, pa.Table):
        encoded = table_marks(rows, inserted_ms).marks()
    else:
        encoded = encode_columns(rows.node_id, rows.source_id, rows.created, rows.property, rows.kind, inserted_ms)
    return [(stream_key(node, source), value) for node, source, value in encoded]


def stored_marks(rows: pa.Table | RawColumns, inserted_ms: int) -> MarkColumns | list[tuple[bytes, bytes]]:
    """The stale marks of a stored batch: the columnar path's as `MarkColumns` (written as
    bundles of arrays, `column_bundles`), the reference path's a mark per stream."""
    if isinstance(rows, pa.Table):
        return table_marks(rows, inserted_ms) if len(rows) else []
    return column_marks(rows, inserted_ms)


# A bundle of stale marks stays well under the broker's largest message (max_message_bytes).
BUNDLE_MAX_BYTES = 1 << 20


def bundle_marks(
    marks: Sequence[tuple[bytes, bytes]],
    partition_of: Callable[[bytes], int | None],
    max_bytes: int = BUNDLE_MAX_BYTES,
) -> list[tuple[int | None, bytes | None, bytes]]:
    """Stale marks (stream key, mark) as messages (partition, key, value): the marks bound for one
    partition of the stale topic (the one their stream's key hashes to, so each stream's marks stay
    on one partition, in order) as one bundle, or a few where they exceed `max_bytes`; a mark whose
    partition is not known (None: no topic metadata yet) goes alone, keyed by its stream, as
    before. A fleet's stored batch names thousands of streams: a message each cost the worker more
    than the marks' own work (issue 13)."""
    out: list[tuple[int | None, bytes | None, bytes]] = []
    held: dict[int, list[bytes]] = {}
    size: dict[int, int] = {}
    for key, mark in marks:
        p = partition_of(key)
        if p is None:
            out.append((None, key, mark))
            continue
        group = held.setdefault(p, [])
        if group and size[p] + len(mark) > max_bytes:
            out.append((p, None, bundle(group)))
            group = held[p] = []
        if not group:
            size[p] = 0
        group.append(mark)
        size[p] += len(mark)
    out += [(p, None, bundle(group)) for p, group in held.items()]
    return out


def column_bundles(
    marks: MarkColumns, partition_of: Callable[[bytes], int | None], max_bytes: int = BUNDLE_MAX_BYTES
) -> list[tuple[int | None, bytes | None, bytes]]:
    """`bundle_marks` of marks as arrays: the streams bound for one partition of the stale topic as
    one bundle of arrays (version 3), or a few where they exceed `max_bytes`; a stream whose
    partition is not known goes alone as a mark of version 1, keyed by its stream."""
    keys = [stream_key(node, source) for node, source in zip(marks.node.tolist(), marks.source, strict=True)]
    partitions = [partition_of(key) for key in keys]
    out: list[tuple[int | None, bytes | None, bytes]] = []
    if None in partitions:
        single = marks.marks()
        out += [(None, keys[k], single[k][2]) for k, p in enumerate(partitions) if p is None]
    known = np.asarray([-1 if p is None else p for p in partitions], np.int64)
    for p in np.unique(known[known >= 0]).tolist():
        out += [(p, None, value) for value in marks.bundles(np.flatnonzero(known == p), max_bytes)]
    return out


def row_changes(rows: RawColumns) -> Iterable[Change]:
    return zip(rows.node_id, rows.source_id, rows.created, rows.property, rows.kind, strict=True)


def read_marks(values: Sequence[bytes]) -> tuple[SpanColumns, set[tuple[int, str, int]]]:
    """Marks (binary, or JSON of the old format) back to spans, one per stream, property, kind and
    half hour, and the raw batches (node, source, inserted) they stand for."""
    return decode_marks(bytes(v) for v in values)


class Stamps:
    """Strictly increasing epoch-ms stamps: each stored raw batch gets its own."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        self._last = max(self._last + 1, int(time.time() * 1000))
        return self._last
