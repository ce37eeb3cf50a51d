"""Stale marks: what a stored raw batch (or a reset change) makes stale, one mark per stream.

A mark names its stream (node, source), the raw batch's `inserted` stamp (the rollup ledger's
key) if any, and per (property, kind, UTC half hour) the first and last created instant of the
changed readings in it: a `Span`. That is exactly what the rollup maintainer needs to find the
stale half hours (docs/rollups.md, "Stale marks"): a changed reading strictly between the first
and the last of its span stales only buckets the two ends stale already, or a bucket lying
between theirs.

Binary encoding, little-endian, version 1 (a JSON mark of the old format starts with `{`):

    B version  B flags (1: has inserted)  Q node  q inserted (0 if none)
    H source length, source (UTF-8)
    I names, then per name: B kind length, kind, H property length, property (UTF-8)
    I spans, then the span columns: I name index * n, q first ms * n, I last - first * n

Pure: no I/O. Any malformed mark raises `MarkError`.
"""

from __future__ import annotations

import json
import struct
import sys
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

HALFHOUR_MS = 1_800_000
VERSION = 1
_HEAD = struct.Struct("<BBQqH")
_COUNT = struct.Struct("<I")
_KIND = struct.Struct("<B")
_PROP = struct.Struct("<H")
_LITTLE = sys.byteorder == "little"

# (property, kind, first created ms, last created ms): first <= last, both in one span's range
Span = tuple[str, str, int, int]
# node, source, created, property, kind: one changed reading (or reset marker property)
Change = tuple[int, str, int, str, str]


class MarkError(ValueError):
    """A stale mark that cannot be read."""


@dataclass(frozen=True, slots=True)
class StaleMark:
    """One stream's stale spans, and the raw batch they come from (None: not from a raw batch)."""

    node_id: int
    source_id: str
    inserted_ms: int | None
    spans: tuple[Span, ...]


