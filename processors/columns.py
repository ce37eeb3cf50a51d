"""The datum path in columns: a batch decoded straight into arrays, checked and scored per
datastream, with no object per datum and no dict per sample on the way to the raw rows.

`accept_columns` gives what `accept_batch` (processors/rows.py, the reference) gives for the same
datums, in the same order of arrival: the same raw rows (as a multiset), the same refusals with the
same reasons, the same rate states and counts. The columnar part takes every stream whose datums
in this batch pass every rule; a stream with anything to explain (a refusal, a rate baseline out
of order, a datum across a catalog change) goes through the reference, datum by datum, so dead
letters stay exactly what they were. tests/unit/test_columns.py compares both under Hypothesis.

Plain data in, plain data out: nothing here touches a store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from processors.binding import Catalog, ResolvedSource
from processors.catalog_versions import VersionedCatalog
from processors.datamodel import NOT_STORED, DatastreamTemplate, ttl_days
from processors.datum import (
    CREATED_FUTURE_SLACK_MS,
    CREATED_MIN_MS,
    SAMPLE_ABS_MAX,
    Datum,
    source_id_problem,
)
from processors.qrating import ACCEPTABLE, CRITICAL, DESIRED, IDEAL, RateState, Score, ScoreError, Scorer
from processors.rows import DAY_MS, RAW_COLUMNS, RawColumns, Scoring, accept_batch
from processors.validation import plan_for

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]
# past this many (datum, property) cells the required-datastream check sorts instead
FLAG_TABLE_MAX = 1 << 26

KIND_I, KIND_A, KIND_S = ord("i"), ord("a"), ord("s")
_KIND_NAME = {KIND_I: "i", KIND_A: "a", KIND_S: "s"}

# The raw rows of a batch as Arrow columns: the raw table's columns, `created` in epoch ms (the
# sink makes it a timestamp without a copy). What the columnar path hands the store: no Python
# object per value from decode to insert (issue 13).
_NOT_TEXT: dict[str, pa.DataType] = {
    "node_id": pa.uint64(),
    "created": pa.int64(),
    "value": pa.float64(),
    "tags": pa.list_(pa.string()),
    "score": pa.float64(),
    "performance": pa.float64(),
    "max_score": pa.float64(),
    "ttl_days": pa.uint32(),
}
# in the raw table's column order; every column not listed above is text
RAW_SCHEMA = pa.schema([(name, _NOT_TEXT.get(name, pa.string())) for name in RAW_COLUMNS])


def raw_table(rows: RawColumns) -> pa.Table:
    """The reference's raw rows (Python lists) as an Arrow table of RAW_SCHEMA."""
    return pa.Table.from_arrays([pa.array(getattr(rows, f.name), f.type) for f in RAW_SCHEMA], schema=RAW_SCHEMA)


def concat_raw(tables: Sequence[pa.Table]) -> pa.Table:
    """Raw tables as one (no copy of their buffers); empty without any."""
    return pa.concat_tables(tables) if tables else RAW_SCHEMA.empty_table()


@dataclass
class ColumnsResult:
    """What `accept_columns` gives: `AcceptResult` (processors/rows.py) with its raw rows as Arrow
    tables of RAW_SCHEMA."""

    rows: pa.Table = field(default_factory=RAW_SCHEMA.empty_table)  # raw rows to store
    latest: pa.Table = field(default_factory=RAW_SCHEMA.empty_table)  # samples of NEVER-stored datastreams
    datums_accepted: int = 0
    refused: list[tuple[Datum, list[Any], str]] = field(default_factory=list)
    samples_expired: int = 0
    datums_expired: int = 0


