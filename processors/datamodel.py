"""OpenGate datamodels and datastream templates: parsing and every rule of the template format.

A datamodel groups datastream templates into categories. A template says what one measured
(or settable) quantity looks like: its JSON Schema, period, access, storage TTL, unit and
qrating. `parse_datamodel` turns a JSON document into frozen dataclasses or raises
`DatamodelError` naming the rule, the datamodel, the datastream and the field.
Rule ids are listed in docs/datamodels.md.

Unknown keys: `views` ("to be used in the future") is accepted anywhere in a template and
ignored. Any other unknown key is refused (`*.unknown_field`): a typo such as "acess" would
otherwise silently fall back to the READ default.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Final, Literal, TypeGuard, cast

import fastjsonschema
import jsonschema
from jsonschema.exceptions import SchemaError

from processors.qrating import QRating, QRatingError

Period = Literal["PULSE", "CUMULATIVE", "INSTANT"]
Access = Literal["READ", "WRITE", "READ,WRITE"]
StoragePeriod = Literal["DAYS", "MONTHS", "YEARS", "NEVER"]

PERIODS: Final[tuple[Period, ...]] = ("PULSE", "CUMULATIVE", "INSTANT")
ACCESSES: Final[tuple[Access, ...]] = ("READ", "WRITE", "READ,WRITE")
STORAGE_PERIODS: Final[tuple[StoragePeriod, ...]] = ("DAYS", "MONTHS", "YEARS", "NEVER")
TAG_MAX: Final = 50
RESERVED_PREFIXES: Final = ("device", "provision.device")

# Calendar-average lengths, exact, so that 12 MONTHS == 1 YEARS when compared with a plan.
_DAYS_PER: Final[Mapping[str, Fraction]] = {
    "DAYS": Fraction(1),
    "MONTHS": Fraction(1461, 48),  # 365.25 / 12
    "YEARS": Fraction(1461, 4),  # 365.25
}

NotStored = Literal["not stored"]
NOT_STORED: Final[NotStored] = "not stored"

_DATAMODEL_KEYS: Final = frozenset(
    {"identifier", "name", "description", "version", "allowedResourceTypes", "categories"}
)
_CATEGORY_KEYS: Final = frozenset({"identifier", "name", "description", "datastreams"})
_DATASTREAM_KEYS: Final = frozenset(
    {
        "identifier",
        "name",
        "description",
        "period",
        "access",
        "schema",
        "storage",
        "unit",
        "modifiable",
        "calculated",
        "required",
        "qrating",
        "tags",
        "icon",
    }
)
_IGNORED_DATASTREAM_KEYS: Final = frozenset({"views"})


class DatamodelError(ValueError):
    """A datamodel that breaks a rule of the template format."""

    def __init__(
        self,
        rule: str,
        message: str,
        datamodel: str | None = None,
        datastream: str | None = None,
        field: str | None = None,
    ) -> None:
        where = [
            f"{label} {value!r}"
            for label, value in (
                ("datamodel", datamodel),
                ("datastream", datastream),
                ("field", field),
            )
            if value is not None
        ]
        prefix = ", ".join(where) + ": " if where else ""
        super().__init__(f"{prefix}{message} [{rule}]")
        self.rule = rule
        self.message = message
        self.datamodel = datamodel
        self.datastream = datastream
        self.field = field


@dataclass(frozen=True, slots=True)
class Storage:
    """How long datapoints are kept: `total` units of `period`; NEVER keeps none."""

    period: StoragePeriod
    total: int | None = None


@dataclass(frozen=True, slots=True)
class StoragePlan:
    """The organization's plan: the default and the ceiling of every datastream's storage."""

    period: StoragePeriod
    total: int | None = None


@dataclass(frozen=True, slots=True)
class Unit:
    type: str = ""
    label: str = ""
    symbol: str = ""


@dataclass(frozen=True, slots=True)
class DatastreamTemplate:
    identifier: str
    name: str
    description: str
    period: Period = "INSTANT"
    access: Access = "READ"
    # The JSON Schema as given. Not hashed (a dict); `schema_key` stands for it.
    schema: Mapping[str, object] = field(default_factory=dict, hash=False, compare=False)
    storage: Storage | None = None
    unit: Unit = Unit()
    modifiable: bool = True
    calculated: bool = False
    required: bool = False
    qrating: QRating | None = field(default=None, hash=False)
    tags: tuple[str, ...] = ()
    icon_class: str | None = None
    # Canonical JSON of `schema`: equality, hashing and the compiled-validator cache key.
    schema_key: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "schema_key", canonical_json(self.schema))

    @property
    def writable(self) -> bool:
        return "WRITE" in self.access.split(",")

    @property
    def suffix(self) -> str:
        """Last dot-separated segment of the identifier: the default property name."""
        return self.identifier.rsplit(".", 1)[-1]


@dataclass(frozen=True, slots=True)
class Category:
    identifier: str
    name: str
    description: str | None = None
    datastreams: tuple[DatastreamTemplate, ...] = ()


@dataclass(frozen=True, slots=True)
class Datamodel:
    identifier: str
    name: str
    description: str
    version: str | None = None
    allowed_resource_types: tuple[str, ...] = ()
    categories: tuple[Category, ...] = ()

    @property
    def datastreams(self) -> Iterator[DatastreamTemplate]:
        for category in self.categories:
            yield from category.datastreams

    def datastream(self, identifier: str) -> DatastreamTemplate | None:
        for template in self.datastreams:
            if template.identifier == identifier:
                return template
        return None


# --- storage -----------------------------------------------------------------------------


def storage_days(storage: Storage | StoragePlan) -> Fraction | NotStored:
    """Exact length in days (NEVER: nothing is stored)."""
    if storage.period == "NEVER":
        return NOT_STORED
    return _DAYS_PER[storage.period] * (storage.total or 0)


def ttl_days(storage: Storage | None, plan: StoragePlan | None = None) -> int | NotStored | None:
    """Days a datapoint is kept, rounded up; "not stored" for NEVER.

    `storage` None means the plan's default; None back means no limit (no storage, no plan).
    """
    effective: Storage | StoragePlan | None = storage if storage is not None else plan
    if effective is None:
        return None
    days = storage_days(effective)
    if days == NOT_STORED:
        return NOT_STORED
    return math.ceil(days)


def _exceeds(storage: Storage, plan: StoragePlan) -> bool:
    mine, ceiling = storage_days(storage), storage_days(plan)
    if mine == NOT_STORED:
        return False  # keeping nothing never exceeds anything
    if ceiling == NOT_STORED:
        return True
    return mine > ceiling


# --- compiled schemas --------------------------------------------------------------------

Validator = Callable[[object], object]
_COMPILED: dict[str, Validator] = {}


def canonical_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def schema_validator(template: DatastreamTemplate) -> Validator:
    """fastjsonschema validator for the template's schema, compiled once per distinct schema.

    The validator raises fastjsonschema.JsonSchemaValueException on a bad value.
    """
    compiled = _COMPILED.get(template.schema_key)
    if compiled is None:
        # use_default=False: validation must never fill in (mutate) the value.
        compiled = cast(
            Validator,
            fastjsonschema.compile(dict(template.schema), use_default=False),
        )
        _COMPILED[template.schema_key] = compiled
    return compiled


# --- parsing -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Ctx:
    datamodel: str | None = None
    datastream: str | None = None

    def error(self, rule: str, message: str, field: str | None = None) -> DatamodelError:
        return DatamodelError(rule, message, self.datamodel, self.datastream, field)


def _text(doc: Mapping[str, object], key: str, ctx: _Ctx, scope: str, *, required: bool) -> str | None:
    raw = doc.get(key)
    if raw is None:
        if required:
            raise ctx.error(f"{scope}.required", f"{key} is mandatory", key)
        return None
    if not isinstance(raw, str) or not raw.strip():
        raise ctx.error(f"{scope}.field_type", f"{key} must be a non-empty string", key)
    return raw


def _bool(doc: Mapping[str, object], key: str, default: bool, ctx: _Ctx) -> bool:
    raw = doc.get(key, default)
    if not isinstance(raw, bool):
        raise ctx.error("datastream.field_type", f"{key} must be true or false, got {raw!r}", key)
    return raw


def _choice(doc: Mapping[str, object], key: str, default: str, allowed: Sequence[str], ctx: _Ctx) -> str:
    """A datastream's `key`, `default` when absent: one of `allowed`."""
    raw = doc.get(key, default)
    if raw not in allowed:
        raise ctx.error(f"datastream.{key}.invalid", f"{key} must be one of {', '.join(allowed)}, got {raw!r}", key)
    return cast(str, raw)