def compact(node_ids: Sequence[int], source_ids: Sequence[str], created: Sequence[int],
            properties: Sequence[str], kinds: Sequence[str]) -> dict[tuple[int, str], list[Span]]:
    """Per stream, one span per (property, kind, UTC half hour) of the changed readings, in
    first-seen order. The hot path: one dict lookup per row."""
    ends: dict[tuple[int, str, str, str, int], list[int]] = {}
    get = ends.get
    for node, source, c, prop, kind in zip(node_ids, source_ids, created, properties, kinds, strict=True):
        key = (node, source, prop, kind, c // HALFHOUR_MS)
        span = get(key)
        if span is None:
            ends[key] = [c, c]
        elif c < span[0]:
            span[0] = c
        elif c > span[1]:
            span[1] = c
    out: dict[tuple[int, str], list[Span]] = {}
    for (node, source, prop, kind, _cell), (lo, hi) in ends.items():
        stream = (node, source)
        spans = out.get(stream)
        if spans is None:
            out[stream] = spans = []
        spans.append((prop, kind, lo, hi))
    return out


def compact_changes(changes: Iterable[Change]) -> dict[tuple[int, str], list[Span]]:
    """`compact` of (node, source, created, property, kind) tuples."""
    cols: tuple[list[int], list[str], list[int], list[str], list[str]] = ([], [], [], [], [])
    for node, source, c, prop, kind in changes:
        cols[0].append(node)
        cols[1].append(source)
        cols[2].append(c)
        cols[3].append(prop)
        cols[4].append(kind)
    return compact(*cols)


def merge(marks: Iterable[StaleMark]) -> dict[tuple[int, str], list[Span]]:
    """The spans of many marks per stream, spans of one (property, kind, half hour) joined
    (the union of their readings has the outer ends)."""
    ends: dict[tuple[int, str, str, str, int, int], list[int]] = {}
    for mark in marks:
        for prop, kind, lo, hi in mark.spans:
            key = (mark.node_id, mark.source_id, prop, kind, lo // HALFHOUR_MS, hi // HALFHOUR_MS)
            have = ends.get(key)
            if have is None:
                ends[key] = [lo, hi]
            else:
                have[0], have[1] = min(have[0], lo), max(have[1], hi)
    out: dict[tuple[int, str], list[Span]] = {}
    for (node, source, prop, kind, _c0, _c1), (lo, hi) in ends.items():
        out.setdefault((node, source), []).append((prop, kind, lo, hi))
    return out


def _column(typecode: str, values: Iterable[int]) -> bytes:
    col = array(typecode, values)
    if not _LITTLE:
        col.byteswap()
    return col.tobytes()


def encode(node_id: int, source_id: str, spans: Sequence[Span], inserted_ms: int | None = None) -> bytes:
    """One stream's mark (version 1)."""
    names: dict[tuple[str, str], int] = {}
    index: list[int] = []
    firsts: list[int] = []
    widths: list[int] = []
    for prop, kind, lo, hi in spans:
        if hi < lo or hi - lo > 0xFFFFFFFF:
            raise MarkError(f"span {prop}/{kind} [{lo}, {hi}] cannot be encoded")
        name = (prop, kind)
        k = names.get(name)
        if k is None:
            names[name] = k = len(names)
        index.append(k)
        firsts.append(lo)
        widths.append(hi - lo)
    source = source_id.encode()
    parts = [_HEAD.pack(VERSION, 0 if inserted_ms is None else 1, node_id,
                        0 if inserted_ms is None else inserted_ms, len(source)), source,
             _COUNT.pack(len(names))]
    for prop, kind in names:
        k_bytes, p_bytes = kind.encode(), prop.encode()
        parts += [_KIND.pack(len(k_bytes)), k_bytes, _PROP.pack(len(p_bytes)), p_bytes]
    parts += [_COUNT.pack(len(spans)), _column("I", index), _column("q", firsts), _column("I", widths)]
    return b"".join(parts)


def encode_marks(by_stream: dict[tuple[int, str], list[Span]], inserted_ms: int | None = None
                 ) -> list[tuple[int, str, bytes]]:
    """(node, source, mark) per stream."""
    return [(node, source, encode(node, source, spans, inserted_ms)) for (node, source), spans in by_stream.items()]


def _read_column(typecode: str, data: bytes, at: int, n: int) -> tuple[array[int], int]:
    col = array(typecode)
    end = at + n * col.itemsize
    if end > len(data):
        raise MarkError("stale mark truncated")
    col.frombytes(data[at:end])
    if not _LITTLE:
        col.byteswap()
    return col, end


def _text(data: bytes, at: int, n: int) -> str:
    raw = data[at:at + n]
    if len(raw) != n:
        raise MarkError("stale mark truncated")
    return raw.decode()


def _decode_binary(data: bytes) -> StaleMark:
    try:
        version, flags, node, inserted, source_len = _HEAD.unpack_from(data, 0)
        if version != VERSION:
            raise MarkError(f"stale mark version {version} unknown")
        at = _HEAD.size
        source = _text(data, at, source_len)
        at += source_len
        (n_names,) = _COUNT.unpack_from(data, at)
        at += _COUNT.size
        names: list[tuple[str, str]] = []
        for _ in range(n_names):
            (k_len,) = _KIND.unpack_from(data, at)
            kind = _text(data, at + 1, k_len)
            at += 1 + k_len
            (p_len,) = _PROP.unpack_from(data, at)
            prop = _text(data, at + 2, p_len)
            at += 2 + p_len
            names.append((prop, kind))
        (n,) = _COUNT.unpack_from(data, at)
        at += _COUNT.size
        index, at = _read_column("I", data, at, n)
        firsts, at = _read_column("q", data, at, n)
        widths, at = _read_column("I", data, at, n)
    except (struct.error, UnicodeDecodeError) as exc:
        raise MarkError(f"stale mark unreadable: {exc}") from exc
    if at != len(data):
        raise MarkError("stale mark has trailing bytes")
    try:
        spans = tuple((*names[k], lo, lo + w) for k, lo, w in zip(index, firsts, widths, strict=True))
    except IndexError as exc:
        raise MarkError("stale mark names an unknown property") from exc
    return StaleMark(node, source, inserted if flags & 1 else None, spans)


def _decode_json(data: bytes) -> StaleMark:
    """A mark of the old format (one entry per row), still on the topic after an upgrade."""
    try:
        doc = json.loads(data)
        node, source = int(doc["node"]), str(doc["source"])
        items = [(str(p), str(k), int(c)) for p, k, c in doc["changes"]]
        inserted = doc.get("inserted")
        stamp = None if inserted is None else int(inserted)
    except (ValueError, KeyError, TypeError, OverflowError) as exc:
        raise MarkError(f"stale mark unreadable: {exc}") from exc
    spans = compact([node] * len(items), [source] * len(items), [c for _, _, c in items],
                    [p for p, _, _ in items], [k for _, k, _ in items]).get((node, source), [])
    return StaleMark(node, source, stamp, tuple(spans))


def decode(data: bytes) -> StaleMark:
    """A mark of either format."""
    if not data:
        raise MarkError("empty stale mark")
    if data[:1] == b"{":
        return _decode_json(data)
    return _decode_binary(data)
