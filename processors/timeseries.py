"""The OpenOrg time-series API, without I/O: parameters, series names, slices, periods, formats.

pipeline/api/server.py serves it over HTTP and reads ClickHouse; everything it decides is here so the
rules can be tested without services. The spec, the naming rule and every error rule are in
docs/api.md.

A series is one (node, source, property). Its name is `<node>~<source>~<property>`, the source
and property encoded like topic names but keeping `_` (processors/name_encoding.py): ASCII
letters, digits and `_` stay, `/` becomes `.`, every other byte of the UTF-8 text becomes `-HH`
(upper-case hex). The output only holds RFC 3986 unreserved characters and never `~` inside a
part, so names are URL-safe, need no escaping in a comma-separated list, and map back to exactly
one series.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Literal, TypeVar
from xml.etree import ElementTree as ET

from processors.name_encoding import SERIES
from processors.rollup import PERIODICITIES, Periodicity, bucket_bounds, bucket_start, zone

# ---------------------------------------------------------------------------------------------
# Declared defaults and maxima (the endpoint description publishes them)

LIMIT_DEFAULT = 100
LIMIT_MAX = 1000
OFFSET_DEFAULT = 0
HISTORY_DEFAULT = {"timeOfDay": 7, "dayOfWeek": 4}  # previous days / previous weeks compared
HISTORY_MAX = 366
CALLBACK_MAX = 128
MAX_SERIES = 1000  # names in one `series` list

Format = Literal["json", "jsonp", "xml", "csv"]
FORMATS: tuple[Format, ...] = ("json", "jsonp", "xml", "csv")
Current = Literal["day", "week", "month", "year"]
CURRENTS: tuple[Current, ...] = ("day", "week", "month", "year")
CompareBy = Literal["timeOfDay", "dayOfWeek"]
COMPARES: tuple[CompareBy, ...] = ("timeOfDay", "dayOfWeek")
# Which rollup levels a comparison makes sense for (a day has no time of day).
COMPARE_PERIODICITIES: Mapping[CompareBy, tuple[Periodicity, ...]] = {
    "timeOfDay": ("halfhour", "hour"),
    "dayOfWeek": ("halfhour", "hour", "day"),
}
SeriesType = Literal["gauge", "counter", "status"]

PARAMETERS = (
    "series",
    "startTime",
    "endTime",
    "startIndex",
    "endIndex",
    "periodicity",
    "limit",
    "offset",
    "format",
    "callback",
    "current",
    "at",
    "compare",
    "history",
)
TIME_PARAMETERS = ("startTime", "endTime")
INDEX_PARAMETERS = ("startIndex", "endIndex")

CONTENT_TYPES: Mapping[Format, str] = {
    "json": "application/json; charset=utf-8",
    "jsonp": "application/javascript; charset=utf-8",
    "xml": "application/xml; charset=utf-8",
    "csv": "text/csv; charset=utf-8",
}
# Media types a client may ask for in Accept, and what each gets.
MEDIA_TYPES: Mapping[str, Format] = {
    "application/json": "json",
    "application/xml": "xml",
    "text/xml": "xml",
    "text/csv": "csv",
    "application/javascript": "jsonp",
    "text/javascript": "jsonp",
}
# Server preference among equally acceptable formats.
_PREFERENCE: tuple[Format, ...] = ("json", "xml", "csv", "jsonp")


class ParameterError(ValueError):
    """A request the API refuses: HTTP `status`, the parameter at fault (None: the request)."""

    def __init__(self, parameter: str | None, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.message = message
        self.status = status


# ---------------------------------------------------------------------------------------------
# Series names

_NODE = re.compile(r"0|[1-9][0-9]{0,19}")
SEPARATOR = "~"


@dataclass(frozen=True, order=True)
class SeriesKey:
    node_id: int
    source_id: str
    property: str  # (shadows the builtin in this class body: no @property here)


# The series format of the shared encoding: topic names use the same one but escape `_` as well.
encode_part = SERIES.encode
decode_part = SERIES.decode


def series_name(key: SeriesKey) -> str:
    return f"{key.node_id}{SEPARATOR}{encode_part(key.source_id)}{SEPARATOR}{encode_part(key.property)}"


def parse_series_name(name: str) -> SeriesKey:
    """The series a name stands for; ValueError with the reason if it is not a series name."""
    parts = name.split(SEPARATOR)
    if len(parts) != 3:
        raise ValueError(f"{name!r} is not <node>~<source>~<property>")
    node, source, prop = parts
    if not _NODE.fullmatch(node) or int(node) >= 2**64:
        raise ValueError(f"{name!r}: the node must be a decimal number without leading zeros")
    if not source or not prop:
        raise ValueError(f"{name!r}: source and property must not be empty")
    try:
        return SeriesKey(int(node), decode_part(source), decode_part(prop))
    except ValueError as exc:
        raise ValueError(f"{name!r}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Time stamps

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The spec's YYYY-MM-DDTHH:MM:SS+ZZ:00, with Z, any offset minutes and optional milliseconds.
# A space stands for '+': an unescaped '+' in a query string arrives as a space.
_TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,3}))?(?:(Z)|([+\- ])(\d{2}):(\d{2}))")
TIME_FORMAT = "YYYY-MM-DDTHH:MM:SS+ZZ:00 (or Z; optional .mmm)"


def parse_time(text: str, parameter: str) -> int:
    """Epoch milliseconds of a spec time stamp; ParameterError naming `parameter` otherwise."""
    m = _TIME.fullmatch(text)
    if m is None:
        raise ParameterError(parameter, f"{parameter}={text!r} is not a time stamp of the form {TIME_FORMAT}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    millis = int((m.group(7) or "0").ljust(3, "0"))
    try:
        if m.group(8):
            tz = UTC
        else:
            oh, om = int(m.group(10)), int(m.group(11))
            if om > 59:
                raise ValueError("offset minutes must be below 60")
            sign = -1 if m.group(9) == "-" else 1
            tz = timezone(sign * timedelta(hours=oh, minutes=om))
        t = datetime(year, month, day, hour, minute, second, millis * 1000, tzinfo=tz)
        return (t - _EPOCH) // timedelta(milliseconds=1)
    except (ValueError, OverflowError) as exc:
        raise ParameterError(parameter, f"{parameter}={text!r}: {exc}") from None


def format_time(ms: int) -> str:
    """UTC ISO 8601 with milliseconds: 2024-10-31T12:00:00.000Z (parse_time reads it back)."""
    t = _EPOCH + timedelta(milliseconds=ms)
    return (
        f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
        f".{t.microsecond // 1000:03d}Z"
    )


# ---------------------------------------------------------------------------------------------
# The query

_S = TypeVar("_S", bound=str)
_INT = re.compile(r"[+-]?[0-9]{1,30}")
_CALLBACK = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*(?:\.[A-Za-z_$][A-Za-z0-9_$]*)*")


@dataclass(frozen=True)
class Query:
    """A parsed request. `series` None means every series ('*'); `describe` means no parameters
    beyond format/callback were given: answer with the endpoint description."""

    describe: bool = False
    series: tuple[SeriesKey, ...] | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    start_index: int | None = None
    end_index: int | None = None
    periodicity: Periodicity | None = None  # None: raw readings
    limit: int = LIMIT_DEFAULT
    offset: int = OFFSET_DEFAULT
    format: Format | None = None  # None: content negotiation
    callback: str | None = None
    current: Current | None = None
    at_ms: int | None = None  # "now" for current/compare; None: the request time
    compare: CompareBy | None = None
    history: int = 0


def _one(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = params.get(name)
    if values is None:
        return None
    if len(values) != 1:
        raise ParameterError(name, f"{name} is given {len(values)} times; give it once")
    if values[0] == "":
        raise ParameterError(name, f"{name} is empty")
    return values[0]


def _int(raw: str, name: str) -> int:
    if not _INT.fullmatch(raw):
        raise ParameterError(name, f"{name}={raw!r} is not an integer")
    return int(raw)


def _capped(raw: str | None, name: str, default: int, lo: int, hi: int | None) -> int:
    """Out-of-range values are capped to the declared minimum/maximum, as the spec asks."""
    if raw is None:
        return default
    v = max(lo, _int(raw, name))
    return v if hi is None else min(hi, v)


def valid_callback(text: str) -> bool:
    """A JavaScript name or dotted path: nothing a JSONP response could be abused with."""
    return len(text) <= CALLBACK_MAX and _CALLBACK.fullmatch(text) is not None


def _pick(value: str, options: Sequence[_S]) -> _S:
    """The typed member of `options` equal to an already checked `value`."""
    return options[list(options).index(value)]  # type: ignore[arg-type]


def parse_series_list(raw: str) -> tuple[SeriesKey, ...] | None:
    if raw == "*":
        return None
    names = raw.split(",")
    if len(names) > MAX_SERIES:
        raise ParameterError("series", f"series lists {len(names)} names; at most {MAX_SERIES}")
    keys: list[SeriesKey] = []
    for name in names:
        if name == "":
            raise ParameterError("series", "series has an empty name (a stray comma?)")
        try:
            key = parse_series_name(name)
        except ValueError as exc:
            raise ParameterError("series", f"series: {exc}") from None
        if key not in keys:  # a name listed twice is answered once
            keys.append(key)
    return tuple(keys)


def parse_query(params: Mapping[str, Sequence[str]]) -> Query:
    """Check every parameter; the first problem found is raised as a ParameterError."""
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise ParameterError(unknown[0], f"unknown parameter {unknown[0]!r}; known: {', '.join(PARAMETERS)}")
    raw = {name: _one(params, name) for name in PARAMETERS}
    fmt = raw["format"]
    if fmt is not None and fmt not in FORMATS:
        raise ParameterError("format", f"format={fmt!r}; one of {', '.join(FORMATS)}")
    callback = raw["callback"]
    if callback is not None:
        if not valid_callback(callback):
            raise ParameterError(
                "callback",
                "callback must be a JavaScript name such as cb or"
                f" app.onData (letters, digits, _ and $, at most {CALLBACK_MAX} characters)",
            )
        if fmt in ("xml", "csv"):
            raise ParameterError("callback", f"callback applies to JSONP only, not format={fmt}")
    elif fmt == "jsonp":
        raise ParameterError("callback", "format=jsonp needs a callback parameter")
    fmt_typed = None if fmt is None else _pick(fmt, FORMATS)
    given = {name for name, value in raw.items() if value is not None}
    if not given - {"format", "callback"}:
        return Query(describe=True, format=fmt_typed, callback=callback)
    if raw["series"] is None:
        raise ParameterError(
            "series",
            "series is required: a comma-separated list of names or '*' (query without parameters for the list)",
        )
    series = parse_series_list(raw["series"])

    times = [p for p in TIME_PARAMETERS if p in given]
    indexes = [p for p in INDEX_PARAMETERS if p in given]
    if times and indexes:
        raise ParameterError(
            indexes[0], f"{indexes[0]} cannot be combined with {times[0]}: select by time or by index, not both"
        )
    for extension, clashes in (
        ("current", (*TIME_PARAMETERS, *INDEX_PARAMETERS)),
        ("compare", (*TIME_PARAMETERS, *INDEX_PARAMETERS, "current", "limit", "offset")),
    ):
        if extension in given:
            clash = [p for p in clashes if p in given]
            if clash:
                raise ParameterError(clash[0], f"{clash[0]} cannot be combined with {extension}")
    for dependent in ("at", "history"):
        owners = ("current", "compare") if dependent == "at" else ("compare",)
        if dependent in given and not given & set(owners):
            raise ParameterError(dependent, f"{dependent} applies only with {' or '.join(owners)}")

    start_ms = None if raw["startTime"] is None else parse_time(raw["startTime"], "startTime")
    end_ms = None if raw["endTime"] is None else parse_time(raw["endTime"], "endTime")
    if start_ms is not None and end_ms is not None and end_ms < start_ms:
        raise ParameterError("endTime", "endTime is before startTime")
    start_index = None if raw["startIndex"] is None else _int(raw["startIndex"], "startIndex")
    end_index = None if raw["endIndex"] is None else _int(raw["endIndex"], "endIndex")

    periodicity: Periodicity | None = None
    per = raw["periodicity"]
    if per is not None and per != "raw":
        if per not in PERIODICITIES:
            raise ParameterError("periodicity", f"periodicity={per!r}; one of raw, {', '.join(PERIODICITIES)}")
        periodicity = _pick(per, PERIODICITIES)

    current: Current | None = None
    if raw["current"] is not None:
        if raw["current"] not in CURRENTS:
            raise ParameterError("current", f"current={raw['current']!r}; one of {', '.join(CURRENTS)}")
        current = _pick(raw["current"], CURRENTS)
    compare: CompareBy | None = None
    history = 0
    if raw["compare"] is not None:
        if raw["compare"] not in COMPARES:
            raise ParameterError("compare", f"compare={raw['compare']!r}; one of {', '.join(COMPARES)}")
        compare = _pick(raw["compare"], COMPARES)
        if periodicity is None:
            periodicity = "halfhour"
        if periodicity not in COMPARE_PERIODICITIES[compare]:
            raise ParameterError(
                "periodicity",
                f"compare={compare} works with periodicity "
                f"{' or '.join(COMPARE_PERIODICITIES[compare])}, not {periodicity}",
            )
        history = _capped(raw["history"], "history", HISTORY_DEFAULT[compare], 1, HISTORY_MAX)
    at_ms = None if raw["at"] is None else parse_time(raw["at"], "at")

    return Query(
        series=series,
        start_ms=start_ms,
        end_ms=end_ms,
        start_index=start_index,
        end_index=end_index,
        periodicity=periodicity,
        limit=_capped(raw["limit"], "limit", LIMIT_DEFAULT, 0, LIMIT_MAX),
        offset=_capped(raw["offset"], "offset", OFFSET_DEFAULT, 0, None),
        format=fmt_typed,
        callback=callback,
        current=current,
        at_ms=at_ms,
        compare=compare,
        history=history,
    )


# ---------------------------------------------------------------------------------------------
# Content negotiation


def negotiate(accept: str | None, query: Query) -> Format:
    """format= wins; then a callback means JSONP; then the Accept header (q-values, the most
    specific range decides); no Accept means JSON. ParameterError 406 if nothing fits."""
    if query.format is not None:
        return "jsonp" if query.format == "json" and query.callback else query.format
    if query.callback is not None:
        return "jsonp"  # a script tag sends Accept: */*
    if accept is None or not accept.strip():
        return "json"
    ranges: list[tuple[str, str, float]] = []
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        media = fields[0].lower()
        if "/" not in media:
            continue
        q = 1.0
        for f in fields[1:]:
            name, _, value = f.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:
                    q = 0.0
        kind, _, sub = media.partition("/")
        ranges.append((kind, sub, q))
    best: tuple[float, int, Format] | None = None
    for media, fmt in MEDIA_TYPES.items():
        if fmt == "jsonp":
            continue  # JSONP needs a callback, handled above
        kind, _, sub = media.partition("/")
        # most specific matching range: exact (2), type/* (1), */* (0)
        match = [
            (2 if (k, s) == (kind, sub) else 1 if (k == kind and s == "*") else 0, q)
            for k, s, q in ranges
            if (k, s) in ((kind, sub), (kind, "*"), ("*", "*"))
        ]
        if not match:
            continue
        q = max(match)[1]
        if q <= 0:
            continue
        cand = (q, -_PREFERENCE.index(fmt), fmt)
        if best is None or cand[:2] > best[:2]:
            best = cand
    if best is None:
        raise ParameterError(
            None,
            f"none of the media types in Accept: {accept!r} can be served; "
            "use application/json, application/xml or text/csv (or format=)",
            status=406,
        )
    return best[2]


# ---------------------------------------------------------------------------------------------
# Slices, pages and periods


@dataclass(frozen=True)
class Window:
    """Rows [offset, offset + limit) of a series' ordered selection; `total` the selection's size
    before pagination."""

    offset: int
    limit: int
    total: int


def page(count: int, query: Query) -> Window:
    """Where a page lies, given `count` points in the series' time selection: startIndex/endIndex
    as Python's slice on those points, then offset/limit within the slice."""
    first, stop, _ = slice(query.start_index, query.end_index).indices(count)
    size = max(0, stop - first)
    skip = min(query.offset, size)
    return Window(first + skip, min(query.limit, size - skip), size)