def _unknown(doc: Mapping[str, object], known: frozenset[str], ctx: _Ctx, scope: str) -> None:
    extra = sorted(str(k) for k in doc if k not in known)
    if extra:
        raise ctx.error(f"{scope}.unknown_field", f"unknown field(s) {', '.join(extra)}", extra[0])


def parse_datamodel(
    doc: Mapping[str, object],
    *,
    plan: StoragePlan | None = None,
    organization_identifiers: Collection[str] = (),
) -> Datamodel:
    """Parse one OpenGate datamodel, enforcing every template rule.

    `organization_identifiers` are the datastream identifiers already used by the
    organization's other datamodels: identifiers are unique per organization.
    `plan` is the organization's storage plan: no datastream may keep data longer.
    """
    ctx = _Ctx()
    if not isinstance(doc, Mapping):
        raise ctx.error("datamodel.type", "a datamodel must be a JSON object")
    raw_id = doc.get("identifier")
    ctx.datamodel = raw_id if isinstance(raw_id, str) else None
    _unknown(doc, _DATAMODEL_KEYS, ctx, "datamodel")
    identifier = cast(str, _text(doc, "identifier", ctx, "datamodel", required=True))
    name = cast(str, _text(doc, "name", ctx, "datamodel", required=True))
    description = cast(str, _text(doc, "description", ctx, "datamodel", required=True))
    version = _text(doc, "version", ctx, "datamodel", required=False)

    resource_types = doc.get("allowedResourceTypes", [])
    if not _is_list(resource_types) or not all(isinstance(t, str) for t in resource_types):
        raise ctx.error(
            "datamodel.field_type",
            "allowedResourceTypes must be a list of strings",
            "allowedResourceTypes",
        )

    raw_categories = doc.get("categories")
    if raw_categories is None:
        raise ctx.error("datamodel.required", "categories is mandatory", "categories")
    if not _is_list(raw_categories):
        raise ctx.error("datamodel.field_type", "categories must be a list", "categories")

    seen: set[str] = set()
    taken = frozenset(organization_identifiers)
    categories: list[Category] = []
    category_ids: set[str] = set()
    for index, raw_category in enumerate(raw_categories):
        category = _parse_category(raw_category, index, ctx, plan, taken, seen)
        if category.identifier in category_ids:
            raise ctx.error(
                "category.duplicate",
                f"category {category.identifier!r} appears twice",
                f"categories[{index}].identifier",
            )
        category_ids.add(category.identifier)
        categories.append(category)
    return Datamodel(
        identifier,
        name,
        description,
        version,
        tuple(cast(Sequence[str], resource_types)),
        tuple(categories),
    )


