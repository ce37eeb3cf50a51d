"""InfluxDB line protocol: a decoder that agrees with InfluxData's reference.

Pure logic, no I/O: callers hand in text (one line, many lines, or an iterable of lines read from a
file opened in binary mode) and get back `Point` and `LineError` records.

Three paths decode and must agree:

* the compiled fast path (processors/_lpfast.c, when built: see `COMPILED`) decodes the common
  shape straight from the bytes and declines every other line, which then takes the Python paths.
* `fast_parse` handles the common shape (printable ASCII, no backslash, no quote, no '+', single
  spaces) with str.split/partition. It returns None for anything it is not sure about.
* the full parser mirrors github.com/influxdata/line-protocol/v2 `lineprotocol.Decoder` (the
  implementation that generated the line-protocol corpus) section by section, including its
  escaping rules, its error recovery and its UTF-8 checks.

See docs/line-protocol.md for the syntax, precision and default-time rules.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from itertools import islice
from typing import Any

from processors.datum import Datum

__all__ = [
    "FieldValue",
    "LineError",
    "Point",
    "COMPILED",
    "PRECISIONS",
    "Unsigned",
    "compiled_available",
    "fast_parse",
    "parse_lines",
    "precision_multiplier",
]

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
UINT64_MAX = (1 << 64) - 1

# Entries longer than this while waiting for a string field's closing quote are abandoned, so that a
# stray quote cannot make the streaming parser hold a whole file in memory.
MAX_PENDING_CHARS = 1 << 20


class Unsigned(int):
    """An unsigned line-protocol integer (`12u`): an int that remembers it was written unsigned."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Unsigned({int(self)})"


# bool before int matters to readers only; Unsigned is an int subclass.
FieldValue = float | int | bool | str


@dataclass(slots=True)
class Point:
    """One decoded line-protocol entry.

    tags keep their input order; time_ns is None when the line has no timestamp and no default
    time was given. line_no is where the entry starts (not part of equality).
    """

    measurement: str
    tags: tuple[tuple[str, str], ...]
    fields: tuple[tuple[str, FieldValue], ...]
    time_ns: int | None
    line_no: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class LineError:
    """A line that could not be decoded; the rest of the input goes on."""

    line_no: int
    message: str


_POINT_SLOTS = ("measurement", "tags", "fields", "time_ns", "line_no")
_DATUM_SLOTS = ("node_id", "source_id", "created_ms", "i", "a", "s", "tags")


def _load_compiled() -> Any:
    """processors/_lpfast.c, configured to build Points and Datums; None when not built.

    The extension fills the slots of these classes directly (no __init__), so it is only used when
    they still have exactly the slots it knows and no __post_init__.
    """
    try:
        import processors._lpfast as _lpfast
    except ImportError:  # not built (a plain source checkout): the pure-Python parsers do it all
        return None
    for cls, slots in ((Point, _POINT_SLOTS), (Datum, _DATUM_SLOTS)):
        if tuple(f.name for f in dataclass_fields(cls)) != slots or hasattr(cls, "__post_init__"):
            return None
    _lpfast.configure(Point, _POINT_SLOTS, Unsigned, Datum, _DATUM_SLOTS)
    return _lpfast


_lpfast = _load_compiled()
# True when the compiled fast path is built and in use (parse_lines and lp_mapping.map_lines).
COMPILED = _lpfast is not None


PRECISIONS: dict[str, int] = {
    "ns": 1,
    "n": 1,
    "us": 1_000,
    "u": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
}


def precision_multiplier(precision: str) -> int:
    """Nanoseconds per timestamp unit; accepts ns/us/µs/ms/s (and the corpus's 1ns/1µs/1ms/1s)."""
    key = precision[1:] if precision.startswith("1") else precision
    try:
        return PRECISIONS[key]
    except KeyError:
        raise ValueError(f"unknown precision {precision!r}: use ns, us, ms or s") from None


