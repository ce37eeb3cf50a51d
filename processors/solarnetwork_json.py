"""SolarNetwork datum JSON, one object per line, to Datum.

    {"nodeId":1,"sourceId":"/S1/M1","created":"2020-06-01 12:00:00Z",
     "samples":{"i":{"watts":1},"a":{"wattHours":2},"s":{"mode":"auto"},"t":["tag"]}}

`created` may be SolarNetwork's "YYYY-MM-DD HH:MM:SS[.fff]Z", ISO 8601 with a T and an offset,
or epoch milliseconds. Times without a zone are refused rather than guessed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from processors.datum import Datum, Rejection

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class LineRejection:
    line_no: int
    reason: Rejection
    text: str


def parse_created(raw: object) -> int:
    """Epoch milliseconds from SolarNetwork's time spellings; ValueError with a reason otherwise."""
    if isinstance(raw, bool):
        raise ValueError("created must be a time, not a boolean")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float):
        if not math.isfinite(raw):
            raise ValueError("created is not finite")
        return int(raw)
    if not isinstance(raw, str) or not raw:
        raise ValueError("created must be a date string or epoch milliseconds")
    text = raw.strip().replace(" ", "T", 1)
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"created {raw!r} is not a date like 2020-06-01 12:00:00Z") from None
    if dt.tzinfo is None:
        raise ValueError(f"created {raw!r} has no time zone; add Z for UTC")
    # Integer arithmetic: float seconds would round sub-millisecond times unpredictably.
    return (dt - _EPOCH) // timedelta(milliseconds=1)


def parse_line(line: str | bytes, line_no: int) -> Datum | LineRejection | None:
    """One line → a Datum, a rejection with its reason, or None for a blank line."""
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    if not text.strip():
        return None

    def reject(rule: str, message: str) -> LineRejection:
        return LineRejection(line_no, Rejection(rule, message), text.rstrip("\n"))

    try:
        doc: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        return reject("json.syntax", f"not JSON: {exc.msg} at column {exc.colno}")
    if not isinstance(doc, dict):
        return reject("json.not_object", "a datum line must be a JSON object")
    if "type" in doc:
        return reject(
            "json.auxiliary_unsupported",
            f"auxiliary record of type {doc['type']!r}: not a datum",
        )
    node = doc.get("nodeId")
    if isinstance(node, bool) or not isinstance(node, int):
        return reject("json.node_id", "nodeId must be an integer")
    source = doc.get("sourceId")
    if not isinstance(source, str):
        return reject("json.source_id", "sourceId must be a string")
    if "created" not in doc:
        return reject("created.missing", "created is missing")
    try:
        created = parse_created(doc["created"])
    except ValueError as exc:
        return reject("created.unparseable", str(exc))
    samples = doc.get("samples", {})
    if not isinstance(samples, dict):
        return reject("json.samples", "samples must be an object")
    parts: dict[str, dict[str, Any]] = {}
    for kind in ("i", "a", "s"):
        group = samples.get(kind, {})
        if not isinstance(group, dict):
            return reject("json.samples", f"samples.{kind} must be an object")
        parts[kind] = group
    tags = samples.get("t", doc.get("tags", []))
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        return reject("json.tags", "tags (samples.t) must be a list of strings")
    # Numbers are kept as given (even NaN, which json accepts): the envelope rules judge them
    # per sample, so one bad value never hides its siblings.
    return Datum(node, source, created, parts["i"], parts["a"], parts["s"], tuple(tags))