def _is_list(value: object) -> TypeGuard[Sequence[object]]:
    return isinstance(value, list | tuple)


def _parse_category(
    raw: object,
    index: int,
    ctx: _Ctx,
    plan: StoragePlan | None,
    taken: frozenset[str],
    seen: set[str],
) -> Category:
    where = f"categories[{index}]"
    if not isinstance(raw, Mapping):
        raise ctx.error("category.type", "a category must be a JSON object", where)
    for key in raw:
        if key not in _CATEGORY_KEYS:
            raise ctx.error("category.unknown_field", f"unknown field {key}", f"{where}.{key}")
    texts: dict[str, str | None] = {}
    for key, required in (("identifier", True), ("name", True), ("description", False)):
        value = raw.get(key)
        if value is None:
            if required:
                raise ctx.error("category.required", f"{key} is mandatory", f"{where}.{key}")
            texts[key] = None
        elif not isinstance(value, str) or not value.strip():
            raise ctx.error("category.field_type", f"{key} must be a non-empty string", f"{where}.{key}")
        else:
            texts[key] = value
    raw_streams = raw.get("datastreams", [])
    if not _is_list(raw_streams):
        raise ctx.error("category.field_type", "datastreams must be a list", f"{where}.datastreams")
    streams: list[DatastreamTemplate] = []
    for item in raw_streams:
        template = _parse_datastream(item, ctx, plan)
        if template.identifier in seen or template.identifier in taken:
            raise ctx.error(
                "datastream.identifier.duplicate",
                "identifier is already used in this organization (unique per organization)",
                "identifier",
            )
        seen.add(template.identifier)
        streams.append(template)
    ctx.datastream = None
    return Category(
        cast(str, texts["identifier"]),
        cast(str, texts["name"]),
        texts["description"],
        tuple(streams),
    )


