"""Stale marks: what a stored raw batch (or a reset change) makes stale, one mark per stream.

A mark names its stream (node, source), the raw batch's `inserted` stamp (the rollup ledger's
key) if any, and per (property, kind, UTC half hour) the first and last created instant of the
changed readings in it: a `Span`. That is exactly what the rollup maintainer needs to find the
stale half hours (docs/rollups.md, "Stale marks"): a changed reading strictly between the first
and the last of its span stales only buckets the two ends stale already, or a bucket lying
between theirs.

Binary encoding, little-endian, version 1 (a JSON mark of the old format starts with `{`):

    B version  B flags (1: has inserted)  Q node  q inserted (0 if none)
    H source length  I names table length
    source (UTF-8)
    names table: I names, then per name: B kind length, kind, H property length, property (UTF-8)
    I spans n, then n rows of: I name index, q first created ms, I last - first (ms)

Bundle, version 2: several marks in one message, for the marks of many streams bound for one
partition of the stale topic (a fleet's stored batch names thousands of streams, and a message
each cost the worker more than the marks' own work, issue 13):

    B 2  I marks n, then n times: I length, a mark of version 1 (never a bundle)

Columns, version 3: the marks of many streams of one raw batch bound for one partition, as
arrays, so neither side spends Python on each stream (a fleet's step names tens of thousands; the
marks a stream at a time were a quarter of a fleet worker's time, issue 13):

    B 3  B flags (1: has inserted)  q inserted (0 if none)  I streams n  I spans m
    I sources table length, sources table: I count, then per source: H length, source (UTF-8)
    I names table length, names table (as version 1)
    Q node[n]  I source index[n]
    I stream index[m]  I name index[m]  q first created ms[m]  I last - first (ms)[m]

the spans in order of their stream, each stream's as they came.

Small marks are the common case (a fleet: one datum per stream per batch), so the per-mark cost
is kept low: the names table is built and parsed once per distinct table, the span rows are one
struct call.

Pure: no I/O. Any malformed mark raises `MarkError`.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from operator import add
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

HALFHOUR_MS = 1_800_000
VERSION = 1
BUNDLE = 2
COLUMNS = 3
_COLUMNS_HEAD = struct.Struct("<BBqII")
_BUNDLE_HEAD = struct.Struct("<BI")
_HEAD = struct.Struct("<BBQqHI")
_COUNT = struct.Struct("<I")
_KIND = struct.Struct("<B")
_PROP = struct.Struct("<H")
# caches: struct per span count, names table per names, names per table bytes
_SPANS: dict[int, struct.Struct] = {}
_TABLES: dict[tuple[tuple[str, str], ...], bytes] = {}
_NAMES: dict[bytes, tuple[list[str], list[str]]] = {}

# (property, kind, first created ms, last created ms): first <= last, both in one span's range
Span = tuple[str, str, int, int]
# node, source, created, property, kind: one changed reading (or reset marker property)
Change = tuple[int, str, int, str, str]


class MarkError(ValueError):
    """A stale mark that cannot be read."""


class StaleMark(NamedTuple):
    """One stream's stale spans, and the raw batch they come from (None: not from a raw batch)."""

    node_id: int
    source_id: str
    inserted_ms: int | None
    spans: tuple[Span, ...]


