"""The SolarQuery API and security tokens, with SolarNetwork's own clients.

One module database: datums of two nodes written through the raw sink, rollups by
`recompute_range`, tokens made with `pipeline token create` in a fresh history log, one
`pipeline api` process. solarnetwork-api-core signs (SNWS2) and solarnetwork-datum-loader pages
through datum/list and datum/reading, finds ranges and sources, under Node
(tests/js/solarquery_client.mjs). Every answer is compared with what was written; every
negative case gets its 401/403 and no data.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from pipeline.worker.rollups import recompute_range
from processors import snws2
from processors import timeseries as ts
from processors.datum import Datum
from tests.integration.helpers import pipeline_cli, schema_client, scratch_stores, token_cli
from tests.integration.test_api import Api, api_process, api_settings, fuzz_values, fuzzed_queries, write
from tests.snjs import solarquery_client

pytestmark = pytest.mark.integration

MIN = 60_000
HOUR = 60 * MIN
T0 = 1_764_547_200_000  # 2025-12-01T00:00Z
N = 240  # four hours of a datum a minute per stream
STREAMS = [(1, "/m/1"), (1, "/m/2"), (2, "/x/1")]


def value(node: int, source: str, k: int) -> tuple[float, float]:
    base = 100 * node + (10 if source.endswith("2") else 0)
    return float(base + k % 7), 1000.0 + base + 2.5 * k


def make_datums() -> list[Datum]:
    out = []
    for node, source in STREAMS:
        for k in range(N):
            watts, wh = value(node, source, k)
            out.append(
                Datum(
                    node,
                    source,
                    T0 + k * MIN,
                    i={"watts": watts},
                    a={"wattHours": wh},
                    s={"mode": "auto" if k % 2 else "eco"},
                )
            )
    return out


@dataclass
class Setup:
    api: Api
    tokens: dict[str, tuple[str, str]]  # name -> (id, secret)
    datums: list[Datum]
    dsn: str

    def client(self, name: str | None, ops: list[dict[str, Any]], secret: str | None = None) -> list[dict[str, Any]]:
        token, real = self.tokens[name] if name else (None, None)
        return solarquery_client("127.0.0.1", self.api.port, ops, token, secret or real)

    def signed(self, name: str, target: str) -> Any:
        """A GET of target (path and query) signed with SNWS2 by the token `name`."""
        token, secret = self.tokens[name]
        path, _, query = target.partition("?")
        headers = snws2.sign(
            token_id=token,
            secret=secret,
            method="GET",
            host=f"127.0.0.1:{self.api.port}",
            path=path,
            now=datetime.now(UTC),
            params=snws2.parse_query(query),
        )
        return self.api.request(target, headers=headers)


@pytest.fixture(scope="module")
def setup(clickhouse_url: str, postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    with scratch_stores(clickhouse_url, postgres_url, "t_sq") as (database, ch_url, dsn):
        client = schema_client(ch_url)
        datums = make_datums()
        write(client, datums)
        for node, source in STREAMS:
            recompute_range(client, node, source, T0 - HOUR, T0 + 5 * HOUR, lambda _n, _ms: "UTC")
        past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
        made = {
            "node1": token_cli(dsn, "create", "--node", "1", "--name", "node 1"),
            "m1": token_cli(dsn, "create", "--node", "1", "--source", "/m/1"),
            "hourly": token_cli(dsn, "create", "--node", "1", "--min-aggregation", "Hour"),
            "expired": token_cli(dsn, "create", "--node", "1", "--expires", past),
            "revoked": token_cli(dsn, "create", "--node", "1"),
            "gateway": token_cli(dsn, "create", "--type", "node", "--node", "1"),
        }
        token_cli(dsn, "revoke", made["revoked"]["tokenId"])
        tokens = {name: (m["tokenId"], m["tokenSecret"]) for name, m in made.items()}
        with api_process(
            api_settings(clickhouse_url, database, postgres_dsn=dsn), tmp_path_factory.mktemp("sq") / "api.log"
        ) as running:
            yield Setup(running, tokens, datums, dsn)


def created(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.") + f"{ms % 1000:03d}Z"


def expected_rows(datums: list[Datum], streams: set[tuple[int, str]], lo: int, hi: int) -> set[tuple[Any, ...]]:
    return {
        (d.node_id, d.source_id, created(d.created_ms), d.i["watts"], d.a["wattHours"], d.s["mode"])
        for d in datums
        if (d.node_id, d.source_id) in streams and lo <= d.created_ms < hi
    }


def got_rows(results: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["nodeId"], r["sourceId"], r["created"], r["watts"], r["wattHours"], r["mode"]) for r in results]


# --- what SolarNetwork's clients read -----------------------------------------------------------


def test_datum_loader_pages_exactly_the_ingested_datums(setup: Setup) -> None:
    lo, hi = T0 + 10 * MIN, T0 + 3 * HOUR + 7 * MIN
    [paged, whole] = setup.client(
        "node1",
        [
            {
                "op": "load",
                "pageSize": 50,
                "filter": {"nodeIds": [1], "sourceIds": ["/m/**"], "startDate": lo, "endDate": hi},
            },
            {"op": "load", "filter": {"nodeIds": [1], "startDate": lo, "endDate": hi}},
        ],
    )
    want = expected_rows(setup.datums, {(1, "/m/1"), (1, "/m/2")}, lo, hi)
    rows = got_rows(paged["results"])
    assert len(rows) == len(want) == 2 * (3 * 60 - 3)  # 354 datums in 8 pages of 50
    assert set(rows) == want
    assert set(got_rows(whole["results"])) == want
    first = paged["results"][0]
    assert first["localDate"] == "2025-12-01" and first["localTime"] == "00:10"


def test_readings_most_recent_ranges_and_sources(setup: Setup) -> None:
    lo, hi = T0 + 30 * MIN, T0 + 2 * HOUR
    one = {"nodeIds": [1], "sourceIds": ["/m/1"], "startDate": lo, "endDate": hi}
    readings, recent, ranges, sources, within = setup.client(
        "node1",
        [
            {"op": "load", "readings": True, "filter": one},
            {"op": "get", "url": "mostRecentDatumUrl", "filter": {"nodeIds": [1]}},
            {"op": "range", "filter": {"nodeIds": [1], "sourceIds": ["/m/2"]}},
            {"op": "sources", "filter": {"nodeIds": [1]}},
            {"op": "get", "url": "datumReadingUrl", "readingType": "DifferenceWithin", "filter": one},
        ],
    )
    # Difference: the readings at or before each date
    start_wh, end_wh = value(1, "/m/1", 30)[1], value(1, "/m/1", 120)[1]
    [row] = readings["results"]
    assert (row["wattHours_start"], row["wattHours_end"], row["wattHours"]) == (start_wh, end_wh, end_wh - start_wh)
    assert row["created"] == created(lo) and row["endDate"] == created(hi) and row["timeZone"] == "UTC"
    # DifferenceWithin: only readings inside [start, end]
    [inside] = within["body"]["data"]["results"]
    assert (inside["wattHours_start"], inside["wattHours_end"]) == (start_wh, end_wh)
    assert recent["status"] == 200
    latest = {(r["sourceId"], r["created"], r["watts"]) for r in recent["body"]["data"]["results"]}
    last = T0 + (N - 1) * MIN
    assert latest == {
        ("/m/1", created(last), value(1, "/m/1", N - 1)[0]),
        ("/m/2", created(last), value(1, "/m/2", N - 1)[0]),
    }
    assert ranges["results"]["startDateMillis"] == T0 and ranges["results"]["endDateMillis"] == last
    assert sources["results"] == {"1": ["/m/1", "/m/2"]}


def test_hourly_aggregates_match_the_raw_datums(setup: Setup) -> None:
    [hourly] = setup.client(
        "hourly",
        [
            {
                "op": "load",
                "filter": {
                    "nodeIds": [1],
                    "sourceIds": ["/m/1"],
                    "startDate": T0,
                    "endDate": T0 + 4 * HOUR,
                    "aggregation": "Hour",
                },
            },
        ],
    )
    rows = hourly["results"]
    assert [r["created"] for r in rows] == [created(T0 + h * HOUR) for h in range(4)]
    for h, r in enumerate(rows):
        ks = range(60 * h, 60 * h + 60)
        watts = [value(1, "/m/1", k)[0] for k in ks]
        assert r["watts"] == pytest.approx(sum(watts) / 60)
        assert (r["watts_min"], r["watts_max"]) == (min(watts), max(watts))
        assert r["wattHours"] == pytest.approx(2.5 * 60 if h < 3 else 2.5 * 59)


# --- what the policy allows -----------------------------------------------------------------------


def test_a_source_policy_narrows_wildcards_and_refuses_what_it_excludes(setup: Setup) -> None:
    narrowed, refused, other_node, sources = setup.client(
        "m1",
        [
            {"op": "load", "filter": {"nodeIds": [1], "sourceIds": ["/m/**"], "startDate": T0, "endDate": T0 + HOUR}},
            {"op": "get", "url": "listDatumUrl", "filter": {"nodeIds": [1], "sourceIds": ["/m/2"]}},
            {"op": "get", "url": "listDatumUrl", "filter": {"nodeIds": [2]}},
            {"op": "sources", "filter": {"nodeIds": [1]}},
        ],
    )
    assert {r["sourceId"] for r in narrowed["results"]} == {"/m/1"} and len(narrowed["results"]) == 60
    assert refused["status"] == 403 and refused["body"]["success"] is False and "data" not in refused["body"]
    assert other_node["status"] == 403 and "data" not in other_node["body"]
    assert sources["results"] == {"1": ["/m/1"]}


def test_a_node_policy_never_shows_other_nodes(setup: Setup) -> None:
    [everything] = setup.client("node1", [{"op": "load", "filter": {"startDate": T0, "endDate": T0 + 10 * MIN}}])
    assert {r["nodeId"] for r in everything["results"]} == {1} and len(everything["results"]) == 20


def test_credentials_that_do_not_hold_get_401_and_no_data(setup: Setup) -> None:
    q = {"nodeIds": [1], "startDate": T0, "endDate": T0 + HOUR}
    (wrong,) = setup.client("node1", [{"op": "get", "url": "listDatumUrl", "filter": q}], secret="x" * 64)
    (tampered,) = setup.client("node1", [{"op": "get", "url": "listDatumUrl", "filter": q, "tamper": "&nodeIds=2"}])
    (skewed,) = setup.client("node1", [{"op": "get", "url": "listDatumUrl", "filter": q, "dateShiftMs": 16 * MIN}])
    (expired,) = setup.client("expired", [{"op": "get", "url": "listDatumUrl", "filter": q}])
    (revoked,) = setup.client("revoked", [{"op": "get", "url": "listDatumUrl", "filter": q}])
    (anonymous,) = setup.client(None, [{"op": "get", "url": "listDatumUrl", "filter": q}])
    for got, reason in (
        (wrong, "Bad credentials"),
        (tampered, "Bad credentials"),
        (skewed, "date skew too large"),
        (expired, "Expired token"),
        (revoked, "Bad credentials"),
        (anonymous, "Missing Authorization header"),
    ):
        assert got["status"] == 401, got
        assert got["body"]["success"] is False and "data" not in got["body"]
        assert reason in got["body"]["message"]
    # the loader reports the refusal; it never returns rows
    [loaded] = setup.client("node1", [{"op": "load", "filter": q}], secret="y" * 64)
    assert "results" not in loaded and loaded["error"]


def test_aggregation_below_the_minimum_and_a_node_token_are_refused(setup: Setup) -> None:
    q = {"nodeIds": [1], "startDate": T0, "endDate": T0 + HOUR}
    raw, half, hour = setup.client(
        "hourly",
        [
            {"op": "get", "url": "listDatumUrl", "filter": q},
            {"op": "get", "url": "listDatumUrl", "filter": {**q, "aggregation": "ThirtyMinute"}},
            {"op": "get", "url": "listDatumUrl", "filter": {**q, "aggregation": "Hour"}},
        ],
    )
    assert raw["status"] == 403 and "below the token policy's minimum Hour" in raw["body"]["message"]
    assert half["status"] == 403 and "data" not in half["body"]
    assert hour["status"] == 200 and hour["body"]["data"]["returnedResultCount"] == 2
    [gateway] = setup.client("gateway", [{"op": "get", "url": "listDatumUrl", "filter": q}])
    assert gateway["status"] == 403 and "cannot read datums" in gateway["body"]["message"]


def test_the_time_series_api_is_scoped_too(setup: Setup) -> None:
    """The OpenOrg time-series API takes the same tokens: its series list is the policy's, a
    series outside is refused (path tricks included), and nothing is served without a token."""

    def signed(target: str) -> Any:
        return setup.signed("m1", target)

    listing = signed("/api/timeseries")
    assert listing.status == 200, listing.body
    names = {s["name"] for s in listing.json()["series"]}
    assert names == {ts.series_name(ts.SeriesKey(1, "/m/1", p)) for p in ("watts", "wattHours", "mode")}
    outside = ts.series_name(ts.SeriesKey(2, "/x/1", "watts"))
    assert signed(f"/api/timeseries?series={outside}").status == 403
    # a source named with ../ is another source, refused before anything is looked up
    for sneaky in ("/m/1/../../x/1", "/m/1/..", "/m/1/%2e%2e/x"):
        name = quote(ts.series_name(ts.SeriesKey(1, sneaky, "watts")), safe="")
        assert signed(f"/api/timeseries?series={name}").status == 403
    assert setup.api.request("/api/timeseries").status == 401
    assert setup.api.request("/api/timeseries").header("WWW-Authenticate") == "SNWS2"


def test_token_list_shows_no_secret_and_the_log_keeps_none(setup: Setup) -> None:
    out = pipeline_cli(setup.dsn, "token", "list")
    listed = {json.loads(line)["tokenId"] for line in out.splitlines() if line.strip()}
    assert listed == {t for name, (t, _) in setup.tokens.items() if name != "revoked"}
    with psycopg.connect(setup.dsn) as conn:
        dump = json.dumps([r for r in conn.execute("SELECT * FROM history.versions").fetchall()], default=str)
        log = json.dumps([r for r in conn.execute("SELECT * FROM history.transactions").fetchall()], default=str)
    for _, secret in setup.tokens.values():
        assert secret not in dump and secret not in log
    state = pipeline_cli(setup.dsn, "history", "state", "--at", "now", "--entity", "security_token")
    assert setup.tokens["m1"][0] in state and setup.tokens["revoked"][0] not in state


def test_fuzzed_signed_requests_never_fail_and_never_leave_the_policy(setup: Setup) -> None:
    """The time-series API's fuzzing, signed with a token limited to node 1's /m/1, plus fuzzed
    SolarQuery requests: never a 500, and no answer ever names another stream."""
    import random

    rng = random.Random(14)
    series = [ts.series_name(ts.SeriesKey(n, s, "watts")) for n, s in STREAMS]
    # no "%ff": signing decodes the query as UTF-8, strictly (snws2.parse_query)
    values = fuzz_values([quote(x, safe="") for x in series], ["2025-12-01T00:00:00Z"], undecodable=False)
    for query in fuzzed_queries(rng, 80, values):
        r = setup.signed("m1", f"/api/timeseries?{query}")
        assert r.status in (200, 400, 403, 404, 406), (r.status, r.body[:300])
        if r.status == 200:
            for other in series[1:]:
                assert other.encode() not in r.body
    sq_values = [
        "1",
        "2",
        "1,2",
        "%2Fm%2F**",
        "%2F**",
        "%2Fx%2F1",
        "Hour",
        "None",
        "Day",
        "Minute",
        "x",
        "",
        "2025-12-01",
        "2025-12-01T01:00",
        "P1D",
        "Difference",
        "CalculatedAt",
        "-5",
        "5000",
        "true",
    ]
    names = [
        "nodeId",
        "nodeIds",
        "sourceId",
        "sourceIds",
        "startDate",
        "endDate",
        "aggregation",
        "max",
        "offset",
        "readingType",
        "tolerance",
        "withNodeIds",
        "localStartDate",
        "mostRecent",
    ]
    for _ in range(120):
        endpoint = rng.choice(["datum/list", "datum/mostRecent", "datum/reading", "range/sources", "range/interval"])
        query = "&".join(f"{p}={rng.choice(sq_values)}" for p in rng.sample(names, rng.randrange(1, 6)))
        r = setup.signed("m1", f"/solarquery/api/v1/sec/{endpoint}?{query}")
        assert r.status in (200, 400, 403, 422), (endpoint, query, r.status, r.body[:300])
        doc = r.json()
        if r.status != 200:
            assert doc["success"] is False and "data" not in doc
            continue
        data = doc.get("data")
        rows = data.get("results", []) if isinstance(data, dict) else data or []
        for row in rows:
            if isinstance(row, dict):
                assert (row.get("nodeId", 1), row.get("sourceId", "/m/1")) == (1, "/m/1"), (endpoint, query, row)
            else:
                assert row == "/m/1"
