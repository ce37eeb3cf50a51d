"""SolarQuery API v1 over ClickHouse: `/solarquery/api/v1/sec/...` (and `/pub/...` while the API is
open), served by the `pipeline api` server beside the time-series API.

The parameters and JSON are processors/solarquery.py (pure), the access decisions
processors/security_policy.py; this module picks the streams a request may see and reads them
(the `datum`, `rollup` and `datum_auxiliary` views). docs/solarquery.md is the manual.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from processors import security_policy as sp
from processors import solarquery as sq
from processors.rollup import PERIODICITIES
from sinks.auxiliary import read_resets
from sinks.clickhouse import DATUM_VIEW, RAW_TABLE, Range, ranges_join
from sinks.rollups import ROLLUP_VIEW

if TYPE_CHECKING:
    from pipeline.api.server import Api

ENDPOINTS = ("datum/list", "datum/mostRecent", "datum/reading", "range/sources", "range/interval")
_PATH = re.compile(r"/solarquery/api/v1/(sec|pub)/(" + "|".join(re.escape(e) for e in ENDPOINTS) + r")/?")
MIN_MS = -2_208_988_800_000  # DateTime64(3)'s range, as in pipeline/api/server.py
MAX_MS = 10_413_791_999_999
Stream = tuple[int, str]


def error_body(message: str, status: int) -> bytes:
    return sq.error_body(message, status)


def handle(api: Api, raw_path: str, raw_query: str, token: sp.Token | None) -> tuple[int, bytes]:
    """(status, JSON body) of one SolarQuery request whose caller is authenticated as `token`
    (None: the API is open)."""
    m = _PATH.fullmatch(raw_path)
    if m is None:
        return 404, sq.error_body(f"no such SolarQuery endpoint {raw_path!r}; available: {', '.join(ENDPOINTS)}", 404)
    public, endpoint = m.group(1) == "pub", m.group(2)
    if public and token is None and not api.access.is_open():
        return 403, sq.error_body("no node is public here: use /sec with a security token", 403)
    try:
        f = sq.parse_filter(raw_query)
        streams = _streams(api, f, token, raw_path, endpoint)
        return 200, sq.envelope(_answer(api, endpoint, f, streams))
    except sq.QueryError as exc:
        return exc.status, sq.error_body(exc.message, exc.status)


def _streams(api: Api, f: sq.DatumFilter, token: sp.Token | None, path: str, endpoint: str) -> list[Stream]:
    """The streams the request selects and the token may read (decided before looking at which
    streams exist, so a 403 tells nothing about streams outside the policy)."""
    policy = sp.SecurityPolicy()
    if token is not None:
        agg = f.aggregation if f.aggregation is not sp.Aggregation.NONE else None
        # range/* reads no figures: no aggregation rule applies there
        sp.authorize_read(
            token,
            now=datetime.now(UTC),
            path=path,
            node_ids=f.node_ids or None,
            source_ids=f.source_ids or None,
            aggregation=agg,
            figures=endpoint.startswith("datum/"),
        )
        policy = token.policy
    known = sorted({(k.node_id, k.source_id) for k in api.store.series()})
    return sp.select_streams(policy, known, lambda s: s, node_ids=f.node_ids or None, source_ids=f.source_ids or None)


def _answer(api: Api, endpoint: str, f: sq.DatumFilter, streams: list[Stream]) -> Any:
    if endpoint == "range/sources":
        return _sources(api, f, streams)
    if endpoint == "range/interval":
        return _interval(api, f, streams)
    if endpoint == "datum/reading":
        return _readings(api, f, streams)
    return _datums(api, f, streams, most_recent=endpoint == "datum/mostRecent")


def _tz(api: Api, node: int) -> str:
    return api.zones.at(node, int(datetime.now(UTC).timestamp() * 1000))


def _ranges(api: Api, f: sq.DatumFilter, streams: Sequence[Stream]) -> list[Range]:
    out: list[Range] = []
    for q, (node, source) in enumerate(streams):
        lo, hi = sq.local_bounds(f, _tz(api, node))
        out.append(
            (q, node, source, MIN_MS if lo is None else max(MIN_MS, lo), MAX_MS if hi is None else min(MAX_MS, hi))
        )
    return out


def _datums(api: Api, f: sq.DatumFilter, streams: list[Stream], most_recent: bool) -> dict[str, Any]:
    if not streams:
        return sq.paged([], 0, f.offset)
    per = f.periodicity
    ranges = _ranges(api, f, streams)
    if per is None:
        rel, col = DATUM_VIEW, "created"
        fields = "groupArray((toString(d.property), toString(d.kind), d.value, d.text)), groupUniqArrayArray(d.tags)"
        where = ""
    else:
        rel, col = ROLLUP_VIEW, "ts_start"
        fields = (
            "groupArray((toString(d.property), toString(d.kind), d.avg, d.min, d.max, d.diff, toString(d.mode))), []"
        )
        where = f" AND d.periodicity = '{per}'"  # one of PERIODICITIES: no quoting needed
        assert per in PERIODICITIES
    body = (
        f"SELECT d.node_id AS n, toString(d.source_id) AS s, toUnixTimestamp64Milli(d.{col}) AS t, {fields}"
        f" FROM {rel} AS d{ranges_join('d', ranges, time_column=col)}{where}"
        f" GROUP BY d.node_id, d.source_id, d.{col}"
    )
    order = "t DESC" if f.descending else "t"
    if most_recent:
        sql = f"SELECT * FROM ({body} ORDER BY t DESC LIMIT 1 BY n, s) ORDER BY n, s"
        rows = api.store.rows(sql, {})
        total: int | None = len(rows)
        rows = rows[f.offset : f.offset + f.max]
    else:
        rows = api.store.rows(f"{body} ORDER BY {order}, n, s LIMIT {int(f.max)} OFFSET {int(f.offset)}", {})
        total = None if f.without_total else int(api.store.rows(f"SELECT count() FROM ({body})", {})[0][0])
    out = []
    for node, source, t, samples, tags in rows:
        tz = _tz(api, int(node))
        if per is None:
            out.append(sq.raw_datum(int(node), str(source), int(t), tz, samples, list(tags)))
        else:
            out.append(sq.aggregate_datum(int(node), str(source), int(t), tz, samples))
    return sq.paged(out, total, f.offset)


# --- readings -------------------------------------------------------------------------------------


def _edges(api: Api, ranges: Sequence[Range], last: bool, kinds: str = "'a'") -> dict[tuple[int, str, str], sq.Reading]:
    """Per (range, property, kind) of the numeric kinds given (SQL literals): the latest (last) or
    earliest sample with a value in the range."""
    if not ranges:
        return {}
    pick, arg = ("max", "argMax") if last else ("min", "argMin")
    rows = api.store.rows(
        f"SELECT w.q, toString(d.property), toString(any(d.kind)), toUnixTimestamp64Milli({pick}(d.created)),"
        f" {arg}(d.value, d.created) FROM {DATUM_VIEW} AS d{ranges_join('d', ranges)}"
        f" AND d.kind IN ({kinds}) AND d.value IS NOT NULL GROUP BY w.q, d.property",
        {},
    )
    return {(int(q), str(p), str(k)): sq.Reading(int(t), float(v)) for q, p, k, t, v in rows}


def _edge(api: Api, ranges: Sequence[Range], last: bool) -> dict[tuple[int, str], sq.Reading]:
    """Per (range, accumulating property): the latest (last) or earliest reading in the range."""
    return {(q, p): r for (q, p, _k), r in _edges(api, ranges, last).items()}


def _around(
    api: Api,
    streams: Sequence[Stream],
    at: Sequence[int],
    f: sq.DatumFilter,
    rule: str,
) -> dict[tuple[int, str], sq.Reading]:
    """Per (stream index, property), the reading a reading type takes for instant at[q]."""
    if rule == "Difference":  # nearest at or before, looking back up to a year
        return _edge(
            api,
            [
                (q, n, s, sq.shift(t, sq.DIFFERENCE_LOOKBACK), t + 1)
                for q, ((n, s), t) in enumerate(zip(streams, at, strict=True))
            ],
            last=True,
        )
    before = _edge(
        api,
        [(q, n, s, sq.shift(t, f.tolerance), t + 1) for q, ((n, s), t) in enumerate(zip(streams, at, strict=True))],
        last=True,
    )
    after = _edge(
        api,
        [(q, n, s, t, sq.shift(t, f.tolerance, +1) + 1) for q, ((n, s), t) in enumerate(zip(streams, at, strict=True))],
        last=False,
    )
    return {**after, **before}  # at or before wins; else the nearest after, within the tolerance


def _readings(api: Api, f: sq.DatumFilter, streams: list[Stream]) -> dict[str, Any]:
    rule = f.reading_type
    if rule is None:
        raise sq.QueryError("readingType is required: " + ", ".join(sq.READING_TYPES))
    if f.start_ms is None and f.local_start is None or f.end_ms is None and f.local_end is None:
        raise sq.QueryError("A date range is required.")
    if f.periodicity is not None:
        return _aggregate_readings(api, f, streams)
    if not streams:
        return sq.paged([], 0, 0)
    bounds = [sq.local_bounds(f, _tz(api, n)) for n, _ in streams]
    starts = [int(lo or 0) for lo, _ in bounds]
    ends = [int(hi or 0) for _, hi in bounds]
    out: list[dict[str, Any]] = []
    if rule == "CalculatedAt":
        return sq.paged(_calculated_at(api, f, streams, starts), None, 0)
    if rule == "DifferenceWithin":
        inside = [(q, n, s, a, b + 1) for q, ((n, s), a, b) in enumerate(zip(streams, starts, ends, strict=True))]
        first, last = _edge(api, inside, last=False), _edge(api, inside, last=True)
    else:
        first, last = _around(api, streams, starts, f, rule), _around(api, streams, ends, f, rule)
    resets = read_resets(
        api.store.client(), [(n, s, a, b + 1) for (n, s), a, b in zip(streams, starts, ends, strict=True)]
    )
    for q, (node, source) in enumerate(streams):
        values: dict[str, tuple[float, float, float]] = {}
        span: tuple[int, int] | None = None
        for (k, prop), a in sorted(first.items()):
            b = last.get((q, prop))
            if k != q or b is None or b.ms < a.ms:
                continue
            marks = [sq.ResetAt(r.created_ms, r.final[prop], r.start[prop]) for r in resets[q] if r.applies_to(prop)]
            values[prop] = (sq.difference(a, b, marks), a.value, b.value)
            span = (min(a.ms, span[0]) if span else a.ms, max(b.ms, span[1]) if span else b.ms)
        if values and span is not None:
            out.append(sq.reading_datum(node, source, _tz(api, node), span[0], span[1], values))
    return sq.paged(out, len(out), 0)


def _calculated_at(api: Api, f: sq.DatumFilter, streams: list[Stream], at: list[int]) -> list[dict[str, Any]]:
    """Every numeric property interpolated at the start date between the samples around it
    (within the tolerance); one sample alone is taken as it is."""
    pairs = list(enumerate(zip(streams, at, strict=True)))
    before = _edges(api, [(q, n, s, sq.shift(t, f.tolerance), t + 1) for q, ((n, s), t) in pairs], True, "'i', 'a'")
    after = _edges(
        api, [(q, n, s, t + 1, sq.shift(t, f.tolerance, +1) + 1) for q, ((n, s), t) in pairs], False, "'i', 'a'"
    )
    out = []
    for q, (node, source) in enumerate(streams):
        props = sorted({(p, k) for (k_q, p, k) in (*before, *after) if k_q == q})
        samples = [(p, k, sq.interpolate(before.get((q, p, k)), after.get((q, p, k)), at[q]), "") for p, k in props]
        if samples:
            out.append(sq.raw_datum(node, source, at[q], _tz(api, node), samples))
    return out


def _aggregate_readings(api: Api, f: sq.DatumFilter, streams: list[Stream]) -> dict[str, Any]:
    """Difference per Hour, Day or Month bucket, from the rollups' readings."""
    if f.reading_type != "Difference" or f.aggregation not in (
        sp.Aggregation.HOUR,
        sp.Aggregation.DAY,
        sp.Aggregation.MONTH,
    ):
        raise sq.QueryError("with an aggregation, only readingType=Difference and Hour, Day or Month")
    if not streams:
        return sq.paged([], 0, f.offset)
    per = f.periodicity
    assert per in PERIODICITIES
    body = (
        f"SELECT d.node_id AS n, toString(d.source_id) AS s, toUnixTimestamp64Milli(d.ts_start) AS t,"
        f" max(toUnixTimestamp64Milli(d.ts_end)) AS e,"
        f" groupArray((toString(d.property), d.read_diff, d.read_start, d.read_end))"
        f" FROM {ROLLUP_VIEW} AS d{ranges_join('d', _ranges(api, f, streams), time_column='ts_start')}"
        f" AND d.periodicity = '{per}' AND d.kind = 'a' AND d.read_start IS NOT NULL"
        f" GROUP BY d.node_id, d.source_id, d.ts_start"
    )
    rows = api.store.rows(f"{body} ORDER BY t, n, s LIMIT {int(f.max)} OFFSET {int(f.offset)}", {})
    total = None if f.without_total else int(api.store.rows(f"SELECT count() FROM ({body})", {})[0][0])
    out = []
    for node, source, t, e, figures in rows:
        values = {
            str(p): (float(d or 0.0), float(a), float(b)) for p, d, a, b in figures if a is not None and b is not None
        }
        out.append(sq.reading_datum(int(node), str(source), _tz(api, int(node)), int(t), int(e), values))
    return sq.paged(out, total, f.offset)


