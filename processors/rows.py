"""From datums to raw sample rows: the pure step between decode and store.

Plain data in (a batch of datums and the time), plain data out (column-oriented rows for the
raw table, and every refusal with its reasons). Nothing here touches a store.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from processors.binding import Catalog
from processors.catalog_versions import VersionedCatalog
from processors.datamodel import NOT_STORED, DatastreamTemplate, NotStored, StoragePlan, ttl_days
from processors.datum import Datum, Rejection, check_envelope
from processors.qrating import RateState, Score, ScoreError, Scorer, next_rate
from processors.validation import validate

RateKey = tuple[int, str, str]  # (node, source, datastream)
DAY_MS = 86_400_000

RAW_COLUMNS = (
    "node_id",
    "source_id",
    "created",
    "property",
    "kind",
    "value",
    "text",
    "tags",
    "datastream",
    "score",
    "performance",
    "label",
    "quality",
    "max_score",
    "ttl_days",
)


@dataclass
class RawColumns:
    """Column-oriented raw rows: cheap to build in Python, one insert per batch."""

    node_id: list[int] = field(default_factory=list)
    source_id: list[str] = field(default_factory=list)
    created: list[int] = field(default_factory=list)  # epoch ms, UTC
    property: list[str] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)
    value: list[float | None] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    tags: list[Sequence[str]] = field(default_factory=list)
    datastream: list[str] = field(default_factory=list)
    score: list[float | None] = field(default_factory=list)
    performance: list[float | None] = field(default_factory=list)
    label: list[str] = field(default_factory=list)
    quality: list[str] = field(default_factory=list)
    max_score: list[float | None] = field(default_factory=list)
    ttl_days: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.node_id)

    def extend(self, other: RawColumns) -> None:
        for name in RAW_COLUMNS:
            getattr(self, name).extend(getattr(other, name))

    def columns(self) -> list[list[object]]:
        return [getattr(self, name) for name in RAW_COLUMNS]

    def add_datum(self, d: Datum) -> int:
        """Append one row per sample of an accepted, unbound datum; returns rows added."""
        n = 0
        for kind, name, val in d.samples():
            self.add(d, kind, name, val)
            n += 1
        return n

    def add(
        self,
        d: Datum,
        kind: str,
        name: str,
        val: float | str,
        datastream: str = "",
        score: float | None = None,
        performance: float | None = None,
        label: str = "",
        quality: str = "",
        ttl: int = 0,
        max_score: float | None = None,
    ) -> None:
        self.node_id.append(d.node_id)
        self.source_id.append(d.source_id)
        self.created.append(d.created_ms)
        self.property.append(name)
        self.kind.append(kind)
        if kind == "s":
            self.value.append(None)
            self.text.append(str(val))
        else:
            self.value.append(float(val))
            self.text.append("")
        self.tags.append(d.tags)
        self.datastream.append(datastream)
        self.score.append(score)
        self.performance.append(performance)
        self.label.append(label)
        self.quality.append(quality)
        self.max_score.append(max_score)
        self.ttl_days.append(ttl)


@dataclass
class AcceptResult:
    rows: RawColumns  # raw rows to store
    datums_accepted: int
    # (original datum, reasons, stage): the whole datum or some of its samples were refused
    refused: list[tuple[Datum, list[Rejection], str]]
    # samples of NEVER-stored datastreams: only the latest value of each is kept queryable
    latest: RawColumns = field(default_factory=RawColumns)
    # stored samples already past their datastream's storage period on arrival (a backfill):
    # the raw rows go within a day, their rollups stay (docs/rollups.md)
    samples_expired: int = 0
    datums_expired: int = 0  # accepted datums with at least one such sample


_MISSING: Any = object()


class Overlay(MutableMapping[RateKey, RateState]):
    """Changes over a base mapping, read through to it; writes and deletes touch the changes only
    (`new`), as a ChainMap's first map would. ChainMap's own lookups run a generator over its
    maps: with the rate of every cumulative stream of a fleet's batch looked up, 7 % of a worker's
    time (issue 13)."""

    __slots__ = ("base", "new")

    def __init__(self, base: Mapping[RateKey, RateState]) -> None:
        self.base = base
        self.new: dict[RateKey, RateState] = {}

    def __getitem__(self, key: RateKey) -> RateState:
        got = self.new.get(key, _MISSING)
        return self.base[key] if got is _MISSING else got

    def get(self, key: RateKey, default: Any = None) -> Any:
        got = self.new.get(key, _MISSING)
        return self.base.get(key, default) if got is _MISSING else got

    def __contains__(self, key: object) -> bool:
        return key in self.new or key in self.base

    def __setitem__(self, key: RateKey, value: RateState) -> None:
        self.new[key] = value

    def __delitem__(self, key: RateKey) -> None:
        del self.new[key]

    def __iter__(self) -> Iterator[RateKey]:
        return iter(self.new.keys() | self.base.keys())

    def __len__(self) -> int:
        return len(self.new.keys() | self.base.keys())


@dataclass
class Scoring:
    """What scoring needs across batches: a Scorer per template, and the last datapoint of every
    cumulative stream (the rate's baseline). `rates` is owned by the caller, who rebuilds it
    from the store after a restart."""

    plan: StoragePlan | None = None
    rates: MutableMapping[RateKey, RateState] = field(default_factory=dict)
    _scorers: dict[int, tuple[DatastreamTemplate, Scorer | None]] = field(default_factory=dict)

    def scorer(self, template: DatastreamTemplate) -> Scorer | None:
        hit = self._scorers.get(id(template))
        if hit is None or hit[0] is not template:
            hit = (template, Scorer(template.qrating) if template.qrating is not None else None)
            self._scorers[id(template)] = hit
        return hit[1]


def accept_batch(
    datums: Sequence[Datum],
    now_ms: int,
    catalog: Catalog | VersionedCatalog | None = None,
    scoring: Scoring | None = None,
) -> AcceptResult:
    """Envelope rules, then (with a catalog) template validation and qRating, per datum.

    A VersionedCatalog gives each datum the templates valid at its own created time.

    Datums of one stream must come in their order of arrival: cumulative rates are taken
    against the previous datapoint of the stream.
    """
    result = AcceptResult(RawColumns(), 0, [])
    scoring = scoring if scoring is not None else Scoring()
    for d in datums:
        kept, problems = check_envelope(d, now_ms)
        if problems:
            result.refused.append((d, problems, "envelope"))
        if kept is None:
            continue
        if catalog is None:
            result.rows.add_datum(kept)
            result.datums_accepted += 1
            continue
        current = catalog.at(kept.created_ms) if isinstance(catalog, VersionedCatalog) else catalog
        checked = validate(kept, current)
        rejected = list(checked.rejections)
        if checked.accepted is not None:
            if checked.bound:
                expired = _add_scored(result, checked.accepted, checked.datastreams, scoring, rejected, now_ms)
                result.samples_expired += expired
                result.datums_expired += expired > 0
            else:
                result.rows.add_datum(checked.accepted)
            result.datums_accepted += 1
        if rejected:
            result.refused.append((kept, rejected, "validation"))
    return result


def is_expired(created_ms: int, ttl: int | NotStored | None, now_ms: int) -> bool:
    """Whether a sample created at created_ms, kept `ttl` days (ttl_days(): an int; None or
    NOT_STORED keep nothing to expire), is already past its storage period at now_ms."""
    return isinstance(ttl, int) and ttl > 0 and created_ms + ttl * DAY_MS <= now_ms


def expired_samples(d: Datum, catalog: Catalog | VersionedCatalog, now_ms: int, plan: StoragePlan | None = None) -> int:
    """How many samples of datum d would be stored already past their datastream's storage period
    at now_ms, with the templates valid at its created time (0 for an unbound or refused datum).
    For reports that see datums before the workers do (`pipeline ingest`, `pipeline replay`)."""
    current = catalog.at(d.created_ms) if isinstance(catalog, VersionedCatalog) else catalog
    checked = validate(d, current)
    if checked.accepted is None or not checked.bound:
        return 0
    return sum(
        1
        for _kind, name, _val in checked.accepted.samples()
        if (t := checked.datastreams.get(name)) is not None
        and is_expired(d.created_ms, ttl_days(t.storage, plan), now_ms)
    )


@dataclass
class ExpiryCount:
    """Datums and samples already expired on arrival, for a report."""

    samples: int = 0
    datums: int = 0

    def add(self, samples: int) -> None:
        self.samples += samples
        self.datums += samples > 0


def count_expired(
    datums: Sequence[Datum],
    catalog: Catalog | VersionedCatalog | None,
    now_ms: int,
    into: ExpiryCount | None = None,
    plan: StoragePlan | None = None,
) -> ExpiryCount:
    """Adds to `into` (or a new count) the expired samples of every datum; nothing without a catalog."""
    out = into if into is not None else ExpiryCount()
    if catalog is not None:
        for d in datums:
            out.add(expired_samples(d, catalog, now_ms, plan))
    return out


def _add_scored(
    result: AcceptResult,
    d: Datum,
    templates: Mapping[str, DatastreamTemplate],
    scoring: Scoring,
    rejected: list[Rejection],
    now_ms: int,
) -> int:
    """Rows for the samples of a bound datum; returns how many stored ones are already expired."""
    expired = 0
    for kind, name, val in d.samples():
        template = templates.get(name)
        if template is None:  # validate() maps every accepted sample of a bound source
            result.rows.add(d, kind, name, val)
            continue
        ttl = ttl_days(template.storage, scoring.plan)
        target = result.latest if ttl == NOT_STORED else result.rows
        ttl_value = ttl if isinstance(ttl, int) else 0
        scorer = scoring.scorer(template)
        if scorer is None:
            target.add(d, kind, name, val, template.identifier, ttl=ttl_value)
            expired += is_expired(d.created_ms, ttl, now_ms)
            continue
        try:
            score = _score(scorer, scoring, d, template.identifier, val)
        except ScoreError as exc:
            rejected.append(exc.as_rejection(name, kind, template.identifier))
            continue
        expired += is_expired(d.created_ms, ttl, now_ms)
        if score is None:
            target.add(d, kind, name, val, template.identifier, ttl=ttl_value)
        else:
            target.add(
                d,
                kind,
                name,
                val,
                template.identifier,
                score.score,
                score.performance,
                score.label,
                score.quality,
                ttl_value,
                scorer.max_score,
            )
    return expired


def _score(scorer: Scorer, scoring: Scoring, d: Datum, datastream: str, val: float | str) -> Score | None:
    divisor = scorer.cumulative_period_divisor
    if divisor is None or isinstance(val, str):
        return scorer.score_sample(val)
    key = (d.node_id, d.source_id, datastream)
    outcome = next_rate(scoring.rates.get(key), d.created_ms, float(val), divisor)
    if outcome.new_state is not None:
        scoring.rates[key] = outcome.new_state
    return None if outcome.rate is None else scorer.score(outcome.rate)
