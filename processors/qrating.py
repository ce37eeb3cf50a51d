"""OpenGate's qrating object: thresholds, labels and weights for scoring datapoints.

This module holds the parsed object and its completeness rules, the per-datapoint scoring
(Scorer), the cumulative rate state (next_rate) and the device-level combination
(device_qrating). Pure: no I/O. The formula and its edge cases are in docs/qrating.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from processors.datum import Rejection

LABEL_MAX = 50
THRESHOLDS = ("min_required", "min_desired", "ideal", "max_desired", "max_allowed")


class QRatingError(ValueError):
    """A qrating object that breaks a rule. `field` is the offending field's path inside it."""

    def __init__(self, field: str, rule: str, message: str) -> None:
        super().__init__(f"qrating.{field}: {message} [{rule}]")
        self.field = field
        self.rule = rule
        self.message = message


@dataclass(frozen=True, slots=True)
class Threshold:
    value: float
    label: str


@dataclass(frozen=True, slots=True)
class QRating:
    version: str
    max_score: float
    min_required: Threshold
    min_desired: Threshold
    ideal: Threshold
    max_desired: Threshold
    max_allowed: Threshold
    conversion_matrix: Mapping[str, float] | None = None
    cumulative_period_divisor: float | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> QRating:
        if not isinstance(d, Mapping):
            raise QRatingError("", "qrating.type", "qrating must be an object")
        version = d.get("version")
        if version is None:
            raise QRatingError("version", "qrating.incomplete", "version is missing")
        if not isinstance(version, str) or not version:
            raise QRatingError("version", "qrating.version_type", "version must be a non-empty string")
        max_score = _number(d, "max_score", missing_rule="qrating.incomplete")
        if max_score <= 0:
            raise QRatingError("max_score", "qrating.max_score_positive", "max_score must be above 0")
        thresholds = [_threshold(d, name) for name in THRESHOLDS]
        for (lo_name, lo), (hi_name, hi) in zip(
            zip(THRESHOLDS, thresholds, strict=True),
            zip(THRESHOLDS[1:], thresholds[1:], strict=True),
            strict=False,
        ):
            if lo.value > hi.value:
                raise QRatingError(
                    hi_name,
                    "qrating.order",
                    f"{lo_name} ({lo.value:g}) must not exceed {hi_name} ({hi.value:g})",
                )
        matrix = d.get("conversion_matrix")
        conversion: dict[str, float] | None = None
        if matrix is not None:
            if not isinstance(matrix, Mapping):
                raise QRatingError(
                    "conversion_matrix",
                    "qrating.conversion_matrix_type",
                    "must map text to numbers",
                )
            conversion = {}
            for text, num in matrix.items():
                if isinstance(num, bool) or not isinstance(num, (int, float)) or not math.isfinite(num):
                    raise QRatingError(
                        f"conversion_matrix.{text}",
                        "qrating.conversion_matrix_type",
                        f"{num!r} is not a finite number",
                    )
                conversion[str(text)] = float(num)
        divisor: float | None = None
        if d.get("cumulative_period_divisor") is not None:
            divisor = _number(d, "cumulative_period_divisor", missing_rule="qrating.incomplete")
            if divisor <= 0:
                raise QRatingError(
                    "cumulative_period_divisor",
                    "qrating.divisor_positive",
                    "cumulative_period_divisor is a number of seconds above 0",
                )
        min_required, min_desired, ideal, max_desired, max_allowed = thresholds
        return cls(
            version,
            max_score,
            min_required,
            min_desired,
            ideal,
            max_desired,
            max_allowed,
            conversion,
            divisor,
        )


def _number(d: Mapping[str, object], name: str, *, missing_rule: str) -> float:
    raw = d.get(name)
    if raw is None:
        raise QRatingError(name, missing_rule, f"{name} is missing")
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise QRatingError(name, "qrating.number", f"{name} must be a finite number, got {raw!r}")
    return float(raw)


def _threshold(d: Mapping[str, object], name: str) -> Threshold:
    raw = d.get(name)
    if raw is None:
        raise QRatingError(name, "qrating.incomplete", f"{name} is missing")
    if not isinstance(raw, Mapping):
        raise QRatingError(name, "qrating.threshold_type", f"{name} must be {{value, label}}")
    value = _number(raw, "value", missing_rule="qrating.incomplete")
    label = raw.get("label")
    if label is None:
        raise QRatingError(f"{name}.label", "qrating.incomplete", f"{name}.label is missing")
    if not isinstance(label, str):
        raise QRatingError(f"{name}.label", "qrating.label_type", "label must be a string")
    if len(label) > LABEL_MAX:
        raise QRatingError(
            f"{name}.label",
            "qrating.label_too_long",
            f"label is {len(label)} characters, at most {LABEL_MAX} allowed",
        )
    return Threshold(value, label)