def _default_time(default_time_ns: int | None, mult: int) -> int | None:
    # The reference truncates the default time to the precision (Go time.Truncate: rounds down).
    if default_time_ns is None:
        return None
    return default_time_ns - default_time_ns % mult


# ---------------------------------------------------------------------------------------------
# Value syntax (Go strconv rules, ASCII only: Python's float()/int() accept far more)

_D = r"[0-9]+(?:_[0-9]+)*"
_H = r"[0-9a-fA-F]+(?:_[0-9a-fA-F]+)*"
_DEC_FLOAT = re.compile(rf"[+-]?(?:{_D}(?:\.(?:{_D})?)?|\.{_D})(?:[eE][+-]?{_D})?")
# Go allows an underscore straight after the 0x prefix.
_HEX_FLOAT = re.compile(rf"([+-]?)0[xX](_?(?:{_H}(?:\.(?:{_H})?)?|\.{_H}))[pP]([+-]?{_D})")
_INT = re.compile(r"-?[0-9]+")
_UINT = re.compile(r"[0-9]+")

_BOOLS: dict[str, bool] = {
    "t": True,
    "T": True,
    "true": True,
    "True": True,
    "TRUE": True,
    "f": False,
    "F": False,
    "false": False,
    "False": False,
    "FALSE": False,
}


class _ValueError(Exception):
    pass


def _parse_float(text: str) -> float:
    if _DEC_FLOAT.fullmatch(text):
        value = float(text.replace("_", ""))
    else:
        m = _HEX_FLOAT.fullmatch(text)
        if m is None:
            raise _ValueError("invalid float value syntax")
        sign, mant, exp = m.groups()
        try:
            value = float.fromhex(f"{sign}0x{mant.replace('_', '')}p{exp.replace('_', '')}")
        except OverflowError:
            raise _ValueError("line-protocol value out of range") from None
    if not math.isfinite(value):  # Go: ErrRange when a decimal overflows
        raise _ValueError("line-protocol value out of range")
    return value


def _parse_int(text: str, pattern: re.Pattern[str], lo: int, hi: int, what: str) -> int:
    if pattern.fullmatch(text) is None:
        raise _ValueError(f"invalid {what} value syntax")
    digits = text.lstrip("-").lstrip("0")
    if len(digits) > 20:  # also keeps int() clear of CPython's digit limit
        raise _ValueError("line-protocol value out of range")
    value = int(text)
    if not lo <= value <= hi:
        raise _ValueError("line-protocol value out of range")
    return value


def _field_value(kind: str, raw: str) -> FieldValue:
    if kind == "f":
        return _parse_float(raw)
    if kind == "i":
        return _parse_int(raw, _INT, INT64_MIN, INT64_MAX, "integer")
    if kind == "u":
        return Unsigned(_parse_int(raw, _UINT, 0, UINT64_MAX, "unsigned integer"))
    if kind == "b":
        try:
            return _BOOLS[raw]
        except KeyError:
            raise _ValueError(f"invalid bool value {raw!r}") from None
    return raw  # "s": already unescaped


def _timestamp(raw: str, mult: int) -> int:
    value = _parse_int(raw, _INT, INT64_MIN, INT64_MAX, "timestamp")
    ns = value * mult
    if not INT64_MIN <= ns <= INT64_MAX:
        raise _ValueError("line-protocol value out of range")
    return ns


# ---------------------------------------------------------------------------------------------
# Fast path


