"""SolarQuery parameters and JSON (processors/solarquery.py), pure."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processors import solarquery as sq
from processors.security_policy import Aggregation


def test_filter_takes_comma_lists_repeats_and_singular_names() -> None:
    f = sq.parse_filter(
        "nodeIds=3,1&nodeId=2&sourceIds=%2Fa%2F**,%2Fb&sourceId=%2Fc&aggregation=Hour"
        "&max=50&offset=100&withoutTotalResultsCount=true&sorts%5B0%5D.key=created"
        "&sorts%5B0%5D.descending=true"
    )
    assert f.node_ids == (1, 2, 3) and f.source_ids == ("/c", "/a/**", "/b")
    assert f.aggregation is Aggregation.HOUR and f.periodicity == "hour"
    assert (f.max, f.offset, f.without_total, f.descending) == (50, 100, True, True)


@pytest.mark.parametrize(
    ("text", "iso"),
    [
        ("2026-11-30", "2026-11-30T00:00:00+00:00"),
        ("2026-11-30T20:05", "2026-11-30T20:05:00+00:00"),
        ("2026-11-30 20:05:07", "2026-11-30T20:05:07+00:00"),
        ("2026-11-30 20:05:07.123Z", "2026-11-30T20:05:07.123000+00:00"),
        ("2026-11-30T20:05:07+13:00", "2026-11-30T07:05:07+00:00"),
    ],
)
def test_dates_in_solarnetworks_forms(text: str, iso: str) -> None:
    f = sq.parse_filter(f"startDate={text.replace('+', '%2B')}")
    assert f.start_ms == int(datetime.fromisoformat(iso).timestamp() * 1000)


@pytest.mark.parametrize(
    "query",
    [
        "startDate=30/11/2026",
        "max=0",
        "max=x",
        "offset=-1",
        "nodeIds=a",
        "aggregation=Fortnight",
        "aggregation=FiveMinute",
        "readingType=Sum",
        "tolerance=PT1H",
        "startDate=2026-11-30&localEndDate=2026-12-01",
        "localStartDate=2026-11-30T00:00Z",
    ],
)
def test_bad_parameters_are_422_with_a_reason(query: str) -> None:
    with pytest.raises(sq.QueryError) as err:
        sq.parse_filter(query).periodicity  # noqa: B018 - the aggregation is checked when asked
    assert err.value.status == 422 and err.value.message


def test_max_is_capped_at_a_thousand() -> None:
    assert sq.parse_filter("max=5000").max == sq.MAX_RESULTS


@given(st.integers(0, 4_102_444_800_000))
def test_created_reads_back_as_the_same_instant(ms: int) -> None:
    text = sq.format_created(ms)
    assert len(text) == 24 and text.endswith("Z")
    assert sq.parse_filter(f"startDate={text.replace(' ', '%20')}").start_ms == ms


def test_periods_and_shifts() -> None:
    assert sq.parse_period("P1Y2M3W4D") == (1, 2, 25)
    t = int(datetime(2026, 3, 31, tzinfo=UTC).timestamp() * 1000)
    assert sq.shift(t, (0, 1, 0)) == int(datetime(2026, 2, 28, tzinfo=UTC).timestamp() * 1000)
    assert sq.shift(t, (0, 0, 1), +1) == int(datetime(2026, 4, 1, tzinfo=UTC).timestamp() * 1000)


def test_a_difference_counts_each_reset_on_the_way() -> None:
    start, end = sq.Reading(0, 100.0), sq.Reading(10, 7.0)
    assert sq.difference(start, end) == -93.0
    resets = [sq.ResetAt(5, 150.0, 0.0), sq.ResetAt(20, 1e9, 0.0), sq.ResetAt(0, 1e9, 0.0)]
    assert sq.difference(start, end, resets) == 50.0 + 7.0  # only the reset inside (start, end]


def test_calculated_at_interpolates() -> None:
    assert sq.interpolate(sq.Reading(0, 10.0), sq.Reading(10, 20.0), 4) == 14.0
    assert sq.interpolate(None, sq.Reading(10, 20.0), 4) == 20.0
    assert sq.interpolate(None, None, 4) is None


def test_datum_json_is_flat_and_leaves_out_what_json_cannot_hold() -> None:
    d = sq.raw_datum(
        1,
        "/a",
        0,
        "Pacific/Auckland",
        [("w", "i", 1.5, ""), ("wh", "a", 2.0, ""), ("mode", "s", None, "eco"), ("bad", "i", float("nan"), "")],
        ["t2", "t1"],
    )
    assert d == {
        "created": "1970-01-01 00:00:00.000Z",
        "nodeId": 1,
        "sourceId": "/a",
        "localDate": "1970-01-01",
        "localTime": "12:00",
        "w": 1.5,
        "wh": 2,
        "mode": "eco",
        "tags": ["t1", "t2"],
    }
    a = sq.aggregate_datum(
        1,
        "/a",
        0,
        "UTC",
        [
            ("w", "i", 2.0, 1.0, 3.0, None, ""),
            ("wh", "a", None, None, None, 5.0, ""),
            ("mode", "s", None, None, None, None, "eco"),
        ],
    )
    assert (a["w"], a["w_min"], a["w_max"], a["wh"], a["mode"]) == (2, 1, 3, 5, "eco")


def test_interval_counts_calendar_units_in_the_node_zone() -> None:
    lo = int(datetime(2025, 12, 31, 12, tzinfo=UTC).timestamp() * 1000)  # 2026-01-01 01:00 in Auckland
    hi = int(datetime(2026, 2, 1, 12, tzinfo=UTC).timestamp() * 1000)
    got = sq.interval(lo, hi, "Pacific/Auckland")
    assert (got["startDate"], got["yearCount"], got["monthCount"], got["dayCount"]) == (
        "2026-01-01 01:00:00",
        1,
        2,
        33,
    )  # to 2026-02-02 01:00 there