# --------------------------------------------------------------------------------------------
# Scoring: one datapoint against one qrating. Formula, bands and edge cases: docs/qrating.md.
# --------------------------------------------------------------------------------------------

Quality = Literal["ideal", "desired", "acceptable", "critical"]
IDEAL: Quality = "ideal"
DESIRED: Quality = "desired"
ACCEPTABLE: Quality = "acceptable"
CRITICAL: Quality = "critical"

# Fraction of max_score kept at the desired edges (min_desired, max_desired). Fixed at 1/2 so
# that 1 - DESIRED_EDGE_FRACTION == DESIRED_EDGE_FRACTION exactly: the two linear pieces meet
# without a rounding step, which keeps the score monotone to the last bit.
DESIRED_EDGE_FRACTION = 0.5

# Stable rule identifiers for refusals and for "no rate" reasons.
RULE_CONVERSION_MISSING = "qrating.conversion_missing"
RULE_NON_FINITE = "qrating.non_finite"
RULE_NOT_A_NUMBER = "qrating.not_a_number"
RULE_RANGE_OVERFLOW = "qrating.range_overflow"
REASON_FIRST = "qrating.first_value"
REASON_OUT_OF_ORDER = "qrating.out_of_order"
REASON_DUPLICATE = "qrating.duplicate"
REASON_COUNTER_RESET = "qrating.counter_reset"
REASON_NON_FINITE = "qrating.non_finite"
REASON_RATE_OVERFLOW = "qrating.rate_overflow"


class ScoreError(ValueError):
    """A datapoint that cannot be scored although its datastream has a qrating.

    Distinct from QRatingError, which blames the template: this one blames the value.
    """

    def __init__(self, rule: str, message: str, value: object) -> None:
        super().__init__(f"{message} [{rule}]")
        self.rule = rule
        self.message = message
        self.value = value

    def as_rejection(
        self,
        property: str | None = None,
        kind: str | None = None,
        datastream: str | None = None,
    ) -> Rejection:
        return Rejection(self.rule, self.message, property, kind, self.value, datastream)


@dataclass(frozen=True, slots=True)
class Score:
    """One scored datapoint. `value_scored` is the number the thresholds were applied to
    (after conversion_matrix or cumulative rate), not necessarily the value received."""

    value_scored: float
    score: float  # in [0, max_score]
    performance: float  # 100 * score / max_score, in [0, 100]
    label: str
    quality: Quality


