"""qRating scoring: per-datapoint bands, conversion matrix, cumulative rates, device level.

The worked numbers here are the ones in docs/qrating.md; change both together.
"""

from __future__ import annotations

import importlib.util
import math
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from processors.qrating import (
    REASON_COUNTER_RESET,
    REASON_DUPLICATE,
    REASON_FIRST,
    REASON_NON_FINITE,
    REASON_OUT_OF_ORDER,
    REASON_RATE_OVERFLOW,
    RULE_CONVERSION_MISSING,
    RULE_NON_FINITE,
    RULE_NOT_A_NUMBER,
    RULE_RANGE_OVERFLOW,
    DeviceQRating,
    QRating,
    QRatingError,
    RateState,
    Score,
    ScoreError,
    Scorer,
    datastream_performance,
    device_qrating,
    next_rate,
    period_qrating,
    score_sample,
)

SEED_LABELS = ("FROZEN", "COLD", "NORMAL/IDEAL", "HIGH", "HOT")
SEED = (-5.0, 5.0, 25.0, 35.0, 60.0)
SEED_MATRIX = {"FROZEN": -5, "COLD": 5, "NORMAL": 36, "IDEAL": 36, "HIGH": 38, "HOT": 40}
NAMES = ("min_required", "min_desired", "ideal", "max_desired", "max_allowed")


def qrating(
    t: tuple[float, float, float, float, float] = SEED,
    max_score: float = 1000,
    matrix: Mapping[str, float] | None = None,
    divisor: float | None = None,
) -> QRating:
    d: dict[str, object] = {"version": "1.0.0", "max_score": max_score}
    for name, value, label in zip(NAMES, t, SEED_LABELS, strict=True):
        d[name] = {"value": value, "label": label}
    if matrix is not None:
        d["conversion_matrix"] = matrix
    if divisor is not None:
        d["cumulative_period_divisor"] = divisor
    return QRating.from_dict(d)


SEED_SCORER = Scorer(qrating(matrix=SEED_MATRIX))


# --- per datapoint: every band, every threshold, equal thresholds -------------------------

# (thresholds, value, score, performance, label, quality). Seed: -5/5/25/35/60, max_score 1000.
# Desired band: f = 1 - r/2, r = distance to ideal / band width; acceptable: f = r/2,
# r = distance to the outer threshold / band width.
BANDS = [
    pytest.param(SEED, -1e9, 0, 0, "FROZEN", "critical", id="far-below-min_required"),
    pytest.param(SEED, -5.000001, 0, 0, "FROZEN", "critical", id="just-below-min_required"),
    pytest.param(SEED, -5, 0, 0, "COLD", "acceptable", id="on-min_required"),
    # 0: r = (0 - -5) / (5 - -5) = 0.5, f = 0.25
    pytest.param(SEED, 0, 250, 25, "COLD", "acceptable", id="acceptable-low"),
    pytest.param(SEED, 5, 500, 50, "NORMAL/IDEAL", "desired", id="on-min_desired"),
    # 15: r = (25 - 15) / (25 - 5) = 0.5, f = 0.75
    pytest.param(SEED, 15, 750, 75, "NORMAL/IDEAL", "desired", id="desired-low"),
    pytest.param(SEED, 25.0, 1000, 100, "NORMAL/IDEAL", "ideal", id="on-ideal"),
    pytest.param(SEED, 25, 1000, 100, "NORMAL/IDEAL", "ideal", id="on-ideal-int"),
    # 30: r = (30 - 25) / (35 - 25) = 0.5, f = 0.75
    pytest.param(SEED, 30, 750, 75, "NORMAL/IDEAL", "desired", id="desired-high"),
    pytest.param(SEED, 35, 500, 50, "NORMAL/IDEAL", "desired", id="on-max_desired"),
    # 40: r = (60 - 40) / (60 - 35) = 0.8, f = 0.4
    pytest.param(SEED, 40, 400, 40, "HIGH", "acceptable", id="acceptable-high"),
    pytest.param(SEED, 60, 0, 0, "HIGH", "acceptable", id="on-max_allowed"),
    pytest.param(SEED, 60.000001, 0, 0, "HOT", "critical", id="just-above-max_allowed"),
    pytest.param(SEED, 1e300, 0, 0, "HOT", "critical", id="far-above-max_allowed"),
    # All five equal: only the point itself scores; each side is critical.
    pytest.param((10,) * 5, 10, 1000, 100, "NORMAL/IDEAL", "ideal", id="all-equal-on"),
    pytest.param((10,) * 5, 9.5, 0, 0, "FROZEN", "critical", id="all-equal-below"),
    pytest.param((10,) * 5, 10.5, 0, 0, "HOT", "critical", id="all-equal-above"),
    # min_required == min_desired: the shared point is the desired edge (inner band wins).
    pytest.param((5, 5, 25, 35, 60), 5, 500, 50, "NORMAL/IDEAL", "desired", id="t0=t1-on"),
    pytest.param((5, 5, 25, 35, 60), 4.9, 0, 0, "FROZEN", "critical", id="t0=t1-below"),
    # min_desired == ideal: no desired band below ideal, straight to acceptable.
    # 10: r = (10 - -5) / (25 - -5) = 0.5, f = 0.25
    pytest.param((-5, 25, 25, 35, 60), 25, 1000, 100, "NORMAL/IDEAL", "ideal", id="t1=t2-on"),
    pytest.param((-5, 25, 25, 35, 60), 10, 250, 25, "COLD", "acceptable", id="t1=t2-below"),
    # ideal == max_desired: 30 gives r = (60 - 30) / (60 - 25) = 6/7, f = 3/7
    pytest.param((-5, 5, 25, 25, 60), 25, 1000, 100, "NORMAL/IDEAL", "ideal", id="t2=t3-on"),
    pytest.param((-5, 5, 25, 25, 60), 30, 3000 / 7, 300 / 7, "HIGH", "acceptable", id="t2=t3-above"),
    # max_desired == max_allowed: the shared point is the desired edge.
    pytest.param((-5, 5, 25, 35, 35), 35, 500, 50, "NORMAL/IDEAL", "desired", id="t3=t4-on"),
    pytest.param((-5, 5, 25, 35, 35), 35.1, 0, 0, "HOT", "critical", id="t3=t4-above"),
    # min_desired == ideal == max_desired: ideal is the only desired point.
    pytest.param((0, 10, 10, 10, 20), 15, 250, 25, "HIGH", "acceptable", id="t1=t2=t3-above"),
]


