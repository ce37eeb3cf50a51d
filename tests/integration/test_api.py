"""The time-series HTTP API (`pipeline api`) as a process, over real ClickHouse data.

Most tests share one module database: raw rows written through the raw sink, rollups computed by
`pipeline.worker.rollups.recompute_range`, and expected values computed independently (the inserted
datums, Python slicing, tests/unit/rollup_reference.py). The last tests run the real pipeline
(ingest to Kafka, a worker storing raw rows and rollups, node time zones from the history log)
for the today / this week / this year and "now versus usual" use cases."""

from __future__ import annotations

import contextlib
import csv
import http.client
import io
import json
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.etree import ElementTree as ET
from zoneinfo import ZoneInfo

import psycopg
import pytest

from pipeline.embedded import stack
from pipeline.embedded.stack import free_port
from pipeline.settings import Settings
from pipeline.wire.producer import DatumProducer
from pipeline.worker.rollups import recompute_range
from processors import timeseries as ts
from processors.datum import Datum
from processors.metadata import value_at
from processors.rollup import DEFAULT_TOLERANCES, PERIODICITIES, RawPoint, points_from_datum
from processors.rows import RawColumns
from sinks import history
from sinks.clickhouse import RawSink, connect, ensure_schema
from sinks.rollups import read_rollups
from tests.integration.helpers import (
    ROOT,
    publish_metadata,
    schema_client,
    scratch_clickhouse,
    stop,
    wait_for,
    worker_process,
)
from tests.samples import metadata_event
from tests.unit import rollup_reference as ref
from tests.unit.test_rollup import assert_matches

pytestmark = pytest.mark.integration

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
T0 = 1_730_376_000_000  # 2024-10-31T12:00Z
N = 2345  # readings of node 1: more than two pages of the maximum limit
SOURCE = "/m/1"
ODD = (2, "/odd source/ü.x~", "temp_°C")  # a series name full of escapes


# --- the data --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Data:
    datums: list[Datum]
    times: list[int]  # node 1's reading times, in order
    watts: list[float]
    wh: list[float]
    mode: list[str]
    expected: dict[tuple[str, str, str, int], ref.RefRow]  # node 1's rollups, by the reference


def make_data() -> Data:
    rng = random.Random(3)
    datums, times, watts, wh, mode = [], [], [], [], []
    t, meter = T0, 1000.0
    for k in range(N):
        w = round(rng.uniform(-5, 500), 3)
        meter = round(meter + rng.uniform(0, 20), 3)
        m = rng.choice(["auto", "eco", "off"])
        datums.append(Datum(1, SOURCE, t, i={"watts": w}, a={"wattHours": meter}, s={"mode": m}))
        times.append(t)
        watts.append(w)
        wh.append(meter)
        mode.append(m)
        t += 3 * HOUR if k == 1500 else MIN  # one gap longer than the clock tolerance
    for k in range(5):
        datums.append(Datum(ODD[0], ODD[1], T0 + k * HOUR, i={ODD[2]: 20.0 + k}))
    points: list[RawPoint] = [p for d in datums if d.node_id == 1 for p in points_from_datum(d)]
    return Data(datums, times, watts, wh, mode, ref.reference(points, [], "UTC", DEFAULT_TOLERANCES))


def write(client: Any, datums: list[Datum]) -> None:
    cols = RawColumns()
    for d in datums:
        cols.add_datum(d)
    RawSink(client).write(cols)


# --- the API process -------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


class Api:
    def __init__(self, port: int) -> None:
        self.port = port

    def request(self, target: str, method: str = "GET", headers: dict[str, str] | None = None) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, target, headers=headers or {})
            r = conn.getresponse()
            return Response(r.status, dict(r.getheaders()), r.read())
        finally:
            conn.close()

    def get(self, query: str = "", accept: str | None = None, **params: Any) -> Response:
        qs = "&".join(f"{k}={quote(str(v), safe='*,~')}" for k, v in params.items())
        target = "/api/timeseries" + ("?" + qs if qs else query)
        return self.request(target, headers={"Accept": accept} if accept else {})

    def data(self, **params: Any) -> dict[str, Any]:
        r = self.get(**params)
        assert r.status == 200, r.body
        assert r.header("Access-Control-Allow-Origin") == "*"
        return r.json()  # type: ignore[no-any-return]


@contextlib.contextmanager
def api_process(settings: Settings, log_path: Path) -> Iterator[Api]:
    port = free_port()
    env = {**os.environ, **settings.as_env(), "PIPELINE_API_PORT": str(port), "PIPELINE_API_HOST": "127.0.0.1"}
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "api"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
    api = Api(port)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"pipeline api exited with {proc.returncode}: {log_path.read_text()}")
        with contextlib.suppress(OSError):
            return api.request("/api/timeseries/openapi.json").status == 200
        return False

    try:
        wait_for(up, 60, "the API to listen")
        yield api
    finally:
        if not stop(proc):
            raise AssertionError("pipeline api did not stop on SIGTERM")
    # SIGTERM stops it cleanly
    assert proc.returncode == 0, log_path.read_text()
    assert "Traceback" not in log_path.read_text()