# --- ranges -----------------------------------------------------------------------------------------


def _sources(api: Api, f: sq.DatumFilter, streams: list[Stream]) -> list[Any]:
    if streams and (f.start_ms is not None or f.end_ms is not None or f.local_start or f.local_end):
        rows = api.store.rows(
            f"SELECT DISTINCT w.q FROM {RAW_TABLE} AS d{ranges_join('d', _ranges(api, f, streams))}", {}
        )
        found = {int(r[0]) for r in rows}
        streams = [s for q, s in enumerate(streams) if q in found]
    if len(f.node_ids) <= 1 and not f.with_node_ids:
        return [source for _, source in streams]
    return [{"nodeId": node, "sourceId": source} for node, source in streams]


def _interval(api: Api, f: sq.DatumFilter, streams: list[Stream]) -> dict[str, Any] | None:
    if len(f.node_ids) != 1:
        raise sq.QueryError("range/interval takes one nodeId")
    if not streams:
        return None
    rows = api.store.rows(
        f"SELECT toUnixTimestamp64Milli(min(d.created)), toUnixTimestamp64Milli(max(d.created)), count()"
        f" FROM {RAW_TABLE} AS d{ranges_join('d', _ranges(api, f, streams))}",
        {},
    )
    if not rows or int(rows[0][2]) == 0:
        return None
    return sq.interval(int(rows[0][0]), int(rows[0][1]), _tz(api, f.node_ids[0]))
