"""Wire formats: the Avro datum batch envelope and the JSON dead-letter record."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import fastavro

from pipeline.resources import ResourceMissing, read_bytes, schemas_dir
from processors.columns import DatumColumns
from processors.datum import Datum, Rejection

SCHEMA_DIR: Path = schemas_dir("avro")
SCHEMA_HEADER = "schema"
# How many datums the message holds: lets a consumer size its batches in datums without
# decoding (optional; a message without it is weighed by its size, see `message_weight`).
DATUMS_HEADER = "datums"
# bytes of message value counted as one datum where the header is missing (a datum of four
# samples is about 40-100 bytes encoded)
BYTES_PER_DATUM = 64
DATUM_BATCH_V1 = "datum-batch/1"
# writer schema name in the header -> file; readers resolve every known writer to the current one
WRITER_SCHEMAS = {DATUM_BATCH_V1: "datum_batch.v1.avsc"}
CURRENT = DATUM_BATCH_V1


def batch_headers(datums: int) -> list[tuple[str, bytes]]:
    """The headers of a datum batch message of the current schema."""
    return [(SCHEMA_HEADER, CURRENT.encode()), (DATUMS_HEADER, str(int(datums)).encode())]


def message_weight(value: bytes | None, datums_header: str | None) -> int:
    """Datums a message holds, from its header, else estimated from its size; at least 1."""
    if datums_header is not None and datums_header.isdigit():
        return max(1, int(datums_header))
    return max(1, len(value or b"") // BYTES_PER_DATUM)


class DecodeError(ValueError):
    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


class SchemaUnavailable(ResourceMissing):
    """A writer or reader schema cannot be loaded: the installation is at fault, not the message.
    Deliberately not a DecodeError, so a consumer retries instead of dead-lettering."""


@cache
def _schema(name: str) -> Any:
    path = SCHEMA_DIR / WRITER_SCHEMAS[name]
    try:
        return fastavro.parse_schema(json.loads(read_bytes(path)))
    except ResourceMissing as exc:
        raise SchemaUnavailable(str(exc)) from exc
    except ValueError as exc:  # unparsable JSON or an invalid schema: a broken file we ship
        raise SchemaUnavailable(f"{path} is not a valid Avro schema: {exc}") from exc


_avrofast: ModuleType | None
try:
    from pipeline.wire import _avrofast as _compiled
except ImportError:  # not built (a plain source checkout): fastavro encodes everything
    _avrofast = None
else:
    _compiled.configure(Datum)
    _avrofast = _compiled


def encode_batch(datums: Sequence[Datum], *, compiled: bool | None = None) -> bytes:
    """The Avro datum batch envelope of datums.

    The compiled encoder (pipeline/wire/_avrofast.c) writes exactly fastavro's bytes and hands anything
    unusual (a value of an unexpected type, an out-of-range long) to fastavro. compiled: None uses
    it when it is built; False always uses fastavro.
    """
    if compiled is None:
        compiled = _avrofast is not None
    if compiled:
        if _avrofast is None:
            raise RuntimeError("the compiled datum batch encoder is not available (not built?)")
        out: bytes | None = _avrofast.encode_datum_batch(datums)
        if out is not None:
            return out
    buf = io.BytesIO()
    fastavro.schemaless_writer(
        buf,
        _schema(CURRENT),
        {
            "datums": [
                {
                    "nodeId": d.node_id,
                    "sourceId": d.source_id,
                    "created": d.created_ms,
                    "i": d.i,
                    "a": d.a,
                    "s": d.s,
                    "tags": list(d.tags),
                }
                for d in datums
            ]
        },
    )
    return buf.getvalue()


def decode_batch(payload: bytes, schema_name: str | None = CURRENT) -> list[Datum]:
    """Decode one envelope. Raises DecodeError with a rule id for anything unreadable."""
    if schema_name is None:
        raise DecodeError("envelope.no_schema_header", f"message has no '{SCHEMA_HEADER}' header")
    if schema_name not in WRITER_SCHEMAS:
        raise DecodeError("envelope.unknown_schema", f"unknown writer schema {schema_name!r}")
    if not payload:
        raise DecodeError("envelope.empty", "message body is empty")
    # Loaded outside the try below: a schema that cannot be loaded is our fault, not the message's.
    writer, reader = _schema(schema_name), _schema(CURRENT)
    buf = io.BytesIO(payload)
    try:
        record = fastavro.schemaless_reader(buf, writer, reader)
    except Exception as exc:  # fastavro raises many types for corrupt input
        raise DecodeError("envelope.corrupt", f"not a datum batch: {type(exc).__name__}: {exc}") from None
    if buf.tell() != len(payload):
        raise DecodeError("envelope.trailing_bytes", f"{len(payload) - buf.tell()} bytes left after the batch")
    if not isinstance(record, dict):
        raise DecodeError("envelope.corrupt", "not a datum batch record")
    return [
        Datum(r["nodeId"], r["sourceId"], r["created"], r["i"], r["a"], r["s"], tuple(r["tags"]))
        for r in record["datums"]
    ]


def decode_columns(payload: bytes, schema_name: str | None = CURRENT) -> DatumColumns:
    """`decode_batch` straight into columns (processors/columns.py): the compiled decoder reads
    the usual envelope; anything it leaves (or a build without it) goes through decode_batch, so
    the result and every DecodeError are the same either way."""
    if _avrofast is not None and schema_name == CURRENT and payload:
        _schema(CURRENT)  # an installation without its schemas is told so, whichever decoder reads
        got = _avrofast.decode_columns(payload)
        if got is not None:
            return DatumColumns.from_tuple(got)
    return DatumColumns.from_datums(decode_batch(payload, schema_name))


@dataclass(frozen=True)
class Origin:
    topic: str
    partition: int
    offset: int


# A letter as the `dead_letter` table keeps it: id, at (ms), stage, rules, origin (topic, partition,
# offset; "", -1, -1 for none) and the letter's JSON.
LetterRow = tuple[str, int, str, list[str], str, int, int, bytes]


def letter_row(
    letter_id: str, at_ms: int, stage: str, rules: list[str], origin: Origin | None, body: bytes
) -> LetterRow:
    o = origin
    return (letter_id, at_ms, stage, rules, o.topic if o else "", o.partition if o else -1, o.offset if o else -1, body)


# Stages whose letters only a producer writes (`pipeline ingest`): the worker keeps them when it
# reads them on the dead-letter topic. Its own letters it keeps before it produces them.
PRODUCER_STAGES = frozenset({"ingest"})
# What bytes on the dead-letter topic that are no letter are kept as.
UNREADABLE_STAGE, UNREADABLE_RULE = "deadletter", "letter.unreadable"


def kept_on_read(row: LetterRow) -> bool:
    """Whether a reader of the dead-letter topic keeps the row: a producer's letter, or no letter."""
    return row[2] in PRODUCER_STAGES or row[2] == UNREADABLE_STAGE