@dataclass(frozen=True, slots=True)
class DatumColumns:
    """A batch of datums as columns: per datum, per sample. Samples of one datum are contiguous
    and in its order (i, then a, then s, each in map order); status texts are a list of their own,
    in the order of the status samples."""

    node_id: I64
    source_id: list[str]
    created: I64
    tags: list[tuple[str, ...]]
    sample_datum: npt.NDArray[np.int32]  # the datum each sample belongs to
    sample_kind: npt.NDArray[np.uint8]  # ord("i"), ord("a") or ord("s")
    property: list[str]
    value: F64  # NaN for a status sample
    text: list[str]

    def __len__(self) -> int:
        return len(self.source_id)

    @classmethod
    def from_tuple(cls, t: tuple[Any, ...]) -> DatumColumns:
        """From what the compiled decoder returns (pipeline/wire/_avrofast.c: bytes and lists)."""
        node, sources, created, tags, datum, kind, props, value, texts = t
        return cls(
            np.frombuffer(node, np.int64),
            sources,
            np.frombuffer(created, np.int64),
            tags,
            np.frombuffer(datum, np.int32),
            np.frombuffer(kind, np.uint8),
            props,
            np.frombuffer(value, np.float64),
            texts,
        )

    @classmethod
    def from_datums(cls, datums: Sequence[Datum]) -> DatumColumns:
        """The reference way in (and the way for datums that are already objects)."""
        sd: list[int] = []
        sk: list[int] = []
        props: list[str] = []
        values: list[float] = []
        texts: list[str] = []
        for k, d in enumerate(datums):
            for kind, name, val in d.samples():
                sd.append(k)
                sk.append(ord(kind))
                props.append(name)
                if kind == "s":
                    values.append(float("nan"))
                    texts.append(str(val))
                else:
                    values.append(float(val))
        return cls(
            np.array([d.node_id for d in datums], np.int64),
            [d.source_id for d in datums],
            np.array([d.created_ms for d in datums], np.int64),
            [tuple(d.tags) for d in datums],
            np.array(sd, np.int32),
            np.array(sk, np.uint8),
            props,
            np.array(values, np.float64),
            texts,
        )

    @staticmethod
    def concat(parts: Sequence[DatumColumns]) -> DatumColumns:
        if len(parts) == 1:
            return parts[0]
        shift = np.cumsum([0] + [len(p) for p in parts[:-1]])
        return DatumColumns(
            np.concatenate([p.node_id for p in parts]) if parts else np.empty(0, np.int64),
            [s for p in parts for s in p.source_id],
            np.concatenate([p.created for p in parts]) if parts else np.empty(0, np.int64),
            [t for p in parts for t in p.tags],
            np.concatenate([p.sample_datum + np.int32(o) for p, o in zip(parts, shift, strict=True)])
            if parts
            else np.empty(0, np.int32),
            np.concatenate([p.sample_kind for p in parts]) if parts else np.empty(0, np.uint8),
            [s for p in parts for s in p.property],
            np.concatenate([p.value for p in parts]) if parts else np.empty(0, np.float64),
            [t for p in parts for t in p.text],
        )

    def datums(self, which: Sequence[int] | None = None) -> list[Datum]:
        """Datum objects back (the reference path), all or the given ones, in the given order."""
        starts = np.searchsorted(self.sample_datum, np.arange(len(self) + 1)).tolist()
        is_text = self.sample_kind == KIND_S
        text_at = (np.cumsum(is_text) - 1).tolist()
        kinds = self.sample_kind.tolist()
        values = self.value.tolist()
        nodes = self.node_id.tolist()
        created = self.created.tolist()
        out: list[Datum] = []
        for k in range(len(self)) if which is None else which:
            i: dict[str, float] = {}
            a: dict[str, float] = {}
            s: dict[str, str] = {}
            for j in range(starts[k], starts[k + 1]):
                kind = kinds[j]
                if kind == KIND_I:
                    i[self.property[j]] = values[j]
                elif kind == KIND_A:
                    a[self.property[j]] = values[j]
                else:
                    s[self.property[j]] = self.text[text_at[j]]
            out.append(Datum(nodes[k], self.source_id[k], created[k], i, a, s, self.tags[k]))
        return out


def _identity_ok(cols: DatumColumns, now_ms: int) -> Bools:
    """Per datum: node, source and created pass and it has a sample (else check_envelope keeps nothing)."""
    ok = (cols.node_id >= 0) & (cols.created >= CREATED_MIN_MS) & (cols.created <= now_ms + CREATED_FUTURE_SLACK_MS)
    ok &= np.bincount(cols.sample_datum, minlength=len(cols)) > 0
    checked: dict[str, bool] = {}
    for k, source in enumerate(cols.source_id):
        good = checked.get(source)
        if good is None:
            checked[source] = good = source_id_problem(source) is None
        if not good:
            ok[k] = False
    return ok