def api_settings(clickhouse_url: str, database: str, **extra: Any) -> Settings:
    return Settings.from_env({})._with({"clickhouse_url": f"{clickhouse_url.rstrip('/')}/{database}", **extra})


@pytest.fixture(scope="module")
def data() -> Data:
    return make_data()


@pytest.fixture(scope="module")
def api(clickhouse_url: str, data: Data, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One database and one API process for the module's read-only tests."""
    with scratch_clickhouse(clickhouse_url, "t_api") as (database, client):
        write(client, data.datums)
        recompute_range(client, 1, SOURCE, T0 - DAY, T0 + 4 * DAY, lambda _n, _ms: "UTC")
        recompute_range(client, ODD[0], ODD[1], T0 - DAY, T0 + DAY, lambda _n, _ms: "UTC")
        # the stored rollups are the reference's (the API is tested against these values)
        stored = read_rollups(client, [(1, SOURCE, [(p, 0, 4_102_444_800_000) for p in PERIODICITIES])])
        assert_matches(stored, data.expected, 2e5, "node 1")
        with api_process(api_settings(clickhouse_url, database), tmp_path_factory.mktemp("api") / "api.log") as running:
            yield running


WATTS = ts.series_name(ts.SeriesKey(1, SOURCE, "watts"))
WH = ts.series_name(ts.SeriesKey(1, SOURCE, "wattHours"))
MODE = ts.series_name(ts.SeriesKey(1, SOURCE, "mode"))
ODD_NAME = ts.series_name(ts.SeriesKey(*ODD))


def iso(ms: int, tz: str = "UTC") -> str:
    """The spec's form, in a zone: YYYY-MM-DDTHH:MM:SS+ZZ:ZZ."""
    return datetime.fromtimestamp(ms / 1000, ZoneInfo(tz)).isoformat(timespec="seconds")


def pairs(doc: dict[str, Any]) -> list[tuple[int, Any]]:
    return [(p["ts"], p["val"]) for p in doc["data"]]


# --- description and discovery ---------------------------------------------------------------


def test_description_lists_defaults_maxima_and_series(api: Api) -> None:
    r = api.get()
    assert r.status == 200 and r.header("Access-Control-Allow-Origin") == "*"
    doc = r.json()
    assert doc["meta"]["limit"] == {"default": 100, "maximum": 1000, "minimum": 0}
    assert doc["meta"]["offset"]["default"] == 0
    names = {s["name"]: s for s in doc["series"]}
    assert set(names) == {WATTS, WH, MODE, ODD_NAME}
    assert names[WATTS] == {
        "name": WATTS,
        "node": 1,
        "source": SOURCE,
        "property": "watts",
        "type": "gauge",
        "timeZone": "UTC",
    }
    assert (names[WH]["type"], names[MODE]["type"]) == ("counter", "status")
    assert ODD_NAME == "2~.odd-20source.-C3-BC-2Ex-7E~temp_-C2-B0C"
    # every listed name works as a series parameter
    for name in names:
        assert api.data(series=name, limit=1)[name]["data"]
    xml = ET.fromstring(api.get(format="xml").body)
    assert xml.find("meta/parameter[@name='limit']").attrib["maximum"] == "1000"  # type: ignore[union-attr]
    assert {e.attrib["name"] for e in xml.findall("series")} == set(names)
    assert api.get(callback="cb").body.startswith(b'/**/cb({"meta"')


def test_openapi_document_is_served(api: Api) -> None:
    r = api.request("/api/timeseries/openapi.json")
    assert r.status == 200 and r.header("Access-Control-Allow-Origin") == "*"
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    assert [p["name"] for p in doc["paths"]["/api/timeseries"]["get"]["parameters"]] == list(ts.PARAMETERS)
    assert doc == json.loads((ROOT / "pipeline" / "api" / "openapi" / "timeseries.json").read_text())


# --- use case: the entire data, with pagination ----------------------------------------------


def test_entire_series_by_pages(api: Api, data: Data) -> None:
    got: list[tuple[int, Any]] = []
    offset = 0
    while True:
        doc = api.data(series=WATTS, limit=1000, offset=offset)[WATTS]
        assert (doc["limit"], doc["offset"], doc["total"]) == (1000, offset, N)
        assert (doc["type"], doc["periodicity"]) == ("gauge", "raw")
        if not doc["data"]:
            break
        got += pairs(doc)
        offset += 1000
    assert offset == 3000
    assert got == list(zip(data.times, data.watts, strict=True))
    # raw counters and statuses are the readings
    assert pairs(api.data(series=WH, limit=5, offset=7)[WH]) == list(zip(data.times, data.wh, strict=True))[7:12]
    assert pairs(api.data(series=MODE, limit=3)[MODE]) == list(zip(data.times, data.mode, strict=True))[:3]


def test_limit_and_offset_are_capped(api: Api, data: Data) -> None:
    doc = api.data(series=WATTS, limit=5000)[WATTS]
    assert doc["limit"] == 1000 and len(doc["data"]) == 1000
    doc = api.data(series=WATTS, limit=-4, offset=-9)[WATTS]
    assert (doc["limit"], doc["offset"], doc["data"]) == (0, 0, [])
    doc = api.data(series=WATTS)[WATTS]
    assert doc["limit"] == 100 and len(doc["data"]) == 100  # the default


def test_series_list_and_star(api: Api) -> None:
    both = api.data(series=f"{WATTS},{ODD_NAME}", limit=2)
    assert set(both) == {WATTS, ODD_NAME}
    assert pairs(both[ODD_NAME]) == [(T0, 20.0), (T0 + HOUR, 21.0)]
    assert set(api.data(series="*", limit=1)) == {WATTS, WH, MODE, ODD_NAME}


# --- selection by time and by index ----------------------------------------------------------


@pytest.mark.parametrize(("lo", "hi", "tz"), [(10, 20, "UTC"), (1490, 1510, "Europe/Paris"), (0, N, "Asia/Kathmandu")])
def test_time_selection_is_half_open(api: Api, data: Data, lo: int, hi: int, tz: str) -> None:
    start, end = data.times[lo], data.times[hi] if hi < N else data.times[-1] + 1000
    want = [(t, w) for t, w in zip(data.times, data.watts, strict=True) if start <= t < end]
    doc = api.data(series=WATTS, startTime=iso(start, tz), endTime=iso(end, tz), limit=1000)[WATTS]
    assert doc["total"] == len(want)
    assert pairs(doc) == want[:1000]


def test_time_forms(api: Api, data: Data) -> None:
    want = pairs(api.data(series=WATTS, startTime="2024-10-31T13:00:00Z", endTime="2024-10-31T13:05:00Z")[WATTS])
    assert [t for t, _ in want] == [T0 + HOUR + k * MIN for k in range(5)]
    # the spec's +ZZ:00, escaped, and unescaped (a '+' in a query string reads as a space)
    assert (
        pairs(api.data(series=WATTS, startTime="2024-10-31T14:00:00+01:00", endTime="2024-10-31T14:05:00+01:00")[WATTS])
        == want
    )
    r = api.get(f"?series={WATTS}&startTime=2024-10-31T14:00:00+01:00&endTime=2024-10-31T14:05:00+01:00")
    assert r.status == 200 and pairs(r.json()[WATTS]) == want
    # only a lower bound, only an upper bound
    assert api.data(series=WATTS, startTime=iso(data.times[-3]))[WATTS]["total"] == 3
    assert api.data(series=WATTS, endTime=iso(data.times[3]))[WATTS]["total"] == 3


@pytest.mark.parametrize(
    ("start", "end", "offset", "limit"),
    [
        (None, None, 0, 10),
        (-10, None, 0, 100),
        (-10, -3, 2, 3),
        (5, 2, 0, 10),
        (None, -2340, 1, 100),
        (1000, None, 1000, 1000),
        (-99999, 3, 0, 10),
        (2340, 99999, 0, 10),
    ],
)
def test_index_selection_is_a_python_slice(
    api: Api, data: Data, start: int | None, end: int | None, offset: int, limit: int
) -> None:
    params: dict[str, Any] = {"series": WATTS, "offset": offset, "limit": limit}
    if start is not None:
        params["startIndex"] = start
    if end is not None:
        params["endIndex"] = end
    everything = list(zip(data.times, data.watts, strict=True))
    selected = everything[start:end]
    doc = api.data(**params)[WATTS]
    assert doc["total"] == len(selected)
    assert pairs(doc) == selected[offset : offset + limit]


# --- use case: every granularity -------------------------------------------------------------


def expected_points(
    data: Data, per: str, prop: str, kind: str, lo: int = -(2**62), hi: int = 2**62
) -> list[dict[str, Any]]:
    rows = sorted(
        (s, r)
        for (p, name, k, s), r in data.expected.items()
        if p == per and name == prop and k == kind and lo <= s < hi
    )
    out = []
    for s, r in rows:
        if kind == "i":
            out.append({"ts": s, "val": float(r.avg), "count": r.count, "min": r.min, "max": r.max})  # type: ignore[arg-type]
        elif kind == "a":
            out.append(
                {
                    "ts": s,
                    "val": float(r.diff),
                    "count": r.count,  # type: ignore[arg-type]
                    "start": r.read_start,
                    "end": r.read_end,
                }
            )
        else:
            out.append({"ts": s, "val": r.mode, "count": r.count})
    return out


def same_points(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [p["ts"] for p in got] == [p["ts"] for p in want]
    for g, w in zip(got, want, strict=True):
        assert set(g) == set(w), (g, w)
        for k, v in w.items():
            if isinstance(v, float):
                assert math.isclose(g[k], v, rel_tol=1e-9, abs_tol=1e-6), (k, g, w)
            else:
                assert g[k] == v, (k, g, w)


@pytest.mark.parametrize("per", PERIODICITIES)
def test_every_granularity(api: Api, data: Data, per: str) -> None:
    docs = api.data(series=f"{WATTS},{WH},{MODE}", periodicity=per, limit=1000)
    for name, prop, kind, type_ in (
        (WATTS, "watts", "i", "gauge"),
        (WH, "wattHours", "a", "counter"),
        (MODE, "mode", "s", "status"),
    ):
        doc = docs[name]
        want = expected_points(data, per, prop, kind)
        assert (doc["periodicity"], doc["type"], doc["total"]) == (per, type_, len(want))
        same_points(doc["data"], want)


def test_rollups_by_time_and_index(api: Api, data: Data) -> None:
    lo, hi = T0 + 3 * HOUR, T0 + 9 * HOUR
    doc = api.data(series=WH, periodicity="hour", startTime=iso(lo, "America/New_York"), endTime=iso(hi))[WH]
    same_points(doc["data"], expected_points(data, "hour", "wattHours", "a", lo, hi))
    assert len(doc["data"]) == 6
    doc = api.data(series=WATTS, periodicity="halfhour", startIndex=-4, endIndex=-1)[WATTS]
    same_points(doc["data"], expected_points(data, "halfhour", "watts", "i")[-4:-1])
    # a day's counter value is the sum of its hours'
    days = api.data(series=WH, periodicity="day")[WH]["data"]
    hours = api.data(series=WH, periodicity="hour", limit=1000)[WH]["data"]
    for d in days:
        assert math.isclose(d["val"], sum(h["val"] for h in hours if d["ts"] <= h["ts"] < d["ts"] + DAY), rel_tol=1e-9)


# --- use case: today / this week / this year (UTC here; node zones in the pipeline test) ------


def test_current_day_week_year_with_at(api: Api, data: Data) -> None:
    at = T0 + 20 * HOUR  # 2024-11-01T08:00Z, a Friday
    day = datetime(2024, 11, 1, tzinfo=UTC).timestamp() * 1000
    doc = api.data(series=WATTS, current="day", at=iso(at), limit=1000)[WATTS]
    want = [(t, w) for t, w in zip(data.times, data.watts, strict=True) if day <= t < day + DAY]
    assert doc["total"] == len(want) and pairs(doc) == want[:1000]
    week = api.data(series=WH, current="week", at=iso(at), periodicity="day")[WH]
    same_points(
        week["data"],
        expected_points(
            data,
            "day",
            "wattHours",
            "a",
            int(datetime(2024, 10, 28, tzinfo=UTC).timestamp() * 1000),
            int(datetime(2024, 11, 4, tzinfo=UTC).timestamp() * 1000),
        ),
    )
    year = api.data(series=WH, current="year", at=iso(at), periodicity="month")[WH]
    same_points(year["data"], expected_points(data, "month", "wattHours", "a"))
    assert len(year["data"]) == 2  # October and November 2024
    assert api.data(series=WATTS, current="month", at="2025-01-15T00:00:00Z")[WATTS]["data"] == []


# --- use case: now compared with the usual ---------------------------------------------------


def test_compare_with_the_same_time_of_day(api: Api, data: Data) -> None:
    now = T0 + DAY + 5 * HOUR + 30 * MIN  # 2024-11-01T17:30Z (after the gap)
    at = now + 40 * MIN  # the latest complete half hour before 18:10 opened at 17:30
    docs = api.data(series="*", compare="timeOfDay", history=3, at=iso(at))
    assert set(docs) == {WATTS, WH, MODE, ODD_NAME}
    for name, prop, kind in ((WATTS, "watts", "i"), (WH, "wattHours", "a"), (MODE, "mode", "s")):
        doc = docs[name]
        want_now = expected_points(data, "halfhour", prop, kind, now, now + 1)
        same_points(doc["data"], want_now)
        before = [
            p
            for k in (1, 2, 3)
            for p in expected_points(data, "halfhour", prop, kind, now - k * DAY, now - k * DAY + 1)
        ]
        assert len(before) == 1  # the data begins the day before
        assert doc["baseline"]["by"] == "timeOfDay" and doc["baseline"]["history"] == 3
        assert doc["baseline"]["count"] == 1
        if kind == "s":
            assert doc["baseline"]["val"] == before[0]["val"]
        else:
            assert math.isclose(doc["baseline"]["val"], before[0]["val"], rel_tol=1e-9)
    assert docs[ODD_NAME]["data"] == [] and docs[ODD_NAME]["baseline"]["count"] == 0
    # by hour, the mean of the same hour on the previous days that have one
    doc = api.data(series=WATTS, compare="timeOfDay", periodicity="hour", at=iso(T0 + DAY + 7 * HOUR))[WATTS]
    want = expected_points(data, "hour", "watts", "i", T0 + DAY + 6 * HOUR, T0 + DAY + 6 * HOUR + 1)
    same_points(doc["data"], want)
    prev = expected_points(data, "hour", "watts", "i", T0 + 6 * HOUR, T0 + 6 * HOUR + 1)
    assert math.isclose(doc["baseline"]["val"], prev[0]["val"], rel_tol=1e-9)
    assert doc["baseline"]["count"] == 1
    # the same weekday a week before: no data then
    doc = api.data(series=WATTS, compare="dayOfWeek", at=iso(at))[WATTS]
    same_points(doc["data"], expected_points(data, "halfhour", "watts", "i", now, now + 1))
    assert doc["baseline"] == {"by": "dayOfWeek", "history": 4, "val": None, "count": 0}


def test_compare_in_every_format(api: Api) -> None:
    at = iso(T0 + DAY + 6 * HOUR + 10 * MIN)
    xml = ET.fromstring(api.get(series=WATTS, compare="dayOfWeek", at=at, format="xml").body)
    base = xml.find("timeSeries/baseline")
    assert base is not None and base.attrib == {"by": "dayOfWeek", "history": "4", "count": "0"}
    rows = list(
        csv.DictReader(io.StringIO(api.get(series=WATTS, compare="timeOfDay", at=at, accept="text/csv").body.decode()))
    )
    assert len(rows) == 1 and rows[0]["baselineCount"] == "1" and rows[0]["series"] == WATTS


# --- formats ---------------------------------------------------------------------------------


def test_formats_by_negotiation_and_override(api: Api, data: Data) -> None:
    want = list(zip(data.times, data.watts, strict=True))[:3]
    j = api.get(series=WATTS, limit=3, accept="application/json")
    assert j.header(
        "Content-Type",
    ).startswith("application/json")  # type: ignore[union-attr]
    assert j.header("Vary") == "Accept"
    assert pairs(j.json()[WATTS]) == want

    x = api.get(series=WATTS, limit=3, accept="application/xml")
    assert x.header("Content-Type").startswith("application/xml")  # type: ignore[union-attr]
    root = ET.fromstring(x.body)
    series = root.find("timeSeries")
    assert series is not None
    assert {k: series.attrib[k] for k in ("name", "limit", "offset", "periodicity", "type")} == {
        "name": WATTS,
        "limit": "3",
        "offset": "0",
        "periodicity": "raw",
        "type": "gauge",
    }
    assert [(ts.parse_time(d.attrib["ts"], "ts"), float(d.attrib["val"])) for d in series.findall("datum")] == want

    c = api.get(series=WATTS, limit=3, accept="text/csv;q=0.9, application/json;q=0.5")
    assert c.header("Content-Type").startswith("text/csv")  # type: ignore[union-attr]
    rows = list(csv.DictReader(io.StringIO(c.body.decode())))
    assert [(int(r["ts"]), float(r["val"])) for r in rows] == want
    assert all(ts.parse_time(r["time"], "time") == int(r["ts"]) for r in rows)

    # format= overrides Accept
    assert api.get(series=WATTS, limit=3, format="json", accept="text/csv").json()[WATTS]["limit"] == 3
    assert api.get(series=WATTS, limit=3, format="csv", accept="application/json").body.startswith(b"series,")
    # a browser's Accept prefers XML; no Accept at all gets JSON
    assert api.get(series=WATTS, limit=1, accept="text/html,application/xml;q=0.9,*/*;q=0.8").body.startswith(b"<?xml")
    assert api.request(f"/api/timeseries?series={WATTS}&limit=1").json()[WATTS]["limit"] == 1


def test_jsonp(api: Api, data: Data) -> None:
    r = api.get(series=WATTS, limit=2, callback="app.onData")
    assert r.header("Content-Type").startswith("application/javascript")  # type: ignore[union-attr]
    text = r.body.decode()
    assert text.startswith("/**/app.onData(") and text.endswith(");")
    doc = json.loads(text[len("/**/app.onData(") : -2])
    assert pairs(doc[WATTS]) == list(zip(data.times, data.watts, strict=True))[:2]
    assert api.get(series=WATTS, limit=2, callback="cb", format="jsonp").body.startswith(b"/**/cb(")
    # errors reach a JSONP caller too
    err = api.get(series=WATTS, limit="x", callback="cb")
    assert err.status == 400 and err.body.startswith(b'/**/cb({"error"')


def test_head_and_cors_preflight(api: Api) -> None:
    head = api.request(f"/api/timeseries?series={WATTS}&limit=2", method="HEAD")
    get = api.get(series=WATTS, limit=2)
    assert head.status == 200 and head.body == b""
    assert head.header("Content-Length") == str(len(get.body))
    pre = api.request(
        "/api/timeseries?series=*",
        method="OPTIONS",
        headers={
            "Origin": "https://example.org",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization, x-sn-date",
        },
    )
    assert pre.status == 204 and pre.header("Access-Control-Allow-Origin") == "*"
    assert "GET" in pre.header("Access-Control-Allow-Methods")  # type: ignore[operator]
    # a signed request's headers (SNWS2), and nothing that would carry cookies
    allowed = {h.strip().lower() for h in (pre.header("Access-Control-Allow-Headers") or "").split(",")}
    assert {"authorization", "x-sn-date", "digest", "accept"} <= allowed
    assert pre.header("Access-Control-Allow-Credentials") is None


# --- errors ----------------------------------------------------------------------------------

BAD = [
    ("?bogus=1", "bogus"),
    (f"?series={WATTS}&limit=1&limit=2", "limit"),
    (f"?series={WATTS}&limit=", "limit"),
    (f"?series={WATTS}&limit=ten", "limit"),
    (f"?series={WATTS}&offset=1.5", "offset"),
    ("?limit=3", "series"),
    ("?series=", "series"),
    ("?series=watts", "series"),
    ("?series=1~a-2g~b", "series"),
    (f"?series={WATTS}&startTime=yesterday", "startTime"),
    (f"?series={WATTS}&endTime=2024-02-30T00:00:00Z", "endTime"),
    (f"?series={WATTS}&startTime=2024-11-02T00:00:00Z&endTime=2024-11-01T00:00:00Z", "endTime"),
    (f"?series={WATTS}&startIndex=1&startTime=2024-11-01T00:00:00Z", "startIndex"),
    (f"?series={WATTS}&endIndex=-1&endTime=2024-11-01T00:00:00Z", "endIndex"),
    (f"?series={WATTS}&startIndex=1&endTime=2024-11-01T00:00:00Z", "startIndex"),
    (f"?series={WATTS}&endIndex=1&startTime=2024-11-01T00:00:00Z", "endIndex"),
    (f"?series={WATTS}&startIndex=x", "startIndex"),
    (f"?series={WATTS}&periodicity=minute", "periodicity"),
    (f"?series={WATTS}&format=html", "format"),
    (f"?series={WATTS}&format=jsonp", "callback"),
    (f"?series={WATTS}&callback=alert(1)", "callback"),
    (f"?series={WATTS}&callback=cb&format=xml", "callback"),
    (f"?series={WATTS}&current=today", "current"),
    (f"?series={WATTS}&current=day&startIndex=1", "startIndex"),
    (f"?series={WATTS}&compare=sometimes", "compare"),
    (f"?series={WATTS}&compare=timeOfDay&limit=5", "limit"),
    (f"?series={WATTS}&compare=timeOfDay&periodicity=month", "periodicity"),
    (f"?series={WATTS}&at=2024-11-01T00:00:00Z", "at"),
    (f"?series={WATTS}&history=3", "history"),
    (f"?series={WATTS}&limit=%EF%BC%91", "limit"),  # a full-width digit
    (f"?series={WATTS}&startTime=%ff", None),  # not UTF-8
]


@pytest.mark.parametrize(("query", "parameter"), BAD)
def test_bad_parameters_are_400_naming_the_parameter(api: Api, query: str, parameter: str | None) -> None:
    r = api.get(query)
    assert r.status == 400, r.body
    assert r.header("Access-Control-Allow-Origin") == "*"
    err = error_of(r)
    assert err["status"] == 400 and err["parameter"] == parameter
    if parameter:
        assert parameter in err["message"]


def error_of(r: Response) -> dict[str, Any]:
    """The error document, whichever format it came in."""
    if r.header("Content-Type").startswith("application/xml"):  # type: ignore[union-attr]
        a = ET.fromstring(r.body).attrib
        return {"status": int(a["status"]), "message": a["message"], "parameter": a.get("parameter")}
    return r.json()["error"]  # type: ignore[no-any-return]


def test_errors_in_the_requested_format(api: Api) -> None:
    x = api.get(f"?series={WATTS}&limit=x&format=xml")
    assert x.status == 400 and ET.fromstring(x.body).attrib["parameter"] == "limit"
    x = api.get(f"?series={WATTS}&limit=x", accept="application/xml")
    assert x.status == 400 and ET.fromstring(x.body).tag == "error"


def test_unknown_series_unacceptable_types_paths_and_methods(api: Api) -> None:
    r = api.get(series=f"{WATTS},9~nowhere~watts")
    assert r.status == 404 and r.header("Access-Control-Allow-Origin") == "*"
    assert r.json()["error"]["parameter"] == "series" and "9~nowhere~watts" in r.json()["error"]["message"]
    r = api.get(series=WATTS, accept="image/png")
    assert r.status == 406 and "Accept" in r.json()["error"]["message"]
    r = api.request("/api/nothing")
    assert r.status == 404 and r.header("Access-Control-Allow-Origin") == "*"
    r = api.request("/api/timeseries?series=*", method="POST")
    assert r.status == 405 and r.header("Allow") == "GET, HEAD, OPTIONS"
    assert r.header("Access-Control-Allow-Origin") == "*"


def fuzz_values(series: list[str], times: list[str], undecodable: bool = True) -> list[str]:
    """What the fuzzing of the time-series API puts in its parameters: odd numbers and escapes ("%ff",
    not UTF-8, unless told not to), the series names and times given, words some parameter takes."""
    odd = ["", "*", "-1", "0", "99999999999999999999", "1e3", "%00", *(["%ff"] if undecodable else []), "%2B", "a,b"]
    return [*odd, *series, "x" * 300, *times, "halfhour", "xml", "cb", "day", "timeOfDay"]


def fuzzed_queries(rng: random.Random, n: int, values: list[str]) -> Iterator[str]:
    """n queries (without the "?") of one to four time-series API parameters, or a parameter it does
    not know, each with a value drawn from `values`."""
    for _ in range(n):
        params = rng.sample([*ts.PARAMETERS, "other"], rng.randrange(1, 5))
        yield "&".join(f"{p}={rng.choice(values)}" for p in params)


def test_fuzzed_queries_never_fail_the_server(api: Api) -> None:
    values = fuzz_values([WATTS], ["2024-11-01T00:00:00Z", "2024-11-01T00:00:00+01:00"])
    for params in fuzzed_queries(random.Random(5), 150, values):
        query = "?" + params
        r = api.get(query)
        assert r.status in (200, 400, 404), (query, r.status, r.body[:300])
        assert r.header("Access-Control-Allow-Origin") == "*"


def test_concurrent_requests(api: Api, data: Data) -> None:
    from concurrent.futures import ThreadPoolExecutor

    everything = list(zip(data.times, data.watts, strict=True))

    def one(k: int) -> bool:
        doc = api.data(series=WATTS, offset=k * 50, limit=50, periodicity="raw")[WATTS]
        return pairs(doc) == everything[k * 50 : k * 50 + 50]

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(one, range(40)))


# --- throughput ------------------------------------------------------------------------------


def test_thousand_point_responses_per_second(api: Api) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=60)  # one keep-alive connection
    target = f"/api/timeseries?series={WATTS}&limit=1000&offset=500"
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 3.0:
        conn.request("GET", target)
        r = conn.getresponse()
        body = r.read()
        assert r.status == 200
        n += 1
    elapsed = time.perf_counter() - t0
    conn.close()
    assert len(json.loads(body)[WATTS]["data"]) == 1000
    print(f"1000-point JSON responses: {n / elapsed:.1f} requests/s ({len(body)} bytes each)")
    assert n >= 1