def fast_parse(line: str, mult: int = 1, default_ns: int | None = None) -> Point | None:
    """Decode one line without its line ending, or return None if the full parser must decide.

    Accepts only printable ASCII without backslash, double quote or '+', with single spaces between
    sections; anything else (including every error) is left to the full parser, so a None is never
    an error by itself. default_ns must already be truncated to the precision.
    """
    if (
        not line.isascii()
        or not line.isprintable()
        or "\\" in line
        or '"' in line
        or "=+" in line  # Python's float() takes a leading '+', the reference does not
        or line[0] == "#"
    ):
        return None
    parts = line.split(" ")
    nparts = len(parts)
    if nparts == 3:
        head, fieldset, ts = parts
        if ts.isdigit():
            time_ns: int | None = int(ts) * mult if len(ts) < 19 else None
        elif ts[:1] == "-" and ts[1:].isdigit():
            time_ns = int(ts) * mult if len(ts) < 20 else None
        else:
            return None
        if time_ns is None or not INT64_MIN <= time_ns <= INT64_MAX:
            return None
    elif nparts == 2:
        head, fieldset = parts
        time_ns = default_ns
    else:
        return None
    if not head or not fieldset:
        return None
    names = head.split(",")
    measurement = names[0]
    if not measurement:
        return None
    tags: list[tuple[str, str]] = []
    if len(names) > 1:
        for tag in names[1:]:
            key, _, value = tag.partition("=")
            if not key or not value or "=" in value:
                return None
            tags.append((key, value))
        if len(tags) > 1 and len({k for k, _ in tags}) != len(tags):
            return None
    # One C-level split for keys and values; the rebuild check proves every item had exactly one
    # '=' (an item without one would shift keys into values).
    parts = fieldset.replace("=", ",").split(",")
    keys = parts[0::2]
    raws = parts[1::2]
    if len(keys) != len(raws) or "" in keys or ",".join(map(_EQ_JOIN, zip(keys, raws, strict=True))) != fieldset:
        return None
    try:
        floats = tuple(map(float, raws))
    except ValueError:
        values = _typed_values(raws)
        if values is None:
            return None
        return Point(measurement, tuple(tags), tuple(zip(keys, values, strict=True)), time_ns)
    # Python's float() takes inf/nan spellings and underscores; the reference refuses the first
    # and the full parser should judge the second. A finite sum proves every value finite.
    total = sum(floats)
    if total - total != 0.0 or "_" in "".join(raws):
        return None
    return Point(measurement, tuple(tags), tuple(zip(keys, floats, strict=True)), time_ns)


_EQ_JOIN = "=".join


def _typed_values(raws: list[str]) -> list[FieldValue] | None:
    """Field values of a fast-path line that are not all floats (ints, uints, booleans)."""
    values: list[FieldValue] = []
    append = values.append
    for raw in raws:
        try:
            num = float(raw)
        except ValueError:
            last = raw[-1:]
            body = raw[:-1]
            if last == "i":
                if len(body) < 19 and (body.isdigit() or (body[:1] == "-" and body[1:].isdigit())):
                    append(int(body))
                    continue
                return None  # syntax or range: the full parser reports it
            if last == "u":
                if body.isdigit() and len(body) < 20:
                    append(Unsigned(int(body)))
                    continue
                return None
            boolean = _BOOLS.get(raw)
            if boolean is None:
                return None
            append(boolean)
            continue
        if num - num != 0.0 or "_" in raw:
            return None
        append(num)
    return values


# ---------------------------------------------------------------------------------------------
# Full parser: a transcription of the reference decoder's sections


_MEAS_STOP = re.compile(r"[\\, \x00-\x1f\x7f]")
_KEY_STOP = re.compile(r"[\\,= \x00-\x1f\x7f]")  # tag key and field key
# v2.1.0, which generated the corpus, lets control characters other than CR and LF into tag values.
_TAG_VALUE_STOP = re.compile(r"[\\,= \r\n]")
_STR_STOP = re.compile(r'[\\"]')
_MEAS_ESC = {" ": " ", ",": ","}
_KEY_ESC = {",": ",", "=": "=", " ": " "}
# Only \\ and \" are escapes inside strings in v2.1.0: "\n" stays a backslash and an n.
_STR_ESC = {"\\": "\\", '"': '"'}
_NON_PRINTABLE = re.compile(r"[\x00-\x1f\x7f]")
_FIELD_VAL_END = re.compile(r"[, \r\n]")
_NOT_TIME = re.compile(r"[^0-9-]")
_EOL = re.compile(r"[\r\n]")
# Lone surrogates are what invalid UTF-8 becomes after decoding with surrogateescape.
_SURROGATE = re.compile("[\ud800-\udfff]")