class Scorer:
    """A QRating compiled for the hot path: thresholds, widths and labels held in slots.

    Build one per datastream template and reuse it; scoring a value is a few comparisons,
    at most one division and one Score allocation.
    """

    __slots__ = (
        "qrating",
        "_max",
        "_t0",
        "_t1",
        "_t2",
        "_t3",
        "_t4",
        "_w01",
        "_w12",
        "_w23",
        "_w34",
        "_l0",
        "_l1",
        "_l2",
        "_l3",
        "_l4",
        "_matrix",
        "_ideal_score",
    )

    def __init__(self, qrating: QRating) -> None:
        q = qrating
        t = (
            q.min_required.value,
            q.min_desired.value,
            q.ideal.value,
            q.max_desired.value,
            q.max_allowed.value,
        )
        widths = [hi - lo for lo, hi in zip(t, t[1:], strict=False)]
        for name, w in zip(THRESHOLDS[1:], widths, strict=True):
            # Finite thresholds far apart can still differ by more than a float holds.
            if not math.isfinite(w):
                raise QRatingError(name, RULE_RANGE_OVERFLOW, "thresholds are too far apart to score")
        self.qrating = q
        self._max = q.max_score
        self._t0, self._t1, self._t2, self._t3, self._t4 = t
        self._w01, self._w12, self._w23, self._w34 = widths
        self._l0 = q.min_required.label
        self._l1 = q.min_desired.label
        self._l2 = q.ideal.label
        self._l3 = q.max_desired.label
        self._l4 = q.max_allowed.label
        self._matrix = q.conversion_matrix
        self._ideal_score = Score(self._t2, q.max_score, 100.0, self._l2, IDEAL)

    @property
    def max_score(self) -> float:
        return self._max

    @property
    def cumulative_period_divisor(self) -> float | None:
        return self.qrating.cumulative_period_divisor

    def score(self, value: float) -> Score:
        """Score a number. Raises ScoreError for NaN/±inf and for non-numbers (bool included).

        Bands, innermost first, so a value on a threshold (or on several equal ones) lands in
        the band nearest the ideal:
          v == ideal                       -> ideal,      f = 1
          min_desired <= v <= max_desired  -> desired,    f = 1 - r/2   (r: 0 at ideal, 1 at edge)
          min_required <= v < min_desired  -> acceptable, f = r/2       (r: 1 at min_desired, 0 at
          max_desired < v <= max_allowed      acceptable, f = r/2        min_required/max_allowed)
          otherwise                        -> critical,   f = 0
        score = max_score * f, performance = 100 * f. A band of zero width is never entered
        except at its single point, which an inner band claims first: no division by zero.
        """
        if value.__class__ is not float:
            value = _as_number(value)
        if not math.isfinite(value):
            raise ScoreError(RULE_NON_FINITE, f"{value!r} is not a finite number", value)
        v = value
        if v <= self._t2:
            if v == self._t2:
                return self._ideal_score
            if v >= self._t1:
                f = 1.0 - 0.5 * ((self._t2 - v) / self._w12)
                return Score(v, self._max * f, 100.0 * f, self._l2, DESIRED)
            if v >= self._t0:
                f = 0.5 * ((v - self._t0) / self._w01)
                return Score(v, self._max * f, 100.0 * f, self._l1, ACCEPTABLE)
            return Score(v, 0.0, 0.0, self._l0, CRITICAL)
        if v <= self._t3:
            f = 1.0 - 0.5 * ((v - self._t2) / self._w23)
            return Score(v, self._max * f, 100.0 * f, self._l2, DESIRED)
        if v <= self._t4:
            f = 0.5 * ((self._t4 - v) / self._w34)
            return Score(v, self._max * f, 100.0 * f, self._l3, ACCEPTABLE)
        return Score(v, 0.0, 0.0, self._l4, CRITICAL)

    def convert(self, text: str) -> float | None:
        """The number conversion_matrix gives `text`; None when there is no matrix at all.

        Raises ScoreError (qrating.conversion_missing) for a text the matrix does not list:
        guessing a number (0, or parsing "25") would score a value nobody configured.
        Matching is exact (case and whitespace count), as OpenGate's matrix keys are.
        """
        matrix = self._matrix
        if matrix is None:
            return None
        num = matrix.get(text)
        if num is None:
            raise ScoreError(
                RULE_CONVERSION_MISSING,
                f"text value {text!r} is not in the conversion_matrix",
                text,
            )
        return num

    def score_text(self, text: str) -> Score | None:
        """Score a text value through conversion_matrix; None (unscored) without a matrix."""
        num = self.convert(text)
        return None if num is None else self.score(num)

    def score_sample(self, value: float | str) -> Score | None:
        """Score whatever a sample holds: text goes through the matrix, numbers straight in.

        Numbers are scored as they are even when a conversion_matrix exists (it only applies
        to text, per OpenGate). Cumulative datastreams must go through next_rate first.
        """
        if isinstance(value, str):
            return self.score_text(value)
        return self.score(value)


def _as_number(value: object) -> float:
    # bool is an int to Python but never a measurement.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ScoreError(RULE_NOT_A_NUMBER, f"{value!r} is not a number", value)
    return float(value)


def score_sample(scorer: Scorer | None, value: float | str) -> Score | None:
    """Score one sample; None when the datastream has no qrating (nothing to score against)."""
    return None if scorer is None else scorer.score_sample(value)


# --------------------------------------------------------------------------------------------
# Cumulative datastreams: rate between consecutive datapoints of one stream.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RateState:
    """The last accepted datapoint of one (node, source, datastream): the rate's baseline."""

    created_ms: int
    value: float


@dataclass(frozen=True, slots=True)
class RateOutcome:
    rate: float | None  # None: nothing to score this time, `reason` says why
    reason: str | None  # None exactly when rate is not None
    new_state: RateState | None  # keep this for the next datapoint (may equal the old state)


