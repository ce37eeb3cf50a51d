"""HTTP ingest, the pure half: a request body of SolarNetwork datum JSON to datums, or the reasons
it is refused. `pipeline/api/http_ingest.py` authenticates, publishes and answers.

A body is one JSON object, a JSON array of objects, or JSON lines (one object per line), each
object a datum or an auxiliary record (`pipeline ingest`'s format, processors/solarnetwork_json.py).
A body is taken whole or not at all: any line that `pipeline ingest` would refuse or dead-letter
(a syntax error, a broken identity, a refused sample) refuses the body, and the answer names
every such line with its rule, so a gateway knows exactly what to fix and nothing is half
published.

Pure: the caller passes the clock.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from processors.auxiliary import AuxChange
from processors.datum import Datum, LineRejection, check_envelope
from processors.solarnetwork_json import parse_document, parse_line

MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_PROBLEMS = 100  # listed in one answer; the count says how many there were


@dataclass(frozen=True, slots=True)
class Problem:
    line: int  # 1-based: the line of JSON lines, or the element of an array
    rule: str
    message: str
    property: str | None = None


@dataclass
class ParsedBody:
    datums: list[Datum] = field(default_factory=list)
    auxiliary: list[AuxChange] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def streams(self) -> list[tuple[int, str]]:
        """Every (node, source) the body would write, in order, once each."""
        seen = [(d.node_id, d.source_id) for d in self.datums] + [a.stream for a in self.auxiliary]
        return list(dict.fromkeys(seen))

    def answer(self) -> dict[str, Any]:
        """The 400 answer's detail: the problems, capped."""
        return {
            "problemCount": len(self.problems),
            "problems": [
                {
                    "line": p.line,
                    "rule": p.rule,
                    "message": p.message,
                    **({"property": p.property} if p.property else {}),
                }
                for p in self.problems[:MAX_PROBLEMS]
            ],
        }


def _items(body: bytes) -> list[tuple[int, str | list[Any]]] | Problem:
    """(line number, one object's JSON text) per line of a body; for a JSON array, (element
    number, [the element decoded]): an element is decoded once, with the whole array."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Problem(1, "json.syntax", f"the body is not UTF-8: {exc.reason} at byte {exc.start}")
    stripped = text.strip()
    if not stripped:
        return Problem(1, "body.empty", "the body holds no datum")
    if stripped.startswith("["):
        try:
            docs = json.loads(stripped)
        except (ValueError, RecursionError) as exc:
            return Problem(1, "json.syntax", f"not a readable JSON array: {exc}")
        if not isinstance(docs, list):
            return Problem(1, "json.syntax", "not a JSON array")
        return [(n, [doc]) for n, doc in enumerate(docs, start=1)]
    if stripped.startswith("{") and "\n" in stripped:
        # JSON lines, or one object spread over lines (pretty-printed): the latter reads whole
        try:
            doc = json.loads(stripped)
        except (ValueError, RecursionError):
            return list(enumerate(text.splitlines(), start=1))
        return [(1, [doc])]
    return list(enumerate(text.splitlines(), start=1))


def parse_body(body: bytes, now_ms: int) -> ParsedBody:
    """Datums and auxiliary changes of a body, with every problem `pipeline ingest` would report."""
    out = ParsedBody()
    items = _items(body)
    if isinstance(items, Problem):
        out.problems.append(items)
        return out
    escapes = b"\\u" in body  # none: no lone surrogate in any decoded element
    for line_no, item in items:
        parsed = (
            parse_line(item, line_no) if isinstance(item, str) else parse_document(item[0], line_no, escapes=escapes)
        )
        if parsed is None:
            continue
        if isinstance(parsed, LineRejection):
            out.problems.append(Problem(line_no, parsed.reason.rule, parsed.reason.message))
        elif isinstance(parsed, AuxChange):
            out.auxiliary.append(parsed)
        else:
            kept, problems = check_envelope(parsed, now_ms)
            out.problems += [Problem(line_no, r.rule, r.message, r.property) for r in problems]
            if kept is not None and not problems:
                out.datums.append(kept)
    if not out.problems and not out.datums and not out.auxiliary:
        out.problems.append(Problem(1, "body.empty", "the body holds no datum"))
    return out
