"""The time-series API's pure rules (processors/timeseries.py): names, times, parameters, slices,
periods, negotiation and formats. Expected values are computed independently (list slicing,
zoneinfo arithmetic, the formats parsed back)."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from xml.etree import ElementTree as ET
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processors import timeseries as ts
from processors.timeseries import ParameterError, SeriesKey, parse_query

ROOT = Path(__file__).resolve().parents[2]
URL_SAFE = re.compile(r"^[A-Za-z0-9._~-]+$")  # RFC 3986 unreserved
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

texts = st.text(min_size=1, max_size=40)
keys = st.builds(SeriesKey, st.integers(0, 2**64 - 1), texts, texts)


def ms(text: str) -> int:
    return (datetime.fromisoformat(text) - EPOCH) // timedelta(milliseconds=1)


def q(**params: str | list[str]) -> ts.Query:
    return parse_query({k: v if isinstance(v, list) else [v] for k, v in params.items()})


def refused(parameter: str | None, status: int = 400, **params: str | list[str]) -> str:
    with pytest.raises(ParameterError) as info:
        q(**params)
    assert info.value.parameter == parameter, info.value.message
    assert info.value.status == status
    if parameter:
        assert parameter in info.value.message  # the message names the parameter
    return info.value.message


# --- series names ----------------------------------------------------------------------------


def test_series_name_examples() -> None:
    assert ts.series_name(SeriesKey(1, "/S1/B1/M1", "watts")) == "1~.S1.B1.M1~watts"
    assert ts.series_name(SeriesKey(2, "Meter_1", "phase a")) == "2~Meter_1~phase-20a"
    assert ts.series_name(SeriesKey(3, "/a.b-c~d", "é")) == "3~.a-2Eb-2Dc-7Ed~-C3-A9"
    assert ts.parse_series_name("1~.S1.B1.M1~watts") == SeriesKey(1, "/S1/B1/M1", "watts")


@given(keys)
def test_series_names_round_trip_and_are_url_safe(key: SeriesKey) -> None:
    name = ts.series_name(key)
    assert URL_SAFE.match(name)
    assert "," not in name and name != "*"
    assert ts.parse_series_name(name) == key


@given(keys, keys)
def test_series_names_are_injective(a: SeriesKey, b: SeriesKey) -> None:
    if a != b:
        assert ts.series_name(a) != ts.series_name(b)


@given(st.text(alphabet="0123456789abAB_.~-CDEF9", max_size=20))
def test_a_name_that_parses_is_the_canonical_name(name: str) -> None:
    try:
        key = ts.parse_series_name(name)
    except ValueError:
        return
    assert ts.series_name(key) == name


@pytest.mark.parametrize(
    "name",
    [
        "1~a",
        "1~a~b~c",
        "01~a~b",
        "-1~a~b",
        "x~a~b",
        "1~~b",
        "1~a~",
        "1~a b~c",
        "1~a-2~b",
        "1~a-2g~b",
        "1~a-2e~b",  # lower-case hex
        "1~a-41~b",  # 'A' escaped: written as itself
        "1~a-2F~b",  # '/' escaped: written as '.'
        "1~a-C3~b",  # half a UTF-8 character
        "18446744073709551616~a~b",  # 2**64
    ],
)
def test_malformed_series_names(name: str) -> None:
    with pytest.raises(ValueError):
        ts.parse_series_name(name)


# --- times -----------------------------------------------------------------------------------


@given(st.integers(ms("0001-01-02T00:00:00+00:00"), ms("9999-12-30T00:00:00+00:00")))
def test_time_round_trip(t: int) -> None:
    text = ts.format_time(t)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", text)
    assert ts.parse_time(text, "startTime") == t


@given(
    st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(2299, 12, 30)),
    st.integers(-23 * 60 - 59, 23 * 60 + 59),
)
def test_spec_form_with_any_offset(local: datetime, offset_min: int) -> None:
    local = local.replace(microsecond=0)
    tz = timezone(timedelta(minutes=offset_min))
    sign = "-" if offset_min < 0 else "+"
    hh, mm = divmod(abs(offset_min), 60)
    text = local.strftime("%Y-%m-%dT%H:%M:%S") + f"{sign}{hh:02d}:{mm:02d}"
    want = (local.replace(tzinfo=tz) - EPOCH) // timedelta(milliseconds=1)
    assert ts.parse_time(text, "endTime") == want
    # an unescaped '+' in a query string arrives as a space
    assert ts.parse_time(text.replace("+", " "), "endTime") == want


def test_time_forms() -> None:
    assert ts.parse_time("2024-11-01T00:00:00+01:00", "t") == ms("2024-10-31T23:00:00+00:00")
    assert ts.parse_time("2024-11-01T00:00:00Z", "t") == ms("2024-11-01T00:00:00+00:00")
    assert ts.parse_time("2024-11-01T00:00:00.5Z", "t") == ms("2024-11-01T00:00:00+00:00") + 500
    assert ts.parse_time("2024-11-01T00:00:00.123-05:30", "t") == ms("2024-11-01T05:30:00.123+00:00")


@pytest.mark.parametrize(
    "text",
    [
        "2024-11-01",
        "2024-11-01T00:00:00",
        "2024-11-01 00:00:00Z",
        "2024-02-30T00:00:00Z",
        "2024-11-01T24:00:00Z",
        "2024-11-01T00:00:00+01:60",
        "2024-11-01T00:00:00+24:00",
        "0000-01-01T00:00:00Z",
        "2024-11-01T00:00:00+1:00",
        "2024-11-01T00:00:00.1234Z",
        "2024-11-01t00:00:00z",
        "yesterday",
    ],
)
def test_bad_times_name_the_parameter(text: str) -> None:
    with pytest.raises(ParameterError) as info:
        ts.parse_time(text, "startTime")
    assert info.value.parameter == "startTime" and "startTime" in info.value.message


# --- parameters ------------------------------------------------------------------------------


def test_no_parameters_describe() -> None:
    assert parse_query({}).describe
    assert q(format="xml").describe and q(format="xml").format == "xml"
    assert q(callback="cb").describe
    assert not q(series="*").describe


def test_defaults() -> None:
    query = q(series="*")
    assert query.series is None and query.periodicity is None
    assert (query.limit, query.offset) == (ts.LIMIT_DEFAULT, 0) == (100, 0)
    assert q(series="1~a~b,2~c~d,1~a~b").series == (SeriesKey(1, "a", "b"), SeriesKey(2, "c", "d"))
    assert q(series="*", periodicity="raw").periodicity is None
    for per in ("halfhour", "hour", "day", "week", "month", "year"):
        assert q(series="*", periodicity=per).periodicity == per


def test_out_of_range_values_are_capped() -> None:
    assert q(series="*", limit="5000").limit == ts.LIMIT_MAX == 1000
    assert q(series="*", limit="-3").limit == 0
    assert q(series="*", offset="-3").offset == 0
    assert q(series="*", offset="123456789012").offset == 123456789012
    assert q(series="*", compare="timeOfDay", history="9999").history == ts.HISTORY_MAX
    assert q(series="*", compare="timeOfDay", history="0").history == 1
    assert q(series="*", compare="timeOfDay").history == 7
    assert q(series="*", compare="dayOfWeek").history == 4


@pytest.mark.parametrize(
    ("parameter", "params"),
    [
        ("bogus", {"series": "*", "bogus": "1"}),
        ("Series", {"Series": "*"}),
        ("limit", {"series": "*", "limit": ["1", "2"]}),
        ("limit", {"series": "*", "limit": ""}),
        ("limit", {"series": "*", "limit": "ten"}),
        ("limit", {"series": "*", "limit": "1.5"}),
        ("offset", {"series": "*", "offset": "0x10"}),
        ("startIndex", {"series": "*", "startIndex": "one"}),
        ("endIndex", {"series": "*", "endIndex": "1e3"}),
        ("series", {"limit": "3"}),
        ("series", {"series": ""}),
        ("series", {"series": "1~a~b,"}),
        ("series", {"series": "watts"}),
        ("series", {"series": "*,1~a~b"}),
        ("series", {"series": ",".join(f"1~a~p{n}" for n in range(ts.MAX_SERIES + 1))}),
        ("startTime", {"series": "*", "startTime": "2024-01-01"}),
        ("endTime", {"series": "*", "endTime": "now"}),
        ("endTime", {"series": "*", "startTime": "2024-01-02T00:00:00Z", "endTime": "2024-01-01T00:00:00Z"}),
        ("periodicity", {"series": "*", "periodicity": "minute"}),
        ("format", {"series": "*", "format": "html"}),
        ("callback", {"series": "*", "format": "jsonp"}),
        ("callback", {"series": "*", "callback": "alert(1)"}),
        ("callback", {"series": "*", "callback": "a" * 129}),
        ("callback", {"series": "*", "callback": "cb", "format": "xml"}),
        ("callback", {"series": "*", "callback": "cb", "format": "csv"}),
        ("current", {"series": "*", "current": "today"}),
        ("compare", {"series": "*", "compare": "hourOfDay"}),
        ("periodicity", {"series": "*", "compare": "timeOfDay", "periodicity": "day"}),
        ("periodicity", {"series": "*", "compare": "dayOfWeek", "periodicity": "week"}),
        ("at", {"series": "*", "at": "2024-01-01T00:00:00Z"}),
        ("at", {"series": "*", "current": "day", "at": "noon"}),
        ("history", {"series": "*", "history": "3"}),
        ("history", {"series": "*", "current": "day", "history": "3"}),
        ("history", {"series": "*", "compare": "timeOfDay", "history": "x"}),
    ],
)
def test_bad_parameters(parameter: str, params: dict[str, str | list[str]]) -> None:
    refused(parameter, **params)


@pytest.mark.parametrize("index", ["startIndex", "endIndex"])
@pytest.mark.parametrize("time", ["startTime", "endTime"])
def test_index_with_time_is_refused(index: str, time: str) -> None:
    message = refused(index, series="*", **{index: "1", time: "2024-01-01T00:00:00Z"})
    assert time in message


@pytest.mark.parametrize("other", ["startTime", "endTime", "startIndex", "endIndex"])
def test_current_excludes_explicit_selections(other: str) -> None:
    value = "1" if "Index" in other else "2024-01-01T00:00:00Z"
    assert "current" in refused(other, series="*", current="week", **{other: value})


@pytest.mark.parametrize("other", ["startTime", "startIndex", "current", "limit", "offset"])
def test_compare_excludes_selections_and_pages(other: str) -> None:
    value = {"startTime": "2024-01-01T00:00:00Z", "current": "day"}.get(other, "1")
    assert "compare" in refused(other, series="*", compare="timeOfDay", **{other: value})


def test_compare_defaults_to_half_hours() -> None:
    assert q(series="*", compare="timeOfDay").periodicity == "halfhour"
    assert q(series="*", compare="dayOfWeek", periodicity="day").periodicity == "day"


# --- negotiation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "params", "want"),
    [
        (None, {}, "json"),
        ("", {}, "json"),
        ("*/*", {}, "json"),
        ("application/json", {}, "json"),
        ("application/xml", {}, "xml"),
        ("text/xml", {}, "xml"),
        ("text/csv", {}, "csv"),
        ("text/*", {}, "xml"),
        ("text/csv;q=0.5, application/xml;q=0.4", {}, "csv"),
        ("application/json;q=0.1, text/csv", {}, "csv"),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", {}, "xml"),
        ("*/*;q=0.5, application/json;q=0", {}, "xml"),  # the specific range says never JSON
        ("text/csv", {"format": "json"}, "json"),
        ("application/json", {"format": "csv"}, "csv"),
        ("application/json", {"callback": "cb"}, "jsonp"),
        ("*/*", {"format": "json", "callback": "cb"}, "jsonp"),
        ("text/csv", {"format": "jsonp", "callback": "a.b"}, "jsonp"),
    ],
)
def test_negotiation(accept: str | None, params: dict[str, str], want: str) -> None:
    assert ts.negotiate(accept, q(series="*", **params)) == want


@pytest.mark.parametrize("accept", ["text/html", "image/png, text/plain", "application/json;q=0", "nonsense"])
def test_nothing_acceptable_is_406(accept: str) -> None:
    with pytest.raises(ParameterError) as info:
        ts.negotiate(accept, q(series="*"))
    assert info.value.status == 406 and "Accept" in info.value.message


# --- slices and pages ------------------------------------------------------------------------

maybe_index = st.none() | st.integers(-60, 60)


def page_query(start: int | None, end: int | None, offset: int, limit: int) -> ts.Query:
    params = {"series": "*", "offset": str(offset), "limit": str(limit)}
    if start is not None:
        params["startIndex"] = str(start)
    if end is not None:
        params["endIndex"] = str(end)
    return q(**params)


@given(st.integers(0, 50), maybe_index, maybe_index, st.integers(-5, 60), st.integers(-5, 1200))
def test_page_is_python_slice_then_offset_and_limit(
    count: int, start: int | None, end: int | None, offset: int, limit: int
) -> None:
    query = page_query(start, end, offset, limit)
    rows = list(range(count))
    selected = rows[start:end]
    want = selected[max(0, offset) :][: min(max(0, limit), 1000)]
    w = ts.page(count, query)
    assert w.total == len(selected)
    assert rows[w.offset : w.offset + w.limit] == want
    assert w.limit >= 0


@given(
    st.integers(0, 50),
    st.none() | st.integers(0, 60),
    st.none() | st.integers(0, 60),
    st.integers(0, 60),
    st.integers(0, 1000),
)
def test_page_without_count_agrees(count: int, start: int | None, end: int | None, offset: int, limit: int) -> None:
    query = page_query(start, end, offset, limit)
    fixed = ts.page_without_count(query)
    assert fixed is not None
    w = ts.page(count, query)
    rows = list(range(count))
    assert rows[fixed[0] : fixed[0] + fixed[1]] == rows[w.offset : w.offset + w.limit]


def test_page_without_count_needs_non_negative_indexes() -> None:
    assert ts.page_without_count(q(series="*", startIndex="-1")) is None
    assert ts.page_without_count(q(series="*", endIndex="-1")) is None
    assert ts.page_without_count(q(series="*", offset="9" * 30))[0] == ts.ROWS_MAX  # type: ignore[index]


def test_whole_series_by_pages() -> None:
    rows = list(range(2345))
    got: list[int] = []
    offset = 0
    while True:
        w = ts.page(len(rows), q(series="*", offset=str(offset), limit="1000"))
        if w.limit == 0:
            break
        got += rows[w.offset : w.offset + w.limit]
        offset += 1000
    assert got == rows


# --- periods in the node's zone -------------------------------------------------------------


def local_ms(tz: str, *fields: int) -> int:
    return (datetime(*fields, tzinfo=ZoneInfo(tz)) - EPOCH) // timedelta(milliseconds=1)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("tz", "at", "current", "start", "end"),
    [
        ("UTC", "2024-11-06T13:00:00+00:00", "day", (2024, 11, 6), (2024, 11, 7)),
        ("Asia/Kathmandu", "2024-11-06T20:00:00+00:00", "day", (2024, 11, 7), (2024, 11, 8)),  # 01:45 local
        ("America/New_York", "2024-11-03T12:00:00+00:00", "day", (2024, 11, 3), (2024, 11, 4)),  # 25 h
        ("America/New_York", "2024-11-06T13:00:00+00:00", "week", (2024, 11, 4), (2024, 11, 11)),  # Monday
        ("America/New_York", "2024-11-10T23:00:00+00:00", "week", (2024, 11, 4), (2024, 11, 11)),  # Sunday
        ("Pacific/Auckland", "2024-12-31T12:00:00+00:00", "month", (2025, 1, 1), (2025, 2, 1)),
        ("Pacific/Auckland", "2024-12-31T12:00:00+00:00", "year", (2025, 1, 1), (2026, 1, 1)),
        ("Europe/London", "2024-06-15T00:30:00+00:00", "year", (2024, 1, 1), (2025, 1, 1)),
    ],
)
def test_current_periods_follow_the_local_calendar(
    tz: str, at: str, current: ts.Current, start: tuple[int, int, int], end: tuple[int, int, int]
) -> None:
    assert ts.current_bounds(current, ms(at), tz) == (local_ms(tz, *start), local_ms(tz, *end))


def test_new_york_day_lengths() -> None:
    lo, hi = ts.current_bounds("day", ms("2024-11-03T12:00:00+00:00"), "America/New_York")
    assert hi - lo == 25 * 3_600_000
    lo, hi = ts.current_bounds("day", ms("2024-03-10T12:00:00+00:00"), "America/New_York")
    assert hi - lo == 23 * 3_600_000


def test_compare_buckets_time_of_day() -> None:
    # 12:10Z on Monday 4 Nov = 07:10 EST: the latest complete half hour opened 06:30 local
    now, before = ts.compare_buckets(ms("2024-11-04T12:10:00+00:00"), "halfhour", "timeOfDay", 3, "America/New_York")
    assert now == local_ms("America/New_York", 2024, 11, 4, 6, 30)
    # 06:30 on the three days before, across the end of DST (3 Nov)
    assert before == tuple(local_ms("America/New_York", 2024, 11, d, 6, 30) for d in (3, 2, 1))
    assert now - before[0] == 24 * 3_600_000 and before[0] - before[1] == 25 * 3_600_000


def test_compare_buckets_day_of_week_and_boundaries() -> None:
    at = local_ms("Europe/Berlin", 2024, 11, 6, 10, 0)  # exactly on a boundary: that hour is not complete
    now, before = ts.compare_buckets(at, "hour", "dayOfWeek", 2, "Europe/Berlin")
    assert now == local_ms("Europe/Berlin", 2024, 11, 6, 9, 0)
    assert before == (local_ms("Europe/Berlin", 2024, 10, 30, 9, 0), local_ms("Europe/Berlin", 2024, 10, 23, 9, 0))
    now, before = ts.compare_buckets(at, "day", "dayOfWeek", 1, "Europe/Berlin")
    assert now == local_ms("Europe/Berlin", 2024, 11, 5)
    assert before == (local_ms("Europe/Berlin", 2024, 10, 29),)


def test_baselines() -> None:
    pts = [ts.Point(1, 2.0), ts.Point(2, 4.0), ts.Point(3, None)]
    assert ts.baseline("timeOfDay", 7, "gauge", pts) == ts.Baseline("timeOfDay", 7, 3.0, 2)
    assert ts.baseline("timeOfDay", 7, "counter", []).val is None
    status = [ts.Point(1, "eco"), ts.Point(2, "auto"), ts.Point(3, "eco"), ts.Point(4, "auto")]
    assert ts.baseline("dayOfWeek", 4, "status", status).val == "auto"  # a tie: the smallest


def test_point_values_by_type() -> None:
    assert ts.rollup_point("a", 5, 3, None, None, None, 12.5, 100.0, 112.5, "") == ts.Point(
        5, 12.5, 3, start=100.0, end=112.5
    )
    assert ts.rollup_point("i", 5, 3, 2.0, 1.0, 3.0, None, None, None, "") == ts.Point(5, 2.0, 3, 1.0, 3.0)
    assert ts.rollup_point("s", 5, 3, None, None, None, None, None, None, "on") == ts.Point(5, "on", 3)
    assert ts.raw_point("s", 5, None, "on") == ts.Point(5, "on")
    assert ts.raw_point("a", 5, 7.0, "") == ts.Point(5, 7.0)
    assert [ts.series_type(k) for k in "iasp"] == ["gauge", "counter", "status", "counter"]


# --- formats ---------------------------------------------------------------------------------

KEY = SeriesKey(1, "/m/1", "wattHours")
RESULTS = [
    ts.SeriesResult(
        KEY,
        "counter",
        "hour",
        2,
        1,
        9,
        "Europe/Berlin",
        (ts.Point(1_700_000_000_000, 12.5, 4, start=1.0, end=13.5), ts.Point(1_700_003_600_000, None, 0)),
    ),
    ts.SeriesResult(
        SeriesKey(2, "s", 'mo"de<'), "status", None, 100, 0, 1, "UTC", (ts.Point(1_700_000_000_123, 'a,"b"<&'),)
    ),
]


def test_json_and_jsonp() -> None:
    r = ts.render_results(RESULTS, "json")
    assert r.content_type.startswith("application/json")
    doc = json.loads(r.body)
    assert doc["1~.m.1~wattHours"] == {
        "limit": 2,
        "offset": 1,
        "total": 9,
        "periodicity": "hour",
        "type": "counter",
        "timeZone": "Europe/Berlin",
        "data": [
            {"ts": 1_700_000_000_000, "val": 12.5, "count": 4, "start": 1.0, "end": 13.5},
            {"ts": 1_700_003_600_000, "val": None, "count": 0},
        ],
    }
    assert doc["2~s~mo-22de-3C"]["periodicity"] == "raw"
    p = ts.render_results(RESULTS, "jsonp", "app.cb")
    assert p.content_type.startswith("application/javascript")
    text = p.body.decode()
    assert text.startswith("/**/app.cb(") and text.endswith(");")
    assert json.loads(text[len("/**/app.cb(") : -2]) == doc


def test_xml() -> None:
    r = ts.render_results(RESULTS, "xml")
    root = ET.fromstring(r.body)
    assert root.tag == "timeSeriesAPI"
    first, second = root.findall("timeSeries")
    assert first.attrib == {
        "name": "1~.m.1~wattHours",
        "limit": "2",
        "offset": "1",
        "total": "9",
        "periodicity": "hour",
        "type": "counter",
        "timeZone": "Europe/Berlin",
    }
    d0, d1 = first.findall("datum")
    assert d0.attrib == {"ts": "2023-11-14T22:13:20.000Z", "val": "12.5", "count": "4", "start": "1.0", "end": "13.5"}
    assert "val" not in d1.attrib
    assert second.find("datum").attrib["val"] == 'a,"b"<&'  # type: ignore[union-attr]


def test_csv() -> None:
    r = ts.render_results(RESULTS, "csv")
    assert r.content_type.startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.body.decode())))
    assert [row["series"] for row in rows] == ["1~.m.1~wattHours"] * 2 + ["2~s~mo-22de-3C"]
    assert rows[0]["val"] == "12.5" and rows[0]["start"] == "1.0" and rows[0]["time"] == "2023-11-14T22:13:20.000Z"
    assert rows[1]["val"] == "" and rows[2]["val"] == 'a,"b"<&' and rows[2]["ts"] == "1700000000123"


def test_compare_formats() -> None:
    res = [
        ts.SeriesResult(
            KEY,
            "gauge",
            "halfhour",
            1,
            0,
            1,
            "UTC",
            (ts.Point(5, 1.5, 2, 1.0, 2.0),),
            ts.Baseline("timeOfDay", 7, 1.25, 6),
        )
    ]
    assert json.loads(ts.render_results(res, "json").body)["1~.m.1~wattHours"]["baseline"] == {
        "by": "timeOfDay",
        "history": 7,
        "val": 1.25,
        "count": 6,
    }
    assert ET.fromstring(ts.render_results(res, "xml").body).find("timeSeries/baseline").attrib == {
        "by": "timeOfDay",
        "history": "7",
        "val": "1.25",
        "count": "6",
    }  # type: ignore[union-attr]
    rows = list(csv.DictReader(io.StringIO(ts.render_results(res, "csv").body.decode())))
    assert rows[0]["baseline"] == "1.25" and rows[0]["baselineCount"] == "6"


def test_description() -> None:
    infos = [ts.SeriesInfo(KEY, "counter", "Europe/Berlin")]
    doc = json.loads(ts.render_description(infos, "json", None, "/o.json").body)
    assert doc["meta"]["limit"] == {"default": 100, "maximum": 1000, "minimum": 0}
    assert doc["series"] == [
        {
            "name": "1~.m.1~wattHours",
            "node": 1,
            "source": "/m/1",
            "property": "wattHours",
            "type": "counter",
            "timeZone": "Europe/Berlin",
        }
    ]
    assert set(doc["meta"]) == set(ts.PARAMETERS)
    root = ET.fromstring(ts.render_description(infos, "xml", None, "/o.json").body)
    limit = root.find("meta/parameter[@name='limit']")
    assert limit is not None and limit.attrib["default"] == "100" and limit.attrib["maximum"] == "1000"
    assert root.find("series").attrib["name"] == "1~.m.1~wattHours"  # type: ignore[union-attr]
    rows = list(csv.DictReader(io.StringIO(ts.render_description(infos, "csv", None, "/o").body.decode())))
    assert rows == [
        {
            "series": "1~.m.1~wattHours",
            "node": "1",
            "source": "/m/1",
            "property": "wattHours",
            "type": "counter",
            "timeZone": "Europe/Berlin",
        }
    ]


def test_errors_in_each_format() -> None:
    assert json.loads(ts.render_error(400, "limit is bad", "limit").body) == {
        "error": {"status": 400, "message": "limit is bad", "parameter": "limit"}
    }
    assert ET.fromstring(ts.render_error(400, "m", "limit", "xml").body).attrib == {
        "status": "400",
        "message": "m",
        "parameter": "limit",
    }
    assert ts.render_error(400, "m", None, "jsonp", "cb").body.startswith(b"/**/cb({")
    assert ts.render_error(400, "m", None, "csv").content_type.startswith("application/json")


def test_openapi_document_lists_every_parameter() -> None:
    doc = json.loads((ROOT / "pipeline" / "api" / "openapi" / "timeseries.json").read_text())
    assert doc["openapi"].startswith("3.")
    get = doc["paths"]["/api/timeseries"]["get"]
    assert [p["name"] for p in get["parameters"]] == list(ts.PARAMETERS)
    assert {"200", "400", "404", "406", "503"} <= set(get["responses"])
    limit = next(p for p in get["parameters"] if p["name"] == "limit")["schema"]
    assert (limit["default"], limit["maximum"]) == (ts.LIMIT_DEFAULT, ts.LIMIT_MAX)


@pytest.mark.parametrize("fmt", ["json", "jsonp", "xml", "csv"])
def test_non_finite_stored_values_render_as_null_in_every_format(fmt: ts.Format) -> None:
    inf, nan = float("inf"), float("nan")
    points = (
        ts.raw_point("i", 0, inf, ""),
        ts.raw_point("i", 1, nan, ""),
        ts.raw_point("i", 2, 1e308, ""),
        ts.rollup_point("a", 3, 2, None, None, None, -inf, nan, inf, ""),
        ts.rollup_point("i", 4, 2, inf, 1.0, nan, None, None, None, ""),
    )
    base = ts.baseline("timeOfDay", 2, "instantaneous", [ts.Point(0, 1e308), ts.Point(1, 1e308)])
    result = ts.SeriesResult(SeriesKey(1, "/s", "w"), "instantaneous", None, 10, 0, 5, "UTC", points, base)
    body = ts.render_results([result], fmt, "cb").body.decode()
    assert "inf" not in body.lower() and "nan" not in body.lower()
    if fmt == "json":
        doc = json.loads(body)["1~.s~w"]
        assert [p["val"] for p in doc["data"]] == [None, None, 1e308, None, None]
        assert doc["data"][4]["min"] == 1.0 and "max" not in doc["data"][4]
        assert doc["baseline"]["val"] is None  # the mean of two 1e308 overflows