ROWS_MAX = 2**62  # beyond any series' length: SQL offsets are capped here


def page_without_count(query: Query) -> tuple[int, int] | None:
    """(offset, limit) of the page when the slice needs no count, i.e. no index is negative:
    then the page can be read in the same query as the count. Agrees with `page`."""
    s, e = query.start_index, query.end_index
    if (s is not None and s < 0) or (e is not None and e < 0):
        return None
    skip = min(ROWS_MAX, (s or 0) + query.offset)
    if e is None:
        return skip, query.limit
    return skip, max(0, min(query.limit, e - skip))


def current_bounds(current: Current, at_ms: int, tz: str) -> tuple[int, int]:
    """[start, end) of the node-local day, ISO week, month or year holding at_ms."""
    return bucket_bounds(at_ms, current, tz)


def compare_buckets(
    at_ms: int, periodicity: Periodicity, by: CompareBy, history: int, tz: str
) -> tuple[int, tuple[int, ...]]:
    """The bucket compared ("now": the latest complete bucket before at_ms) and the starts of
    the buckets it is compared with: the same local wall-clock start on each of the `history`
    previous days (timeOfDay) or on the same weekday of the previous weeks (dayOfWeek). A wall
    time that does not exist that day (DST) takes the bucket holding that instant."""
    z = zone(tz)
    now_start = bucket_start(bucket_start(at_ms, periodicity, z) - 1, periodicity, z)
    wall = (_EPOCH + timedelta(milliseconds=now_start)).astimezone(z).replace(tzinfo=None)
    step = timedelta(days=1 if by == "timeOfDay" else 7)
    starts: list[int] = []
    for k in range(1, history + 1):
        local = (wall - k * step).replace(tzinfo=z)  # fold=0: the earlier of a repeated wall time
        ms = (local - _EPOCH) // timedelta(milliseconds=1)
        s = bucket_start(ms, periodicity, z)
        if s not in starts and s < now_start:
            starts.append(s)
    return now_start, tuple(starts)


