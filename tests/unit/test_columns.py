"""The columnar datum path against the reference (accept_batch over Datum objects), under Hypothesis."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.wire import codec
from processors import columns
from processors.binding import Binding, Catalog, load_catalog
from processors.catalog_versions import VersionedCatalog
from processors.columns import ColumnsResult, DatumColumns, accept_columns, first_accumulating, score_values
from processors.datum import Datum, check_envelope
from processors.qrating import QRating, RateState, Scorer
from processors.rows import AcceptResult, RawColumns, Scoring, accept_batch
from tests.samples import SEED_QRATING, room_catalog, stream

NOW = 1_700_000_000_000
T0 = NOW - 40 * 86_400_000  # some samples of 30-day datastreams are already expired on arrival

ROOM = room_catalog(
    stream(
        "room.temp",
        schema={"type": "number", "minimum": -50, "exclusiveMaximum": 80},
        qrating=SEED_QRATING,
        storage={"period": "DAYS", "total": 30},
        required=True,
    ),
    stream("room.energy", "CUMULATIVE", qrating={**SEED_QRATING, "cumulative_period_divisor": 3600}),
    stream(
        "room.mode",
        schema={"type": "string", "enum": ["cold", "fine", "odd"]},
        qrating={**SEED_QRATING, "conversion_matrix": {"cold": 0, "fine": 25}},
    ),
    stream("room.debug", storage={"period": "NEVER"}),
    stream("room.rain", "PULSE", schema={"type": "number", "multipleOf": 0.5}),
    stream("room.cop", calculated=True),
)
MODEL = ROOM.datamodels["room"]
LATER = Catalog([MODEL], [Binding(None, "/room/a", "room", {"temperature": "room.temp"}, valid_from_ms=T0 + 5_000)])
DEMO = load_catalog(Path(__file__).resolve().parents[2] / "schemas" / "datamodels")
CATALOGS = {
    "none": None,
    "room": ROOM,
    "demo": DEMO,
    "versions": VersionedCatalog((T0 + 7_000,), (ROOM, LATER)),
}

SOURCES = ["/room/a", "/room/b", "/S1/B1/M1", "/S1/INV1", "/elsewhere", "", "bad+"]
PROPS = ["temperature", "energy", "mode", "debug", "rain", "cop", "watts", "wattHours", "current", "other"]
NUMBERS = st.one_of(
    st.sampled_from([0.0, 0.5, -1.0, 25.0, 5.0, 35.0, 60.0, 79.5, 80.0, -50.0, 1e16, -1e16, math.nan, math.inf]),
    st.floats(-100, 100, allow_nan=False),
    st.floats(0, 2e6, allow_nan=False),
)
TEXTS = st.sampled_from(["cold", "fine", "odd", "zzz", ""])


@st.composite
def clean(draw: st.DrawFn) -> Datum:
    """A datum of a bound room that passes every rule (the columnar part takes its stream)."""
    created = T0 + draw(st.integers(0, 40)) * 1000
    i = {"temperature": draw(st.floats(-50, 79.9))}
    if draw(st.booleans()):
        i["debug"] = draw(st.floats(-1e3, 1e3))
    if draw(st.booleans()):
        i["rain"] = draw(st.integers(0, 20)) * 0.5
    # a meter whose rate (per hour) lands in every band of the thresholds, or drops (a counter reset)
    step = draw(st.sampled_from([0.0, 0.001, 0.004, 0.008, 0.0125, 0.02, -0.01]))
    a = {"energy": 10.0 + (created - T0) / 1000 * step} if draw(st.booleans()) else {}
    s = {"mode": draw(st.sampled_from(["cold", "fine"]))} if draw(st.booleans()) else {}
    if draw(st.integers(0, 4)) == 0:
        return Datum(draw(st.sampled_from([1, 2])), "/elsewhere", created, i, a, s)
    return Datum(
        draw(st.sampled_from([1, 2])),
        draw(st.sampled_from(["/room/a", "/room/b", "/room/c"])),
        created,
        i,
        a,
        s,
        tuple(draw(st.lists(st.sampled_from(["x", "y"]), max_size=2))),
    )


@st.composite
def wild(draw: st.DrawFn) -> Datum:
    node = draw(st.sampled_from([1, 2, -3]))
    source = draw(st.sampled_from(SOURCES))
    created = draw(
        st.one_of(
            st.integers(0, 12).map(lambda k: T0 + k * 1000),
            st.sampled_from([5, T0 + 3_000, NOW + 2 * 86_400_000, NOW - 10_000]),
        )
    )
    i = draw(st.dictionaries(st.sampled_from(PROPS), NUMBERS, max_size=4))
    a = draw(st.dictionaries(st.sampled_from(PROPS), NUMBERS, max_size=2))
    s = draw(st.dictionaries(st.sampled_from(PROPS), TEXTS, max_size=2))
    tags = tuple(draw(st.lists(st.sampled_from(["x", "y"]), max_size=2)))
    return Datum(node, source, created, i, a, s, tags)


def datums() -> st.SearchStrategy[Datum]:
    return st.one_of(clean(), clean(), wild())


def rows_of(cols: RawColumns | pa.Table) -> list[tuple[object, ...]]:
    """Rows as a multiset (sorted), tags as tuples: the reference's lists and the Arrow columns alike."""
    columns = cols.to_pydict().values() if isinstance(cols, pa.Table) else cols.columns()
    rows = (tuple(tuple(v) if isinstance(v, list | tuple) else v for v in r) for r in zip(*columns, strict=True))
    return sorted(rows, key=repr)