# --- ClickHouse down -------------------------------------------------------------------------


def test_clickhouse_down_is_503(tmp_path: Path) -> None:
    settings = Settings.from_env({})._with({"clickhouse_url": f"http://127.0.0.1:{free_port()}/nothing"})
    with api_process(settings, tmp_path / "api.log") as down:
        for r in (down.get(series="*"), down.get()):
            assert r.status == 503 and r.header("Access-Control-Allow-Origin") == "*"
            assert "ClickHouse" in r.json()["error"]["message"]
        assert down.get(series="*", limit="x").status == 400  # parameters are checked first
        assert down.request("/api/timeseries/openapi.json").status == 200


def test_clickhouse_going_down_and_coming_back(tmp_path: Path) -> None:
    """A private endpoint stopped under a running API: 503 with a message, then answers again."""
    port = free_port()
    svc = stack.start_clickhouse(tmp_path / "ch", port, log_dir=tmp_path)
    try:
        client = connect(svc.url)
        ensure_schema(client)
        write(client, [Datum(1, "/x", T0 + k * MIN, i={"v": float(k)}) for k in range(5)])
        name = ts.series_name(ts.SeriesKey(1, "/x", "v"))
        with api_process(Settings.from_env({})._with({"clickhouse_url": svc.url}), tmp_path / "api.log") as api:
            assert pairs(api.data(series=name)[name]) == [(T0 + k * MIN, float(k)) for k in range(5)]
            svc.stop()
            r = api.get(series=name, limit=2)
            assert r.status == 503 and r.header("Access-Control-Allow-Origin") == "*"
            assert "ClickHouse" in r.json()["error"]["message"]
            svc = stack.start_clickhouse(tmp_path / "ch", port, log_dir=tmp_path)
            assert pairs(api.data(series=name, limit=2)[name]) == [(T0, 0.0), (T0 + MIN, 1.0)]
    finally:
        svc.stop()