@pytest.mark.parametrize(("t", "value", "score", "performance", "label", "quality"), BANDS)
def test_bands(
    t: tuple[float, float, float, float, float],
    value: float,
    score: float,
    performance: float,
    label: str,
    quality: str,
) -> None:
    got = Scorer(qrating(t)).score(value)
    assert isinstance(got.value_scored, float) and got.value_scored == value
    assert got.score == pytest.approx(score)
    assert got.performance == pytest.approx(performance)
    assert (got.label, got.quality) == (label, quality)


# --- text values --------------------------------------------------------------------------

TEXTS = [
    # FROZEN -> -5: on min_required
    pytest.param("FROZEN", Score(-5.0, 0.0, 0.0, "COLD", "acceptable"), id="hit-on-threshold"),
    pytest.param("COLD", Score(5.0, 500.0, 50.0, "NORMAL/IDEAL", "desired"), id="hit-desired"),
    # NORMAL -> 36: r = (60 - 36) / 25 = 0.96, f = 0.48
    pytest.param("NORMAL", Score(36.0, 480.0, 48.0, "HIGH", "acceptable"), id="hit-acceptable"),
    # HOT -> 40: f = 0.4
    pytest.param("HOT", Score(40.0, 400.0, 40.0, "HIGH", "acceptable"), id="hit-hot"),
]


@pytest.mark.parametrize(("text", "expected"), TEXTS)
def test_conversion_matrix_hit(text: str, expected: Score) -> None:
    got = SEED_SCORER.score_sample(text)
    assert got is not None
    assert got.value_scored == expected.value_scored
    assert got.score == pytest.approx(expected.score)
    assert got.performance == pytest.approx(expected.performance)
    assert (got.label, got.quality) == (expected.label, expected.quality)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("WARM", id="unknown"),
        pytest.param("frozen", id="case-differs"),
        pytest.param(" COLD", id="whitespace-differs"),
        pytest.param("", id="empty"),
        pytest.param("25", id="numeric-text-not-parsed"),
    ],
)
def test_conversion_matrix_miss_is_an_error(text: str) -> None:
    with pytest.raises(ScoreError) as err:
        SEED_SCORER.score_sample(text)
    assert err.value.rule == RULE_CONVERSION_MISSING
    assert err.value.value == text
    rejection = err.value.as_rejection("state", "s", "health.heart.rate").as_dict()
    assert rejection["rule"] == RULE_CONVERSION_MISSING
    assert rejection["datastream"] == "health.heart.rate"
    assert rejection["value"] == text


def test_text_without_matrix_is_unscored() -> None:
    scorer = Scorer(qrating())
    assert scorer.convert("COLD") is None
    assert scorer.score_sample("COLD") is None


