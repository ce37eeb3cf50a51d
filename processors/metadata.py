"""Metadata change events and the rules EBAS's metadata classes impose on them.

Pure: nothing here touches PostgreSQL. `sinks/history.py` loads the current rows of one entity
key, asks `decide()` what an event does to them, and writes the resulting plan. Keeping the
rules here makes every one of them unit-testable without a database.

Each entity type is declared as one of EBAS's metadata classes (see docs/history.md):

- master: corrections overwrite, no history; historic queries show the latest state.
- static: immutable; a different value is refused; delete and re-create instead.
- history: every change kept as a new version in transaction time.
- time_dependent: values hold for an interval of data time (valid time), and every change is
  kept in transaction time too (bitemporal). Intervals of one key never overlap.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final, Literal, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from processors.binding import BindingError, parse_binding
from processors.datamodel import DatamodelError, parse_datamodel
from processors.datum import source_id_problem
from processors.qrating import QRating, QRatingError
from processors.tokens import TokenValueError, check_value, valid_token_id

EntityClass = Literal["master", "static", "history", "time_dependent"]
Op = Literal["upsert", "delete", "set_valid", "correct", "close", "replace"]
OPS: Final[tuple[Op, ...]] = ("upsert", "delete", "set_valid", "correct", "close", "replace")

OPS_BY_CLASS: Final[Mapping[EntityClass, frozenset[Op]]] = {
    "master": frozenset({"upsert", "delete"}),
    "static": frozenset({"upsert", "delete"}),
    "history": frozenset({"upsert", "delete"}),
    "time_dependent": frozenset({"set_valid", "correct", "close", "replace", "delete"}),
}
# Ops that carry a value (and so get it validated and its references checked).
VALUE_OPS: Final[frozenset[Op]] = frozenset({"upsert", "set_valid", "correct", "replace"})

EVENT_FIELDS: Final[tuple[str, ...]] = (
    "event_id",
    "entity",
    "key",
    "op",
    "value",
    "valid_from",
    "valid_to",
    "author",
    "comment",
    "produced_at",
)
AUTHOR_MAX = 200
COMMENT_MAX = 2000

JsonValue = Any  # what json.loads may return; values are kept as plain JSON objects
KeyValue = int | str | None
# Key field kinds: "int" (>= 0), "str" (non-empty), "int?" (an integer or null: "any").
KeyKind = Literal["int", "str", "int?"]


class MetadataEventError(ValueError):
    """An event that breaks the schema. `field` names the offending field."""

    def __init__(self, field: str, rule: str, message: str) -> None:
        super().__init__(f"{field}: {message} [{rule}]" if field else f"{message} [{rule}]")
        self.field = field
        self.rule = rule
        self.message = message


class ValueProblem(ValueError):
    """A value that breaks its entity's rules; becomes a Refusal, recorded with its reason."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"{message} [{rule}]")
        self.rule = rule
        self.message = message


# ---------------------------------------------------------------------------------------------
# Valid-time intervals: half-open [start, end), None meaning unbounded on that side.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Interval:
    start: datetime | None = None
    end: datetime | None = None

    def __post_init__(self) -> None:
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise ValueError(f"empty interval [{self.start}, {self.end})")

    def contains(self, t: datetime) -> bool:
        return (self.start is None or self.start <= t) and (self.end is None or t < self.end)

    def overlaps(self, other: Interval) -> bool:
        return _before(self.start, other.end) and _before(other.start, self.end)

    def as_json(self) -> dict[str, str | None]:
        return {"valid_from": iso(self.start), "valid_to": iso(self.end)}


def _before(start: datetime | None, end: datetime | None) -> bool:
    """start < end where None is -inf for a start and +inf for an end."""
    return start is None or end is None or start < end


def iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------------------------------------
# The entity registry
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reference:
    """A value or key field of one entity that must name an existing (current) entity."""

    target: str
    # target key field -> ("key" | "value", field of the referring event)
    fields: tuple[tuple[str, tuple[Literal["key", "value"], str]], ...]