@dataclass
class SpanColumns:
    """Spans of many streams as columns (no object per span), each stream's spans together."""

    node_id: list[int] = field(default_factory=list)
    source_id: list[str] = field(default_factory=list)
    property: list[str] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)
    first: list[int] = field(default_factory=list)
    last: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.first)

    def add(
        self, node: int, source: str, props: list[str], kinds: list[str], firsts: Sequence[int], lasts: Iterable[int]
    ) -> None:
        self.node_id += [node] * len(props)
        self.source_id += [source] * len(props)
        self.property += props
        self.kind += kinds
        self.first += firsts
        self.last += lasts

    def extend(self, other: SpanColumns) -> None:
        self.node_id += other.node_id
        self.source_id += other.source_id
        self.property += other.property
        self.kind += other.kind
        self.first += other.first
        self.last += other.last

    def joined(self) -> SpanColumns:
        """Spans of one stream, property, kind and half hour(s) joined into one (the union of
        their readings has the outer ends); streams keep their first-seen order."""
        if not self.first:
            return SpanColumns()
        # a span's two ends lie in its half hour: grouped by Arrow as a batch's changes are
        # (`mark_columns`), not a dict lookup per span (a fleet's step joins tens of thousands)
        return mark_columns(
            pa.array(self.node_id + self.node_id, pa.uint64()),
            pa.array(self.source_id + self.source_id, pa.string()),
            np.asarray(self.first + self.last, np.int64),
            pa.array(self.property + self.property, pa.string()),
            pa.array(self.kind + self.kind, pa.string()),
        ).spans()

    def lanes(self, k: int) -> list[SpanColumns]:
        """The spans in `k` parts with no stream in two (streams dealt in turn, in first-seen
        order), each stream's spans in their order: parts that can be recomputed side by side."""
        out = [SpanColumns() for _ in range(max(1, k))]
        lane_of: dict[tuple[int, str], SpanColumns] = {}
        for row in zip(self.node_id, self.source_id, self.property, self.kind, self.first, self.last, strict=True):
            lane = lane_of.get(row[:2])
            if lane is None:
                lane = lane_of[row[:2]] = out[len(lane_of) % len(out)]
            lane.node_id.append(row[0])
            lane.source_id.append(row[1])
            lane.property.append(row[2])
            lane.kind.append(row[3])
            lane.first.append(row[4])
            lane.last.append(row[5])
        return out


# per stream: (half hour << 32 | name) -> its slot in the first/last lists; names: (property, kind)
_Cells = dict[tuple[int, str], dict[int, int]]