def test_number_with_matrix_is_scored_as_is() -> None:
    assert SEED_SCORER.score_sample(15.0) == Score(15.0, 750.0, 75.0, "NORMAL/IDEAL", "desired")


# --- refusals and missing qrating ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        pytest.param(math.nan, RULE_NON_FINITE, id="nan"),
        pytest.param(math.inf, RULE_NON_FINITE, id="inf"),
        pytest.param(-math.inf, RULE_NON_FINITE, id="-inf"),
        pytest.param(True, RULE_NOT_A_NUMBER, id="bool"),
        pytest.param(None, RULE_NOT_A_NUMBER, id="none"),
    ],
)
def test_refused_values(value: object, rule: str) -> None:
    with pytest.raises(ScoreError) as err:
        SEED_SCORER.score(value)  # type: ignore[arg-type]
    assert err.value.rule == rule


@pytest.mark.parametrize("value", [pytest.param(25.0, id="number"), pytest.param("COLD", id="text")])
def test_missing_qrating_gives_no_score(value: float | str) -> None:
    assert score_sample(None, value) is None


def test_score_sample() -> None:
    scorer = Scorer(qrating())
    assert scorer.max_score == 1000.0
    assert score_sample(scorer, 25) == Score(25.0, 1000.0, 100.0, "NORMAL/IDEAL", "ideal")


def test_thresholds_too_far_apart_for_floats() -> None:
    with pytest.raises(QRatingError) as err:
        Scorer(qrating((-1e308, -1e308, -1e308, 1e308, 1e308)))
    assert err.value.rule == RULE_RANGE_OVERFLOW


# --- cumulative rates ---------------------------------------------------------------------

MIN = 60_000  # ms
HOUR = 3_600_000

# Each case: divisor, then steps of (created_ms, value, expected rate, expected reason,
# expected state after the step as (created_ms, value)).
RATES = [
    pytest.param(
        60.0,
        # The seed's example: 60 connections in an hour, divisor 60 s -> 1 per minute.
        [(0, 0.0, None, REASON_FIRST, (0, 0.0)), (HOUR, 60.0, 1.0, None, (HOUR, 60.0))],
        id="seed-example",
    ),
    pytest.param(
        60.0,
        [
            (0, 10.0, None, REASON_FIRST, (0, 10.0)),
            (MIN, 10.0, 0.0, None, (MIN, 10.0)),
        ],
        id="no-change-is-zero",
    ),
    pytest.param(
        60.0,
        [
            (0, 10.0, None, REASON_FIRST, (0, 10.0)),
            (0, 10.0, None, REASON_DUPLICATE, (0, 10.0)),
            (0, 99.0, None, REASON_DUPLICATE, (0, 10.0)),  # a changed resend: first one stays
            (MIN, 40.0, 30.0, None, (MIN, 40.0)),
        ],
        id="duplicate",
    ),
    pytest.param(
        60.0,
        [
            (0, 10.0, None, REASON_FIRST, (0, 10.0)),
            (2 * MIN, 70.0, 30.0, None, (2 * MIN, 70.0)),
            (MIN, 40.0, None, REASON_OUT_OF_ORDER, (2 * MIN, 70.0)),
            (3 * MIN, 100.0, 30.0, None, (3 * MIN, 100.0)),  # against the newest, not the late one
        ],
        id="out-of-order",
    ),
    pytest.param(
        60.0,
        [
            (0, 100.0, None, REASON_FIRST, (0, 100.0)),
            (MIN, 10.0, None, REASON_COUNTER_RESET, (MIN, 10.0)),
            (2 * MIN, 70.0, 60.0, None, (2 * MIN, 70.0)),
        ],
        id="counter-reset",
    ),
    pytest.param(
        1.0,
        [
            (0, 5.0, None, REASON_FIRST, (0, 5.0)),
            (MIN, math.nan, None, REASON_NON_FINITE, (0, 5.0)),
            (2 * MIN, math.inf, None, REASON_NON_FINITE, (0, 5.0)),
            (2 * MIN, 125.0, 1.0, None, (2 * MIN, 125.0)),
        ],
        id="non-finite",
    ),
    pytest.param(
        1e6,
        [
            (0, 0.0, None, REASON_FIRST, (0, 0.0)),
            (1, 1e308, None, REASON_RATE_OVERFLOW, (1, 1e308)),
        ],
        id="overflow",
    ),
]