@dataclass(frozen=True, slots=True)
class EntitySpec:
    name: str
    cls: EntityClass
    key_fields: tuple[tuple[str, KeyKind], ...]
    validate: Callable[[Mapping[str, JsonValue], Mapping[str, KeyValue]], None]
    refs: tuple[Reference, ...] = ()
    doc: str = ""

    @property
    def ops(self) -> frozenset[Op]:
        return OPS_BY_CLASS[self.cls]


def _require_object(value: Mapping[str, JsonValue], name: str, *, required: bool) -> None:
    raw = value.get(name)
    if raw is None:
        if required:
            raise ValueProblem("value.missing", f"{name} is missing")
        return
    if not isinstance(raw, Mapping):
        raise ValueProblem("value.type", f"{name} must be an object")


def _require_text(value: Mapping[str, JsonValue], name: str, *, required: bool = True) -> None:
    raw = value.get(name)
    if raw is None:
        if required:
            raise ValueProblem("value.missing", f"{name} is missing")
        return
    if not isinstance(raw, str) or not raw.strip():
        raise ValueProblem("value.type", f"{name} must be non-empty text, got {raw!r}")


def _number_in(raw: object, name: str, lo: float, hi: float) -> None:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise ValueProblem("value.type", f"{name} must be a finite number, got {raw!r}")
    if not lo <= raw <= hi:
        raise ValueProblem("value.range", f"{name} {raw} is outside [{lo:g}, {hi:g}]")


def _check_location(value: Mapping[str, JsonValue]) -> None:
    loc = value.get("location")
    if loc is None:
        return
    if not isinstance(loc, Mapping):
        raise ValueProblem("value.type", "location must be an object {lat, lon, elevation?}")
    _number_in(loc.get("lat"), "location.lat", -90, 90)
    _number_in(loc.get("lon"), "location.lon", -180, 180)
    if loc.get("elevation") is not None:
        _number_in(loc["elevation"], "location.elevation", -500, 9000)


def _v_organization(value: Mapping[str, JsonValue], key: Mapping[str, KeyValue]) -> None:
    _require_text(value, "name")


def _v_node(value: Mapping[str, JsonValue], key: Mapping[str, KeyValue]) -> None:
    _require_text(value, "name", required=False)
    org = value.get("org_id")
    if org is not None and (isinstance(org, bool) or not isinstance(org, int)):
        raise ValueProblem("value.type", f"org_id must be an integer, got {org!r}")
    _check_location(value)


def _v_node_timezone(value: Mapping[str, JsonValue], key: Mapping[str, KeyValue]) -> None:
    _require_text(value, "tz")
    try:
        ZoneInfo(str(value["tz"]))
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ValueProblem("value.time_zone", f"unknown time zone {value['tz']!r}") from e


def _v_site(value: Mapping[str, JsonValue], key: Mapping[str, KeyValue]) -> None:
    _require_text(value, "name")
    _check_location(value)


def _v_equipment(value: Mapping[str, JsonValue], key: Mapping[str, KeyValue]) -> None:
    _require_text(value, "site_id")
    _require_text(value, "kind")  # e.g. "heat_pump", "monitoring_system"


def _v_source(value: Mapping[str, JsonValue], key: Mapping[str, KeyValue]) -> None:
    _require_text(value, "equipment_id", required=False)


def _v_binding(value: Mapping[str, JsonValue], key: Mapping[str, KeyValue]) -> None:
    # The binding format belongs to processors.binding; the key and value together are one
    # binding document there, so the catalog can hand them over unchanged.
    overlap = sorted(set(value) & set(key))
    if overlap:
        raise ValueProblem("binding.key_in_value", f"{overlap} belong to the key, not the value")
    try:
        parse_binding({**key, **value})
    except BindingError as e:
        raise ValueProblem("binding.invalid", str(e)) from e


def _v_security_token(value: Mapping[str, JsonValue], key: Mapping[str, KeyValue]) -> None:
    if not valid_token_id(key.get("token_id")):
        raise ValueProblem("token.id", "token_id must be 1-64 characters of A-Z a-z 0-9 _ - . ~")
    try:
        check_value(value)
    except TokenValueError as e:
        raise ValueProblem("token.invalid", str(e)) from e