def same(a: ColumnsResult, b: AcceptResult) -> None:
    assert rows_of(a.rows) == rows_of(b.rows)
    assert rows_of(a.latest) == rows_of(b.latest)
    assert (a.datums_accepted, a.samples_expired, a.datums_expired) == (
        b.datums_accepted,
        b.samples_expired,
        b.datums_expired,
    )
    assert repr(a.refused) == repr(b.refused)  # NaN != NaN: compared by spelling


def baseline_rates() -> dict[tuple[int, str, str], RateState]:
    return {
        (1, "/room/a", "room.energy"): RateState(T0 + 2_000, 10.0),
        (1, "/S1/B1/M1", "energy.meter.wattHours"): RateState(T0, 5.0),
    }


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(st.lists(datums(), max_size=12), min_size=1, max_size=3),
    which=st.sampled_from(sorted(CATALOGS)),
    sorted_check=st.booleans(),
)
def test_columns_accept_exactly_what_the_reference_accepts(
    batches: list[list[Datum]], which: str, sorted_check: bool
) -> None:
    # both ways of finding the required datastreams a datum lacks: flag table, and sort
    with pytest.MonkeyPatch.context() as mp:
        if sorted_check:
            mp.setattr(columns, "FLAG_TABLE_MAX", 0)
        accepts_what_the_reference_accepts(batches, which)


def accepts_what_the_reference_accepts(batches: list[list[Datum]], which: str) -> None:
    catalog = CATALOGS[which]
    ref_scoring, col_scoring = Scoring(rates=baseline_rates()), Scoring(rates=baseline_rates())
    for batch in batches:  # one after the other: the rate baselines carry over
        want = accept_batch(batch, NOW, catalog, ref_scoring)
        got, refused = accept_columns(DatumColumns.from_datums(batch), NOW, catalog, col_scoring)
        same(got, want)
        assert [m for m, *_ in refused] == [0] * len(want.refused)
    assert col_scoring.rates == ref_scoring.rates


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(st.lists(datums(), max_size=6), min_size=1, max_size=4))
def test_refusals_keep_the_message_they_came_in(parts: list[list[Datum]]) -> None:
    """Several messages in one batch: each refusal names its own message, in order of arrival."""
    scoring_ref, scoring_col = Scoring(), Scoring()
    want: list[tuple[int, Datum]] = []
    for m, part in enumerate(parts):
        want += [(m, d) for d, _r, _s in accept_batch(part, NOW, ROOM, scoring_ref).refused]
    cols = DatumColumns.concat([DatumColumns.from_datums(p) for p in parts])
    message_of = np.repeat(np.arange(len(parts)), [len(p) for p in parts])
    _got, refused = accept_columns(cols, NOW, ROOM, scoring_col, message_of)
    assert repr([(m, d) for m, d, _r, _s in refused]) == repr(want)
    assert scoring_col.rates == scoring_ref.rates