# ---------------------------------------------------------------------------------------------
# Points and results

Value = float | str | None

TYPE_OF_KIND: Mapping[str, SeriesType] = {"i": "gauge", "a": "counter", "p": "counter", "s": "status"}


def series_type(kind: str) -> SeriesType:
    return TYPE_OF_KIND.get(kind, "gauge")


@dataclass(frozen=True, slots=True)
class Point:
    """One datum of a series: `val` is the reading (raw), or for a rollup the average (gauge),
    the clock difference (counter) or the most frequent value (status)."""

    ts_ms: int
    val: Value
    count: int | None = None
    min: float | None = None
    max: float | None = None
    start: float | None = None  # counter rollups: reading at the bucket start / end
    end: float | None = None


def finite(v: float | None) -> float | None:
    """A stored number as served: inf and NaN (stored before the envelope bound, or rollup sums of
    huge values) have no JSON spelling, so they are served as null, in every format."""
    return v if v is None or v - v == 0.0 else None


def raw_point(kind: str, ts_ms: int, value: float | None, text: str) -> Point:
    return Point(ts_ms, text if kind == "s" else finite(value))


def rollup_point(
    kind: str,
    ts_ms: int,
    count: int,
    avg: float | None,
    lo: float | None,
    hi: float | None,
    diff: float | None,
    read_start: float | None,
    read_end: float | None,
    mode: str,
) -> Point:
    t = series_type(kind)
    if t == "counter":
        return Point(ts_ms, finite(diff), count, start=finite(read_start), end=finite(read_end))
    if t == "status":
        return Point(ts_ms, mode, count)
    return Point(ts_ms, finite(avg), count, finite(lo), finite(hi))


