"""SolarNetwork datum JSON, one object per line, to Datum.

    {"nodeId":1,"sourceId":"/S1/M1","created":"2020-06-01 12:00:00Z",
     "samples":{"i":{"watts":1},"a":{"wattHours":2},"s":{"mode":"auto"},"t":["tag"]}}

`created` may be SolarNetwork's "YYYY-MM-DD HH:MM:SS[.fff]Z", ISO 8601 with a T and an offset,
or epoch milliseconds. Times without a zone are refused rather than guessed.
"""

from __future__ import annotations

import json
from typing import Any

from processors.auxiliary import AuxChange, AuxError, is_auxiliary, parse_change
from processors.datum import NODE_ID_MAX, Datum, LineRejection, Rejection, parse_created

__all__ = ["LineRejection", "parse_created", "parse_line"]


def _has_lone_surrogate(doc: object) -> bool:
    """JSON escapes can spell half a UTF-16 pair, which no UTF-8 text (an Avro string) can carry."""
    try:
        json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _rejection(line_no: int, text: str, rule: str, message: str) -> LineRejection:
    return LineRejection(line_no, Rejection(rule, message), text.rstrip("\n"))


def parse_line(line: str | bytes, line_no: int) -> Datum | AuxChange | LineRejection | None:
    """One line → a Datum, an auxiliary change (a Reset marker stored, moved or deleted: see
    processors/auxiliary.py), a rejection with its reason, or None for a blank line."""
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    if not text.strip():
        return None
    try:
        doc: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        return _rejection(line_no, text, "json.syntax", f"not JSON: {exc.msg} at column {exc.colno}")
    except (ValueError, RecursionError) as exc:  # an integer past 4300 digits; nesting too deep
        return _rejection(line_no, text, "json.syntax", f"not readable JSON: {exc}")
    return parse_document(doc, line_no, text, escapes="\\u" in text)


def parse_document(doc: Any, line_no: int, text: str = "", escapes: bool = True) -> Datum | AuxChange | LineRejection:
    """`parse_line` of a document already decoded from JSON (an element of an array, say);
    `text` is what a rejection quotes. `escapes=False` says the source text holds no \\u
    escape, so no lone surrogate can be in it (a check spared)."""

    def reject(rule: str, message: str) -> LineRejection:
        return _rejection(line_no, text, rule, message)

    if not isinstance(doc, dict):
        return reject("json.not_object", "a datum line must be a JSON object")
    if escapes and _has_lone_surrogate(doc):
        return reject("json.lone_surrogate", "a \\uD800-\\uDFFF escape without its pair is not Unicode text")
    if is_auxiliary(doc):
        try:
            return parse_change(doc)
        except AuxError as exc:
            return reject(exc.rule, str(exc))
    node = doc.get("nodeId")
    if isinstance(node, bool) or not isinstance(node, int):
        return reject("json.node_id", "nodeId must be an integer")
    if node > NODE_ID_MAX:  # no Avro long carries it (negative ones get node_id.negative)
        return reject("json.node_id", f"nodeId {str(node)[:30]} is out of range: at most {NODE_ID_MAX} (2^63-1)")
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