class _Incomplete(Exception):
    """A string field value ran into the end of the buffer: more lines may close it."""


def _take_esc(buf: str, i: int, stop: re.Pattern[str], table: dict[str, str]) -> tuple[str, int]:
    """Like Decoder.takeEsc: a backslash before an escapable character is dropped; any other
    backslash stays, and a backslash is always part of the token."""
    n = len(buf)
    pieces: list[str] = []
    start = i
    while True:
        m = stop.search(buf, i)
        if m is None:
            i = n
            break
        j = m.start()
        if buf[j] != "\\":
            i = j
            break
        if j + 1 >= n:  # nothing to escape: the backslash stays
            i = n
            break
        repl = table.get(buf[j + 1])
        if repl is None:
            i = j + 1
            continue
        pieces.append(buf[start:j])
        pieces.append(repl)
        i = start = j + 2
    if pieces:
        pieces.append(buf[start:i])
        return "".join(pieces), i
    return buf[start:i], i


def _bad_utf8(token: str) -> bool:
    return not token.isascii() and _SURROGATE.search(token) is not None


def _skip_empty(buf: str, i: int) -> int:
    """Decoder.skipEmptyLines: spaces, blank lines and valid comments; stops at an entry."""
    n = len(buf)
    while True:
        line_start = i
        while i < n and buf[i] == " ":
            i += 1
        if i >= n:
            return i
        c = buf[i]
        if c == "#":
            m = _NON_PRINTABLE.search(buf, i)
            k = n if m is None else m.start()
            if k >= n:
                return n
            if buf[k] == "\n" or (buf[k] == "\r" and k + 1 >= n):
                i = k + 1
            elif buf[k] == "\r" and buf[k + 1] == "\n":
                i = k + 2
            else:
                return line_start  # bad comment: the entry parser reports it
        elif c == "\n":
            i += 1
        elif c == "\r":
            if i + 1 >= n:
                i += 1
            elif buf[i + 1] == "\n":
                i += 2
            else:
                return i  # solitary CR: the entry parser reports it
        else:
            return i


def _after_newline(buf: str, i: int) -> int:
    """Decoder.consumeLine: recovery after an error skips past the next newline."""
    k = buf.find("\n", i)
    return len(buf) if k < 0 else k + 1


def _skip_spaces(buf: str, i: int) -> int:
    n = len(buf)
    while i < n and buf[i] == " ":
        i += 1
    return i


def _take_eol(buf: str, i: int) -> int:
    """-1 unless an end of line (or of input) is at i; else the position after it."""
    n = len(buf)
    if i >= n:
        return i
    if buf[i] == "\n":
        return i + 1
    if buf[i] == "\r":
        if i + 1 >= n:
            return i + 1
        if buf[i + 1] == "\n":
            return i + 2
    return -1


def _go_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tag_comma(buf: str, j: int) -> tuple[int, str | None]:
    """Decoder.advanceTagComma: a comma after a measurement or tag value must start a tag."""
    n = len(buf)
    if j >= n or buf[j] != ",":
        return j, None
    j += 1
    if j >= n:
        return j, "expected tag key after comma; got end of input"
    if buf[j] in " \r\n":
        return j, "expected tag key after comma; got white space instead"
    return j, None