def next_rate(prev: RateState | None, created_ms: int, value: float, divisor: float) -> RateOutcome:
    """rate = (value - prev.value) * divisor / seconds between prev and this datapoint.

    No rate, with the reason, for: the first datapoint (state starts here); an older
    (out_of_order) or same-instant (duplicate) datapoint, state unchanged, since only the
    newest point is kept and a rate against it would have a negative or zero time base;
    a drop in value (counter_reset: the meter restarted, the new point is the new baseline);
    a non-finite value (state unchanged); a rate that overflows (state advances).
    Never raises: it is state bookkeeping, the reason is data for the caller.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return RateOutcome(None, REASON_NON_FINITE, prev)
    value = float(value)
    here = RateState(created_ms, value)
    if prev is None:
        return RateOutcome(None, REASON_FIRST, here)
    if created_ms < prev.created_ms:
        return RateOutcome(None, REASON_OUT_OF_ORDER, prev)
    if created_ms == prev.created_ms:
        return RateOutcome(None, REASON_DUPLICATE, prev)
    diff = value - prev.value
    if diff < 0.0:
        return RateOutcome(None, REASON_COUNTER_RESET, here)
    # Divide first: a long gap keeps the intermediate small; ms -> s folded into the divisor.
    rate = diff / (created_ms - prev.created_ms) * (divisor * 1000.0)
    if not math.isfinite(rate):
        return RateOutcome(None, REASON_RATE_OVERFLOW, here)
    return RateOutcome(rate, None, here)


# --------------------------------------------------------------------------------------------
# Device level: OpenGate console's combination of datastream qRatings.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceQRating:
    score: float  # Σ max_score_i * performance_i / 100
    max_score: float  # Σ max_score_i
    q_performance: float  # 100 * score / max_score: performance weighted by max_score
    avg_performance: float  # plain mean of the datastream performances
    datastreams: int


def device_qrating(items: Iterable[tuple[float, float]]) -> DeviceQRating | None:
    """Combine (max_score, performance) per datastream; None when there is none to combine.

    Raises ValueError for max_score <= 0 or a performance outside [0, 100] (or non-finite):
    such an item cannot come from Scorer and would skew every figure silently.
    """
    scores: list[float] = []
    maxes: list[float] = []
    perfs: list[float] = []
    for max_score, performance in items:
        if not (math.isfinite(max_score) and max_score > 0):
            raise ValueError(f"max_score must be a finite number above 0, got {max_score!r}")
        if not (math.isfinite(performance) and 0.0 <= performance <= 100.0):
            raise ValueError(f"performance must be within [0, 100], got {performance!r}")
        # performance / 100 first: at 100 it is exactly 1, so score never exceeds max_score.
        scores.append(max_score * (performance / 100.0))
        maxes.append(max_score)
        perfs.append(performance)
    if not maxes:
        return None
    score = math.fsum(scores)
    total = math.fsum(maxes)
    # min(): fsum rounding must not push the weighted mean past 100.
    q_performance = min(100.0, 100.0 * score / total)
    avg_performance = min(100.0, math.fsum(perfs) / len(perfs))
    return DeviceQRating(score, total, q_performance, avg_performance, len(maxes))


def datastream_performance(performances: Iterable[float]) -> float | None:
    """A datastream's performance over a period: the mean of its datapoints' performances
    (each datapoint weighs the same, whatever the gap to its neighbours); None if none."""
    values = list(performances)
    if not values:
        return None
    return min(100.0, math.fsum(values) / len(values))


def period_qrating(rows: Iterable[tuple[str, int, float, float]]) -> DeviceQRating | None:
    """One device over one period from scored rows (datastream, created_ms, performance,
    max_score): per datastream the mean performance and the max_score of its newest row
    (the template in force at the end of the period), then device_qrating.
    Same figures as the SQL in docs/qrating.md."""
    perfs: dict[str, list[float]] = {}
    latest: dict[str, tuple[int, float]] = {}
    for datastream, created_ms, performance, max_score in rows:
        perfs.setdefault(datastream, []).append(performance)
        cur = latest.get(datastream)
        if cur is None or created_ms > cur[0]:
            latest[datastream] = (created_ms, max_score)
    # every list holds a performance: datastream_performance is never None here
    means = ((latest[ds][1], datastream_performance(values)) for ds, values in perfs.items())
    return device_qrating((max_score, mean) for max_score, mean in means if mean is not None)