@dataclass(frozen=True)
class Baseline:
    """What `compare` sets the latest bucket against: the mean (status: the most frequent) of
    `val` over the `count` matching buckets found among the `history` looked at."""

    by: CompareBy
    history: int
    val: Value
    count: int


def baseline(by: CompareBy, history: int, kind: SeriesType, points: Sequence[Point]) -> Baseline:
    vals = [p.val for p in points if p.val is not None]
    val: Value = None
    if kind == "status":
        counts = Counter(str(v) for v in vals)
        if counts:
            top = max(counts.values())
            val = min(v for v, c in counts.items() if c == top)  # ties: smallest, as rollup modes
    else:
        nums = [float(v) for v in vals if isinstance(v, (int, float))]
        if nums:
            val = finite(sum(nums) / len(nums))  # huge values can sum to inf
    return Baseline(by, history, val, len(vals))


@dataclass(frozen=True)
class SeriesResult:
    key: SeriesKey
    type: SeriesType
    periodicity: Periodicity | None
    limit: int
    offset: int
    total: int
    time_zone: str
    points: tuple[Point, ...]
    baseline: Baseline | None = None

    @property
    def name(self) -> str:
        return series_name(self.key)


@dataclass(frozen=True)
class SeriesInfo:
    key: SeriesKey
    type: SeriesType
    time_zone: str = "UTC"


