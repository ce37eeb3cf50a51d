"""From decoded line-protocol points to datums.

Pure logic: a `LineProtocolMapping` says which tag names the source, how the sourceId is built,
where the node id comes from, which values mean "missing", and how fields become i/a/s samples.
The classification itself is the caller's (datastream templates decide it elsewhere): pass
`classify`, or get the default (numbers are instantaneous, text and booleans are status).

See docs/line-protocol.md for the rules and defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import compress
from operator import itemgetter, not_
from typing import Any

from processors import line_protocol
from processors.datum import Datum, Kind, LineRejection, Rejection, source_id_problem
from processors.line_protocol import FieldValue, LineError, Point

__all__ = [
    "Classifier",
    "LineProtocolMapping",
    "LineRejection",
    "MappedBatch",
    "OTHERM_SOURCE_TAGS",
    "map_batch",
    "map_lines",
    "map_points",
]

Classifier = Callable[[str, str], Kind | None]

# oTherm's measurements, each keyed by the heat pump's uuid in the `equipment` tag.
OTHERM_SOURCE_TAGS: Mapping[str, str] = {
    "otherm-data": "equipment",
    "monitoring-data": "equipment",
    "weather-data": "equipment",
}

# Caches are keyed by what varies per source; cleared when this large so memory stays bounded.
_CACHE_LIMIT = 65_536


def _otherm_source_tags() -> dict[str, str]:
    return dict(OTHERM_SOURCE_TAGS)


@dataclass(frozen=True)
class LineProtocolMapping:
    """How points become datums.

    source_tags: measurement -> the tag whose value names the source; measurements not listed use
        default_source_tag, or are refused when that is None.
    source_template: str.format template for the sourceId; it may use {measurement}, {source}
        (the source tag's value) and any tag key, e.g. "/{measurement}/{equipment}".
    node_id / node_tag: the node is fixed (node_id) or read from a tag (node_tag); give one.
    sentinels: numeric values that mean "no reading" (oTherm writes NaN as -999); such fields are
        left out of the datum. Non-finite numbers are never kept either.
    classify: (source_id, field) -> 'i' | 'a' | 's' | None, or a {field: kind} lookup. None (or a
        field missing from the lookup) means "no opinion": numbers go to i, text and booleans to s.
        With drop_unclassified=True such fields are dropped instead.
    datum_tags: tags given to every datum.
    """

    node_id: int | None = None
    node_tag: str | None = None
    source_tags: Mapping[str, str] = field(default_factory=_otherm_source_tags)
    default_source_tag: str | None = None
    source_template: str = "/{measurement}/{source}"
    sentinels: frozenset[float] = frozenset({-999.0})
    classify: Classifier | Mapping[str, Kind | None] | None = None
    drop_unclassified: bool = False
    datum_tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.node_id is None) == (self.node_tag is None):
            raise ValueError("give exactly one of node_id and node_tag")
        if self.node_id is not None and self.node_id < 0:
            raise ValueError("node_id must not be negative")


@dataclass(slots=True)
class MappedBatch:
    datums: list[Datum]
    rejections: list[LineRejection]


# Per (measurement, tags): (node_id, source_id) or the reason there is none.
_Identity = tuple[int, str] | Rejection


class _Mapper:
    """Holds the per-source caches for one run over many points."""

    __slots__ = ("m", "identities", "kinds", "lookup", "classify")

    def __init__(self, mapping: LineProtocolMapping) -> None:
        self.m = mapping
        self.identities: dict[tuple[str, tuple[tuple[str, str], ...]], _Identity] = {}
        self.kinds: dict[str, dict[str, Kind | None]] = {}  # source_id -> field -> kind
        self.lookup: Mapping[str, Kind | None] | None = None
        self.classify: Classifier | None = None
        if isinstance(mapping.classify, Mapping):
            self.lookup = mapping.classify
        elif mapping.classify is not None:
            self.classify = mapping.classify

    def identity(self, point: Point) -> _Identity:
        return self.resolve(point.measurement, point.tags)

    def resolve(self, measurement: str, point_tags: tuple[tuple[str, str], ...]) -> _Identity:
        key = (measurement, point_tags)
        found = self.identities.get(key)
        if found is None:
            if len(self.identities) >= _CACHE_LIMIT:
                self.identities.clear()
            found = self.identities[key] = self._identity(measurement, point_tags)
        return found

    def _identity(self, measurement: str, point_tags: tuple[tuple[str, str], ...]) -> _Identity:
        m = self.m
        tags = dict(point_tags)
        tag_name = m.source_tags.get(measurement, m.default_source_tag)
        if tag_name is None:
            return Rejection(
                "lp.measurement_unmapped",
                f"no source tag is configured for measurement {measurement!r}",
                value=measurement,
            )
        source = tags.get(tag_name)
        if source is None:
            return Rejection(
                "lp.source_tag_missing",
                f"measurement {measurement!r} needs tag {tag_name!r} to name its source",
            )
        try:
            source_id = m.source_template.format_map({**tags, "measurement": measurement, "source": source})
        except KeyError as exc:
            return Rejection(
                "lp.template_tag_missing",
                f"source template {m.source_template!r} needs tag {exc.args[0]!r}",
            )
        problem = source_id_problem(source_id)
        if problem is not None:
            return problem
        if m.node_id is not None:
            return (m.node_id, source_id)
        assert m.node_tag is not None
        raw = tags.get(m.node_tag)
        if raw is None or not (raw.isascii() and raw.isdigit()):
            return Rejection(
                "lp.node_id_invalid",
                f"tag {m.node_tag!r} must hold a non-negative integer node id",
                value=raw,
            )
        return (int(raw), source_id)

    def kind(self, source_id: str, name: str) -> Kind | None:
        """The caller's classification, or None for "no opinion"."""
        if self.lookup is not None:
            return self.lookup.get(name)
        if self.classify is None:
            return None
        known = self.kinds.get(source_id)
        if known is None:
            if len(self.kinds) >= _CACHE_LIMIT:
                self.kinds.clear()
            known = self.kinds[source_id] = {}
        try:
            return known[name]
        except KeyError:
            found = known[name] = self.classify(source_id, name)
            return found

    def map(self, point: Point) -> tuple[Datum | None, list[LineRejection]]:
        ident = self.identity(point)
        if isinstance(ident, Rejection):
            return None, [LineRejection(point.line_no, ident)]
        node_id, source_id = ident
        if point.time_ns is None:
            reason = Rejection("created.missing", "the line has no timestamp and no default time")
            return None, [LineRejection(point.line_no, reason)]
        # Datums keep milliseconds: anything finer is floored away.
        created_ms = point.time_ns // 1_000_000
        sentinels = self.m.sentinels
        problems: list[LineRejection] = []
        inst: dict[str, float] = {}
        accu: dict[str, float] = {}
        status: dict[str, str] = {}
        if self.lookup is None and self.classify is None:
            fields = point.fields
            values = tuple(map(_SECOND, fields))
            total = sum(values) if set(map(type, values)) == _FLOAT_ONLY else None
            if total is not None and total - total == 0.0:
                # All finite floats, the usual oTherm line: C-level filtering, no Python loop.
                if sentinels.isdisjoint(values):
                    inst = dict(fields)  # type: ignore[arg-type]
                else:
                    keep = map(not_, map(sentinels.__contains__, values))
                    inst = dict(compress(fields, keep))  # type: ignore[arg-type]
            else:
                inst, status = _default_kinds(point.fields, sentinels)
        else:
            inst, accu, status = self._classified(point, source_id, problems)
        if not (inst or accu or status):
            problems.append(
                LineRejection(
                    point.line_no,
                    Rejection(
                        "lp.no_samples",
                        "every field was a missing-value sentinel or left unclassified",
                    ),
                )
            )
            return None, problems
        datum = Datum(node_id, source_id, created_ms, inst, accu, status, self.m.datum_tags)
        return datum, problems

    def _classified(
        self, point: Point, source_id: str, problems: list[LineRejection]
    ) -> tuple[dict[str, float], dict[str, float], dict[str, str]]:
        inst: dict[str, float] = {}
        accu: dict[str, float] = {}
        status: dict[str, str] = {}
        sentinels = self.m.sentinels
        drop = self.m.drop_unclassified
        for name, value in point.fields:
            kind = self.kind(source_id, name)
            if kind is None:
                if drop:
                    continue
                kind = "s" if isinstance(value, (str, bool)) else "i"
            if kind == "s":
                status[name] = _as_text(value)
                continue
            num = _as_number(value)
            if num is None:
                problems.append(
                    LineRejection(
                        point.line_no,
                        Rejection(
                            "sample.not_a_number",
                            f"field {name!r} is classified {kind!r} but holds text",
                            name,
                            kind,
                            value,
                        ),
                    )
                )
                continue
            if num in sentinels or num - num != 0.0:
                continue
            (inst if kind == "i" else accu)[name] = num
        return inst, accu, status


_SECOND = itemgetter(1)
_FLOAT_ONLY = {float}


def _default_kinds(
    fields: tuple[tuple[str, FieldValue], ...], sentinels: frozenset[float]
) -> tuple[dict[str, float], dict[str, str]]:
    """Numbers to i, text and booleans to s, sentinels and non-finite numbers left out."""
    inst: dict[str, float] = {}
    status: dict[str, str] = {}
    for name, value in fields:
        if isinstance(value, bool):
            status[name] = "true" if value else "false"
        elif isinstance(value, str):
            status[name] = value
        else:
            num = float(value)
            if num not in sentinels and num - num == 0.0:
                inst[name] = num
    return inst, status


def _as_text(value: FieldValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(int(value))
    return value


def _as_number(value: FieldValue) -> float | None:
    if isinstance(value, str):
        return None
    return float(value)  # booleans become 1.0 / 0.0


def _syntax(error: LineError) -> LineRejection:
    return LineRejection(error.line_no, Rejection("lp.syntax", error.message))


def map_points(items: Iterable[Point | LineError], mapping: LineProtocolMapping) -> Iterator[Datum | LineRejection]:
    """Map a stream lazily (e.g. straight from parse_lines); parse errors become lp.syntax."""
    mapper = _Mapper(mapping)
    for item in items:
        if isinstance(item, LineError):
            yield _syntax(item)
            continue
        datum, problems = mapper.map(item)
        yield from problems
        if datum is not None:
            yield datum


def map_batch(items: Iterable[Point | LineError], mapping: LineProtocolMapping) -> MappedBatch:
    """Map many points at once, sharing the per-source caches; datums keep input order."""
    mapper = _Mapper(mapping)
    datums: list[Datum] = []
    rejections: list[LineRejection] = []
    keep = datums.append
    for item in items:
        if isinstance(item, LineError):
            rejections.append(_syntax(item))
            continue
        datum, problems = mapper.map(item)
        if problems:
            rejections.extend(problems)
        if datum is not None:
            keep(datum)
    return MappedBatch(datums, rejections)


def _compiled_sentinels(sentinels: frozenset[float]) -> tuple[float, ...] | None:
    """The sentinels as doubles for the compiled mapping, or None when a double comparison could
    disagree with `value in sentinels` (a sentinel that is not a float or an int that a double holds
    exactly)."""
    out: list[float] = []
    for s in sentinels:
        if isinstance(s, float) or (isinstance(s, int) and abs(s) <= 2**53):
            out.append(float(s))
        else:
            return None
    return tuple(out) if len(out) <= 64 else None


def map_lines(
    lines: Iterable[str | bytes],
    mapping: LineProtocolMapping,
    precision: str = "ns",
    default_time_ns: int | None = None,
    start_line: int = 1,
    *,
    compiled: bool | None = None,
) -> Iterator[Datum | LineRejection]:
    """`map_points(parse_lines(lines, precision, default_time_ns, start_line), mapping)`, faster.

    With the compiled fast path (processors/_lpfast.c) and the default classification, common lines
    go straight from bytes to datums without Points; every other line takes the Python route. The
    output is the same either way. compiled: None uses the compiled path when it is built.
    """
    mapper = _Mapper(mapping)
    mult = line_protocol.precision_multiplier(precision)
    default_ns = None if default_time_ns is None else default_time_ns - default_time_ns % mult
    sentinels = _compiled_sentinels(mapping.sentinels)
    if compiled is None:
        compiled = line_protocol.compiled_available(default_ns, start_line)
    items: Iterable[object]
    if compiled and mapper.lookup is None and mapper.classify is None and sentinels is not None:
        if not line_protocol.compiled_available(default_ns, start_line):
            raise RuntimeError("the compiled line-protocol parser is not available (not built?)")
        parse_datums = line_protocol._lpfast.parse_datums
        resolve = mapper.resolve
        datum_tags = mapping.datum_tags
        # the compiled cache keeps identities per head for this token: this run's mapper only
        token = object()

        def step(chunk: list[Any], start: int, line_no: int, out: list[Any]) -> tuple[int, int]:
            result: tuple[int, int] = parse_datums(
                chunk, start, mult, default_ns, line_no, out, token, resolve, sentinels, datum_tags
            )
            return result

        stream = line_protocol._Stream(mult, default_ns, start_line)
        items = line_protocol._compiled_items(lines, stream, step)
    else:
        items = line_protocol.parse_lines(lines, precision, default_time_ns, start_line, compiled=compiled)
    for item in items:
        if type(item) is Datum:
            yield item
        elif isinstance(item, LineError):
            yield _syntax(item)
        else:
            assert isinstance(item, Point)
            datum, problems = mapper.map(item)
            yield from problems
            if datum is not None:
                yield datum