def _parse_datastream(raw: object, ctx: _Ctx, plan: StoragePlan | None) -> DatastreamTemplate:
    ctx.datastream = None
    if not isinstance(raw, Mapping):
        raise ctx.error("datastream.type", "a datastream template must be a JSON object")
    raw_id = raw.get("identifier")
    ctx.datastream = raw_id if isinstance(raw_id, str) else None
    _unknown(raw, _DATASTREAM_KEYS | _IGNORED_DATASTREAM_KEYS, ctx, "datastream")

    identifier = cast(str, _text(raw, "identifier", ctx, "datastream", required=True))
    if any(identifier.startswith(prefix) for prefix in RESERVED_PREFIXES):
        raise ctx.error(
            "datastream.identifier.reserved_prefix",
            "identifier may not start with 'device' or 'provision.device'",
            "identifier",
        )
    if "_" in identifier:
        raise ctx.error("datastream.identifier.underscore", "identifier may not contain '_'", "identifier")
    name = cast(str, _text(raw, "name", ctx, "datastream", required=True))
    description = cast(str, _text(raw, "description", ctx, "datastream", required=True))

    period = _choice(raw, "period", "INSTANT", PERIODS, ctx)
    access = _choice(raw, "access", "READ", ACCESSES, ctx)

    schema = _parse_schema(raw, ctx)
    storage = _parse_storage(raw.get("storage"), ctx, plan)
    unit = _parse_unit(raw.get("unit"), ctx)
    modifiable = _bool(raw, "modifiable", True, ctx)
    calculated = _bool(raw, "calculated", False, ctx)
    required = _bool(raw, "required", False, ctx)
    tags = _parse_tags(raw.get("tags"), ctx)
    qrating = _parse_qrating(raw.get("qrating"), ctx)
    icon_class = _parse_icon(raw.get("icon"), ctx)

    template = DatastreamTemplate(
        identifier=identifier,
        name=name,
        description=description,
        period=cast(Period, period),
        access=cast(Access, access),
        schema=schema,
        storage=storage,
        unit=unit,
        modifiable=modifiable,
        calculated=calculated,
        required=required,
        qrating=qrating,
        tags=tags,
        icon_class=icon_class,
    )
    try:
        schema_validator(template)
    except Exception as exc:  # fastjsonschema raises several types; any means unusable
        raise ctx.error("datastream.schema.unsupported", f"schema cannot be compiled: {exc}", "schema") from exc
    return template


def _parse_schema(raw: Mapping[str, object], ctx: _Ctx) -> Mapping[str, object]:
    schema = raw.get("schema")
    if schema is None:
        raise ctx.error("datastream.required", "schema is mandatory", "schema")
    if not isinstance(schema, Mapping):
        raise ctx.error("datastream.schema.invalid", "schema must be a JSON object", "schema")
    try:
        canonical_json(schema)
    except (TypeError, ValueError) as exc:
        raise ctx.error("datastream.schema.invalid", f"schema is not JSON: {exc}", "schema") from exc
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        path = "/".join(str(p) for p in exc.path)
        where = f"schema/{path}" if path else "schema"
        raise ctx.error("datastream.schema.invalid", f"not a valid JSON Schema: {exc.message}", where) from exc
    remote = _remote_ref(schema)
    if remote is not None:
        # Resolving it would mean network or file I/O while validating: refuse up front.
        raise ctx.error("datastream.schema.remote_ref", f"$ref {remote!r} is not local ('#...')", "schema")
    return json.loads(canonical_json(schema))  # type: ignore[no-any-return]  # a private copy


def _remote_ref(node: object) -> str | None:
    if isinstance(node, Mapping):
        ref = node.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            return ref
        for value in node.values():
            found = _remote_ref(value)
            if found is not None:
                return found
    elif isinstance(node, list | tuple):
        for value in node:
            found = _remote_ref(value)
            if found is not None:
                return found
    return None


def _parse_storage(raw: object, ctx: _Ctx, plan: StoragePlan | None) -> Storage | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ctx.error("datastream.storage.type", "storage must be a JSON object", "storage")
    for key in raw:
        if key not in ("period", "total"):
            raise ctx.error("datastream.storage.unknown_field", f"unknown field {key}", f"storage.{key}")
    period = raw.get("period")
    total = raw.get("total")
    if period is None:
        if total is not None:
            raise ctx.error(
                "datastream.storage.total_without_period",
                "storage total given without a period",
                "storage.total",
            )
        raise ctx.error("datastream.storage.period.invalid", "storage needs a period", "storage.period")
    if period not in STORAGE_PERIODS:
        raise ctx.error(
            "datastream.storage.period.invalid",
            f"storage period must be one of {', '.join(STORAGE_PERIODS)}, got {period!r}",
            "storage.period",
        )
    if period == "NEVER":
        if total is not None:
            raise ctx.error(
                "datastream.storage.never_with_total",
                "storage period NEVER takes no total",
                "storage.total",
            )
        return Storage("NEVER", None)
    if total is None:
        raise ctx.error(
            "datastream.storage.total_missing",
            f"storage period {period} needs a total",
            "storage.total",
        )
    if isinstance(total, bool) or not isinstance(total, int) or total <= 0:
        raise ctx.error(
            "datastream.storage.total.invalid",
            f"storage total must be a positive integer, got {total!r}",
            "storage.total",
        )
    storage = Storage(cast(StoragePeriod, period), total)
    if plan is not None and _exceeds(storage, plan):
        raise ctx.error(
            "datastream.storage.exceeds_plan",
            f"storage {total} {period} exceeds the organization plan ({plan.total} {plan.period})"
            if plan.period != "NEVER"
            else "the organization plan stores nothing",
            "storage",
        )
    return storage


