"""The pure accept step: envelope, template validation, qRating scores and rates, storage TTL."""

from __future__ import annotations

import pytest

from processors.datum import Datum
from processors.rows import Scoring, accept_batch
from tests.samples import SEED_QRATING, room_catalog, stream

NOW = 1_700_000_000_000
T0 = 1_600_000_000_000


CATALOG = room_catalog(
    stream("room.temp", qrating=SEED_QRATING, storage={"period": "DAYS", "total": 30}),
    stream("room.energy", "CUMULATIVE", qrating={**SEED_QRATING, "cumulative_period_divisor": 3600}),
    stream(
        "room.mode",
        schema={"type": "string"},
        qrating={**SEED_QRATING, "conversion_matrix": {"cold": 0, "fine": 25}},
    ),
    stream("room.debug", storage={"period": "NEVER"}),
    stream("room.cop", calculated=True),
)


def rows_by_property(result) -> dict[str, dict[str, object]]:  # type: ignore[no-untyped-def]
    cols = result.rows
    return {
        cols.property[k]: {
            name: getattr(cols, name)[k]
            for name in ("value", "text", "datastream", "score", "performance", "label", "quality", "ttl_days")
        }
        for k in range(len(cols))
    }


def test_scores_and_ttl_are_stored_with_the_row() -> None:
    result = accept_batch([Datum(1, "/room/1", T0, {"temperature": 15.0}, {}, {"mode": "fine"})], NOW, CATALOG)
    rows = rows_by_property(result)
    assert rows["temperature"] == {
        "value": 15.0,
        "text": "",
        "datastream": "room.temp",
        "score": 750.0,
        "performance": 75.0,
        "label": "NORMAL",
        "quality": "desired",
        "ttl_days": 30,
    }
    assert rows["mode"]["score"] == 1000.0 and rows["mode"]["quality"] == "ideal"
    assert not result.refused


def test_conversion_matrix_miss_refuses_that_sample_only() -> None:
    result = accept_batch([Datum(1, "/room/1", T0, {"temperature": 25.0}, {}, {"mode": "weird"})], NOW, CATALOG)
    assert set(rows_by_property(result)) == {"temperature"}
    ((_, reasons, stage),) = result.refused
    assert stage == "validation"
    assert [(r.rule, r.property, r.datastream, r.value) for r in reasons] == [
        ("qrating.conversion_missing", "mode", "room.mode", "weird")
    ]


def test_cumulative_rate_is_scored_and_out_of_order_gets_none() -> None:
    scoring = Scoring()
    batch = [
        Datum(1, "/room/1", T0, {}, {"energy": 1000.0}),
        Datum(1, "/room/1", T0 + 3_600_000, {}, {"energy": 1025.0}),  # 25 Wh in an hour: ideal
        Datum(1, "/room/1", T0 + 1_800_000, {}, {"energy": 1010.0}),  # late: no rate against the newer one
    ]
    result = accept_batch(batch, NOW, CATALOG, scoring)
    assert result.rows.score == [None, 1000.0, None]
    assert result.rows.value == [1000.0, 1025.0, 1010.0]
    # the state survives into the next batch: +60 Wh in the next hour is HOT's edge, critical beyond
    nxt = accept_batch([Datum(1, "/room/1", T0 + 7_200_000, {}, {"energy": 1086.0})], NOW, CATALOG, scoring)
    assert nxt.rows.quality == ["critical"] and nxt.rows.label == ["HOT"]


def test_never_stored_goes_to_latest_only() -> None:
    result = accept_batch([Datum(1, "/room/1", T0, {"temperature": 20.0, "debug": 3.0})], NOW, CATALOG)
    assert set(rows_by_property(result)) == {"temperature"}
    assert result.latest.property == ["debug"] and result.latest.value == [3.0]


@pytest.mark.parametrize(
    ("datum", "rule"),
    [
        (Datum(1, "/room/1", T0, {"temperature": "hot"}), "sample.not_a_number"),  # type: ignore[dict-item]
        (Datum(1, "/room/1", T0, {"cop": 3.0}), "sample.calculated"),
        (Datum(1, "/room/1", T0, {"humidity": 3.0}), "sample.unmapped"),
        (Datum(1, "/room/1", T0, {}, {"temperature": 3.0}), "sample.period_mismatch"),
    ],
)
def test_invalid_samples_are_refused_with_their_rule(datum: Datum, rule: str) -> None:
    result = accept_batch([datum], NOW, CATALOG)
    rules = [r.rule for _, reasons, _ in result.refused for r in reasons]
    assert rule in rules
    assert len(result.rows) == 0


def test_unbound_source_passes_unvalidated() -> None:
    result = accept_batch([Datum(1, "/other", T0, {"x": 1.0})], NOW, CATALOG)
    assert rows_by_property(result)["x"]["datastream"] == "" and not result.refused