def _sample_ok(cols: DatumColumns) -> Bools:
    """Per sample: check_envelope keeps it (a status always; a number finite and within ±2^53)."""
    with np.errstate(invalid="ignore"):
        ok: Bools = (cols.sample_kind == KIND_S) | (np.abs(cols.value) <= SAMPLE_ABS_MAX)  # NaN, inf fail the <=
    return ok


def envelope_ok(cols: DatumColumns, now_ms: int) -> Bools:
    """Per datum: every envelope rule passes and no sample is refused (check_envelope's nothing)."""
    ok = _identity_ok(cols, now_ms)
    ok[cols.sample_datum[~_sample_ok(cols)]] = False
    return ok


def first_accumulating(cols: DatumColumns, now_ms: int) -> dict[tuple[int, str], int]:
    """Per stream, the earliest created of its datums that pass the envelope rules and keep an
    accumulating sample (a refused sibling sample does not matter): where a cumulative rate's
    baseline must be looked up from."""
    ok = _identity_ok(cols, now_ms)
    has_a = np.zeros(len(cols), bool)
    acc = (cols.sample_kind == KIND_A) & _sample_ok(cols)
    has_a[cols.sample_datum[acc]] = True
    first: dict[tuple[int, str], int] = {}
    nodes, created = cols.node_id.tolist(), cols.created.tolist()
    for k in np.flatnonzero(ok & has_a).tolist():
        key = (nodes[k], cols.source_id[k])
        if created[k] < first.get(key, 1 << 62):
            first[key] = created[k]
    return first


# -- the columnar accept --------------------------------------------------------------------


def _simple_bounds(schema: Mapping[str, object]) -> tuple[float, float, float, float] | None:
    """(minimum, exclusiveMinimum, maximum, exclusiveMaximum) of a plain number schema, which a
    comparison of columns decides exactly as fastjsonschema does; None for any other schema."""
    if schema.get("type") != "number" or not set(schema) <= {
        "type",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "title",
        "description",
        "$comment",
    }:
        return None
    out: list[float] = []
    for key, default in (
        ("minimum", -np.inf),
        ("exclusiveMinimum", -np.inf),
        ("maximum", np.inf),
        ("exclusiveMaximum", np.inf),
    ):
        bound = schema.get(key, default)
        if (
            isinstance(bound, bool)
            or not isinstance(bound, int | float)
            or (isinstance(bound, int) and abs(bound) > 2**53)
        ):
            return None  # a draft-4 boolean, or an integer a float would round
        out.append(float(bound))
    return out[0], out[1], out[2], out[3]


_BOUNDS: dict[object, tuple[float, float, float, float] | None] = {}


def _schema_ok(
    template: DatastreamTemplate, check: Callable[[object], object], values: F64, texts: list[str] | None
) -> Bools:
    """Per value: the datastream's JSON Schema passes."""
    if texts is None:
        key = template.schema_key
        if key not in _BOUNDS:
            _BOUNDS[key] = _simple_bounds(template.schema)
        bounds = _BOUNDS[key]
        if bounds is not None:
            lo, xlo, hi, xhi = bounds
            return (values >= lo) & (values > xlo) & (values <= hi) & (values < xhi)
        items: list[object] = values.tolist()
    else:
        items = list(texts)
    ok = np.ones(len(items), bool)
    for j, v in enumerate(items):
        try:
            check(v)
        except Exception:  # noqa: BLE001 - any failure is the reference's to explain
            ok[j] = False
    return ok


# (label index, quality) of each band, as Scorer.score picks them
_BANDS = ((2, IDEAL), (2, DESIRED), (1, ACCEPTABLE), (0, CRITICAL), (2, DESIRED), (3, ACCEPTABLE), (4, CRITICAL))