def _entry(buf: str, i: int, mult: int, default_ns: int | None) -> tuple[Point | str, int]:
    """Decode the entry starting at i. Returns (point or error message, where to go on)."""
    n = len(buf)
    # measurement
    measurement, j = _take_esc(buf, i, _MEAS_STOP, _MEAS_ESC)
    if _bad_utf8(measurement):
        return "invalid utf-8 sequence in measurement", _after_newline(buf, j)
    if not measurement:
        if j >= n:
            return "no measurement name found", j
        return (
            f"invalid character {buf[j]!r} found at start of measurement name",
            _after_newline(buf, j),
        )
    if measurement[0] == "#":
        return "invalid character found in comment line", _after_newline(buf, j)
    j, problem = _tag_comma(buf, j)
    if problem:
        return problem, _after_newline(buf, j)

    # tags
    tags: list[tuple[str, str]] = []
    while True:
        if j < n and buf[j] == " ":
            j = _skip_spaces(buf, j)
            break
        key, j = _take_esc(buf, j, _KEY_STOP, _KEY_ESC)
        if _bad_utf8(key):
            return "invalid utf-8 sequence in tag key", _after_newline(buf, j)
        if not key or j >= n or buf[j] != "=":
            if j >= n:
                return "empty tag name", j
            if key:
                msg = f"expected '=' after tag key {_go_quote(key)}, but got {buf[j]!r} instead"
                return msg, _after_newline(buf, j)
            return f"expected tag key or field but found {buf[j]!r} instead", _after_newline(buf, j)
        j += 1
        value, j = _take_esc(buf, j, _TAG_VALUE_STOP, _KEY_ESC)
        if _bad_utf8(value):
            return "invalid utf-8 sequence in tag value", _after_newline(buf, j)
        if not value:
            msg = f"expected tag value after tag key {_go_quote(key)}, but none found"
            return msg, _after_newline(buf, j)
        tags.append((key, value))
        if j >= n:
            break  # no fields follow: the field section reports it
        j, problem = _tag_comma(buf, j)
        if problem:
            return problem, _after_newline(buf, j)

    # fields
    fields: list[tuple[str, FieldValue]] = []
    has_time = False
    while True:
        key, j = _take_esc(buf, j, _KEY_STOP, _KEY_ESC)
        if _bad_utf8(key):
            return "invalid utf-8 sequence in field key", _after_newline(buf, j)
        if not key:
            if j >= n:
                return "expected field key but none found", j
            return f"invalid character {buf[j]!r} found at start of field key", _after_newline(buf, j)
        if j >= n:
            return f"want '=' after field key {_go_quote(key)}, found end of input", j
        if buf[j] != "=":
            msg = f"want '=' after field key {_go_quote(key)}, found {buf[j]!r}"
            return msg, _after_newline(buf, j)
        j += 1
        if j >= n:
            return "expected field value, found end of input", j
        c = buf[j]
        if c == '"':
            raw, j = _take_esc(buf, j + 1, _STR_STOP, _STR_ESC)
            if j >= n:
                raise _Incomplete  # the caller decides: more input, or an error at the end
            j += 1
            if _bad_utf8(raw):
                return "invalid utf-8 sequence in string field value", _after_newline(buf, j)
            kind = "s"
        elif c in "tTfF":
            m = _FIELD_VAL_END.search(buf, j)
            k = n if m is None else m.start()
            raw, j, kind = buf[j:k], k, "b"
        elif c in "-0123456789.":
            m = _FIELD_VAL_END.search(buf, j)
            k = n if m is None else m.start()
            raw, j = buf[j:k], k
            kind = raw[-1]
            if kind in "iu":
                raw = raw[:-1]
            else:
                kind = "f"
        else:
            return "field value has unrecognized type", _after_newline(buf, j)
        # what follows the value decides the section, which decides error recovery
        done = False
        ended = False  # the entry, including its end of line, is consumed
        if j >= n:
            done = ended = True
        elif buf[j] == ",":
            j += 1
        elif buf[j] not in " \r\n":
            return f"unexpected character {buf[j]!r} after field", _after_newline(buf, j)
        else:
            j = _skip_spaces(buf, j)
            done = True
            k = _take_eol(buf, j)
            if k >= 0:
                j, ended = k, True
            else:
                has_time = True
        try:
            fields.append((key, _field_value(kind, raw)))
        except _ValueError as exc:
            msg = f"cannot parse value for field key {_go_quote(key)}: {exc}"
            return msg, (j if ended else _after_newline(buf, j))
        if done:
            break

    # timestamp
    time_ns = default_ns
    if has_time:
        m = _NOT_TIME.search(buf, j)
        k = n if m is None else m.start()
        raw, j = buf[j:k], k
        if j < n and buf[j] not in " \r\n":
            m = _EOL.search(buf, j)
            k = n if m is None else m.start()
            msg = f"invalid timestamp ({buf[j - len(raw) : k]!r})"
            # with no digits the reference has already left the entry: it resumes at the EOL
            return msg, (k if not raw else _after_newline(buf, k))
        j = _skip_spaces(buf, j)
        if j < n:
            k = _take_eol(buf, j)
            if k < 0:
                m = _EOL.search(buf, j)
                k = n if m is None else m.start()
                msg = f"unexpected text after timestamp ({buf[j:k]!r})"
                return msg, (k if not raw else _after_newline(buf, k))
            j = k
        if raw:
            try:
                time_ns = _timestamp(raw, mult)
            except _ValueError as exc:
                return f"invalid timestamp: {exc}", j

    if len(tags) > 1:
        seen: set[str] = set()
        for key, _ in tags:
            if key in seen:
                return f"duplicate tag key {_go_quote(key)}", j
            seen.add(key)
    return Point(measurement, tuple(tags), tuple(fields), time_ns), j