def _v_datamodel(value: Mapping[str, JsonValue], key: Mapping[str, KeyValue]) -> None:
    # The datamodel format belongs to processors.datamodel: the history log keeps only documents
    # its parser accepts.
    try:
        parse_datamodel(value)
    except DatamodelError as e:
        raise ValueProblem("datamodel.invalid", str(e)) from e
    if value.get("identifier") != key["identifier"]:
        raise ValueProblem(
            "datamodel.key_mismatch",
            f"document identifier {value.get('identifier')!r} differs from the key's {key['identifier']!r}",
        )


STORAGE_PERIODS: Final[frozenset[str]] = frozenset({"DAYS", "MONTHS", "YEARS", "NEVER"})


def _v_template(value: Mapping[str, JsonValue], key: Mapping[str, KeyValue]) -> None:
    _require_object(value, "qrating", required=False)
    _require_object(value, "storage", required=False)
    if value.get("qrating") is not None:
        try:
            QRating.from_dict(value["qrating"])
        except QRatingError as e:
            raise ValueProblem(e.rule, str(e)) from e
    storage = value.get("storage")
    if storage is not None:
        period, total = storage.get("period"), storage.get("total")
        if period not in STORAGE_PERIODS:
            raise ValueProblem(
                "storage.period", f"storage.period must be one of {sorted(STORAGE_PERIODS)}, got {period!r}"
            )
        if period == "NEVER" and total is not None:
            raise ValueProblem("storage.total", "storage.total must be empty when period is NEVER")
        if period != "NEVER" and (isinstance(total, bool) or not isinstance(total, int) or total <= 0):
            raise ValueProblem("storage.total", f"storage.total must be an integer > 0, got {total!r}")


def _ref(target: str, *pairs: tuple[str, Literal["key", "value"], str]) -> Reference:
    return Reference(target, tuple((t, (where, f)) for t, where, f in pairs))


ENTITY_CLASSES: Final[Mapping[str, EntitySpec]] = {
    spec.name: spec
    for spec in (
        EntitySpec(
            "organization",
            "master",
            (("org_id", "int"),),
            _v_organization,
            doc="owner of nodes and sites; corrections overwrite",
        ),
        EntitySpec("node", "history", (("node_id", "int"),), _v_node, doc="a SolarNode: name, organization, location"),
        EntitySpec(
            "node_timezone",
            "time_dependent",
            (("node_id", "int"),),
            _v_node_timezone,
            (_ref("node", ("node_id", "key", "node_id")),),
            doc="the node's IANA time zone from a date on (aggregation windows follow it)",
        ),
        EntitySpec("site", "history", (("site_id", "str"),), _v_site, doc="an oTherm site (facility)"),
        EntitySpec(
            "equipment",
            "history",
            (("equipment_id", "str"),),
            _v_equipment,
            (_ref("site", ("site_id", "value", "site_id")),),
            doc="oTherm equipment at a site: heat pump, monitoring system",
        ),
        EntitySpec(
            "source",
            "static",
            (("node_id", "int"), ("source_id", "str")),
            _v_source,
            (_ref("node", ("node_id", "key", "node_id")),),
            doc="a datum stream's identity: immutable, delete and re-create",
        ),
        EntitySpec(
            "datamodel",
            "static",
            (("identifier", "str"),),
            _v_datamodel,
            doc="an OpenGate datamodel; a new version is delete + re-create",
        ),
        EntitySpec(
            "source_binding",
            "history",
            (("node_id", "int?"), ("source_pattern", "str"), ("valid_from_ms", "int?")),
            _v_binding,
            (_ref("datamodel", ("identifier", "value", "datamodel")), _ref("node", ("node_id", "key", "node_id"))),
            doc="which datamodel validates the sources matching a pattern (processors.binding)",
        ),
        EntitySpec(
            "datastream_template",
            "time_dependent",
            (("datamodel", "str"), ("datastream", "str")),
            _v_template,
            (_ref("datamodel", ("identifier", "key", "datamodel")),),
            doc="a datastream's qrating and storage for an interval of data time",
        ),
        EntitySpec(
            "security_token",
            "history",
            (("token_id", "str"),),
            _v_security_token,
            doc="an API token: type, SolarNetwork policy and the digest that verifies its"
            " signatures (processors.tokens); revoked by a delete",
        ),
    )
}


