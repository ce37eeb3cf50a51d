"""SolarQuery API v1 (SolarNetwork's read API), the pure half: parameters in, JSON out.

`pipeline/api/solarquery.py` reads ClickHouse and calls these. What SolarNetwork's server does is
taken from its documentation and behaviour as observed with its own JavaScript clients
(solarnetwork-api-core, solarnetwork-datum-loader); docs/solarquery.md lists what is supported
and where this differs.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo

from processors.rollup import Periodicity
from processors.security_policy import Aggregation, PolicyError

MAX_RESULTS = 1000  # SolarNetwork's default and largest page
READING_TYPES = ("Difference", "DifferenceWithin", "NearestDifference", "CalculatedAt")
# The aggregations the rollups hold; SolarNetwork's others are refused with a 422 naming these.
PERIODICITY_OF: Mapping[Aggregation, Periodicity] = {
    Aggregation.THIRTY_MINUTE: "halfhour",
    Aggregation.HOUR: "hour",
    Aggregation.DAY: "day",
    Aggregation.WEEK: "week",
    Aggregation.MONTH: "month",
    Aggregation.YEAR: "year",
}
DEFAULT_TOLERANCE = (0, 1, 0)  # P1M, SolarNetwork's default
DIFFERENCE_LOOKBACK = (1, 0, 0)  # Difference looks back at most a year (SolarNetwork's SQL)
_DATE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?)?"
    r"(Z|[+-]\d{2}:?\d{2})?"
)
_PERIOD = re.compile(r"P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?")


class QueryError(ValueError):
    """A request SolarNetwork would answer with 422 (or the status given)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True, slots=True)
class DatumFilter:
    """What a SolarQuery request selects. Dates: `start_ms`/`end_ms` UTC instants, or the local
    ones (naive, each node's own zone) when the request used localStartDate/localEndDate."""

    node_ids: tuple[int, ...] = ()
    source_ids: tuple[str, ...] = ()
    start_ms: int | None = None
    end_ms: int | None = None
    local_start: datetime | None = None
    local_end: datetime | None = None
    aggregation: Aggregation = Aggregation.NONE
    max: int = MAX_RESULTS
    offset: int = 0
    without_total: bool = False
    descending: bool = False
    reading_type: str | None = None
    tolerance: tuple[int, int, int] = DEFAULT_TOLERANCE  # (years, months, days)
    with_node_ids: bool = False

    @property
    def periodicity(self) -> Periodicity | None:
        return periodicity_of(self.aggregation)


def periodicity_of(agg: Aggregation) -> Periodicity | None:
    if agg is Aggregation.NONE:
        return None
    try:
        return PERIODICITY_OF[agg]
    except KeyError:
        names = ", ".join(a.label for a in PERIODICITY_OF)
        raise QueryError(f"aggregation {agg.label} is not available here; available: None, {names}") from None