def _parse_buffer(
    buf: str,
    line_no: int,
    mult: int,
    default_ns: int | None,
    final: bool,
) -> tuple[list[Point | LineError], int | None, int]:
    """Decode every entry in buf.

    Returns (results, offset of a trailing entry that needs more input or None, its line number).
    """
    out: list[Point | LineError] = []
    n = len(buf)
    i = 0
    counted = 0  # buf[:counted] has been counted into line_no
    while True:
        i = _skip_empty(buf, i)
        if i >= n:
            return out, None, line_no
        line_no += buf.count("\n", counted, i)
        counted = i
        try:
            result, j = _entry(buf, i, mult, default_ns)
        except _Incomplete:
            if not final:
                return out, i, line_no
            result, j = "expected closing quote for string field value, found end of input", n
        if isinstance(result, Point):
            result.line_no = line_no
            out.append(result)
        else:
            out.append(LineError(line_no, result))
        i = j


# ---------------------------------------------------------------------------------------------
# Public API


def _decode(raw: str | bytes) -> str:
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # keep going: invalid bytes become lone surrogates, refused only inside tokens
        return raw.decode("utf-8", "surrogateescape")


class _Stream:
    """The per-item state of parse_lines: line numbers and an entry whose string is still open."""

    __slots__ = ("mult", "default_ns", "line_no", "pending", "pending_line")

    def __init__(self, mult: int, default_ns: int | None, line_no: int) -> None:
        self.mult = mult
        self.default_ns = default_ns
        self.line_no = line_no
        self.pending = ""  # an entry whose string field value is still open
        self.pending_line = 0

    def feed(self, raw: str | bytes, use_fast_path: bool) -> list[Point | LineError]:
        """Decode one item (a physical line, or several) with the pure-Python parsers."""
        text = _decode(raw)
        if self.pending:
            buf = self.pending + text
            first_line = self.pending_line
        else:
            if use_fast_path:
                body = text
                if body[-1:] == "\n":
                    body = body[:-1]
                    if body[-1:] == "\r":
                        body = body[:-1]
                if body and "\n" not in body:
                    point = fast_parse(body, self.mult, self.default_ns)
                    if point is not None:
                        point.line_no = self.line_no
                        self.line_no += 1
                        return [point]
            buf = text
            first_line = self.line_no
        if not buf.endswith("\n"):
            buf += "\n"  # each item is a line: make the join with a following item explicit
        results, rest, rest_line = _parse_buffer(buf, first_line, self.mult, self.default_ns, final=False)
        self.line_no = first_line + buf.count("\n")
        if rest is None:
            self.pending = ""
        else:
            self.pending, self.pending_line = buf[rest:], rest_line
            if len(self.pending) > MAX_PENDING_CHARS:
                results.append(
                    LineError(
                        self.pending_line,
                        f"string field value still open after {MAX_PENDING_CHARS} characters",
                    )
                )
                self.pending = ""
        return results

    def finish(self) -> list[Point | LineError]:
        if not self.pending:
            return []
        results, _, _ = _parse_buffer(self.pending, self.pending_line, self.mult, self.default_ns, final=True)
        self.pending = ""
        return results