def _cells(
    node_ids: Sequence[int],
    source_ids: Sequence[str],
    created: Sequence[int],
    properties: Sequence[str],
    kinds: Sequence[str],
    cells_of: Sequence[int] | None = None,
) -> tuple[_Cells, list[tuple[str, str]], list[int], list[int]]:
    """The hot path: two dict lookups per row, and no object that lives on but ints (keys and
    slots), so the garbage collector stays out of a large batch. `cells_of`: the instants whose
    half hours key the cells (default: created)."""
    streams: _Cells = {}
    names: dict[tuple[str, str], int] = {}
    firsts: list[int] = []
    lasts: list[int] = []
    last_node: int | None = None
    last_source: str | None = None
    cells: dict[int, int] = {}
    for node, source, c, prop, kind, at in zip(
        node_ids, source_ids, created, properties, kinds, created if cells_of is None else cells_of, strict=True
    ):
        if node != last_node or source != last_source:  # the rows of a datum come together
            found = streams.get((node, source))
            if found is None:
                streams[(node, source)] = found = {}
            cells, last_node, last_source = found, node, source
        name = names.get((prop, kind))
        if name is None:
            names[(prop, kind)] = name = len(names)
        key = (at // HALFHOUR_MS) << 32 | name
        k = cells.get(key)
        if k is None:
            cells[key] = len(firsts)
            firsts.append(c)
            lasts.append(c)
        elif c < firsts[k]:
            firsts[k] = c
        elif c > lasts[k]:
            lasts[k] = c
    return streams, list(names), firsts, lasts


def compact(
    node_ids: Sequence[int],
    source_ids: Sequence[str],
    created: Sequence[int],
    properties: Sequence[str],
    kinds: Sequence[str],
    cells_of: Sequence[int] | None = None,
) -> SpanColumns:
    """One span per stream, property, kind and UTC half hour of the changed readings: its first
    and last created. Streams and their spans in first-seen order."""
    streams, names, firsts, lasts = _cells(node_ids, source_ids, created, properties, kinds, cells_of)
    out = SpanColumns()
    for (node, source), cells in streams.items():
        spans = [names[key & 0xFFFFFFFF] for key in cells]
        out.add(
            node,
            source,
            [p for p, _ in spans],
            [k for _, k in spans],
            [firsts[k] for k in cells.values()],
            [lasts[k] for k in cells.values()],
        )
    return out


def encode_columns(
    node_ids: Sequence[int],
    source_ids: Sequence[str],
    created: Sequence[int],
    properties: Sequence[str],
    kinds: Sequence[str],
    inserted_ms: int | None = None,
) -> list[tuple[int, str, bytes]]:
    """(node, source, mark) per stream of the changed readings: `encode` of `compact`, without
    the spans in between."""
    streams, all_names, firsts, lasts = _cells(node_ids, source_ids, created, properties, kinds)
    return [
        (
            node,
            source,
            _mark(
                node,
                source,
                ((all_names[key & 0xFFFFFFFF], firsts[k], lasts[k]) for key, k in cells.items()),
                inserted_ms,
            ),
        )
        for (node, source), cells in streams.items()
    ]


def _mark(
    node_id: int, source_id: str, cells: Iterable[tuple[tuple[str, str], int, int]], inserted_ms: int | None
) -> bytes:
    """One stream's mark of its cells ((property, kind), first, last), in order: the names table in
    order of first use."""
    names: dict[tuple[str, str], int] = {}
    flat: list[int] = []
    for name, lo, hi in cells:
        k = names.get(name)
        if k is None:
            names[name] = k = len(names)
        flat += (k, lo, hi - lo)
    return _pack(node_id, source_id, names, flat, inserted_ms)


@dataclass(frozen=True)
class MarkColumns:
    """The stale marks of many streams of one raw batch as arrays (`mark_columns`): per stream its
    node and source; per span its stream (ascending: each stream's spans together, streams in
    first-seen order), its (property, kind) as an index into `names`, and the first and last
    created of its changed readings. Written as bundles of version 3 (`bundles`), or a mark of
    version 1 per stream (`marks`)."""

    node: npt.NDArray[np.uint64]
    source: list[str]
    inserted_ms: int | None
    names: list[tuple[str, str]]
    stream: npt.NDArray[np.int64]
    name: npt.NDArray[np.int64]
    first: npt.NDArray[np.int64]
    last: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.source)

    def spans(self) -> SpanColumns:
        """The spans as `SpanColumns`, in order."""
        at = self.stream.tolist()
        nodes, names, idx = self.node.tolist(), self.names, self.name.tolist()
        return SpanColumns(
            [nodes[k] for k in at],
            [self.source[k] for k in at],
            [names[i][0] for i in idx],
            [names[i][1] for i in idx],
            self.first.tolist(),
            self.last.tolist(),
        )

    def marks(self) -> list[tuple[int, str, bytes]]:
        """(node, source, mark of version 1) per stream, in order: `encode_columns`' marks of the
        same rows, byte for byte (streams, and each stream's spans, in first-seen order)."""
        out: list[tuple[int, str, bytes]] = []
        cuts = np.searchsorted(self.stream, np.arange(len(self.source) + 1)).tolist()
        names, firsts, lasts, idx = self.names, self.first.tolist(), self.last.tolist(), self.name.tolist()
        for k, (node, source) in enumerate(zip(self.node.tolist(), self.source, strict=True)):
            spans = ((names[idx[j]], firsts[j], lasts[j]) for j in range(cuts[k], cuts[k + 1]))
            out.append((node, source, _mark(node, source, spans, self.inserted_ms)))
        return out

    def bundles(self, streams: npt.NDArray[np.int64], max_bytes: int) -> list[bytes]:
        """The given streams (ascending indices) as bundles of version 3, each under max_bytes
        where a stream's spans allow (a stream is never split)."""
        if not len(streams):
            return []
        cuts = np.searchsorted(self.stream, np.arange(len(self.source) + 1))
        sizes = 12 + 20 * (cuts[streams + 1] - cuts[streams])
        fixed = 64 + len(_names_table(tuple(self.names)))
        out: list[bytes] = []
        start, total = 0, fixed
        for k, size in enumerate(sizes.tolist()):
            size += 8 + len(self.source[int(streams[k])])
            if k > start and total + size > max_bytes:
                out.append(self._bundle(streams[start:k], cuts))
                start, total = k, fixed
            total += size
        out.append(self._bundle(streams[start:], cuts))
        return out

    def _bundle(self, streams: npt.NDArray[np.int64], cuts: npt.NDArray[np.int64]) -> bytes:
        spans = np.concatenate([np.arange(cuts[k], cuts[k + 1]) for k in streams.tolist()])
        sources: dict[str, int] = {}
        source_idx = np.fromiter(
            (sources.setdefault(self.source[k], len(sources)) for k in streams.tolist()), np.uint32, len(streams)
        )
        # the spans' stream indices within this bundle
        local = np.zeros(len(self.source), np.uint32)
        local[streams] = np.arange(len(streams), dtype=np.uint32)
        delta = self.last[spans] - self.first[spans]
        if len(delta) and (delta.min() < 0 or delta.max() > 0xFFFFFFFF):
            raise MarkError("a span of a stale mark cannot be encoded")
        table = [_COUNT.pack(len(sources))]
        for name in sources:
            raw = name.encode()
            if len(raw) > 0xFFFF:
                raise MarkError(f"source {name!r} too long for a stale mark")
            table += [_PROP.pack(len(raw)), raw]
        source_table = b"".join(table)
        names = _names_table(tuple(self.names))
        head = _COLUMNS_HEAD.pack(
            COLUMNS, 0 if self.inserted_ms is None else 1, self.inserted_ms or 0, len(streams), len(spans)
        )
        return b"".join(
            (
                head,
                _COUNT.pack(len(source_table)),
                source_table,
                _COUNT.pack(len(names)),
                names,
                self.node[streams].astype("<u8").tobytes(),
                source_idx.astype("<u4").tobytes(),
                local[self.stream[spans]].astype("<u4").tobytes(),
                self.name[spans].astype("<u4").tobytes(),
                self.first[spans].astype("<i8").tobytes(),
                delta.astype("<u4").tobytes(),
            )
        )