def parse_date(text: str, name: str) -> datetime:
    """SolarNetwork's accepted forms: yyyy-MM-dd, yyyy-MM-ddTHH:mm[:ss[.SSS]] (or a space for T),
    with an optional Z or offset. Without a zone the result is naive (the caller decides)."""
    m = _DATE.fullmatch(text.strip())
    if m is None:
        raise QueryError(f"{name}={text!r} is not a date (yyyy-MM-dd or yyyy-MM-ddTHH:mm[:ss[.SSS]][Z])")
    y, mo, d, h, mi, s, frac, zone = m.groups()
    try:
        micro = int((frac or "0")[:6].ljust(6, "0"))
        out = datetime(int(y), int(mo), int(d), int(h or 0), int(mi or 0), int(s or 0), micro)
    except ValueError as exc:
        raise QueryError(f"{name}={text!r}: {exc}") from None
    if zone is None:
        return out
    if zone == "Z":
        return out.replace(tzinfo=UTC)
    sign = -1 if zone[0] == "-" else 1
    digits = zone[1:].replace(":", "")
    offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    return (out - sign * offset).replace(tzinfo=UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ms(moment: datetime) -> int:
    """Epoch milliseconds, exactly (a float timestamp times 1000 can land a millisecond short)."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return (aware - _EPOCH) // timedelta(milliseconds=1)


def parse_period(text: str) -> tuple[int, int, int]:
    """An ISO-8601 date period (java.time.Period): PnYnMnWnD -> (years, months, days)."""
    m = _PERIOD.fullmatch(text.strip())
    if m is None or text.strip() == "P":
        raise QueryError(f"tolerance={text!r} is not a period like P1D or P1M")
    y, mo, w, d = (int(g or 0) for g in m.groups())
    return y, mo, 7 * w + d


def shift(ms: int, period: tuple[int, int, int], sign: int = -1) -> int:
    """`ms` moved by a period (years and months on the calendar, UTC), back (sign -1) or forward."""
    t = datetime.fromtimestamp(ms / 1000, tz=UTC)
    months = t.year * 12 + (t.month - 1) + sign * (period[0] * 12 + period[1])
    year, month = divmod(months, 12)
    day = min(t.day, _days_in(year, month + 1))
    moved = t.replace(year=year, month=month + 1, day=day) + sign * timedelta(days=period[2])
    return _ms(moved)


def _days_in(year: int, month: int) -> int:
    nxt = datetime(year + (month == 12), month % 12 + 1, 1)
    return (nxt - timedelta(days=1)).day


def _ids(params: Mapping[str, list[str]], one: str, many: str) -> list[str]:
    out: list[str] = []
    for name in (one, many):
        for value in params.get(name, []):
            out += [v for v in value.split(",") if v != ""]
    return out


def _flag(params: Mapping[str, list[str]], name: str) -> bool:
    return (params.get(name) or ["false"])[-1].strip().lower() == "true"


def _int(params: Mapping[str, list[str]], name: str, default: int, lo: int) -> int:
    raw = (params.get(name) or [""])[-1].strip()
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise QueryError(f"{name}={raw!r} is not an integer") from None
    if value < lo:
        raise QueryError(f"{name} must be at least {lo}")
    return value


def parse_filter(query: str) -> DatumFilter:
    """The filter of a raw query string (Spring's binding rules: comma lists or repeats)."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False, errors="strict", max_num_fields=1000)
    except (ValueError, UnicodeDecodeError) as exc:
        raise QueryError(f"the query string cannot be read: {exc}", 400) from None
    params: dict[str, list[str]] = {}
    for k, v in pairs:
        params.setdefault(k, []).append(v)
    try:
        nodes = tuple(sorted({int(n) for n in _ids(params, "nodeId", "nodeIds")}))
    except ValueError:
        raise QueryError("nodeIds must be integers") from None
    if any(n < 0 for n in nodes):
        raise QueryError("nodeIds must not be negative")
    sources = tuple(dict.fromkeys(_ids(params, "sourceId", "sourceIds")))
    dates: dict[str, datetime | None] = {}
    for name in ("startDate", "endDate", "localStartDate", "localEndDate"):
        raw = (params.get(name) or [""])[-1]
        dates[name] = parse_date(raw, name) if raw.strip() else None
    start, end = dates["startDate"], dates["endDate"]
    local_start, local_end = dates["localStartDate"], dates["localEndDate"]
    if (start or end) and (local_start or local_end):
        raise QueryError("give startDate/endDate or localStartDate/localEndDate, not both")
    for name in ("localStartDate", "localEndDate"):
        if dates[name] is not None and dates[name].tzinfo is not None:  # type: ignore[union-attr]
            raise QueryError(f"{name} is a local date-time: no zone")
    agg_text = (params.get("aggregation") or params.get("aggregate") or [""])[-1]
    try:
        aggregation = Aggregation.parse(agg_text)
    except PolicyError as exc:
        raise QueryError(str(exc)) from None
    reading = (params.get("readingType") or [""])[-1] or None
    if reading is not None and reading not in READING_TYPES:
        raise QueryError(f"readingType={reading!r}; available: {', '.join(READING_TYPES)}")
    tol = (params.get("tolerance") or [""])[-1]
    sort_desc = False
    if (params.get("sorts[0].key") or ["created"])[-1] == "created":
        sort_desc = _flag(params, "sorts[0].descending")
    return DatumFilter(
        node_ids=nodes,
        source_ids=sources,
        start_ms=_ms(start) if start else None,
        end_ms=_ms(end) if end else None,
        local_start=local_start,
        local_end=local_end,
        aggregation=aggregation,
        max=min(MAX_RESULTS, _int(params, "max", MAX_RESULTS, 1)),
        offset=_int(params, "offset", 0, 0),
        without_total=_flag(params, "withoutTotalResultsCount"),
        descending=sort_desc,
        reading_type=reading,
        tolerance=parse_period(tol) if tol else DEFAULT_TOLERANCE,
        with_node_ids=_flag(params, "withNodeIds"),
    )


def local_bounds(f: DatumFilter, tz: str) -> tuple[int | None, int | None]:
    """The filter's [start, end) as UTC ms for a node in zone `tz`."""
    if f.local_start is None and f.local_end is None:
        return f.start_ms, f.end_ms
    z = ZoneInfo(tz)
    lo = _ms(f.local_start.replace(tzinfo=z)) if f.local_start else None
    hi = _ms(f.local_end.replace(tzinfo=z)) if f.local_end else None
    return lo, hi


# --- JSON ------------------------------------------------------------------------------------


def format_created(ms: int) -> str:
    """yyyy-MM-dd HH:mm:ss.SSSZ (UTC), what SolarNetwork's clients parse."""
    t = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return t.strftime("%Y-%m-%d %H:%M:%S.") + f"{ms % 1000:03d}Z"


def _local(ms: int, tz: str) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=ZoneInfo(tz))


def local_fields(ms: int, tz: str) -> dict[str, str]:
    t = _local(ms, tz)
    return {"localDate": t.strftime("%Y-%m-%d"), "localTime": t.strftime("%H:%M")}


def _number(value: float | None) -> float | int | None:
    if value is None or value != value or value in (float("inf"), float("-inf")):
        return None  # JSON has no NaN or infinity; SolarNetwork leaves such a property out
    return int(value) if float(value).is_integer() and abs(value) < 2**53 else value


Sample = tuple[str, str, float | None, str]  # property, kind, value, text


def raw_datum(
    node_id: int, source_id: str, created_ms: int, tz: str, samples: Iterable[Sample], tags: Sequence[str] = ()
) -> dict[str, Any]:
    """A stored datum as SolarNetwork lists it: flat, sample properties at the top level."""
    out: dict[str, Any] = {
        "created": format_created(created_ms),
        "nodeId": node_id,
        "sourceId": source_id,
        **local_fields(created_ms, tz),
    }
    for prop, kind, value, text in sorted(samples):
        if kind == "s":
            if text:
                out[prop] = text
        elif (v := _number(value)) is not None:
            out[prop] = v
    if tags:
        out["tags"] = sorted(set(tags))
    return out


Aggregate = tuple[str, str, float | None, float | None, float | None, float | None, str]
# property, kind, avg, min, max, diff, mode


def aggregate_datum(
    node_id: int, source_id: str, start_ms: int, tz: str, figures: Iterable[Aggregate]
) -> dict[str, Any]:
    """A rollup bucket as SolarNetwork lists an aggregate: instantaneous = average plus _min and
    _max, accumulating (and pulse sums) = the difference, status = the most frequent value."""
    out: dict[str, Any] = {
        "created": format_created(start_ms),
        "nodeId": node_id,
        "sourceId": source_id,
        **local_fields(start_ms, tz),
    }
    for prop, kind, avg, lo, hi, diff, mode in sorted(figures):
        if kind == "i":
            if (v := _number(avg)) is not None:
                out[prop] = v
                if (a := _number(lo)) is not None and (b := _number(hi)) is not None:
                    out[f"{prop}_min"], out[f"{prop}_max"] = a, b
        elif kind in ("a", "p"):
            if (v := _number(diff)) is not None:
                out[prop] = v
        elif kind == "s" and mode:
            out[prop] = mode
    return out


def paged(results: list[dict[str, Any]], total: int | None, offset: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "totalResults": total,
        "startingOffset": offset,
        "returnedResultCount": len(results),
        "results": results,
    }
    if total is None:
        del out["totalResults"]
    return out


def envelope(data: Any = None) -> bytes:
    doc: dict[str, Any] = {"success": True}
    if data is not None:
        doc["data"] = data
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def error_body(message: str, code: int | str | None = None) -> bytes:
    doc: dict[str, Any] = {"success": False}
    if code is not None:
        doc["code"] = str(code)
    doc["message"] = message
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


# --- readings -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reading:
    """An accumulating reading: time and value."""

    ms: int
    value: float


@dataclass(frozen=True, slots=True)
class ResetAt:
    """A meter reset on the way: its final reading (before) and start reading (after)."""

    ms: int
    final: float
    start: float


def difference(start: Reading, end: Reading, resets: Sequence[ResetAt] = ()) -> float:
    """end - start, counting each reset in between: the run up to its final reading, then on
    from its start reading."""
    total, last = 0.0, start.value
    for r in sorted(resets, key=lambda r: r.ms):
        if start.ms < r.ms <= end.ms:
            total += r.final - last
            last = r.start
    return total + end.value - last


def interpolate(before: Reading | None, after: Reading | None, at_ms: int) -> float | None:
    """CalculatedAt: linear between the readings around `at_ms`; one of them alone as it is."""
    if before is None and after is None:
        return None
    if before is None or after is None or after.ms == before.ms:
        return (before or after).value  # type: ignore[union-attr]
    return before.value + (after.value - before.value) * (at_ms - before.ms) / (after.ms - before.ms)


def reading_datum(
    node_id: int, source_id: str, tz: str, start_ms: int, end_ms: int, values: Mapping[str, tuple[float, float, float]]
) -> dict[str, Any]:
    """A difference reading row: per property p, p (the difference), p_start and p_end."""
    out: dict[str, Any] = {
        "created": format_created(start_ms),
        "nodeId": node_id,
        "sourceId": source_id,
        **local_fields(start_ms, tz),
    }
    for prop, (diff, first, last) in sorted(values.items()):
        out[prop] = _number(diff)
        out[f"{prop}_start"] = _number(first)
        out[f"{prop}_end"] = _number(last)
    out["timeZone"] = tz
    out["endDate"] = format_created(end_ms)
    out["localEndDate"] = _local(end_ms, tz).strftime("%Y-%m-%d %H:%M:%S.") + f"{end_ms % 1000:03d}"
    return out


def interval(first_ms: int, last_ms: int, tz: str) -> dict[str, Any]:
    """range/interval: the first and last datum times, in the node's zone, and the calendar
    counts (days, months, years touched)."""
    a, b = _local(first_ms, tz), _local(last_ms, tz)
    return {
        "startDate": a.strftime("%Y-%m-%d %H:%M:%S"),
        "endDate": b.strftime("%Y-%m-%d %H:%M:%S"),
        "startDateMillis": first_ms,
        "endDateMillis": last_ms,
        "timeZone": tz,
        "yearCount": b.year - a.year + 1,
        "monthCount": (b.year - a.year) * 12 + b.month - a.month + 1,
        "dayCount": (b.date() - a.date()).days + 1,
    }