@dataclass(frozen=True)
class Rendered:
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = field(default=())


# ---------------------------------------------------------------------------------------------
# Formats

_POINT_FIELDS = ("count", "min", "max", "start", "end")


def _point_json(p: Point) -> dict[str, Value | int]:
    # attribute by attribute: this runs for every point of every response
    out: dict[str, Value | int] = {"ts": p.ts_ms, "val": p.val}
    if p.count is not None:
        out["count"] = p.count
    if p.min is not None:
        out["min"] = p.min
    if p.max is not None:
        out["max"] = p.max
    if p.start is not None:
        out["start"] = p.start
    if p.end is not None:
        out["end"] = p.end
    return out


def results_json(results: Sequence[SeriesResult]) -> dict[str, object]:
    out: dict[str, object] = {}
    for r in results:
        doc: dict[str, object] = {
            "limit": r.limit,
            "offset": r.offset,
            "total": r.total,
            "periodicity": r.periodicity or "raw",
            "type": r.type,
            "timeZone": r.time_zone,
            "data": [_point_json(p) for p in r.points],
        }
        if r.baseline is not None:
            b = r.baseline
            doc["baseline"] = {"by": b.by, "history": b.history, "val": b.val, "count": b.count}
        out[r.name] = doc
    return out


def _dumps(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def render_doc(
    doc: Mapping[str, object],
    fmt: Format,
    callback: str | None,
    xml: ET.Element | None = None,
    table: Sequence[Sequence[object]] | None = None,
) -> Rendered:
    """One document in a format: JSON, JSONP (the callback called with it), XML or CSV."""
    if fmt == "jsonp":
        # /**/ keeps a response from starting with attacker-chosen bytes (Rosetta Flash)
        body = b"/**/" + (callback or "callback").encode() + b"(" + _dumps(doc) + b");"
        return Rendered(CONTENT_TYPES["jsonp"], body)
    if fmt == "xml" and xml is not None:
        return Rendered(CONTENT_TYPES["xml"], ET.tostring(xml, encoding="utf-8", xml_declaration=True))
    if fmt == "csv" and table is not None:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\r\n")
        writer.writerows([["" if v is None else _cell(v) for v in row] for row in table])
        return Rendered(CONTENT_TYPES["csv"], buf.getvalue().encode())
    return Rendered(CONTENT_TYPES["json"], _dumps(doc))


def _cell(v: object) -> str:
    return repr(v) if isinstance(v, float) else str(v)


CSV_COLUMNS = ("series", "type", "periodicity", "ts", "time", "val", "count", "min", "max", "start", "end")


def render_results(results: Sequence[SeriesResult], fmt: Format, callback: str | None = None) -> Rendered:
    compare = any(r.baseline is not None for r in results)
    doc = results_json(results)
    root = ET.Element("timeSeriesAPI")
    header = [*CSV_COLUMNS, *(("baseline", "baselineCount") if compare else ())]
    table: list[list[object]] = [list(header)]
    if fmt == "xml":
        for r in results:
            el = ET.SubElement(
                root,
                "timeSeries",
                {
                    "name": r.name,
                    "limit": str(r.limit),
                    "offset": str(r.offset),
                    "total": str(r.total),
                    "periodicity": r.periodicity or "raw",
                    "type": r.type,
                    "timeZone": r.time_zone,
                },
            )
            for p in r.points:
                attrs = {"ts": format_time(p.ts_ms)}
                if p.val is not None:
                    attrs["val"] = _cell(p.val)
                for name in _POINT_FIELDS:
                    v = getattr(p, name)
                    if v is not None:
                        attrs[name] = _cell(v)
                ET.SubElement(el, "datum", attrs)
            if r.baseline is not None:
                b = r.baseline
                battrs = {"by": b.by, "history": str(b.history), "count": str(b.count)}
                if b.val is not None:
                    battrs["val"] = _cell(b.val)
                ET.SubElement(el, "baseline", battrs)
    elif fmt == "csv":
        for r in results:
            extra: list[object] = []
            if compare:
                extra = [None, None] if r.baseline is None else [r.baseline.val, r.baseline.count]
            for p in r.points:
                table.append(
                    [
                        r.name,
                        r.type,
                        r.periodicity or "raw",
                        p.ts_ms,
                        format_time(p.ts_ms),
                        p.val,
                        p.count,
                        p.min,
                        p.max,
                        p.start,
                        p.end,
                        *extra,
                    ]
                )
            if not r.points and compare:
                table.append(
                    [r.name, r.type, r.periodicity or "raw", None, None, None, None, None, None, None, None, *extra]
                )
    return render_doc(doc, fmt, callback, root, table)


def description(series: Sequence[SeriesInfo], openapi_path: str) -> dict[str, object]:
    """The endpoint description: defaults, maxima and accepted values, and the series."""
    meta: dict[str, object] = {
        "limit": {"default": LIMIT_DEFAULT, "maximum": LIMIT_MAX, "minimum": 0},
        "offset": {"default": OFFSET_DEFAULT, "minimum": 0},
        "periodicity": {"default": "raw", "values": ["raw", *PERIODICITIES]},
        "format": {"default": "json", "values": list(FORMATS)},
        "startTime": {"format": TIME_FORMAT},
        "endTime": {"format": TIME_FORMAT, "exclusive": True},
        "startIndex": {"semantics": "python-slice"},
        "endIndex": {"semantics": "python-slice"},
        "series": {"maximum": MAX_SERIES, "naming": "<node>~<source>~<property>"},
        "callback": {"maximumLength": CALLBACK_MAX},
        "current": {"values": list(CURRENTS)},
        "at": {"format": TIME_FORMAT, "default": "now"},
        "compare": {"values": list(COMPARES)},
        "history": {"default": dict(HISTORY_DEFAULT), "minimum": 1, "maximum": HISTORY_MAX},
    }
    return {
        "meta": meta,
        "series": [
            {
                "name": series_name(s.key),
                "node": s.key.node_id,
                "source": s.key.source_id,
                "property": s.key.property,
                "type": s.type,
                "timeZone": s.time_zone,
            }
            for s in series
        ],
        "openapi": openapi_path,
    }


def render_description(series: Sequence[SeriesInfo], fmt: Format, callback: str | None, openapi_path: str) -> Rendered:
    doc = description(series, openapi_path)
    root = ET.Element("timeSeriesAPI")
    meta_el = ET.SubElement(root, "meta")
    meta = doc["meta"]
    assert isinstance(meta, dict)
    for name, spec in meta.items():
        attrs: dict[str, str] = {}
        for k, v in spec.items():
            if isinstance(v, list):
                attrs[k] = " ".join(str(x) for x in v)
            elif isinstance(v, dict):
                attrs.update({f"{k}-{kk}": str(vv) for kk, vv in v.items()})
            else:
                attrs[k] = str(v).lower() if isinstance(v, bool) else str(v)
        ET.SubElement(meta_el, "parameter", {"name": name, **attrs})
    table: list[list[object]] = [["series", "node", "source", "property", "type", "timeZone"]]
    for s in series:
        ET.SubElement(
            root,
            "series",
            {
                "name": series_name(s.key),
                "node": str(s.key.node_id),
                "source": s.key.source_id,
                "property": s.key.property,
                "type": s.type,
                "timeZone": s.time_zone,
            },
        )
        table.append([series_name(s.key), s.key.node_id, s.key.source_id, s.key.property, s.type, s.time_zone])
    return render_doc(doc, fmt, callback, root, table)


def render_error(
    status: int, message: str, parameter: str | None, fmt: Format = "json", callback: str | None = None
) -> Rendered:
    """An error in the request's format where it is known (CSV clients get JSON)."""
    doc = {"error": {"status": status, "message": message, "parameter": parameter}}
    root = ET.Element(
        "error", {"status": str(status), "message": message, **({"parameter": parameter} if parameter else {})}
    )
    return render_doc(doc, "json" if fmt == "csv" else fmt, callback, root)