def mark_columns(
    node_ids: pa.Array | pa.ChunkedArray,
    source_ids: pa.Array | pa.ChunkedArray,
    created: npt.NDArray[np.int64],
    properties: pa.Array | pa.ChunkedArray,
    kinds: pa.Array | pa.ChunkedArray,
    inserted_ms: int | None = None,
) -> MarkColumns:
    """The spans of the changed readings (Arrow columns) as `MarkColumns`: the cells found by
    Arrow's hash grouping in C, the streams and their order by numpy, no Python per row or per
    stream but the sources' names."""
    n = len(created)
    rows = pa.table(
        {
            "n": node_ids,
            "s": source_ids,
            "h": created // HALFHOUR_MS,
            "p": properties,
            "k": kinds,
            "c": created,
            "i": np.arange(n, dtype=np.int64),
        }
    )
    cells = rows.group_by(["n", "s", "h", "p", "k"], use_threads=False).aggregate(
        [("c", "min"), ("c", "max"), ("i", "min")]
    )
    nodes = cells.column("n").to_numpy().astype(np.uint64)
    src = pc.dictionary_encode(cells.column("s").combine_chunks())
    src_i = src.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    p_enc = pc.dictionary_encode(cells.column("p").combine_chunks().cast(pa.string()))
    k_enc = pc.dictionary_encode(cells.column("k").combine_chunks().cast(pa.string()))
    k_count = max(len(k_enc.dictionary), 1)
    code = p_enc.indices.to_numpy(zero_copy_only=False).astype(np.int64) * k_count + k_enc.indices.to_numpy(
        zero_copy_only=False
    ).astype(np.int64)
    distinct, name_i = np.unique(code, return_inverse=True)
    name_i = name_i.reshape(-1)
    p_names, k_names = p_enc.dictionary.to_pylist(), k_enc.dictionary.to_pylist()
    names = [(str(p_names[c // k_count]), str(k_names[c % k_count])) for c in distinct.tolist()]
    seen = cells.column("i_min").to_numpy()
    # streams: distinct (node, source), in first-seen order
    # (node, source) groups by a sort of two integer columns (a unique of records compares slowly)
    by_pair = np.lexsort((src_i, nodes))
    new = np.ones(len(by_pair), np.bool_)
    new[1:] = (nodes[by_pair][1:] != nodes[by_pair][:-1]) | (src_i[by_pair][1:] != src_i[by_pair][:-1])
    sid = np.empty(len(by_pair), np.int64)
    sid[by_pair] = np.cumsum(new) - 1
    key = by_pair[new]  # a cell of each stream
    stream_first = np.full(len(key), n, dtype=np.int64)
    np.minimum.at(stream_first, sid, seen)
    rank = np.empty(len(key), np.int64)
    rank[np.argsort(stream_first, kind="stable")] = np.arange(len(key))
    order = np.lexsort((seen, rank[sid]))
    by_rank = np.argsort(rank, kind="stable")  # stream ids in first-seen order
    src_names = src.dictionary.to_pylist()
    return MarkColumns(
        nodes[key[by_rank]],
        [str(src_names[i]) for i in src_i[key[by_rank]].tolist()],
        inserted_ms,
        names,
        rank[sid[order]],
        name_i[order],
        cells.column("c_min").to_numpy()[order].astype(np.int64),
        cells.column("c_max").to_numpy()[order].astype(np.int64),
    )


def _spans_struct(n: int) -> struct.Struct:
    """The span rows of an n-span mark: I name index, q first ms, I last - first; cached per n."""
    packer = _SPANS.get(n)
    if packer is None:
        if len(_SPANS) > 4096:
            _SPANS.clear()
        _SPANS[n] = packer = struct.Struct("<" + "IqI" * n)
    return packer


def _names_table(names: tuple[tuple[str, str], ...]) -> bytes:
    """I count, then per name: B kind length, kind, H property length, property. Streams of one
    datamodel share their table, so it is built once."""
    table = _TABLES.get(names)
    if table is None:
        parts = [_COUNT.pack(len(names))]
        for prop, kind in names:
            k_bytes, p_bytes = kind.encode(), prop.encode()
            if len(k_bytes) > 0xFF or len(p_bytes) > 0xFFFF:
                raise MarkError(f"name {prop!r}/{kind!r} too long for a stale mark")
            parts += [_KIND.pack(len(k_bytes)), k_bytes, _PROP.pack(len(p_bytes)), p_bytes]
        table = b"".join(parts)
        if len(_TABLES) > 4096:
            _TABLES.clear()
        _TABLES[names] = table
    return table


def _pack(
    node_id: int, source_id: str, names: dict[tuple[str, str], int], flat: list[int], inserted_ms: int | None
) -> bytes:
    source = source_id.encode()
    table = _names_table(tuple(names))
    n = len(flat) // 3
    try:
        head = _HEAD.pack(
            VERSION,
            0 if inserted_ms is None else 1,
            node_id,
            0 if inserted_ms is None else inserted_ms,
            len(source),
            len(table),
        )
        rows = _spans_struct(n).pack(*flat)
    except struct.error as exc:
        raise MarkError(f"stale mark cannot be encoded: {exc}") from exc
    return b"".join((head, source, table, _COUNT.pack(n), rows))


def encode(node_id: int, source_id: str, spans: Sequence[Span], inserted_ms: int | None = None) -> bytes:
    """One stream's mark (version 1)."""
    names: dict[tuple[str, str], int] = {}
    flat: list[int] = []
    for prop, kind, lo, hi in spans:
        if not 0 <= hi - lo <= 0xFFFFFFFF:
            raise MarkError(f"span {prop}/{kind} [{lo}, {hi}] cannot be encoded")
        k = names.get((prop, kind))
        if k is None:
            names[(prop, kind)] = k = len(names)
        flat += (k, lo, hi - lo)
    return _pack(node_id, source_id, names, flat, inserted_ms)


def _text(data: bytes, at: int, n: int) -> str:
    raw = data[at : at + n]
    if len(raw) != n:
        raise MarkError("stale mark truncated")
    return raw.decode()


def _read_names(table: bytes) -> tuple[list[str], list[str]]:
    """(properties, kinds) of a names table, parsed once per distinct table."""
    names = _NAMES.get(table)
    if names is not None:
        return names
    (count,) = _COUNT.unpack_from(table, 0)
    at = _COUNT.size
    props: list[str] = []
    kinds: list[str] = []
    for _ in range(count):
        (k_len,) = _KIND.unpack_from(table, at)
        kinds.append(_text(table, at + 1, k_len))
        at += 1 + k_len
        (p_len,) = _PROP.unpack_from(table, at)
        props.append(_text(table, at + 2, p_len))
        at += 2 + p_len
    if at != len(table):
        raise MarkError("stale mark's names table has trailing bytes")
    if len(_NAMES) > 4096:
        _NAMES.clear()
    _NAMES[table] = names = (props, kinds)
    return names


# node, source, inserted, then the spans as columns: properties, kinds, firsts, lasts
_Parsed = tuple[int, str, int | None, list[str], list[str], Sequence[int], Iterable[int]]


def _parse_binary(data: bytes) -> _Parsed:
    try:
        version, flags, node, inserted, source_len, table_len = _HEAD.unpack_from(data, 0)
        if version != VERSION:
            raise MarkError(f"stale mark version {version} unknown")
        at = _HEAD.size
        source = _text(data, at, source_len)
        at += source_len
        table = data[at : at + table_len]
        if len(table) != table_len:
            raise MarkError("stale mark truncated")
        names_p, names_k = _read_names(table)
        at += table_len
        (n,) = _COUNT.unpack_from(data, at)
        at += _COUNT.size
        if len(data) - at != 16 * n:
            raise MarkError("stale mark truncated" if len(data) - at < 16 * n else "stale mark has trailing bytes")
        flat = _spans_struct(n).unpack_from(data, at)
    except (struct.error, UnicodeDecodeError) as exc:
        raise MarkError(f"stale mark unreadable: {exc}") from exc
    index, firsts = flat[0::3], flat[1::3]
    try:
        props = [names_p[k] for k in index]
        kinds = [names_k[k] for k in index]
    except IndexError as exc:
        raise MarkError("stale mark names an unknown property") from exc
    return node, source, inserted if flags & 1 else None, props, kinds, firsts, map(add, firsts, flat[2::3])


def _parse_json(data: bytes) -> _Parsed:
    """A mark of the old format (one entry per row), still on the topic after an upgrade."""
    try:
        doc = json.loads(data)
        node, source = int(doc["node"]), str(doc["source"])
        items = [(str(p), str(k), int(c)) for p, k, c in doc["changes"]]
        inserted = doc.get("inserted")
        stamp = None if inserted is None else int(inserted)
    except (ValueError, KeyError, TypeError, OverflowError) as exc:
        raise MarkError(f"stale mark unreadable: {exc}") from exc
    spans = compact(
        [node] * len(items),
        [source] * len(items),
        [c for _, _, c in items],
        [p for p, _, _ in items],
        [k for _, k, _ in items],
    )
    return node, source, stamp, spans.property, spans.kind, spans.first, spans.last


def _columns_of(data: bytes) -> tuple[SpanColumns, list[tuple[int, str, int]]]:
    """A bundle of version 3: its spans as columns, and its streams' raw batches."""
    try:
        _, flags, inserted, n, m = _COLUMNS_HEAD.unpack_from(data, 0)
        at = _COLUMNS_HEAD.size
        (size,) = _COUNT.unpack_from(data, at)
        table = data[at + _COUNT.size : at + _COUNT.size + size]
        if len(table) != size:
            raise MarkError("stale mark bundle truncated")
        at += _COUNT.size + size
        (count,) = _COUNT.unpack_from(table, 0)
        sources: list[str] = []
        pos = _COUNT.size
        for _ in range(count):
            (length,) = _PROP.unpack_from(table, pos)
            sources.append(_text(table, pos + 2, length))
            pos += 2 + length
        if pos != len(table):
            raise MarkError("stale mark bundle's sources table has trailing bytes")
        (size,) = _COUNT.unpack_from(data, at)
        names = data[at + _COUNT.size : at + _COUNT.size + size]
        if len(names) != size:
            raise MarkError("stale mark bundle truncated")
        props, kinds = _read_names(names)
        at += _COUNT.size + size
        if len(data) - at != 12 * n + 20 * m:
            raise MarkError(
                "stale mark bundle truncated"
                if len(data) - at < 12 * n + 20 * m
                else "stale mark bundle has trailing bytes"
            )
        node = np.frombuffer(data, "<u8", n, at)
        src = np.frombuffer(data, "<u4", n, at + 8 * n)
        at += 12 * n
        stream = np.frombuffer(data, "<u4", m, at)
        name = np.frombuffer(data, "<u4", m, at + 4 * m)
        first = np.frombuffer(data, "<i8", m, at + 8 * m).astype(np.int64)
        delta = np.frombuffer(data, "<u4", m, at + 16 * m).astype(np.int64)
    except (struct.error, UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, MarkError):
            raise
        raise MarkError(f"stale mark bundle unreadable: {exc}") from exc
    if (n and int(src.max()) >= len(sources)) or (m and (int(stream.max()) >= n or int(name.max()) >= len(props))):
        raise MarkError("stale mark bundle names an unknown stream, source or property")
    if m and bool((np.diff(stream.astype(np.int64)) < 0).any()):
        raise MarkError("stale mark bundle's spans are not in the order of their streams")
    nodes = node.tolist()
    names_of = [sources[i] for i in src.tolist()]
    at_stream = stream.tolist()
    at_name = name.tolist()
    out = SpanColumns(
        [nodes[i] for i in at_stream],
        [names_of[i] for i in at_stream],
        [props[i] for i in at_name],
        [kinds[i] for i in at_name],
        first.tolist(),
        (first + delta).tolist(),
    )
    batches = [(a, b, inserted) for a, b in zip(nodes, names_of, strict=True)] if flags & 1 else []
    return out, batches


def _parse(data: bytes) -> _Parsed:
    if not data:
        raise MarkError("empty stale mark")
    return _parse_json(data) if data[:1] == b"{" else _parse_binary(data)


def bundle(marks: Sequence[bytes]) -> bytes:
    """Marks of version 1 as one message (version 2)."""
    parts = [_BUNDLE_HEAD.pack(BUNDLE, len(marks))]
    for mark in marks:
        if mark[:1] != bytes((VERSION,)):
            raise ValueError("only marks of version 1 are bundled")
        parts += (_COUNT.pack(len(mark)), mark)
    return b"".join(parts)


def marks_in(data: bytes) -> int:
    """How many marks a message holds, from its head alone (a bundle's count; 1 otherwise, and for
    a bundle too short to say, which reading it refuses)."""
    if data[:1] == bytes((BUNDLE,)) and len(data) >= _BUNDLE_HEAD.size:
        return int(_BUNDLE_HEAD.unpack_from(data, 0)[1])
    if data[:1] == bytes((COLUMNS,)) and len(data) >= _COLUMNS_HEAD.size:
        return int(_COLUMNS_HEAD.unpack_from(data, 0)[3])  # its streams: a mark each
    return 1


def unbundle(data: bytes) -> list[bytes]:
    """The marks of a message: a bundle's, or the message itself."""
    if data[:1] != bytes((BUNDLE,)):
        return [data]
    try:
        _, n = _BUNDLE_HEAD.unpack_from(data, 0)
        at, out = _BUNDLE_HEAD.size, []
        for _ in range(n):
            (size,) = _COUNT.unpack_from(data, at)
            at += _COUNT.size
            mark = data[at : at + size]
            if len(mark) != size:
                raise MarkError("stale mark bundle truncated")
            if mark[:1] != bytes((VERSION,)):
                raise MarkError("a stale mark bundle holds something other than a mark of version 1")
            out.append(mark)
            at += size
    except struct.error as exc:
        raise MarkError(f"stale mark bundle unreadable: {exc}") from exc
    if at != len(data):
        raise MarkError("stale mark bundle has trailing bytes")
    return out


def decode(data: bytes) -> StaleMark:
    """One mark of either format."""
    node, source, inserted, props, kinds, firsts, lasts = _parse(data)
    return StaleMark(node, source, inserted, tuple(zip(props, kinds, firsts, lasts, strict=True)))


def decode_marks(values: Iterable[bytes]) -> tuple[SpanColumns, set[tuple[int, str, int]]]:
    """Marks of either format, bundled or not, to the spans of all, as columns (one span per
    stream, property, kind and half hour), and the raw batches (node, source, inserted) they
    stand for."""
    spans = SpanColumns()
    batches: set[tuple[int, str, int]] = set()
    streams: set[tuple[int, str]] = set()
    repeated = False
    for value in values:
        if value[:1] == bytes((COLUMNS,)):
            cols, mine = _columns_of(value)
            spans.extend(cols)
            batches.update(mine)
            # a bundle's streams are distinct: only another message can repeat one
            named = (
                {(node, source) for node, source, _ in mine}
                if mine
                else set(zip(cols.node_id, cols.source_id, strict=True))
            )
            repeated = repeated or not streams.isdisjoint(named)
            streams |= named
            continue
        for data in unbundle(value):
            node, source, inserted, props, kinds, firsts, lasts = _parse(data)
            spans.add(node, source, props, kinds, firsts, lasts)
            if inserted is not None:
                batches.add((node, source, inserted))
            if not repeated:
                repeated = (node, source) in streams
            streams.add((node, source))
    return (spans.joined() if repeated else spans), batches