def _parse_unit(raw: object, ctx: _Ctx) -> Unit:
    if raw is None:
        return Unit()
    if not isinstance(raw, Mapping):
        raise ctx.error("datastream.unit.type", "unit must be a JSON object", "unit")
    values: dict[str, str] = {}
    for key, value in raw.items():
        if key not in ("type", "label", "symbol"):
            raise ctx.error("datastream.unit.unknown_field", f"unknown field {key}", f"unit.{key}")
        if not isinstance(value, str):
            raise ctx.error("datastream.unit.type", f"unit {key} must be a string", f"unit.{key}")
        values[key] = value
    return Unit(values.get("type", ""), values.get("label", ""), values.get("symbol", ""))


def _parse_tags(raw: object, ctx: _Ctx) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not _is_list(raw):
        raise ctx.error("datastream.tags.type", "tags must be a list of strings", "tags")
    tags: list[str] = []
    for index, tag in enumerate(raw):
        if not isinstance(tag, str):
            raise ctx.error("datastream.tags.type", "tags must be strings", f"tags[{index}]")
        if len(tag) > TAG_MAX:
            raise ctx.error(
                "datastream.tags.too_long",
                f"tag is {len(tag)} characters, at most {TAG_MAX} allowed",
                f"tags[{index}]",
            )
        tags.append(tag)
    return tuple(tags)


def _parse_qrating(raw: object, ctx: _Ctx) -> QRating | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ctx.error("qrating.type", "qrating must be a JSON object", "qrating")
    try:
        return QRating.from_dict(raw)
    except QRatingError as exc:
        where = f"qrating.{exc.field}" if exc.field else "qrating"
        raise ctx.error(exc.rule, exc.message, where) from exc


def _parse_icon(raw: object, ctx: _Ctx) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or set(raw) - {"class"}:
        raise ctx.error("datastream.icon.type", 'icon must be {"class": "..."}', "icon")
    icon_class = raw.get("class")
    if icon_class is None:
        return None
    if not isinstance(icon_class, str):
        raise ctx.error("datastream.icon.type", "icon class must be a string", "icon.class")
    return icon_class


# --- several datamodels, files -----------------------------------------------------------


def parse_datamodels(
    docs: Sequence[Mapping[str, object]],
    *,
    plan: StoragePlan | None = None,
    organization_identifiers: Collection[str] = (),
) -> tuple[Datamodel, ...]:
    """Parse several datamodels of one organization; all or nothing.

    Datastream identifiers must be unique across all of them (and the organization's).
    Datamodel identifiers must be unique too.
    """
    taken = set(organization_identifiers)
    out: list[Datamodel] = []
    model_ids: set[str] = set()
    for doc in docs:
        model = parse_datamodel(doc, plan=plan, organization_identifiers=taken)
        if model.identifier in model_ids:
            raise DatamodelError(
                "datamodel.duplicate",
                "datamodel identifier appears twice",
                model.identifier,
                None,
                "identifier",
            )
        model_ids.add(model.identifier)
        taken.update(t.identifier for t in model.datastreams)
        out.append(model)
    return tuple(out)


def _read_json(path: str | Path) -> object:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatamodelError("file.json", f"{path}: not JSON: {exc}") from exc


def load_datamodels_file(
    path: str | Path,
    *,
    plan: StoragePlan | None = None,
    organization_identifiers: Collection[str] = (),
) -> tuple[Datamodel, ...]:
    """Load a file holding one datamodel object or a list of them; refused whole if any is bad."""
    doc = _read_json(path)
    docs = doc if isinstance(doc, list) else [doc]
    return parse_datamodels(
        cast(Sequence[Mapping[str, object]], docs),
        plan=plan,
        organization_identifiers=organization_identifiers,
    )
