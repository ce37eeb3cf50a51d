"""The validators' catalog through data time: which template version holds at a datum's time.

The history log keeps a datastream template's qrating and storage as time-dependent values
(valid-time intervals). A datum is validated and scored with the version valid at its own
`created`, so replaying last year's data uses last year's thresholds. This module turns one
`MetadataCatalog` snapshot into a list of `Catalog`s, one per stretch of data time in which no
template value changes, and picks the right one for a datum in O(log n).
"""

from __future__ import annotations

import bisect
import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from processors.binding import Binding, BindingError, Catalog, parse_binding
from processors.datamodel import Datamodel, DatamodelError, StoragePlan, parse_datamodel
from processors.metadata import JsonValue, MetadataCatalog, TimedValue, value_at

# Fields of a datastream that the time-dependent template entity may override.
TIME_DEPENDENT_FIELDS = ("qrating", "storage")


class TimezoneAt(Protocol):
    """A node's time zone (IANA name) at a data time in epoch ms; "UTC" until the node has one.

    The one signature for it: the worker's rollups, `pipeline data recompute` and the API pass
    such callables around (positional-only, so any (int, int) -> str function fits)."""

    def __call__(self, node_id: int, created_ms: int, /) -> str: ...


def timezone_at(node_timezones: Mapping[int, tuple[TimedValue, ...]], node_id: int, created_ms: int) -> str:
    """The node's time zone at data time created_ms in a catalog's node_timezones; UTC until it has one."""
    v = value_at(node_timezones.get(node_id, ()), _at(created_ms))
    return "UTC" if v is None else str(v["tz"])


@dataclass(frozen=True)
class CatalogProblem:
    what: str  # "datamodel <id>" or "binding <n>"
    message: str


@dataclass(frozen=True)
class VersionedCatalog:
    """catalogs[k] holds for data time in [bounds[k-1], bounds[k]) (open at both far ends)."""

    bounds_ms: tuple[int, ...]
    catalogs: tuple[Catalog, ...]
    version: int = 0  # the history log's transaction high-water mark this was built from
    problems: tuple[CatalogProblem, ...] = field(default=())
    node_timezones: Mapping[int, tuple[TimedValue, ...]] = field(default_factory=dict)

    def at(self, created_ms: int) -> Catalog:
        return self.catalogs[bisect.bisect_right(self.bounds_ms, created_ms)]

    def timezone_at(self, node_id: int, created_ms: int) -> str:
        """A TimezoneAt: the node's time zone at data time created_ms; UTC until the node has one."""
        return timezone_at(self.node_timezones, node_id, created_ms)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ms(t: datetime) -> int:
    return (t - _EPOCH) // timedelta(milliseconds=1)


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _overlay(
    doc: Mapping[str, JsonValue], values: Mapping[str, Mapping[str, JsonValue] | None]
) -> dict[str, JsonValue]:
    """The datamodel document with each datastream's time-dependent fields replaced."""
    out = copy.deepcopy(dict(doc))
    categories = out.get("categories")
    if not isinstance(categories, list):
        return out
    for category in categories:
        streams = category.get("datastreams") if isinstance(category, dict) else None
        if not isinstance(streams, list):
            continue
        for stream in streams:
            if not isinstance(stream, dict):
                continue
            value = values.get(str(stream.get("identifier")))
            if value is None:
                continue
            for name in TIME_DEPENDENT_FIELDS:
                if name in value:
                    if value[name] is None:
                        stream.pop(name, None)
                    else:
                        stream[name] = copy.deepcopy(value[name])
    return out


def build_versioned_catalog(meta: MetadataCatalog, plan: StoragePlan | None = None) -> VersionedCatalog:
    """One Catalog per stretch of data time between template changes.

    A datamodel or binding that no longer parses (it was valid when applied, but e.g. a later
    plan change makes it too long) is left out and reported in `problems`, never half-used.
    """
    problems: list[CatalogProblem] = []
    bindings: list[Binding] = []
    for n, doc in enumerate(meta.bindings):
        try:
            bindings.append(parse_binding(doc, n))
        except BindingError as exc:
            problems.append(CatalogProblem(f"binding {n}", str(exc)))
    bounds: set[int] = set()
    for entry in meta.datamodels.values():
        for intervals in entry.templates.values():
            for tv in intervals:
                for t in (tv.valid.start, tv.valid.end):
                    if t is not None:
                        bounds.add(_ms(t))
    ordered = tuple(sorted(bounds))
    # A representative instant inside each stretch: before the first bound, then each bound.
    samples = [ordered[0] - 1 if ordered else 0, *ordered]
    parsed: dict[str, Datamodel | None] = {}  # overlaid document JSON -> its parse
    catalogs: list[Catalog] = []
    for ms in samples:
        t = _at(ms)
        models: list[Datamodel] = []
        for ident, entry in sorted(meta.datamodels.items()):
            values = {ds: entry.template_at(ds, t) for ds in entry.templates}
            doc = _overlay(entry.doc, values)
            key = json.dumps(doc, sort_keys=True)
            if key not in parsed:
                try:
                    parsed[key] = parse_datamodel(doc, plan=plan)
                except DatamodelError as exc:
                    parsed[key] = None
                    problems.append(CatalogProblem(f"datamodel {ident}", str(exc)))
            model = parsed[key]
            if model is not None:
                models.append(model)
        known = {m.identifier for m in models}
        catalogs.append(Catalog(models, [b for b in bindings if b.datamodel in known]))
    return VersionedCatalog(ordered, tuple(catalogs), meta.tx_high_water, tuple(problems), dict(meta.node_timezones))
