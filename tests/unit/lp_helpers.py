"""Line-protocol conveniences only the tests use (the pipeline streams files through
`processors.line_protocol.parse_lines` and never writes line protocol): a whole document or one
line at a time, and an encoder that makes round-trip inputs for the decoder."""

from __future__ import annotations

import math
import re

from processors.datum import Datum, LineRejection
from processors.line_protocol import (
    INT64_MAX,
    INT64_MIN,
    UINT64_MAX,
    FieldValue,
    LineError,
    Point,
    Unsigned,
    parse_lines,
    precision_multiplier,
)
from processors.lp_mapping import LineProtocolMapping, map_points

# Field-value spellings at the edges of the grammar, for the property tests that hold two parsers
# against each other (each module adds its own): booleans the grammar takes and one it does not,
# underscores, exponents, bare dots and signs, a hex float, inf and nan, separators inside a value.
EDGE_VALUE_SPELLINGS = (
    "t",
    "T",
    "true",
    "TRUE",
    "True",
    "f",
    "false",
    "tru",
    "1_0",
    "_1",
    "1e5",
    "1E+5",
    ".5",
    "5.",
    ".",
    "-",
    "-.5e-3",
    "0x1p3",
    "+1",
    "inf",
    "nan",
    "1,0",
    "01",
    "-0",
    "1=2",
    "",
)


def _lines(text: str | bytes) -> list[str] | list[bytes]:
    # line protocol breaks at LF only (splitlines would also break at CR, VT, FF, ...)
    if isinstance(text, bytes):
        parts = text.split(b"\n")
        return [p + b"\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
    texts = text.split("\n")
    return [p + "\n" for p in texts[:-1]] + ([texts[-1]] if texts[-1] else [])


def parse_text(
    text: str | bytes, precision: str = "ns", default_time_ns: int | None = None, *, use_fast_path: bool = True
) -> list[Point | LineError]:
    """Decode a whole document (str or bytes) at once."""
    return list(parse_lines(_lines(text), precision, default_time_ns, use_fast_path=use_fast_path))


def parse_line(
    line: str | bytes, precision: str = "ns", default_time_ns: int | None = None, line_no: int = 1
) -> Point | LineError | None:
    """Decode a single line; None for a blank line or a comment."""
    results = list(parse_lines([line], precision, default_time_ns, line_no))
    if not results:
        return None
    if len(results) > 1:
        return LineError(line_no, "more than one entry in a single line")
    return results[0]


def map_point(point: Point, mapping: LineProtocolMapping) -> tuple[Datum | None, list[LineRejection]]:
    """Map one point: (datum or None, rejections). Field-level rejections can come with a datum."""
    out = list(map_points([point], mapping))
    datums = [o for o in out if isinstance(o, Datum)]
    return (datums[0] if datums else None), [o for o in out if isinstance(o, LineRejection)]


_NON_PRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


def _escape(text: str, chars: str, what: str) -> str:
    if not text:
        raise ValueError(f"{what} is empty")
    if _NON_PRINTABLE.search(text):
        raise ValueError(f"{what} {text!r} contains a control character")
    if text.endswith("\\"):
        # a trailing backslash would escape the separator that follows it
        raise ValueError(f"{what} {text!r} ends with a backslash")
    for ch in chars:
        if ch in text:
            text = text.replace(ch, "\\" + ch)
    return text


def _encode_value(value: FieldValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Unsigned):
        if not 0 <= value <= UINT64_MAX:
            raise ValueError(f"unsigned value {int(value)} out of range")
        return f"{int(value)}u"
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError(f"integer value {value} out of range")
        return f"{value}i"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} has no line-protocol spelling")
        return repr(value)
    out = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{out}"'


def encode_point(point: Point, precision: str = "ns") -> str:
    """One line of line protocol (no line ending). Raises ValueError for unencodable points.

    The timestamp is written in the given precision (floored); time_ns None writes none.
    """
    if point.measurement.startswith("#"):
        raise ValueError("a measurement starting with '#' reads as a comment")
    if not point.fields:
        raise ValueError("a point needs at least one field")
    parts = [_escape(point.measurement, ", ", "measurement")]
    for key, value in point.tags:
        parts.append("," + _escape(key, ",= ", "tag key") + "=" + _escape(value, ",= ", "tag value"))
    parts.append(" ")
    parts.append(",".join(_escape(k, ",= ", "field key") + "=" + _encode_value(v) for k, v in point.fields))
    if point.time_ns is not None:
        parts.append(f" {point.time_ns // precision_multiplier(precision)}")
    return "".join(parts)
