"""OpenGate's qrating object: thresholds, labels and weights for scoring datapoints.

This module holds the parsed object and its completeness rules; scoring lives beside it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

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
                    "conversion_matrix", "qrating.conversion_matrix_type", "must map text to numbers"
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
        return cls(version, max_score, *thresholds, conversion, divisor)


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