def score_values(scorer: Scorer, v: F64) -> tuple[F64, F64, npt.NDArray[np.int8]]:
    """Scorer.score of every finite value: (score, performance, band), bit for bit the same."""
    t0, t1, t2, t3, t4 = scorer._t0, scorer._t1, scorer._t2, scorer._t3, scorer._t4
    band = np.select(
        [v == t2, (v < t2) & (v >= t1), (v < t2) & (v >= t0), v < t2, v <= t3, v <= t4], [0, 1, 2, 3, 4, 5], default=6
    ).astype(np.int8)
    with np.errstate(all="ignore"):  # a band never entered may divide by its zero width
        f = np.select(
            [band == 0, band == 1, band == 2, band == 4, band == 5],
            [
                np.ones_like(v),
                1.0 - 0.5 * ((t2 - v) / scorer._w12),
                0.5 * ((v - t0) / scorer._w01),
                1.0 - 0.5 * ((v - t2) / scorer._w23),
                0.5 * ((t4 - v) / scorer._w34),
            ],
            default=0.0,
        )
    score = scorer._max * f
    score[band == 0] = scorer._ideal_score.score
    perf = 100.0 * f
    return score, perf, band


@dataclass
class _Scored:
    """The rows of one (datastream plan, kind, property) group, before the bad streams are taken
    out: its scores as Arrow columns (null where a sample is not rated)."""

    idx: I64  # sample indices
    template: DatastreamTemplate
    ttl: int
    latest: bool
    expired: Bools
    score: pa.Array
    performance: pa.Array
    label: pa.Array
    quality: pa.Array
    max_score: pa.Array