def spec_for(entity: str) -> EntitySpec:
    try:
        return ENTITY_CLASSES[entity]
    except KeyError:
        raise MetadataEventError(
            "entity",
            "event.entity_unknown",
            f"unknown entity {entity!r}; known: {', '.join(sorted(ENTITY_CLASSES))}",
        ) from None


def key_text(key: Mapping[str, KeyValue]) -> str:
    """Canonical text of a key: the form stored and compared in PostgreSQL."""
    return json.dumps(key, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def key_from_text(text: str) -> dict[str, KeyValue]:
    return cast(dict[str, KeyValue], json.loads(text))


# ---------------------------------------------------------------------------------------------
# The event
# ---------------------------------------------------------------------------------------------

# JSON Schema (2020-12) of the wire form; parse_event() enforces the same and more
# (entity-specific key fields, ops allowed per class, interval order).
EVENT_JSON_SCHEMA: Final[Mapping[str, object]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "urn:telemetry-pipeline:metadata-event:1",
    "title": "Metadata change event",
    "type": "object",
    "additionalProperties": False,
    "required": ["event_id", "entity", "key", "op", "author", "produced_at"],
    "properties": {
        "event_id": {"type": "string", "format": "uuid"},
        "entity": {"enum": sorted(ENTITY_CLASSES)},
        "key": {"type": "object", "minProperties": 1, "additionalProperties": {"type": ["integer", "string", "null"]}},
        "op": {"enum": list(OPS)},
        "value": {"type": ["object", "null"]},
        "valid_from": {"type": ["string", "null"], "format": "date-time"},
        "valid_to": {"type": ["string", "null"], "format": "date-time"},
        "author": {"type": "string", "minLength": 1, "maxLength": AUTHOR_MAX},
        "comment": {"type": "string", "maxLength": COMMENT_MAX},
        "produced_at": {"type": "string", "format": "date-time"},
    },
}


@dataclass(frozen=True, slots=True)
class MetadataEvent:
    event_id: uuid.UUID
    entity: str
    key: Mapping[str, KeyValue]
    op: Op
    value: Mapping[str, JsonValue] | None
    valid_from: datetime | None
    valid_to: datetime | None
    author: str
    comment: str
    produced_at: datetime
    _key_text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # computed once: it is a json.dumps, and bulk imports ask for it several times
        object.__setattr__(self, "_key_text", key_text(self.key))

    @property
    def spec(self) -> EntitySpec:
        return ENTITY_CLASSES[self.entity]

    @property
    def key_text(self) -> str:
        return self._key_text

    def as_dict(self) -> dict[str, JsonValue]:
        return {
            "event_id": str(self.event_id),
            "entity": self.entity,
            "key": dict(self.key),
            "op": self.op,
            "value": None if self.value is None else dict(self.value),
            "valid_from": iso(self.valid_from),
            "valid_to": iso(self.valid_to),
            "author": self.author,
            "comment": self.comment,
            "produced_at": iso(self.produced_at),
        }


def parse_time(raw: object, name: str) -> datetime:
    """ISO 8601 with an explicit offset (or Z), normalised to UTC. Naive times are refused:
    a metadata timestamp without a zone is ambiguous by hours."""
    if not isinstance(raw, str):
        raise MetadataEventError(name, "event.time_type", f"must be an ISO 8601 string, got {raw!r}")
    try:
        t = datetime.fromisoformat(raw.replace("Z", "+00:00") if raw.endswith("Z") else raw)
    except ValueError:
        raise MetadataEventError(name, "event.time_format", f"{raw!r} is not ISO 8601") from None
    if t.tzinfo is None or t.utcoffset() is None:
        raise MetadataEventError(name, "event.time_naive", f"{raw!r} has no UTC offset")
    return t.astimezone(UTC)


def _optional_time(d: Mapping[str, object], name: str) -> datetime | None:
    raw = d.get(name)
    return None if raw is None else parse_time(raw, name)


def _field_with_nul(doc: Mapping[str, object]) -> str | None:
    """The first top-level field with a U+0000 anywhere in it (keys of nested objects too)."""

    def has_nul(v: object) -> bool:
        if isinstance(v, str):
            return "\x00" in v
        if isinstance(v, Mapping):
            return any(has_nul(k) or has_nul(x) for k, x in v.items())
        if isinstance(v, list | tuple):
            return any(has_nul(x) for x in v)
        return False

    return next((str(k) for k, v in doc.items() if has_nul(k) or has_nul(v)), None)


def parse_event(raw: str | bytes | Mapping[str, object]) -> MetadataEvent:
    """Parse and validate one event (JSON text or a decoded object) into a MetadataEvent.

    Raises MetadataEventError naming the first broken field. Entity values are *not* checked
    here: a well-formed event with a bad value is refused by decide() and recorded as refused.
    """
    if isinstance(raw, (str, bytes)):
        try:
            d = json.loads(raw)
        except ValueError as e:
            raise MetadataEventError("", "event.json", f"not JSON: {e}") from None
    else:
        d = raw
    if not isinstance(d, Mapping):
        raise MetadataEventError("", "event.type", "an event is a JSON object")
    unknown = sorted(set(d) - set(EVENT_FIELDS))
    if unknown:
        raise MetadataEventError(unknown[0], "event.unknown_field", "is not an event field")
    nul = _field_with_nul(d)
    if nul is not None:  # PostgreSQL's text and jsonb cannot hold U+0000: refused here, not by the store
        raise MetadataEventError(nul, "event.nul_character", "contains U+0000, which the history log cannot store")

    raw_id = d.get("event_id")
    if not isinstance(raw_id, str):
        raise MetadataEventError("event_id", "event.event_id", "must be a UUID string")
    try:
        event_id = uuid.UUID(raw_id)
    except ValueError:
        raise MetadataEventError("event_id", "event.event_id", f"{raw_id!r} is not a UUID") from None

    entity = d.get("entity")
    if not isinstance(entity, str):
        raise MetadataEventError("entity", "event.entity_unknown", "must be an entity name")
    spec = spec_for(entity)
    key = _parse_key(d.get("key"), spec)

    op = d.get("op")
    if op not in OPS:
        raise MetadataEventError("op", "event.op_unknown", f"{op!r} is not one of {list(OPS)}")
    op = cast(Op, op)
    if op not in spec.ops:
        raise MetadataEventError(
            "op",
            "event.op_not_allowed",
            f"{op!r} is not allowed for {entity} ({spec.cls}); allowed: {sorted(spec.ops)}",
        )

    value = d.get("value")
    if value is not None and not isinstance(value, Mapping):
        raise MetadataEventError("value", "event.value_type", "must be a JSON object or null")
    if op in VALUE_OPS and value is None:
        raise MetadataEventError("value", "event.value_missing", f"{op} needs a value")
    if op not in VALUE_OPS and value:
        raise MetadataEventError("value", "event.value_unexpected", f"{op} takes no value")
    if op not in VALUE_OPS:
        value = None

    valid_from = _optional_time(d, "valid_from")
    valid_to = _optional_time(d, "valid_to")
    if spec.cls != "time_dependent" and (valid_from is not None or valid_to is not None):
        raise MetadataEventError(
            "valid_from" if valid_from is not None else "valid_to",
            "event.valid_time_unexpected",
            f"{entity} is {spec.cls} metadata: it has no valid time",
        )
    if valid_from is not None and valid_to is not None and valid_from >= valid_to:
        raise MetadataEventError("valid_to", "event.interval_empty", "valid_to must be after valid_from")
    if op == "close" and valid_to is None:
        raise MetadataEventError("valid_to", "event.valid_to_missing", "close needs the new valid_to")

    author = d.get("author")
    if not isinstance(author, str) or not author.strip() or len(author) > AUTHOR_MAX:
        raise MetadataEventError("author", "event.author", f"must be non-empty text up to {AUTHOR_MAX} characters")
    comment = d.get("comment", "")
    if not isinstance(comment, str) or len(comment) > COMMENT_MAX:
        raise MetadataEventError("comment", "event.comment", f"must be text up to {COMMENT_MAX} characters")
    if d.get("produced_at") is None:
        raise MetadataEventError("produced_at", "event.produced_at_missing", "is missing")
    produced_at = parse_time(d["produced_at"], "produced_at")
    return MetadataEvent(
        event_id,
        entity,
        key,
        op,
        None if value is None else dict(value),
        valid_from,
        valid_to,
        author,
        comment,
        produced_at,
    )


def _parse_key(raw: object, spec: EntitySpec) -> dict[str, KeyValue]:
    if not isinstance(raw, Mapping):
        raise MetadataEventError("key", "event.key_type", "must be a JSON object")
    names = [name for name, _ in spec.key_fields]
    if set(raw) != set(names):
        raise MetadataEventError("key", "event.key_fields", f"{spec.name} is keyed by {names}, got {sorted(raw)}")
    key: dict[str, KeyValue] = {}
    for name, kind in spec.key_fields:
        v = raw[name]
        if kind == "str":
            if not isinstance(v, str) or not v:
                raise MetadataEventError(f"key.{name}", "event.key_type", f"must be non-empty text, got {v!r}")
        elif not (v is None and kind == "int?") and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise MetadataEventError(
                f"key.{name}",
                "event.key_type",
                f"must be an integer >= 0{' or null' if kind == 'int?' else ''}, got {v!r}",
            )
        key[name] = v
    if "source_id" in key:
        problem = source_id_problem(str(key["source_id"]))
        if problem is not None:
            raise MetadataEventError("key.source_id", problem.rule, problem.message)
    return key


# ---------------------------------------------------------------------------------------------
# Decisions: what an event does to the current rows of its key
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CurrentRow:
    """One row of an entity key as known now. row_id is the adapter's handle to close it."""

    value: Mapping[str, JsonValue]
    valid: Interval | None = None
    row_id: int | None = None


@dataclass(frozen=True, slots=True)
class NewRow:
    value: Mapping[str, JsonValue]
    valid: Interval | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """Rows whose transaction time ends now, and rows whose transaction time starts now."""

    close: tuple[CurrentRow, ...] = ()
    insert: tuple[NewRow, ...] = ()

    @property
    def unchanged(self) -> bool:
        return not self.close and not self.insert


@dataclass(frozen=True, slots=True)
class Refusal:
    rule: str
    message: str


def validate_value(event: MetadataEvent) -> Refusal | None:
    if event.value is None:
        return None
    try:
        event.spec.validate(event.value, event.key)
    except ValueProblem as e:
        return Refusal(e.rule, f"{event.entity} {event.key_text}: {e.message}")
    return None


def references(event: MetadataEvent) -> list[tuple[str, dict[str, KeyValue]]]:
    """The (entity, key) pairs this event's value or key must name, when it writes a value."""
    if event.op not in VALUE_OPS or event.value is None:
        return []
    out: list[tuple[str, dict[str, KeyValue]]] = []
    for ref in event.spec.refs:
        key: dict[str, KeyValue] = {}
        for target_field, (where, src) in ref.fields:
            v = event.key.get(src) if where == "key" else event.value.get(src)
            if v is None:
                break  # an optional reference left empty
            key[target_field] = v
        else:
            out.append((ref.target, key))
    return out


def relevant_interval(event: MetadataEvent) -> Interval | None:
    """The valid-time window whose current rows decide() needs, None if not time-dependent.

    Every time-dependent rule only looks at intervals overlapping [valid_from, valid_to) of the
    event (for close: the moved interval; delete of all: everything), so an adapter may pass
    just those: one indexed query instead of a key's whole history.
    """
    if event.spec.cls != "time_dependent":
        return None
    return Interval(event.valid_from, event.valid_to)


def decide(event: MetadataEvent, current: Sequence[CurrentRow]) -> Plan | Refusal:
    """The plan an event makes of the current rows of its key, or why it is refused.

    `current` holds the key's rows as known now: at most one for master/static/history
    entities; for time-dependent ones the non-overlapping intervals, all of them or at least
    those overlapping relevant_interval(event).
    """
    problem = validate_value(event)
    if problem is not None:
        return problem
    cls = event.spec.cls
    if cls == "time_dependent":
        return _decide_valid(event, current)
    if len(current) > 1:
        raise ValueError(f"{event.entity} {event.key_text} has {len(current)} current rows")
    row = current[0] if current else None
    what = f"{event.entity} {event.key_text}"
    if event.op == "delete":
        if row is None:
            return Refusal("entity.not_found", f"{what} does not exist")
        return Plan(close=(row,))
    assert event.value is not None
    if row is None:
        return Plan(insert=(NewRow(event.value),))
    if _same(row.value, event.value):
        return Plan()  # re-stating the current value is not a change
    if cls == "static":
        return Refusal(
            "static.immutable",
            f"{what} is static metadata and exists with another value: delete it and re-create",
        )
    return Plan(close=(row,), insert=(NewRow(event.value),))


def _same(a: Mapping[str, JsonValue], b: Mapping[str, JsonValue]) -> bool:
    # a current row may have been read back from jsonb, the event's value not: compare as jsonb
    return same_json(a, b)


def same_json(a: JsonValue, b: JsonValue) -> bool:
    """Whether two JSON values are equal as PostgreSQL's jsonb sees them.

    Objects by their members whatever the order; numbers by the decimal they are written as
    (1 = 1.0, and the float 1e23 is 10**23, as jsonb stores it, not the binary float nearest to
    it, which == would compare exactly); true and false are never numbers (== says True == 1).
    A value read back from jsonb and the value as the event carried it compare equal.
    """
    ta, tb = type(a), type(b)
    if ta is str or tb is str:  # the common case first
        return ta is tb and bool(a == b)
    if ta is dict and tb is dict or isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same_json(v, b[k]) for k, v in a.items())
    if ta in _NUMBERS and tb in _NUMBERS:
        if ta is tb:
            return bool(a == b)  # int with int, float with float: exact, as their texts
        return _decimal(a) == _decimal(b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return ta is tb and bool(a == b)  # true, false, null; a number and a bool never match


_NUMBERS: Final[frozenset[type]] = frozenset({int, float})


def _decimal(x: int | float) -> Decimal:
    # repr is the shortest text that reads back as the float: what json.dumps writes
    return Decimal(repr(x)) if isinstance(x, float) else Decimal(x)


def _fmt(iv: Interval) -> str:
    return f"[{iso(iv.start) or '-inf'}, {iso(iv.end) or '+inf'})"


def _decide_valid(event: MetadataEvent, current: Sequence[CurrentRow]) -> Plan | Refusal:
    what = f"{event.entity} {event.key_text}"
    op = event.op
    rows = sorted(current, key=lambda r: _start_key(r.valid))
    if op == "delete":
        if event.valid_from is None and event.valid_to is None:
            if not rows:
                return Refusal("entity.not_found", f"{what} has no intervals")
            return Plan(close=tuple(rows))
        target = Interval(event.valid_from, event.valid_to)
        exact = [r for r in rows if r.valid == target]
        if not exact:
            return Refusal("valid.not_found", f"{what} has no interval {_fmt(target)}")
        return Plan(close=(exact[0],))

    if op == "close":
        starting = [r for r in rows if r.valid is not None and r.valid.start == event.valid_from]
        if not starting:
            return Refusal(
                "valid.not_found",
                f"{what} has no interval starting at {iso(event.valid_from) or '-inf'}",
            )
        row = starting[0]
        assert row.valid is not None
        if row.valid.end == event.valid_to:
            return Plan()
        moved = Interval(row.valid.start, event.valid_to)
        clash = [r for r in rows if r is not row and r.valid is not None and r.valid.overlaps(moved)]
        if clash:
            return _overlap(what, moved, clash)
        return Plan(close=(row,), insert=(NewRow(row.value, moved),))

    assert event.value is not None
    target = Interval(event.valid_from, event.valid_to)
    if op == "correct":
        exact = [r for r in rows if r.valid == target]
        if not exact:
            return Refusal(
                "valid.not_found",
                f"{what} has no interval {_fmt(target)} to correct (bounds must match exactly; "
                f"use close to move an end)",
            )
        if _same(exact[0].value, event.value):
            return Plan()
        return Plan(close=(exact[0],), insert=(NewRow(event.value, target),))

    overlapping = [r for r in rows if r.valid is not None and r.valid.overlaps(target)]
    if op == "set_valid":
        if overlapping:
            return _overlap(what, target, overlapping)
        return Plan(insert=(NewRow(event.value, target),))

    # replace: the new interval wins; the parts of older intervals outside it are kept.
    inserts: list[NewRow] = []
    for r in overlapping:
        assert r.valid is not None
        if target.start is not None and (r.valid.start is None or r.valid.start < target.start):
            inserts.append(NewRow(r.value, Interval(r.valid.start, target.start)))
        if target.end is not None and (r.valid.end is None or target.end < r.valid.end):
            inserts.append(NewRow(r.value, Interval(target.end, r.valid.end)))
    inserts.append(NewRow(event.value, target))
    if len(overlapping) == 1 and overlapping[0].valid == target and _same(overlapping[0].value, event.value):
        return Plan()
    inserts.sort(key=lambda n: _start_key(n.valid))
    return Plan(close=tuple(overlapping), insert=tuple(inserts))


def _start_key(iv: Interval | None) -> tuple[int, datetime]:
    if iv is None or iv.start is None:
        return (0, datetime.min.replace(tzinfo=UTC))
    return (1, iv.start)


def _overlap(what: str, target: Interval, clash: Sequence[CurrentRow]) -> Refusal:
    spans = ", ".join(_fmt(r.valid) for r in clash if r.valid is not None)
    return Refusal(
        "valid.overlap",
        f"{what}: {_fmt(target)} overlaps {spans}; use replace, or close/delete the earlier interval first",
    )


# ---------------------------------------------------------------------------------------------
# Query results shared by the adapter and the validators
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EntityState:
    """One row of a state: an entity key's value (and, when time-dependent, its interval)."""

    entity: str
    key: Mapping[str, KeyValue]
    value: Mapping[str, JsonValue]
    valid: Interval | None = None  # None unless time-dependent
    known_since: datetime | None = None  # transaction time the row was written (None: master)

    @property
    def cls(self) -> EntityClass:
        return ENTITY_CLASSES[self.entity].cls


ChangeKind = Literal["added", "changed", "deleted"]


@dataclass(frozen=True, slots=True)
class Change:
    """How one row differs between two states. Time-dependent rows are identified by their
    key and valid_from, so moving an interval's end is 'changed', a new interval 'added'."""

    kind: ChangeKind
    entity: str
    key: Mapping[str, KeyValue]
    before: EntityState | None
    after: EntityState | None
    valid_from: datetime | None = None


@dataclass(frozen=True, slots=True)
class TimedValue:
    valid: Interval
    value: Mapping[str, JsonValue]


def value_at(intervals: Sequence[TimedValue], t: datetime) -> Mapping[str, JsonValue] | None:
    for tv in intervals:
        if tv.valid.contains(t):
            return tv.value
    return None


@dataclass(frozen=True, slots=True)
class DatamodelEntry:
    identifier: str
    doc: Mapping[str, JsonValue]  # the document processors.datamodel.parse_datamodel accepts
    # datastream identifier -> its template intervals (qrating, storage), ordered by valid_from
    templates: Mapping[str, tuple[TimedValue, ...]] = field(default_factory=dict)

    @property
    def version(self) -> str | None:
        v = self.doc.get("version")
        return None if v is None else str(v)

    def template_at(self, datastream: str, t: datetime) -> Mapping[str, JsonValue] | None:
        return value_at(self.templates.get(datastream, ()), t)


@dataclass(frozen=True, slots=True)
class MetadataCatalog:
    """What running validators need, as of one transaction time (`as_of`, `tx_high_water`).

    `bindings` are binding documents for processors.binding.parse_binding (key and value of
    each source_binding merged); `datamodels` documents for processors.datamodel.parse_datamodel.
    Time-dependent parts keep their intervals so a datum is checked against the version valid
    at its own created time, not at the time it happens to arrive.
    """

    as_of: datetime
    tx_high_water: int  # the latest applied transaction id: a cheap "has anything changed?"
    datamodels: Mapping[str, DatamodelEntry]
    bindings: tuple[Mapping[str, JsonValue], ...]
    node_timezones: Mapping[int, tuple[TimedValue, ...]]

    def template_at(self, datamodel: str, datastream: str, t: datetime) -> Mapping[str, JsonValue] | None:
        """The time-dependent template values (qrating, storage) valid at data time t."""
        dm = self.datamodels.get(datamodel)
        return None if dm is None else dm.template_at(datastream, t)
