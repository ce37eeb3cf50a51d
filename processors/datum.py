"""The datum: SolarNetwork's unit of telemetry, and the envelope rules every datum obeys.

Pure data and pure rules: nothing here touches Kafka, ClickHouse or PostgreSQL.
A datum is identified by (node_id, source_id, created_ms).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

Kind = Literal["i", "a", "s"]

SOURCE_ID_MAX = 64
# Earliest plausible `created`: anything before this is taken as a broken clock.
CREATED_MIN_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
# How far into the future a gateway clock may run before its datum is refused.
CREATED_FUTURE_SLACK_MS = 24 * 3600 * 1000
# nodeId travels as an Avro long and is stored as UInt64: 0..2^63-1 fits both.
NODE_ID_MAX = 2**63 - 1
# The largest magnitude of a number sample: 2^53, the last magnitude at which float64 (the stored
# Float64) still holds every integer, so a counter's readings and their differences stay exact to
# the unit. Rollups multiply and add such values (count-weighted averages over a year, increases
# times a time share, sums of differences): with every |value| <= 2^53 their worst case is about
# 2^53 * 2 * 3.2e10 ms * 3.2e10 points ~ 1.8e37, far from float64's 1.8e308, so no sum or average
# can become inf or NaN.
SAMPLE_ABS_MAX = 2.0**53


@dataclass(frozen=True, slots=True)
class Datum:
    """One reading of one source on one node at one instant (UTC, millisecond precision)."""

    node_id: int
    source_id: str
    created_ms: int
    i: Mapping[str, float] = field(default_factory=dict)
    a: Mapping[str, float] = field(default_factory=dict)
    s: Mapping[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[int, str, int]:
        return (self.node_id, self.source_id, self.created_ms)

    @property
    def stream(self) -> tuple[int, str]:
        """The datum stream: one node, one source."""
        return (self.node_id, self.source_id)

    def samples(self) -> Iterable[tuple[Kind, str, float | str]]:
        for name, num in self.i.items():
            yield "i", name, num
        for name, num in self.a.items():
            yield "a", name, num
        for name, text in self.s.items():
            yield "s", name, text

    def with_samples(
        self,
        i: Mapping[str, float],
        a: Mapping[str, float],
        s: Mapping[str, str],
    ) -> Datum:
        return Datum(self.node_id, self.source_id, self.created_ms, i, a, s, self.tags)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a datum, or one of its samples, was refused. Machine-readable first, readable second."""

    rule: str  # stable identifier, e.g. "source_id.too_long"
    message: str  # one sentence for a person
    property: str | None = None  # the sample concerned, None when the whole datum is refused
    kind: str | None = None
    value: object = None
    datastream: str | None = None

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"rule": self.rule, "message": self.message}
        if self.property is not None:
            out["property"] = self.property
        if self.kind is not None:
            out["kind"] = self.kind
        if self.datastream is not None:
            out["datastream"] = self.datastream
        if self.value is not None:
            out["value"] = _json_safe(self.value)
        return out


@dataclass(frozen=True, slots=True)
class LineRejection:
    """A line of an input file or body, or one field of it, that did not make it into a datum, and why.

    `text` is the line as read when the rejection quotes it (SolarNetwork JSON, whose dead letters
    carry the line); line protocol leaves it empty (its dead letters name the line number).
    """

    line_no: int
    reason: Rejection
    text: str = ""


