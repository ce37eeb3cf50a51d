"""Per-sample validation of a datum against the datastream templates its source is bound to.

Rules (ids in docs/datamodels.md), applied to each sample of a bound source:
  sample.unmapped         the property maps to no datastream of the bound datamodel
  sample.calculated       the datastream is calculated by the platform: devices may not send it
  sample.period_mismatch  the classification does not fit the period:
                            INSTANT    -> i (numbers) or s (text)
                            CUMULATIVE -> a
                            PULSE      -> i only: a count for the interval that does not carry
                                          over to the next one, so it is not accumulating
  sample.pulse_negative   a PULSE count below 0
  sample.not_a_number     an i or a sample that is not a number (Datum built without envelope checks)
  sample.non_finite       NaN or infinity (JSON Schema's "number" would let NaN through)
  sample.schema           the value breaks the datastream's JSON Schema
and to the datum as a whole:
  datum.required_missing  a required (non-calculated) datastream got no sample in this datum;
                          reported once per datastream, the datum's valid samples still go on

A bad sample never drops its valid siblings. A datum whose samples are all refused is not
accepted. An unbound source (no binding matches) passes through unvalidated: accepted as is,
no rejections, no datastreams; `ValidationResult.datamodel` is None for it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from fastjsonschema import JsonSchemaValueException

from processors.binding import Catalog, ResolvedSource
from processors.datamodel import DatastreamTemplate, Period, Validator, schema_validator
from processors.datum import Datum, Kind, Rejection

# Which classifications each period accepts.
KINDS_FOR_PERIOD: Final[Mapping[Period, frozenset[Kind]]] = {
    "INSTANT": frozenset({"i", "s"}),
    "CUMULATIVE": frozenset({"a"}),
    "PULSE": frozenset({"i"}),
}


@dataclass(slots=True)  # not frozen: a frozen __init__ costs ~1 us a datum on the hot path
class ValidationResult:
    accepted: Datum | None  # the datum with only its valid samples; None when none is left
    rejections: list[Rejection]
    datastreams: Mapping[str, DatastreamTemplate]  # accepted property -> its datastream
    datamodel: str | None = None  # the bound datamodel; None for an unbound source
    binding_valid_from_ms: int | None = field(default=None)

    @property
    def bound(self) -> bool:
        return self.datamodel is not None


def validate(datum: Datum, catalog: Catalog) -> ValidationResult:
    """Validate every sample of `datum` against its bound datastream templates."""
    resolved = catalog.resolve(datum.node_id, datum.source_id, datum.created_ms)
    if resolved is None:
        return ValidationResult(datum, [], {})
    return validate_resolved(datum, resolved)


@dataclass(frozen=True, slots=True)
class _Entry:
    template: DatastreamTemplate
    check: Validator
    pulse: bool


@dataclass(frozen=True, slots=True)
class _Plan:
    """Per resolved source: for each classification, the properties that may pass and how.

    A property absent from a kind's map can only fail (unmapped, calculated, wrong period);
    the slow path (`_check`) then says why.
    """

    resolved: ResolvedSource  # keeps the id() key below alive and unambiguous
    i: Mapping[str, _Entry]
    a: Mapping[str, _Entry]
    s: Mapping[str, _Entry]
    required: tuple[tuple[str, str | None], ...]  # (datastream, the property that maps to it)


_PLANS: dict[int, _Plan] = {}
_PLANS_MAX: Final = 10_000


def _plan(resolved: ResolvedSource) -> _Plan:
    by_kind: dict[Kind, dict[str, _Entry]] = {"i": {}, "a": {}, "s": {}}
    for prop, template in resolved.targets.items():
        if template.calculated:
            continue
        entry = _Entry(template, schema_validator(template), template.period == "PULSE")
        for kind in KINDS_FOR_PERIOD[template.period]:
            by_kind[kind][prop] = entry
    prop_of = {t.identifier: p for p, t in resolved.targets.items()}
    required = tuple((t.identifier, prop_of.get(t.identifier)) for t in resolved.required)
    plan = _Plan(resolved, by_kind["i"], by_kind["a"], by_kind["s"], required)
    if len(_PLANS) >= _PLANS_MAX:
        _PLANS.clear()  # bounded: old catalogs' sources must not pile up
    _PLANS[id(resolved)] = plan
    return plan


def plan_for(resolved: ResolvedSource) -> _Plan:
    """Per classification, the properties of a resolved source that may pass, and how (cached)."""
    plan = _PLANS.get(id(resolved))
    if plan is None or plan.resolved is not resolved:
        plan = _plan(resolved)
    return plan


def validate_resolved(datum: Datum, resolved: ResolvedSource) -> ValidationResult:
    """`validate` with the binding already resolved (for callers that batch per source)."""
    plan = plan_for(resolved)
    streams: dict[str, DatastreamTemplate] = {}
    rejections: list[Rejection] = []
    bad: set[tuple[Kind, str]] = set()
    isfinite = math.isfinite

    # Fast path: a sample that passes costs two dict look-ups and one compiled check.
    # Anything else goes to `_check`, which works out the exact rule.
    # Numbers (i, then a) share one loop: a PULSE entry is only ever in plan.i (KINDS_FOR_PERIOD),
    # so the pulse test never fires for an a sample.
    numbers: tuple[tuple[Kind, Mapping[str, float], Mapping[str, _Entry]], ...] = (
        ("i", datum.i, plan.i),
        ("a", datum.a, plan.a),
    )
    for kind, samples, plan_kind in numbers:
        for prop, num in samples.items():
            entry = plan_kind.get(prop)
            if entry is not None:
                try:
                    if isfinite(num) and not (entry.pulse and num < 0):
                        entry.check(num)
                        streams[prop] = entry.template
                        continue
                except (JsonSchemaValueException, TypeError):
                    pass
            rejections.append(_check(prop, kind, num, resolved.targets.get(prop)))
            bad.add((kind, prop))
    plan_s = plan.s
    for prop, text in datum.s.items():
        entry = plan_s.get(prop)
        if entry is not None:
            try:
                entry.check(text)
                streams[prop] = entry.template
                continue
            except JsonSchemaValueException:
                pass
        rejections.append(_check(prop, "s", text, resolved.targets.get(prop)))
        bad.add(("s", prop))

    for ident, source_prop in plan.required:
        # "Present" means sent, valid or not: a bad sample already has its own rejection.
        if source_prop is None or (
            source_prop not in datum.i and source_prop not in datum.a and source_prop not in datum.s
        ):
            rejections.append(
                Rejection(
                    "datum.required_missing",
                    f"required datastream {ident} has no sample in this datum",
                    datastream=ident,
                )
            )

    model = resolved.datamodel.identifier
    valid_from = resolved.binding.valid_from_ms
    if not bad:
        # every sample stays (there may still be datum-level rejections)
        return ValidationResult(datum, rejections, streams, model, valid_from)
    if len(bad) == len(datum.i) + len(datum.a) + len(datum.s):
        return ValidationResult(None, rejections, streams, model, valid_from)
    accepted = datum.with_samples(
        {p: v for p, v in datum.i.items() if ("i", p) not in bad},
        {p: v for p, v in datum.a.items() if ("a", p) not in bad},
        {p: v for p, v in datum.s.items() if ("s", p) not in bad},
    )
    return ValidationResult(accepted, rejections, streams, model, valid_from)


def _check(prop: str, kind: Kind, value: float | str, template: DatastreamTemplate | None) -> Rejection:
    """Why a sample failed the fast path (also correct, if slower, for a good sample)."""
    if template is None:
        return Rejection(
            "sample.unmapped",
            f"{prop} maps to no datastream of the bound datamodel",
            prop,
            kind,
            value,
        )
    ident = template.identifier
    if template.calculated:
        return Rejection(
            "sample.calculated",
            f"{ident} is calculated by the platform; a device may not send it",
            prop,
            kind,
            value,
            ident,
        )
    if kind not in KINDS_FOR_PERIOD[template.period]:
        allowed = "/".join(sorted(KINDS_FOR_PERIOD[template.period]))
        return Rejection(
            "sample.period_mismatch",
            f"{ident} is {template.period}: expects classification {allowed}, got {kind}",
            prop,
            kind,
            value,
            ident,
        )
    if kind != "s":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return Rejection("sample.not_a_number", f"{kind} samples are numbers", prop, kind, value, ident)
        if not math.isfinite(value):
            return Rejection("sample.non_finite", f"{value!r} is not a finite number", prop, kind, value, ident)
        if template.period == "PULSE" and value < 0:
            return Rejection(
                "sample.pulse_negative",
                f"{ident} is a PULSE count, {value!r} is below 0",
                prop,
                kind,
                value,
                ident,
            )
    try:
        schema_validator(template)(value)
    except JsonSchemaValueException as exc:
        return Rejection(
            "sample.schema",
            f"{value!r} breaks the schema of {ident}: {exc.message} ({exc.rule})",
            prop,
            kind,
            value,
            ident,
        )
    # Unreachable for a sample the fast path refused; kept total so the function is honest.
    return Rejection("sample.unknown", f"{prop} failed validation", prop, kind, value, ident)