# Items handed to the compiled parser at a time: the read-ahead of parse_lines.
COMPILED_CHUNK = 512

# step(items, start, line_no, out) -> (next index, next line number): the compiled loop over
# items[start:], appending its results to out and stopping at the first item it declines.
_Step = Callable[[list[Any], int, int, list[Any]], tuple[int, int]]


# Bytes read at a time when the items come from a file object (its readlines(hint)).
READ_HINT = 1 << 18


def _chunks(lines: Iterable[str | bytes]) -> Iterator[list[Any]]:
    readlines = getattr(lines, "readlines", None)
    if readlines is not None:  # a file: read in blocks, not line by line
        while chunk := readlines(READ_HINT):
            yield chunk
        return
    it = iter(lines)
    while chunk := list(islice(it, COMPILED_CHUNK)):
        yield chunk


def _compiled_items(lines: Iterable[str | bytes], stream: _Stream, step: _Step) -> Iterator[Any]:
    """Items through the compiled step; each declined item goes to the pure-Python parser."""
    for chunk in _chunks(lines):
        i, n = 0, len(chunk)
        while i < n:
            if not stream.pending:
                out: list[Any] = []
                i, stream.line_no = step(chunk, i, stream.line_no, out)
                yield from out
                if i >= n:
                    break
            yield from stream.feed(chunk[i], False)
            i += 1
    yield from stream.finish()


def compiled_available(default_ns: int | None = None, start_line: int = 1) -> bool:
    """Whether the compiled parser is built and can take this (truncated) default time and first
    line number (64-bit integers)."""
    return (
        _lpfast is not None
        and (default_ns is None or INT64_MIN <= default_ns <= INT64_MAX)
        and -(1 << 62) < start_line < 1 << 62
    )


def parse_lines(
    lines: Iterable[str | bytes],
    precision: str = "ns",
    default_time_ns: int | None = None,
    start_line: int = 1,
    *,
    use_fast_path: bool = True,
    compiled: bool | None = None,
) -> Iterator[Point | LineError]:
    """Decode line protocol lazily, one physical line at a time, in constant memory.

    Each item is one physical line, with or without its line ending (iterate a file opened in
    binary mode: text mode would turn a lone CR into a line break). An item holding several
    lines is fine too. A string field value that spans lines is put back together. Blank lines
    and comments yield nothing; a bad entry yields a LineError and decoding goes on.

    compiled: use the compiled fast path (processors/_lpfast.c) for common lines; None (default)
    uses it when it is built and use_fast_path is on. The results are the same either way.
    """
    mult = precision_multiplier(precision)
    default_ns = _default_time(default_time_ns, mult)
    stream = _Stream(mult, default_ns, start_line)
    if compiled is None:
        compiled = use_fast_path and compiled_available(default_ns, start_line)
    elif compiled and not compiled_available(default_ns, start_line):
        raise RuntimeError("the compiled line-protocol parser is not available (not built?)")
    if not compiled:
        return _pure_items(lines, stream, use_fast_path)
    parse_points = _lpfast.parse_points

    def step(items: list[Any], start: int, line_no: int, out: list[Any]) -> tuple[int, int]:
        result: tuple[int, int] = parse_points(items, start, mult, default_ns, line_no, out)
        return result

    return _compiled_items(lines, stream, step)


def _pure_items(lines: Iterable[str | bytes], stream: _Stream, use_fast_path: bool) -> Iterator[Point | LineError]:
    for raw in lines:
        yield from stream.feed(raw, use_fast_path)
    yield from stream.finish()