def read_letter_row(body: bytes, read_at: Origin, now_ms: int) -> LetterRow:
    """The row of a letter read back from the dead-letter topic (`DeadLetter.to_json`'s shape: the
    row its sender would have kept). Bytes that are no such letter are kept all the same, as
    `letter.unreadable` with where they were read: nothing on the topic is dropped."""
    try:
        doc = json.loads(body)
        lid, at, stage, reasons, o = doc["id"], doc["at"], doc["stage"], doc["reasons"], doc["origin"]
        rules = [r["rule"] for r in reasons]
        if not (isinstance(lid, str) and lid and isinstance(stage, str) and type(at) is int):
            raise TypeError("id, stage, at")
        if not all(isinstance(r, str) for r in rules):
            raise TypeError("rules")
        origin = None
        if o is not None:
            origin = Origin(o["topic"], o["partition"], o["offset"])
            if not (isinstance(origin.topic, str) and type(origin.partition) is int and type(origin.offset) is int):
                raise TypeError("origin")
        return letter_row(lid, at, stage, rules, origin, body)
    except (ValueError, KeyError, TypeError, IndexError, RecursionError):
        return letter_row(
            hashlib.sha256(body).hexdigest()[:32], now_ms, UNREADABLE_STAGE, [UNREADABLE_RULE], read_at, body
        )