@pytest.mark.parametrize(("divisor", "steps"), RATES)
def test_rates(
    divisor: float,
    steps: list[tuple[int, float, float | None, str | None, tuple[int, float]]],
) -> None:
    state: RateState | None = None
    for created_ms, value, rate, reason, after in steps:
        out = next_rate(state, created_ms, value, divisor)
        assert out.rate == (None if rate is None else pytest.approx(rate))
        assert out.reason == reason
        assert out.new_state == RateState(*after)
        state = out.new_state


def test_rate_scored_through_scorer() -> None:
    scorer = Scorer(qrating(divisor=60.0))
    assert scorer.cumulative_period_divisor == 60.0
    out = next_rate(RateState(0, 0.0), HOUR, 1500.0, 60.0)  # 25 per minute: the ideal
    assert out.rate is not None
    assert scorer.score(out.rate).quality == "ideal"


def rate_state_from_last(rows: Iterable[tuple[int, float]]) -> RateState | None:
    """The rule a restart continues by (the worker reads it from the store: the newest stored
    reading, sinks/clickhouse.py rate_baselines_many): the newest finite row, the first seen
    among rows with the same created (a live duplicate never replaces the state)."""
    best: RateState | None = None
    for created_ms, value in rows:
        if isinstance(value, bool) or not math.isfinite(value):
            continue
        if best is None or created_ms > best.created_ms:
            best = RateState(created_ms, float(value))
    return best


def test_rate_state_from_last() -> None:
    assert rate_state_from_last([]) is None
    rows = [(MIN, 2.0), (3 * MIN, 7.0), (3 * MIN, 9.0), (4 * MIN, math.nan), (0, 1.0)]
    assert rate_state_from_last(rows) == RateState(3 * MIN, 7.0)


# --- device level -------------------------------------------------------------------------

# Worked by hand (also in docs/qrating.md):
#   temperature  max_score 1000, performance 75  -> 1000 * 75 / 100 = 750
#   humidity     max_score  500, performance 40  ->  500 * 40 / 100 = 200
#   door         max_score  250, performance 100 ->  250 * 100 / 100 = 250
#   score = 750 + 200 + 250 = 1200, max_score = 1000 + 500 + 250 = 1750
#   qPerformance = 100 * 1200 / 1750 = 68.5714..., avgPerformance = (75 + 40 + 100) / 3 = 71.666...
DEVICE = [(1000.0, 75.0), (500.0, 40.0), (250.0, 100.0)]
DEVICE_EXPECTED = (1200.0, 1750.0, 100 * 1200 / 1750, 215 / 3, 3)
# The same device from datapoints: temperature 100 and 50 (mean 75); humidity 40 twice, its
# template raised max_score from 400 to 500 mid-period (the newest, 500, counts); door 100.
ROWS = [
    ("temperature", 1_000, 100.0, 1000.0),
    ("humidity", 1_000, 40.0, 400.0),
    ("door", 1_500, 100.0, 250.0),
    ("temperature", 2_000, 50.0, 1000.0),
    ("humidity", 3_000, 40.0, 500.0),
]


def _tuple(d: DeviceQRating | None) -> tuple[float, float, float, float, int]:
    assert d is not None
    return (d.score, d.max_score, d.q_performance, d.avg_performance, d.datastreams)


def test_device_worked_example() -> None:
    assert _tuple(device_qrating(DEVICE)) == pytest.approx(DEVICE_EXPECTED)


def test_period_worked_example() -> None:
    assert _tuple(period_qrating(ROWS)) == pytest.approx(DEVICE_EXPECTED)
    assert datastream_performance([100.0, 50.0]) == 75.0
    assert datastream_performance([]) is None


def test_device_empty_and_invalid() -> None:
    assert device_qrating([]) is None
    assert period_qrating([]) is None
    for bad in [(0.0, 50.0), (-1.0, 50.0), (10.0, 101.0), (10.0, -1.0), (10.0, math.nan)]:
        with pytest.raises(ValueError):
            device_qrating([bad])


DOC = Path(__file__).resolve().parents[2] / "docs" / "qrating.md"