@settings(max_examples=300, deadline=None)
@given(batch=st.lists(datums(), max_size=10))
def test_the_compiled_decoder_reads_what_fastavro_reads(batch: list[Datum]) -> None:
    clean = [d for d in batch if d.node_id >= 0]
    payload = codec.encode_batch(clean, compiled=False)
    got = codec.decode_columns(payload)
    assert repr(got.datums()) == repr(codec.decode_batch(payload))
    assert repr(got.datums()) == repr(DatumColumns.from_datums(codec.decode_batch(payload)).datums())


def test_the_compiled_decoder_leaves_anything_odd_to_fastavro() -> None:
    """Corrupt, truncated or trailing bytes: the same DecodeError as decode_batch, rule for rule."""
    payload = codec.encode_batch([Datum(1, "/a", T0, {"x": 1.0}, {}, {"m": "ok"}, ("t",))], compiled=False)
    for bad in (payload[:-1], payload + b"\x00", b"\xff" * 9, payload[:5] + b"\xff\xfe" + payload[7:]):
        try:
            codec.decode_batch(bad)
        except codec.DecodeError as exc:
            want = exc.rule
        else:
            want = None
        try:
            codec.decode_columns(bad)
        except codec.DecodeError as exc:
            assert exc.rule == want
        else:
            assert want is None


def reference_first(batch: list[Datum]) -> dict[tuple[int, str], int]:
    """The baseline lookup as the worker did it over Datum objects."""
    want: dict[tuple[int, str], int] = {}
    for d in batch:
        kept = check_envelope(d, NOW)[0]
        if kept is not None and kept.a:
            want[kept.stream] = min(want.get(kept.stream, 1 << 62), kept.created_ms)
    return want


def test_first_accumulating_is_the_reference_lookup() -> None:
    batch = [
        Datum(1, "/m", T0 + 5, {}, {"e": 1.0}),
        Datum(1, "/m", T0 + 1, {}, {"e": math.nan}),
        Datum(1, "/m", T0 + 3, {}, {"e": 2.0}),
        Datum(-1, "/m", T0, {}, {"e": 1.0}),
        Datum(2, "/m", T0 + 9, {"w": 1.0}),
        Datum(2, "/n", 5, {}, {"e": 1.0}),
        # a refused sibling sample: the datum is kept with its accumulating sample
        Datum(3, "/m", T0 + 2, {"w": math.nan}, {"e": 1.0}),
    ]
    assert (
        first_accumulating(DatumColumns.from_datums(batch), NOW)
        == reference_first(batch)
        == {(1, "/m"): T0 + 3, (3, "/m"): T0 + 2}
    )


@settings(max_examples=300, deadline=None)
@given(batch=st.lists(datums(), max_size=12))
def test_first_accumulating_equals_the_reference_on_any_batch(batch: list[Datum]) -> None:
    assert first_accumulating(DatumColumns.from_datums(batch), NOW) == reference_first(batch)


@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=50))
def test_score_values_is_scorer_score_bit_for_bit(values: list[float]) -> None:
    for q in (
        SEED_QRATING,
        {**SEED_QRATING, "min_desired": {"value": -5, "label": "A"}, "max_desired": {"value": 60, "label": "B"}},
    ):
        scorer = Scorer(QRating.from_dict(q))
        score, perf, _band = score_values(scorer, np.array(values + [25.0, -5.0, 60.0]))
        for v, s, p in zip(values + [25.0, -5.0, 60.0], score.tolist(), perf.tolist(), strict=True):
            want = scorer.score(v)
            assert (s, p) == (want.score, want.performance)


def test_a_status_text_missing_from_the_conversion_matrix_is_refused_as_the_reference_refuses_it() -> None:
    """room.mode's schema takes "odd", its conversion matrix does not: scoring the text fails, and
    the columnar path (each distinct text scored once) refuses exactly what the reference does."""
    texts = ["fine", "odd", "cold", "odd", "fine"]
    batch = [
        Datum(1, "/room/a", T0 + 1_000 * k, i={"temperature": 20.0}, s={"mode": text}) for k, text in enumerate(texts)
    ]
    accepts_what_the_reference_accepts([batch], "room")
    got, _ = accept_columns(DatumColumns.from_datums(batch), NOW, ROOM, Scoring(rates=baseline_rates()))
    assert got.refused and all("odd" in repr(d) for d, _reasons, _stage in got.refused)