# A dead letter must fit in one Kafka message: half the default settings.max_message_bytes, the
# rest left for the record's headers and batch framing. Callers with other limits pass theirs.
DEAD_LETTER_MAX_BYTES = 4 * 1024 * 1024
MIN_DEAD_LETTER_BYTES = 4096


@dataclass(frozen=True)
class DeadLetter:
    """What goes to the dead-letter topic: why, from where, and the original input."""

    reasons: Sequence[Rejection]
    origin: Origin | None
    payload: bytes | None = None  # original message bytes, when the message itself was bad
    datum: Datum | None = None  # the original datum, when one datum or sample was refused
    stage: str = "envelope"  # envelope | validation | ingest
    file: str | None = None  # for ingest: where the bad line was read
    line: int | None = None
    text: str | None = None  # for ingest: the line itself
    at_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    @property
    def letter_id(self) -> str:
        """The same for every send of the same refusal: what it refused and why — not when.

        A refused datum is identified by its content, not by the message that carried it: a
        producer told "not taken" (a broker lost before the commit) sends it again, and the
        pipeline's second refusal of it is the same refusal. A refused message or line is
        identified by where it was read."""
        h = hashlib.sha256()
        rules = [r.rule for r in self.reasons]
        if self.datum is not None:
            h.update(repr([self.stage, rules]).encode())
            h.update(json.dumps(datum_to_json(self.datum), sort_keys=True).encode("utf-8", "surrogatepass"))
            return h.hexdigest()[:32]
        o = self.origin
        parts: list[object] = [
            self.stage,
            None if o is None else (o.topic, o.partition, o.offset),
            self.file,
            self.line,
            rules,
        ]
        h.update(repr(parts).encode("utf-8", "surrogatepass"))
        if self.payload is not None:
            h.update(self.payload)
        if self.text is not None:
            h.update(self.text.encode("utf-8", "surrogatepass"))
        return h.hexdigest()[:32]

    def to_json(self, max_bytes: int = DEAD_LETTER_MAX_BYTES) -> bytes:
        """The letter as JSON, at most `max_bytes` long (at least MIN_DEAD_LETTER_BYTES).

        A letter must fit in one Kafka message, or the agent sending it fails on every retry and
        its partition is stuck. Whatever is too big is cut, in this order, keeping what identifies
        it: the original message bytes (`payload_bytes` and `payload_sha256` of the whole always
        kept, `payload_truncated` when `payload_base64` holds only the first bytes), the ingest
        line (`text_bytes`, `text_sha256`, `text_truncated`), the datum (its identity and a head of
        its JSON, with `json_bytes` and `json_sha256`) and the reasons (long texts cut, then the
        first that fit, with `reasons_total`)."""
        if max_bytes < MIN_DEAD_LETTER_BYTES:
            raise ValueError(f"a dead letter needs at least {MIN_DEAD_LETTER_BYTES} bytes, not {max_bytes}")
        doc: dict[str, Any] = {
            "id": self.letter_id,
            "stage": self.stage,
            "at": self.at_ms,
            "reasons": [r.as_dict() for r in self.reasons],
            "origin": None
            if self.origin is None
            else {"topic": self.origin.topic, "partition": self.origin.partition, "offset": self.origin.offset},
        }
        if self.file is not None:
            doc["file"] = _fit_str(self.file, 1024)
            doc["line"] = self.line
        if self.text is not None:
            doc["text"] = self.text
        datum = datum_to_json(self.datum) if self.datum is not None else None
        if datum is not None:
            doc["datum"] = datum
        if self.payload is not None:
            doc["payload_bytes"] = len(self.payload)
            doc["payload_sha256"] = hashlib.sha256(self.payload).hexdigest()
            # the base64 is appended last, so its room is known without encoding it whole first
            doc["payload_base64"] = ""
        head = _dumps(doc)
        b64_len = 0 if self.payload is None else (len(self.payload) + 2) // 3 * 4
        if len(head) + b64_len <= max_bytes:
            return _with_payload(doc, self.payload)
        # Too big: cut the parts that can be big, each to a share, then the payload to the rest.
        share = max_bytes // 4
        if len(_dumps(doc["reasons"])) > share // 2:
            doc["reasons"] = _fit_reasons(doc["reasons"], share // 2)
            doc["reasons_total"] = len(self.reasons)
        if self.text is not None and len(_dumps(self.text)) > share:
            raw = self.text.encode("utf-8", "surrogatepass")
            doc["text"] = _fit_str(self.text, share)
            doc.update(text_truncated=True, text_bytes=len(raw), text_sha256=hashlib.sha256(raw).hexdigest())
        if datum is not None:
            whole = _dumps(datum)
            if len(whole) > share:
                doc["datum"] = {
                    "nodeId": datum["nodeId"],
                    "sourceId": _fit_str(datum["sourceId"], 256),
                    "created": datum["created"],
                    "truncated": True,
                    "json_bytes": len(whole),
                    "json_sha256": hashlib.sha256(whole).hexdigest(),
                    "json_head": _fit_str(whole.decode(), share - 512),
                }
        kept: bytes | None = None
        if self.payload is not None:
            doc["payload_truncated"] = True
            room = max_bytes - len(_dumps(doc))  # base64 needs no escapes: each character one byte
            kept = self.payload[: max(0, room) // 4 * 3]
            if len(kept) == len(self.payload):
                del doc["payload_truncated"]
        out = _with_payload(doc, kept)
        if len(out) <= max_bytes:
            return out
        # a small limit and every part big at once: what identifies the letter and its input
        brief: dict[str, Any] = {
            k: doc[k]
            for k in ("stage", "at", "origin", "line", "payload_bytes", "payload_sha256", "text_bytes", "text_sha256")
            if k in doc
        }
        brief["reasons"] = [{"rule": _fit_str(r.rule, 128)} for r in self.reasons[:8]]
        brief["reasons_total"] = len(self.reasons)
        brief["truncated"] = True
        if datum is not None:
            brief["datum"] = {"nodeId": datum["nodeId"], "created": datum["created"], "truncated": True}
        return _dumps(brief)


def _dumps(doc: object) -> bytes:
    return json.dumps(doc, allow_nan=False, separators=(",", ":")).encode()


def _with_payload(doc: dict[str, Any], kept: bytes | None) -> bytes:
    if kept is not None:
        doc["payload_base64"] = base64.b64encode(kept).decode()
    return _dumps(doc)


def _fit_str(text: str, limit: int) -> str:
    """The longest prefix of text (found in a few proportional steps) whose JSON is at most
    `limit` bytes: escapes make a character 1 to 12 bytes long."""
    cut = text[:limit]
    while len(_dumps(cut)) > limit and cut:
        cut = cut[: max(0, len(cut) * limit // len(_dumps(cut)) - 1)]
    return cut


def _fit_reasons(reasons: list[dict[str, object]], limit: int) -> list[dict[str, object]]:
    """Reasons with long texts cut to 512 bytes, then the first of them that fit in `limit`."""
    out: list[dict[str, object]] = []
    used = 2
    for r in reasons:
        short = {k: _fit_str(v, 512) if isinstance(v, str) else v for k, v in r.items()}
        if isinstance(short.get("value"), int) and len(str(short["value"])) > 512:
            short["value"] = "(a huge integer)"
        size = len(_dumps(short)) + 1
        if used + size > limit:
            break
        out.append(short)
        used += size
    return out


def datum_to_json(d: Datum) -> dict[str, Any]:
    """SolarNetwork-style JSON of a datum; non-finite numbers spelled as strings."""

    def num(v: float) -> Any:
        return v if v == v and v not in (float("inf"), float("-inf")) else repr(v)

    samples: dict[str, Any] = {}
    if d.i:
        samples["i"] = {k: num(v) for k, v in d.i.items()}
    if d.a:
        samples["a"] = {k: num(v) for k, v in d.a.items()}
    if d.s:
        samples["s"] = dict(d.s)
    if d.tags:
        samples["t"] = list(d.tags)
    return {"nodeId": d.node_id, "sourceId": d.source_id, "created": d.created_ms, "samples": samples}


def group_streams(datums: Iterable[Datum]) -> dict[tuple[int, str], list[Datum]]:
    out: dict[tuple[int, str], list[Datum]] = {}
    for d in datums:
        out.setdefault((d.node_id, d.source_id), []).append(d)
    return out