def _streams_of(cols: DatumColumns) -> tuple[I64, list[tuple[int, str]]]:
    """Each datum's stream (an index), and the streams (node, source) in order of first
    appearance, found in C: sources dictionary-encoded, (node, source code) pairs made unique."""
    src = pa.array(cols.source_id, pa.string()).dictionary_encode()
    pairs = np.empty(len(cols), dtype=[("node", np.int64), ("source", np.int64)])
    pairs["node"] = cols.node_id
    pairs["source"] = src.indices.to_numpy(zero_copy_only=False)
    unique, first, inverse = np.unique(pairs, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # the unique pairs in order of first appearance
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    names = src.dictionary.to_pylist()
    streams = [(int(node), names[code]) for node, code in unique[order].tolist()]
    return rank[inverse.reshape(-1)], streams


def accept_columns(
    cols: DatumColumns,
    now_ms: int,
    catalog: Catalog | VersionedCatalog | None = None,
    scoring: Scoring | None = None,
    message_of: npt.NDArray[np.int64] | None = None,
) -> tuple[ColumnsResult, list[tuple[int, Datum, list[Any], str]]]:
    """accept_batch over columns. Returns the result and its refusals as (message, datum,
    reasons, stage): `message_of` gives each datum's message (its dead letter's origin)."""
    scoring = scoring if scoring is not None else Scoring()
    result = ColumnsResult()
    n = len(cols)
    refused: list[tuple[int, Datum, list[Any], str]] = []
    if n == 0:
        return result, refused
    msg = message_of if message_of is not None else np.zeros(n, np.int64)

    # streams, and each datum's
    sid, streams = _streams_of(cols)
    bad = np.zeros(len(streams), bool)
    bad[sid[~envelope_ok(cols, now_ms)]] = True

    sample_stream = sid[cols.sample_datum]
    # per stream, the shared plan of its resolution (None: unbound)
    resolved: list[ResolvedSource | None] = [None] * len(streams)
    if catalog is not None:
        cmin = np.full(len(streams), np.iinfo(np.int64).max)
        cmax = np.full(len(streams), np.iinfo(np.int64).min)
        np.minimum.at(cmin, sid, cols.created)
        np.maximum.at(cmax, sid, cols.created)
        for s, ((node, source), lo, hi) in enumerate(zip(streams, cmin.tolist(), cmax.tolist(), strict=True)):
            if bad[s]:
                continue
            if isinstance(catalog, VersionedCatalog):
                cat = catalog.at(lo)
                if catalog.at(hi) is not cat:
                    bad[s] = True  # a catalog change inside the batch: datum by datum
                    continue
            else:
                cat = catalog
            # bindings only ever start (valid_from): the same one at both ends holds in between
            first = cat.resolve(node, source, lo)
            if cat.resolve(node, source, hi) is not first:
                bad[s] = True
                continue
            resolved[s] = first

    # plans shared by streams of one binding and datamodel, so groups stay few for a fleet
    canon: dict[tuple[int, int], int] = {}
    plans: list[ResolvedSource] = []
    plan_of = np.full(len(streams), -1, np.int64)
    for s, r in enumerate(resolved):
        if r is not None:
            key = (id(r.binding), id(r.datamodel))
            p = canon.get(key)
            if p is None:
                canon[key] = p = len(plans)
                plans.append(r)
            plan_of[s] = p

    # property codes in order of first appearance (Arrow's dictionary encoding keeps that order)
    prop_enc = pa.array(cols.property, pa.string()).dictionary_encode()
    pcode = prop_enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    props: list[str] = prop_enc.dictionary.to_pylist()
    prop_code = {p: k for k, p in enumerate(props)}

    # required datastreams: every datum of a bound stream sends each (else a datum-level refusal)
    if plans:
        # which (datum, property) pairs occur: a flag table (one pass), not a sort of every
        # sample, unless the table would be large (many datums times many property names)
        pairs = cols.sample_datum.astype(np.int64) * len(props) + pcode
        if len(cols.created) * len(props) <= FLAG_TABLE_MAX:
            table = np.zeros(len(cols.created) * len(props), dtype=np.bool_)
            table[pairs] = True

            def occurs(keys: I64) -> Bools:
                return table[keys]
        else:
            seen = np.unique(pairs)

            def occurs(keys: I64) -> Bools:
                return np.isin(keys, seen)

        datum_plan = plan_of[sid]
        for p, r in enumerate(plans):
            need = plan_for(r).required
            if not need:
                continue
            mine = np.flatnonzero(datum_plan == p)
            for _ident, prop in need:
                code = prop_code.get(prop) if prop is not None else None
                if code is None:
                    bad[sid[mine]] = True
                    break
                keys = mine * len(props) + code
                missing = ~occurs(keys)
                bad[sid[mine[missing]]] = True

    # groups: (plan, kind, property); plan -1 is unbound
    sample_plan = plan_of[sample_stream]
    group = (
        (sample_plan + 1) * (3 * len(props)) + pcode * 3 + np.searchsorted([KIND_A, KIND_I, KIND_S], cols.sample_kind)
    )
    order = np.argsort(group, kind="stable")
    sorted_groups = group[order]
    cuts = np.flatnonzero(np.diff(sorted_groups)) + 1
    starts = np.concatenate([[0], cuts]).tolist()
    ends = np.concatenate([cuts, [len(order)]]).tolist()
    text_at = np.cumsum(cols.sample_kind == KIND_S) - 1
    scored: list[_Scored] = []
    unbound: list[I64] = []
    rate_updates: list[tuple[int, tuple[int, str, str], RateState]] = []
    for a, b in zip(starts, ends, strict=True):
        if a == b:
            continue
        idx = order[a:b]
        head = int(idx[0])
        p = int(sample_plan[head])
        if p < 0:
            unbound.append(idx)
            continue
        kind = int(cols.sample_kind[head])
        prop = cols.property[head]
        plan = plan_for(plans[p])
        entry = {KIND_I: plan.i, KIND_A: plan.a, KIND_S: plan.s}[kind].get(prop)
        if entry is None:  # unmapped, calculated or the wrong period: the reference says which
            bad[sample_stream[idx]] = True
            continue
        values = cols.value[idx]
        texts = [cols.text[j] for j in text_at[idx].tolist()] if kind == KIND_S else None
        ok = _schema_ok(entry.template, entry.check, values, texts)
        if entry.pulse:
            ok &= values >= 0
        if not ok.all():
            bad[sample_stream[idx[~ok]]] = True
        got = _score_group(
            entry.template, scoring, idx, cols, sample_stream, streams, kind, values, texts, now_ms, bad, rate_updates
        )
        if got is not None:
            scored.append(got)

    # the columnar part: every sample of a good stream
    good_datum = ~bad[sid]
    accepted = int(good_datum.sum())
    result.datums_accepted += accepted
    rows: list[pa.Table] = []
    latest: list[pa.Table] = []
    if accepted:
        # the batch's columns as Arrow once; each group's rows are takes from them, in C
        sources = pa.array(cols.source_id, pa.string())
        tags = pa.array(cols.tags, pa.list_(pa.string()))
        texts = pa.array(cols.text, pa.string())

        def add(
            target: list[pa.Table], idx: I64, kind: int, datastream: str, ttl: int, g: _Scored | None, keep: Bools
        ) -> None:
            everything = bool(keep.all())
            take = idx if everything else idx[keep]
            m = len(take)
            if not m:
                return
            d = cols.sample_datum[take]
            if kind == KIND_S:
                value, text = pa.nulls(m, pa.float64()), texts.take(text_at[take])
            else:
                value, text = pa.array(cols.value[take]), pa.repeat("", m)
            if g is None:
                nulls, empty = pa.nulls(m, pa.float64()), pa.repeat("", m)
                scores = [nulls, nulls, empty, empty, nulls]
            else:
                scores = [g.score, g.performance, g.label, g.quality, g.max_score]
                if not everything:
                    kept = pa.array(keep)
                    scores = [a.filter(kept) for a in scores]
            arrays = [
                pa.array(cols.node_id[d].astype(np.uint64)),
                sources.take(d),
                pa.array(cols.created[d]),
                pa.repeat(props[int(pcode[take[0]])], m),  # a group is one property's
                pa.repeat(_KIND_NAME[kind], m),
                value,
                text,
                tags.take(d),
                pa.repeat(datastream, m),
                *scores,
                pa.repeat(pa.scalar(ttl, pa.uint32()), m),
            ]
            target.append(pa.Table.from_arrays(arrays, schema=RAW_SCHEMA))

        for idx in unbound:
            add(rows, idx, int(cols.sample_kind[idx[0]]), "", 0, None, good_datum[cols.sample_datum[idx]])
        expired_datums: set[int] = set()
        for g in scored:
            keep = good_datum[cols.sample_datum[g.idx]]
            kind = int(cols.sample_kind[g.idx[0]])
            add(latest if g.latest else rows, g.idx, kind, g.template.identifier, g.ttl, g, keep)
            hit = g.expired & keep
            if hit.any():
                result.samples_expired += int(hit.sum())
                expired_datums.update(cols.sample_datum[g.idx[hit]].tolist())
        result.datums_expired += len(expired_datums)
        for s, rate_key, state in rate_updates:
            if not bad[s]:
                scoring.rates[rate_key] = state

    # the rest: the reference, datum by datum in order of arrival, message by message
    if bad.any():
        slow = np.flatnonzero(bad[sid])
        datums = cols.datums(slow.tolist())
        msgs = msg[slow].tolist()
        k = 0
        while k < len(datums):
            j = k
            while j < len(datums) and msgs[j] == msgs[k]:
                j += 1
            part = accept_batch(datums[k:j], now_ms, catalog, scoring)
            if len(part.rows):
                rows.append(raw_table(part.rows))
            if len(part.latest):
                latest.append(raw_table(part.latest))
            result.datums_accepted += part.datums_accepted
            result.samples_expired += part.samples_expired
            result.datums_expired += part.datums_expired
            refused += [(msgs[k], d, reasons, stage) for d, reasons, stage in part.refused]
            k = j
    result.rows, result.latest = concat_raw(rows), concat_raw(latest)
    result.refused = [(d, reasons, stage) for _m, d, reasons, stage in refused]
    return result, refused


def _score_group(
    template: DatastreamTemplate,
    scoring: Scoring,
    idx: I64,
    cols: DatumColumns,
    sample_stream: I64,
    streams: list[tuple[int, str]],
    kind: int,
    values: F64,
    texts: list[str] | None,
    now_ms: int,
    bad: Bools,
    rate_updates: list[tuple[int, tuple[int, str, str], RateState]],
) -> _Scored | None:
    """Scores, TTL and expiry of one group's samples (rows.py `_add_scored`, in columns)."""
    ttl = ttl_days(template.storage, scoring.plan)
    latest = ttl == NOT_STORED
    ttl_value = ttl if isinstance(ttl, int) else 0
    created = cols.created[cols.sample_datum[idx]]
    expired = (created + ttl_value * DAY_MS <= now_ms) if isinstance(ttl, int) and ttl > 0 else np.zeros(len(idx), bool)
    scorer = scoring.scorer(template)
    m = len(idx)
    # the group's rows with their score columns: score, performance, label, quality, max_score
    scored = partial(_Scored, idx, template, ttl_value, latest, expired)
    if scorer is None:
        nulls, empty = pa.nulls(m, pa.float64()), pa.repeat("", m)
        return scored(nulls, nulls, empty, empty, nulls)
    labels = (scorer._l0, scorer._l1, scorer._l2, scorer._l3, scorer._l4)
    divisor = scorer.cumulative_period_divisor
    if texts is not None:
        # a status has a handful of values: each distinct text scored once (Scorer.score_text is
        # a pure function of the text), then looked up per sample
        enc = pa.array(texts, pa.string()).dictionary_encode()
        scores: list[Score | None] = []
        failed: list[bool] = []
        for text in enc.dictionary.to_pylist():
            try:
                scores.append(scorer.score_text(text))
                failed.append(False)
            except ScoreError:
                scores.append(None)
                failed.append(True)
        codes = enc.indices.to_numpy(zero_copy_only=False)
        wrong = np.asarray(failed, np.bool_)[codes]
        if wrong.any():
            bad[sample_stream[idx[wrong]]] = True
        f64 = pa.float64()

        def per_sample(values: list[Any], kind: pa.DataType) -> pa.Array:
            return pa.array(values, kind).take(codes)

        return scored(
            per_sample([None if sc is None else sc.score for sc in scores], f64),
            per_sample([None if sc is None else sc.performance for sc in scores], f64),
            per_sample(["" if sc is None else sc.label for sc in scores], pa.string()),
            per_sample(["" if sc is None else sc.quality for sc in scores], pa.string()),
            per_sample([None if sc is None else scorer.max_score for sc in scores], f64),
        )
    if divisor is None:
        rated = np.ones(m, bool)
        x = values
    else:
        # rates within each stream, in order of arrival: each datapoint against the one before
        st = sample_stream[idx]
        o = np.argsort(st, kind="stable")
        st_o, v_o, t_o = st[o], values[o], created[o]
        first = np.ones(m, bool)
        first[1:] = st_o[1:] != st_o[:-1]
        prev_v = np.empty(m)
        prev_t = np.empty(m, np.int64)
        prev_v[1:], prev_t[1:] = v_o[:-1], t_o[:-1]
        has_prev = ~first
        for k in np.flatnonzero(first).tolist():
            s = int(st_o[k])
            node, source = streams[s]
            key = (node, source, template.identifier)
            state = scoring.rates.get(key)
            if state is not None:
                prev_v[k], prev_t[k] = state.value, state.created_ms
                has_prev[k] = True
            last = k
            while last + 1 < m and not first[last + 1]:
                last += 1
            rate_updates.append((s, key, RateState(int(t_o[last]), float(v_o[last]))))
        # out of order or a repeated instant: the reference keeps the old baseline; not here
        if (has_prev & (t_o <= prev_t)).any():
            bad[st_o[has_prev & (t_o <= prev_t)]] = True
        with np.errstate(all="ignore"):
            diff = v_o - prev_v
            rate = diff / (t_o - prev_t) * (divisor * 1000.0)
        ok_o = has_prev & (diff >= 0.0) & np.isfinite(rate)
        rated = np.empty(m, bool)
        rated[o] = ok_o
        x = np.empty(m)
        x[o] = np.where(ok_o, rate, 0.0)
    score, perf, band = score_values(scorer, np.where(rated, x, scorer._t2))
    unrated = ~rated
    # a band's label and quality, by band code; the last entry ("") for a sample not rated
    band_of = np.where(rated, band, len(_BANDS))
    names = pa.array([labels[b[0]] for b in _BANDS] + [""])
    qualities = pa.array([b[1] for b in _BANDS] + [""])
    return scored(
        pa.array(score, mask=unrated),
        pa.array(perf, mask=unrated),
        names.take(band_of),
        qualities.take(band_of),
        pa.array(np.full(m, scorer.max_score, np.float64), mask=unrated),
    )