@pytest.mark.skipif(importlib.util.find_spec("chdb") is None, reason="chdb not installed")
def test_doc_sql_matches_period_qrating() -> None:
    """Runs the device SQL from docs/qrating.md in chDB over ROWS (two devices). A separate
    process, because chDB allows one engine state per process and other tests may hold it."""
    sql = re.search(r"<!-- device-sql -->\s*```sql\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert sql is not None
    rows = [(7, *r) for r in ROWS] + [(8, "x", 500, 20.0, 10.0)]
    values = ", ".join(
        f"({n}, '{ds}', toDateTime64({c / 1000}, 3, 'UTC'), {m * p / 100}, {p}, {m})" for n, ds, c, p, m in rows
    )
    table = (
        "(SELECT * FROM values('node_id UInt64, datastream String, created DateTime64(3, ''UTC''),"
        f" score Float64, performance Float64, max_score Float64', {values}))"
    )
    query = (
        sql.group(1)
        .replace("qrating_points", table)
        .replace("{period_start:DateTime64(3)}", "toDateTime64(0, 3, 'UTC')")
        .replace("{period_end:DateTime64(3)}", "toDateTime64(10, 3, 'UTC')")
    )
    code = "import chdb, sys; print(chdb.query(sys.stdin.read(), 'TSV'))"
    out = subprocess.run([sys.executable, "-c", code], input=query, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [line.split("\t") for line in out.stdout.strip().splitlines()]
    assert [int(line[0]) for line in lines] == [7, 8]
    assert [float(x) for x in lines[0][1:5]] == pytest.approx(DEVICE_EXPECTED[:4])
    assert int(lines[0][5]) == 3
    assert [float(x) for x in lines[1][1:]] == pytest.approx([2.0, 10.0, 20.0, 20.0, 1.0])


# --- properties ---------------------------------------------------------------------------

bound = st.floats(-1e300, 1e300, allow_nan=False)
any_value = st.floats(allow_nan=False, allow_infinity=False)
max_scores = st.floats(1e-300, 1e300, allow_nan=False)


@st.composite
def scorers(draw: st.DrawFn) -> Scorer:
    # Sorted draws with repeats allowed: zero-width bands come up often.
    t = sorted(draw(st.lists(bound | st.sampled_from([0.0, 1.0]), min_size=5, max_size=5)))
    return Scorer(qrating((t[0], t[1], t[2], t[3], t[4]), draw(max_scores)))


@given(scorers(), any_value)
def test_score_within_bounds_and_consistent(scorer: Scorer, v: float) -> None:
    s = scorer.score(v)
    m = scorer.max_score
    assert 0.0 <= s.score <= m
    assert 0.0 <= s.performance <= 100.0
    assert s.performance == pytest.approx(100.0 * s.score / m, rel=1e-9, abs=1e-9)
    q = scorer.qrating
    if s.quality == "ideal":
        assert v == q.ideal.value and s.score == m and s.performance == 100.0
    elif s.quality == "desired":
        assert q.min_desired.value <= v <= q.max_desired.value and 50.0 <= s.performance <= 100.0
    elif s.quality == "acceptable":
        assert q.min_required.value <= v <= q.max_allowed.value and s.performance <= 50.0
    else:
        assert not (q.min_required.value <= v <= q.max_allowed.value)
        assert s.score == 0.0 and s.performance == 0.0


@given(scorers(), any_value, any_value)
def test_score_monotone_away_from_ideal(scorer: Scorer, a: float, b: float) -> None:
    ideal = scorer.qrating.ideal.value
    assume(ideal <= a <= b or b <= a <= ideal)  # a lies between the ideal and b
    assert scorer.score(a).score >= scorer.score(b).score
    assert scorer.score(a).performance >= scorer.score(b).performance


rows_strategy = st.lists(
    st.tuples(st.integers(0, 10), st.floats(-1e6, 1e6, allow_nan=False) | st.just(math.nan)),
    max_size=12,
)


@given(rows_strategy, st.floats(1e-3, 1e6))
def test_rate_state_rebuild_matches_live(rows: list[tuple[int, float]], divisor: float) -> None:
    """After a restart, the state rebuilt from stored rows is the one live processing held,
    whatever order the rows arrived in; every rate emitted is finite and not negative."""
    state: RateState | None = None
    for created, value in rows:
        out = next_rate(state, created, value, divisor)
        if out.rate is not None:
            assert math.isfinite(out.rate) and out.rate >= 0.0
            assert state is not None and created > state.created_ms
        state = out.new_state
    assert rate_state_from_last(rows) == state


perf = st.floats(0.0, 100.0)


@given(st.lists(st.tuples(st.floats(1e-3, 1e9), perf), min_size=1, max_size=20))
def test_device_figures_stay_within_the_datastreams(items: list[tuple[float, float]]) -> None:
    d = device_qrating(items)
    assert d is not None
    perfs = [p for _, p in items]
    lo, hi = min(perfs), max(perfs)
    assert d.datastreams == len(items)
    assert 0.0 <= d.score <= d.max_score
    assert lo - 1e-9 <= d.q_performance <= hi + 1e-9
    assert lo - 1e-9 <= d.avg_performance <= hi + 1e-9
    assert d.q_performance == pytest.approx(100.0 * d.score / d.max_score)
