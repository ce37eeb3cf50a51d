"""Which datamodel applies to which (node, source): bindings and the catalog that resolves them.

A `Binding` ties an Ant source pattern (optionally on one node) to a datamodel, and maps
sample property names to datastream identifiers.

Property mapping rule, per sample property P of a bound source:
  1. `properties[P]` when the binding names P (explicit mapping);
  2. otherwise the datastream of the bound datamodel whose identifier's last dot-separated
     segment equals P exactly (case-sensitive): "watts" -> "energy.meter.watts".
     Datastreams already targeted by an explicit mapping take no part in this rule (one
     datastream, one property), nor does a suffix shared by two datastreams of the model
     (ambiguous: map it explicitly);
  3. otherwise P maps to no datastream (validation refuses it: `sample.unmapped`).
Datastream identifiers may not hold "_", so names like oTherm's "heatpump_power" or
SolarNetwork's "voltage_a" always need an explicit mapping.

Resolution (`Catalog.resolve`): among bindings whose node matches (or is None) and whose
pattern matches the source, and whose `valid_from_ms` is at or before the datum's time,
the winner is, in order:
  1. a binding for this node before one for any node (a per-node override wins);
  2. the more specific pattern (`antpath.specificity`: a literal source first, "**" alone
     last; then fewer wildcards, "*" counting 1 and "**" 2; then more literal characters;
     then fewer "?");
  3. the later `valid_from_ms` (None counts as the earliest);
  4. the earlier binding in the list.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final

from processors.antpath import Specificity, compile_pattern, specificity
from processors.datamodel import (
    Datamodel,
    DatamodelError,
    DatastreamTemplate,
    StoragePlan,
    load_datamodels_file,
)

BINDINGS_FILE: Final = "bindings.json"
_CACHE_MAX: Final = 100_000  # (node, source) pairs remembered before the cache starts over
_BINDING_KEYS: Final = frozenset({"node_id", "source_pattern", "datamodel", "properties", "valid_from_ms"})


class BindingError(ValueError):
    def __init__(self, rule: str, message: str, index: int | None = None) -> None:
        where = f"binding[{index}]: " if index is not None else ""
        super().__init__(f"{where}{message} [{rule}]")
        self.rule = rule
        self.message = message
        self.index = index


@dataclass(frozen=True, slots=True)
class Binding:
    node_id: int | None  # None: any node
    source_pattern: str  # Ant pattern, see processors.antpath
    datamodel: str  # datamodel identifier
    properties: Mapping[str, str] = field(default_factory=dict, hash=False)  # property -> datastream
    valid_from_ms: int | None = None  # None: since always


@dataclass(frozen=True, slots=True)
class ResolvedSource:
    """A (node, source) bound to a datamodel, with its property -> datastream mapping."""

    binding: Binding
    datamodel: Datamodel
    # Every property the rule above maps (explicit and default), for O(1) lookup per sample.
    targets: Mapping[str, DatastreamTemplate]
    # Required, not calculated: the device must send these.
    required: tuple[DatastreamTemplate, ...]


@dataclass(frozen=True, slots=True)
class _Prepared:
    binding: Binding
    order: int
    resolved: ResolvedSource


def _targets(binding: Binding, model: Datamodel, index: int) -> ResolvedSource:
    by_id = {t.identifier: t for t in model.datastreams}
    explicit: dict[str, DatastreamTemplate] = {}
    for prop, ident in binding.properties.items():
        template = by_id.get(ident)
        if template is None:
            raise BindingError(
                "binding.unknown_datastream",
                f"property {prop!r} maps to {ident!r}, not a datastream of {model.identifier!r}",
                index,
            )
        if any(t is template for t in explicit.values()):
            raise BindingError(
                "binding.duplicate_target",
                f"two properties map to datastream {ident!r}; one datastream, one property",
                index,
            )
        explicit[prop] = template
    claimed = {t.identifier for t in explicit.values()}
    by_suffix: dict[str, DatastreamTemplate | None] = {}
    for template in model.datastreams:
        if template.identifier in claimed:
            continue
        # A suffix shared by two datastreams maps to neither (None marks it ambiguous).
        by_suffix[template.suffix] = None if template.suffix in by_suffix else template
    targets: dict[str, DatastreamTemplate] = {suffix: t for suffix, t in by_suffix.items() if t is not None}
    targets.update(explicit)
    required = tuple(t for t in model.datastreams if t.required and not t.calculated)
    return ResolvedSource(binding, model, MappingProxyType(targets), required)


def _rank(p: _Prepared) -> tuple[bool, Specificity, int, int]:
    b = p.binding
    valid_from = b.valid_from_ms if b.valid_from_ms is not None else -(2**63)
    return (b.node_id is not None, specificity(b.source_pattern), valid_from, -p.order)


class Catalog:
    """An immutable snapshot of datamodels and bindings; resolution is cached per (node, source).

    Build a new Catalog to change either; never mutate one in place.
    """

    __slots__ = ("_cache", "_datamodels", "_datastreams", "_prepared", "bindings")

    def __init__(self, datamodels: Iterable[Datamodel], bindings: Iterable[Binding]) -> None:
        models = tuple(datamodels)
        self._datamodels: Mapping[str, Datamodel] = MappingProxyType({m.identifier: m for m in models})
        if len(self._datamodels) != len(models):
            raise BindingError("catalog.duplicate_datamodel", "two datamodels share an identifier")
        streams: dict[str, tuple[Datamodel, DatastreamTemplate]] = {}
        for model in models:
            for template in model.datastreams:
                if template.identifier in streams:
                    raise BindingError(
                        "catalog.duplicate_datastream",
                        f"datastream {template.identifier!r} is in two datamodels",
                    )
                streams[template.identifier] = (model, template)
        self._datastreams = MappingProxyType(streams)
        self.bindings: tuple[Binding, ...] = tuple(bindings)
        prepared: list[_Prepared] = []
        seen: set[tuple[int | None, str, int | None]] = set()
        for index, binding in enumerate(self.bindings):
            bound = self._datamodels.get(binding.datamodel)
            if bound is None:
                raise BindingError("binding.unknown_datamodel", f"no datamodel {binding.datamodel!r}", index)
            key = (binding.node_id, binding.source_pattern, binding.valid_from_ms)
            if key in seen:
                raise BindingError(
                    "binding.duplicate",
                    "another binding has the same node, pattern and valid_from_ms",
                    index,
                )
            seen.add(key)
            compile_pattern(binding.source_pattern)
            prepared.append(_Prepared(binding, index, _targets(binding, bound, index)))
        # Best first: resolution takes the first candidate valid at the datum's time.
        prepared.sort(key=_rank, reverse=True)
        self._prepared: tuple[_Prepared, ...] = tuple(prepared)
        self._cache: dict[tuple[int, str], tuple[_Prepared, ...]] = {}

    @property
    def datamodels(self) -> Mapping[str, Datamodel]:
        return self._datamodels

    def pulse_datastreams(self) -> frozenset[str]:
        """Identifiers of the datastreams whose period is PULSE: their values roll up as sums."""
        return frozenset(i for i, (_m, t) in self._datastreams.items() if t.period == "PULSE")

    def datastream(self, identifier: str) -> tuple[Datamodel, DatastreamTemplate] | None:
        """The datamodel holding a datastream identifier, and its template."""
        return self._datastreams.get(identifier)

    def _matching(self, node_id: int, source_id: str) -> tuple[_Prepared, ...]:
        key = (node_id, source_id)
        found = self._cache.get(key)
        if found is None:
            found = tuple(
                p
                for p in self._prepared
                if (p.binding.node_id is None or p.binding.node_id == node_id)
                and compile_pattern(p.binding.source_pattern).fullmatch(source_id) is not None
            )
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()  # bounded memory; a refill costs one scan per pair
            self._cache[key] = found
        return found

    def resolve(self, node_id: int, source_id: str, created_ms: int | None = None) -> ResolvedSource | None:
        """The binding that applies to (node, source) at `created_ms`; None when unbound.

        `created_ms` None ignores `valid_from_ms` (the best binding overall).
        """
        for p in self._matching(node_id, source_id):
            valid_from = p.binding.valid_from_ms
            if created_ms is None or valid_from is None or valid_from <= created_ms:
                return p.resolved
        return None


# --- files -------------------------------------------------------------------------------


def parse_binding(doc: object, index: int | None = None) -> Binding:
    """One binding from JSON: {"node_id", "source_pattern", "datamodel", "properties",
    "valid_from_ms"}; only source_pattern and datamodel are mandatory."""
    if not isinstance(doc, Mapping):
        raise BindingError("binding.type", "a binding must be a JSON object", index)
    extra = sorted(str(k) for k in doc if k not in _BINDING_KEYS)
    if extra:
        raise BindingError("binding.unknown_field", f"unknown field(s) {', '.join(extra)}", index)
    node_id = doc.get("node_id")
    if node_id is not None and (isinstance(node_id, bool) or not isinstance(node_id, int)):
        raise BindingError("binding.field_type", "node_id must be an integer or null", index)
    pattern = doc.get("source_pattern")
    if not isinstance(pattern, str) or not pattern:
        raise BindingError("binding.field_type", "source_pattern must be a non-empty string", index)
    model = doc.get("datamodel")
    if not isinstance(model, str) or not model:
        raise BindingError("binding.field_type", "datamodel must be a non-empty string", index)
    props = doc.get("properties", {})
    if not isinstance(props, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in props.items()):
        raise BindingError("binding.field_type", "properties must map property names to datastream ids", index)
    valid_from = doc.get("valid_from_ms")
    if valid_from is not None and (isinstance(valid_from, bool) or not isinstance(valid_from, int)):
        raise BindingError("binding.field_type", "valid_from_ms must be an integer or null", index)
    return Binding(node_id, pattern, model, MappingProxyType(dict(props)), valid_from)


def parse_bindings(docs: Sequence[object]) -> tuple[Binding, ...]:
    return tuple(parse_binding(doc, index) for index, doc in enumerate(docs))


def load_bindings_file(path: str | Path) -> tuple[Binding, ...]:
    """A JSON file holding a list of bindings (or {"bindings": [...]})."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    if isinstance(doc, Mapping):
        doc = doc.get("bindings")
    if not isinstance(doc, list):
        raise BindingError("binding.file", f"{path}: expected a list of bindings")
    return parse_bindings(doc)


def load_catalog(directory: str | Path, *, plan: StoragePlan | None = None) -> Catalog:
    """Every datamodel file (*.json) in `directory` plus its bindings.json, as one Catalog.

    Datastream identifiers are unique across all files (one organization).
    """
    root = Path(directory)
    models: list[Datamodel] = []
    taken: set[str] = set()
    for path in sorted(root.glob("*.json")):
        if path.name == BINDINGS_FILE:
            continue
        loaded = load_datamodels_file(path, plan=plan, organization_identifiers=taken)
        for model in loaded:
            taken.update(t.identifier for t in model.datastreams)
        models.extend(loaded)
    bindings_path = root / BINDINGS_FILE
    bindings = load_bindings_file(bindings_path) if bindings_path.exists() else ()
    return Catalog(models, bindings)


__all__ = [
    "Binding",
    "BindingError",
    "Catalog",
    "DatamodelError",
    "ResolvedSource",
    "load_bindings_file",
    "load_catalog",
    "parse_binding",
    "parse_bindings",
]