def test_a_database_without_tables_has_no_series(clickhouse_url: str, ch_database: str, tmp_path: Path) -> None:
    with api_process(api_settings(clickhouse_url, ch_database), tmp_path / "api.log") as api:
        assert api.data()["series"] == []
        assert api.data(series="*") == {}
        r = api.get(series="1~.x~v")
        assert r.status == 404 and r.json()["error"]["parameter"] == "series"


# --- the real pipeline: ingest, worker, rollups, node time zones from the history log --------

ZONE = "Asia/Kathmandu"  # +05:45: local days, weeks and hours differ from UTC's
NODE = 7
STREAM = "/site/meter"


def local_start(now_ms: int, unit: str) -> int:
    """Independent of the API: the local calendar period's first instant, by zoneinfo."""
    t = datetime.fromtimestamp(now_ms / 1000, ZoneInfo(ZONE))
    d = t.date()
    if unit == "week":
        d -= timedelta(days=d.weekday())
    elif unit == "year":
        d = d.replace(month=1, day=1)
    return int(datetime(d.year, d.month, d.day, tzinfo=ZoneInfo(ZONE)).timestamp() * 1000)


def test_pipeline_today_week_year_and_now_in_the_node_zone(
    worker_settings: Settings, pg_dsn: str, tmp_path: Path
) -> None:
    settings = worker_settings
    client = schema_client(settings.clickhouse_url)
    publish_metadata(
        settings,
        [
            metadata_event("node", {"node_id": NODE}, "upsert", {"name": "kathmandu"}),
            metadata_event("node_timezone", {"node_id": NODE}, "set_valid", {"tz": ZONE}, "2000-01-01T00:00:00Z"),
        ],
    )
    # readings every 10 minutes over the last 9 days, up to a minute ago
    now = int(time.time() * 1000)
    rng = random.Random(9)
    datums, meter = [], 5000.0
    t = now - 9 * DAY
    while t < now - MIN:
        meter = round(meter + rng.uniform(0, 30), 3)
        datums.append(Datum(NODE, STREAM, t, i={"watts": round(rng.uniform(0, 900), 3)}, a={"wattHours": meter}))
        t += 10 * MIN
    points = [p for d in datums for p in points_from_datum(d)]
    expected = ref.reference(points, [], ZONE, DEFAULT_TOLERANCES)
    with worker_process(settings, tmp_path / "worker.log"):
        wait_for(lambda: _zone_known(pg_dsn), 60, "the node's time zone in the history log")
        producer = DatumProducer(settings)
        producer.send(datums)
        producer.flush()
        wait_for(lambda: int(client.command("SELECT count() FROM datum")) == 2 * len(datums), 90, "raw rows stored")

        def settled() -> bool:
            stored = read_rollups(client, [(NODE, STREAM, [(p, 0, 4_102_444_800_000) for p in PERIODICITIES])])
            try:
                assert_matches(stored, expected, 1e5, "node 7")
            except AssertionError:
                return False
            return True

        wait_for(settled, 90, "rollups equal to the reference")
    with api_process(settings, tmp_path / "api.log") as api:
        watts = ts.series_name(ts.SeriesKey(NODE, STREAM, "watts"))
        wh = ts.series_name(ts.SeriesKey(NODE, STREAM, "wattHours"))
        desc = {s["name"]: s for s in api.data()["series"]}
        assert desc[watts]["timeZone"] == ZONE
        data = Data(
            datums,
            [d.created_ms for d in datums],
            [d.i["watts"] for d in datums],
            [d.a["wattHours"] for d in datums],
            [],
            expected,
        )
        asked = int(time.time() * 1000)
        # today, raw: exactly the readings since local midnight
        today = api.data(series=watts, current="day", limit=1000)[watts]
        assert today["timeZone"] == ZONE
        start = local_start(asked, "day")
        want = [(t, w) for t, w in zip(data.times, data.watts, strict=True) if start <= t]
        assert pairs(today) == want and today["total"] == len(want)
        # today by hour (Kathmandu hours open at :15 UTC)
        hours = api.data(series=wh, current="day", periodicity="hour")[wh]
        same_points(hours["data"], expected_points(data, "hour", "wattHours", "a", start, start + DAY))
        assert all((p["ts"] // MIN) % 60 == 15 for p in hours["data"])
        # this week by day, from local Monday
        week_start = local_start(asked, "week")
        week = api.data(series=wh, current="week", periodicity="day")[wh]
        same_points(week["data"], expected_points(data, "day", "wattHours", "a", week_start, week_start + 7 * DAY))
        assert week["data"][0]["ts"] >= week_start
        # this year by month and by week
        year_start = local_start(asked, "year")
        for per in ("month", "week", "day"):
            doc = api.data(series=watts, current="year", periodicity=per)[watts]
            same_points(doc["data"], expected_points(data, per, "watts", "i", year_start, year_start + 367 * DAY))
        # now against the same half hour on the previous 7 days
        now_doc = api.data(series=f"{watts},{wh}", compare="timeOfDay")
        for name, prop, kind in ((watts, "watts", "i"), (wh, "wattHours", "a")):
            doc = now_doc[name]
            assert len(doc["data"]) == 1
            latest = doc["data"][0]["ts"]
            assert latest + 30 * MIN <= int(time.time() * 1000)  # a complete half hour
            assert latest + 60 * MIN > asked  # the latest one
            same_points(doc["data"], expected_points(data, "halfhour", prop, kind, latest, latest + 1))
            local = datetime.fromtimestamp(latest / 1000, ZoneInfo(ZONE))
            before = []
            for k in range(1, 8):
                s = int((local - timedelta(days=k)).timestamp() * 1000)  # Kathmandu has no DST
                before += [p["val"] for p in expected_points(data, "halfhour", prop, kind, s, s + 1)]
            assert doc["baseline"]["count"] == len(before) == 7
            assert math.isclose(doc["baseline"]["val"], sum(before) / len(before), rel_tol=1e-9)
    assert "Traceback" not in (tmp_path / "worker.log").read_text()


def _zone_known(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            zones = history.current_catalog(conn).node_timezones.get(NODE, ())
            return value_at(zones, datetime.now(UTC)) == {"tz": ZONE}
    except psycopg.Error:
        return False