def _json_safe(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # "nan", "inf": JSON has no spelling for them
    if isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def source_id_problem(source_id: str) -> Rejection | None:
    """Check a sourceId against SolarNetwork's rules; None when it is fine."""
    if not source_id:
        return Rejection("source_id.empty", "sourceId is empty")
    if len(source_id) > SOURCE_ID_MAX:
        return Rejection(
            "source_id.too_long",
            f"sourceId is {len(source_id)} characters long, the limit is {SOURCE_ID_MAX}",
            value=source_id,
        )
    for ch in source_id:
        if ch in "+#":
            return Rejection(
                "source_id.wildcard",
                f"sourceId contains {ch!r}, an MQTT wildcard SolarNetwork forbids",
                value=source_id,
            )
        if ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0:
            return Rejection(
                "source_id.control_character",
                f"sourceId contains control character U+{ord(ch):04X}",
                value=source_id,
            )
    return None


def created_problem(created_ms: int | None, now_ms: int) -> Rejection | None:
    if created_ms is None:
        return Rejection("created.missing", "created is missing")
    if created_ms < CREATED_MIN_MS:
        return Rejection(
            "created.too_old",
            f"created {format_ms(created_ms)} is before {format_ms(CREATED_MIN_MS)}",
            value=created_ms,
        )
    if created_ms > now_ms + CREATED_FUTURE_SLACK_MS:
        return Rejection(
            "created.in_future",
            f"created {format_ms(created_ms)} is more than a day ahead of {format_ms(now_ms)}",
            value=created_ms,
        )
    return None


def check_envelope(datum: Datum, now_ms: int) -> tuple[Datum | None, list[Rejection]]:
    """Apply the envelope rules.

    Returns (datum to keep, rejections). A broken identity (node, source, created), or no sample
    at all, refuses the whole datum; a non-finite number or one beyond SAMPLE_ABS_MAX refuses only
    its own sample, its siblings go on.
    """
    problems: list[Rejection] = []
    if datum.node_id < 0:
        problems.append(Rejection("node_id.negative", "nodeId is negative", value=datum.node_id))
    elif datum.node_id > NODE_ID_MAX:
        problems.append(
            Rejection("node_id.out_of_range", f"nodeId is above {NODE_ID_MAX} (2^63-1)", value=datum.node_id)
        )
    for check in (source_id_problem(datum.source_id), created_problem(datum.created_ms, now_ms)):
        if check is not None:
            problems.append(check)
    if not (datum.i or datum.a or datum.s):
        # nothing to store (tags live on sample rows): refused and dead-lettered, never "accepted"
        problems.append(Rejection("datum.no_samples", "the datum has no i, a or s sample: nothing to store"))
    if problems:
        return None, problems

    i, bad_i = _finite_only(datum.i, "i")
    a, bad_a = _finite_only(datum.a, "a")
    problems = bad_i + bad_a
    for name, text in datum.s.items():
        if not isinstance(text, str):
            problems.append(Rejection("sample.status_not_text", "status values are text", name, "s", text))
    if not problems:
        return datum, []
    s = {k: v for k, v in datum.s.items() if isinstance(v, str)}
    kept = datum.with_samples(i, a, s)
    if not (kept.i or kept.a or kept.s):
        return None, problems
    return kept, problems


def _finite_only(values: Mapping[str, float], kind: Kind) -> tuple[dict[str, float], list[Rejection]]:
    kept: dict[str, float] = {}
    bad: list[Rejection] = []
    for name, num in values.items():
        if isinstance(num, bool) or not isinstance(num, (int, float)):
            bad.append(Rejection("sample.not_a_number", f"{kind} samples are numbers", name, kind, num))
        elif isinstance(num, float) and not math.isfinite(num):
            bad.append(Rejection("sample.non_finite", f"{num!r} is not a finite number", name, kind, num))
        elif abs(num) > SAMPLE_ABS_MAX:  # an int too large for a float is caught here too
            # a huge int is shown by its size: str() of one past 4300 digits raises
            small = isinstance(num, float) or num.bit_length() <= 1000
            shown = f"{num:.6g}" if isinstance(num, float) else f"an integer of {num.bit_length()} bits"
            bad.append(
                Rejection(
                    "sample.out_of_range",
                    f"{shown} is beyond ±2^53 (about ±9.007e15), the bound of a number sample",
                    name,
                    kind,
                    num if small else shown,
                )
            )
        else:
            kept[name] = float(num)
    return kept, bad


def format_ms(ms: int) -> str:
    """ISO 8601 UTC with milliseconds, e.g. 2020-06-01T12:00:00.000Z (epoch ms past year 9999)."""
    try:
        return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    except (ValueError, OverflowError, OSError):  # beyond datetime's years 1..9999
        return f"{str(ms)[:40]} ms since 1970"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_created(raw: object) -> int:
    """Epoch milliseconds from SolarNetwork's time spellings; ValueError with a reason otherwise."""
    if isinstance(raw, bool):
        raise ValueError("created must be a time, not a boolean")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float):
        if not math.isfinite(raw):
            raise ValueError("created is not finite")
        return int(raw)
    if not isinstance(raw, str) or not raw:
        raise ValueError("created must be a date string or epoch milliseconds")
    text = raw.strip().replace(" ", "T", 1)
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"created {raw!r} is not a date like 2020-06-01 12:00:00Z") from None
    if dt.tzinfo is None:
        raise ValueError(f"created {raw!r} has no time zone; add Z for UTC")
    # Integer arithmetic: float seconds would round sub-millisecond times unpredictably.
    return (dt - _EPOCH) // timedelta(milliseconds=1)
