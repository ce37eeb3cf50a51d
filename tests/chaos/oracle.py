"""The exact-set oracle.

Given the identities (node, source, created) acknowledged to the producer and the bad inputs sent:
- every acknowledged datum is stored exactly once as queries see it: the `datum` view holds
  exactly its samples, with the values sent (no sample missing, none extra, none twice);
- every rollup equals a recomputation from the raw rows read back (processors/rollup.recompute
  straight from raw at each level, so the stored cascade is checked too), and every stored
  rollup figure is finite;
- every bad input has exactly one dead letter, recognised by its origin (topic, partition,
  offset), with an acceptable rule.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from clickhouse_connect.driver.client import Client
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from processors.datum import Datum
from processors.rollup import RawPoint, RollupRow, recompute
from sinks.rollups import ROLLUP_VIEW, rollup_row, rollup_row_columns
from tests.chaos.plan import BadInput, Identity

LEVELS = ("halfhour", "hour", "day")
Samples = dict[tuple[str, str], float | str]  # (property, kind) -> value or text


def expected_samples(datums: Iterable[Datum], acked: set[Identity]) -> dict[Identity, Samples]:
    """What the view must show for each acknowledged datum (the last copy sent wins, as in the store)."""
    out: dict[Identity, Samples] = {}
    for d in datums:
        if d.key in acked:
            out[d.key] = {(name, kind): value for kind, name, value in d.samples()}
    return out


@dataclass
class DataVerdict:
    expected: int = 0
    stored: int = 0  # identities whose samples are exactly the ones sent
    lost: int = 0  # acknowledged, nothing stored
    wrong: int = 0  # acknowledged, stored with samples missing or different values
    duplicates: int = 0  # rows beyond one per sample, as queries see them
    bad_stored: int = 0  # bad inputs that reached the view
    unacked_stored: int = 0  # sent, never acknowledged, stored anyway (allowed: at least once)
    rollups_checked: int = 0
    rollups_wrong: int = 0  # missing, surplus or different from the recomputation
    rollups_nonfinite: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return (
            self.stored == self.expected
            and not self.lost
            and not self.wrong
            and not self.duplicates
            and not self.bad_stored
            and not self.rollups_wrong
            and not self.rollups_nonfinite
        )

    def state(self) -> tuple[int, ...]:
        return (self.stored, self.lost, self.wrong, self.duplicates, self.rollups_wrong, self.rollups_nonfinite)


def _close(x: float | None, y: float | None, scale: float) -> bool:
    if x is None or y is None:
        return x is None and y is None
    if not (math.isfinite(x) and math.isfinite(y)):
        return False
    return math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9 * scale)


def rollup_differences(got: RollupRow, want: RollupRow, scale: float) -> list[str]:
    diffs = []
    for name in ("count", "min", "max", "read_start", "read_end", "mode", "status_counts", "tags"):
        if getattr(got, name) != getattr(want, name):
            diffs.append(f"{name} {getattr(got, name)!r} != {getattr(want, name)!r}")
    for name in ("avg", "diff", "read_diff"):
        if not _close(getattr(got, name), getattr(want, name), scale):
            diffs.append(f"{name} {getattr(got, name)!r} != {getattr(want, name)!r}")
    return diffs


def nonfinite(row: RollupRow) -> bool:
    return any(
        v is not None and not math.isfinite(v)
        for v in (row.avg, row.min, row.max, row.diff, row.read_diff, row.read_start, row.read_end)
    )


def check_data(
    client: Client,
    expected: Mapping[Identity, Samples],
    bad_ids: set[Identity],
    sent_ids: set[Identity],
    pulse: frozenset[str],
    max_examples: int = 5,
) -> DataVerdict:
    """Read the `datum` and `rollup` views and hold them against what was acknowledged."""
    v = DataVerdict(expected=len(expected))
    rows = client.query(
        "SELECT node_id, source_id, toUnixTimestamp64Milli(created), property, toString(kind), value, text,"
        " datastream FROM datum"
    ).result_rows
    keys = Counter((r[0], r[1], r[2], r[3]) for r in rows)
    v.duplicates = sum(c - 1 for c in keys.values())  # the view's own duplicates (FINAL should leave none)
    seen: dict[Identity, Samples] = {}
    points: dict[tuple[int, str], list[RawPoint]] = {}
    for node, source, created, prop, kind, value, text, datastream in rows:
        ident = (int(node), str(source), int(created))
        got = seen.setdefault(ident, {})
        got[(prop, kind)] = text if kind == "s" else value
        if kind == "s":
            point = RawPoint(int(created), prop, "s", None, text)
        else:
            rk = "p" if kind == "i" and datastream in pulse else kind
            point = RawPoint(int(created), prop, rk, None if value is None else float(value))
        points.setdefault((int(node), str(source)), []).append(point)
    for ident, want in expected.items():
        got = seen.get(ident)
        if got is None:
            v.lost += 1
            if len(v.examples) < max_examples:
                v.examples.append(f"lost {ident}")
            continue
        extra = len(set(got) - set(want))
        v.duplicates += extra  # a sample the datum never had is a second copy of something
        if got == want:
            v.stored += 1
        else:
            v.wrong += 1
            if len(v.examples) < max_examples:
                diff = {k: (got.get(k), want.get(k)) for k in set(got) | set(want) if got.get(k) != want.get(k)}
                v.examples.append(f"wrong {ident}: (stored, sent) {diff}")
    for ident in seen:
        if ident in bad_ids:
            v.bad_stored += 1
            if len(v.examples) < max_examples:
                v.examples.append(f"bad input stored {ident}")
        elif ident not in expected and ident in sent_ids:
            v.unacked_stored += 1
    _check_rollups(client, v, points, max_examples)
    return v


def _check_rollups(
    client: Client, v: DataVerdict, points: dict[tuple[int, str], list[RawPoint]], max_examples: int
) -> None:
    stored: dict[tuple[int, str], dict[tuple[str, str, str, int], RollupRow]] = {}
    # every row of the view (a surplus stream's too), read as sinks.rollups reads a stored row
    result = client.query(f"SELECT {rollup_row_columns()} FROM {ROLLUP_VIEW}")
    for values in result.result_rows:
        row = rollup_row(values)
        per, prop, kind = row.periodicity, row.property, row.kind
        if nonfinite(row):
            v.rollups_nonfinite += 1
            if len(v.examples) < max_examples:
                v.examples.append(f"non-finite rollup {row}")
        if per in LEVELS:
            stored.setdefault((row.node_id, row.source_id), {})[(per, prop, kind, row.ts_start_ms)] = row
    for stream in sorted(set(points) | set(stored)):
        pts = points.get(stream, [])
        got = stored.get(stream, {})
        want: dict[tuple[str, str, str, int], RollupRow] = {}
        if pts:
            lo = min(p.created_ms for p in pts)
            hi = max(p.created_ms for p in pts) + 1
            for per in LEVELS:
                for r in recompute(pts, [], lo, hi, per, "UTC", node_id=stream[0], source_id=stream[1]):  # type: ignore[arg-type]
                    want[(per, r.property, r.kind, r.ts_start_ms)] = r
        scale = max((abs(p.value) for p in pts if p.value is not None and math.isfinite(p.value)), default=1.0)
        for key in sorted(set(want) | set(got)):
            v.rollups_checked += 1
            if key not in got:
                problem = "missing"
            elif key not in want:
                problem = "surplus"
            else:
                diffs = rollup_differences(got[key], want[key], scale)
                problem = "; ".join(diffs)
            if problem:
                v.rollups_wrong += 1
                if len(v.examples) < max_examples:
                    v.examples.append(f"rollup {stream} {key}: {problem}")


# ------------------------------------------------------------------------------------------------
# Dead letters


def read_all(bootstrap: str, topic: str, idle_s: float = 2.0, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Every JSON record of a topic, read from the start until it is quiet for idle_s (Tansu's high
    watermark is not to be trusted after batches, see pipeline.wire.producer.end_offsets)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "chaos-oracle",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 32 * 1024 * 1024,
            "receive.message.max.bytes": 100 * 1024 * 1024,
        }
    )
    out: list[dict[str, Any]] = []
    try:
        meta = consumer.list_topics(timeout=10)
        if topic not in meta.topics or not meta.topics[topic].partitions:
            return out
        parts = list(meta.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        at_end: set[int] = set()
        while time.monotonic() < deadline:
            msg = consumer.poll(0.25)
            if msg is None:
                if time.monotonic() - last > idle_s and len(at_end) == len(parts):
                    break
                if time.monotonic() - last > 3 * idle_s:
                    break
                continue
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                continue
            at_end.discard(msg.partition())
            last = time.monotonic()
            try:
                out.append(json.loads(msg.value()))
            except ValueError:
                out.append({"unparseable": len(msg.value() or b"")})
        return out
    finally:
        consumer.close()


def stored_letters(client: Any) -> list[dict[str, Any]]:
    """Every dead letter the pipeline kept in the store (the `dead_letter` view: one per letter id,
    so a refusal sent again after a redelivery counts once). The store, not the topic: the
    embedded broker keeps nothing across a crash of the whole stack."""
    return [json.loads(r[0]) for r in client.query("SELECT letter FROM dead_letter").result_rows]


@dataclass
class LetterVerdict:
    expected: int = 0
    exactly_one: int = 0  # bad inputs with exactly one dead letter with an acceptable rule
    missing: int = 0
    duplicated: int = 0  # bad inputs with more than one
    wrong_rule: int = 0
    unplanned: Counter[str] = field(default_factory=Counter)  # letters of no bad input, by rule
    sizes: list[int] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return self.exactly_one == self.expected and not self.unplanned


def _rules(letter: Mapping[str, Any]) -> list[str]:
    return [str(r.get("rule", "")) for r in letter.get("reasons", []) if isinstance(r, Mapping)]


def check_letters(
    letters: Sequence[Mapping[str, Any]], bad: Sequence[tuple[BadInput, tuple[str, int, int] | None]]
) -> LetterVerdict:
    v = LetterVerdict(expected=len(bad))
    by_origin: dict[tuple[str, int, int], list[Mapping[str, Any]]] = {}
    for letter in letters:
        o = letter.get("origin") or {}
        if o:
            by_origin.setdefault((o.get("topic"), o.get("partition"), o.get("offset")), []).append(letter)
    claimed: set[int] = set()
    for b, origin in bad:
        mine = [x for x in by_origin.get(origin, [])] if origin is not None else []
        if b.identity is not None:
            mine = [
                x
                for x in mine
                if "datum" not in x
                or (x["datum"].get("nodeId"), x["datum"].get("sourceId"), x["datum"].get("created")) == b.identity
            ]
        claimed.update(id(x) for x in mine)
        if not mine:
            v.missing += 1
            v.examples.append(f"no dead letter for {b.name} at {origin}")
            continue
        if len(mine) > 1:
            v.duplicated += 1
            v.examples.append(f"{len(mine)} dead letters for {b.name}")
        rules = [r for x in mine for r in _rules(x)]
        if b.rules and not any(r.startswith(b.rules) for r in rules):
            v.wrong_rule += 1
            v.examples.append(f"{b.name}: rules {rules}, expected {b.rules}")
        elif len(mine) == 1:
            v.exactly_one += 1
        v.sizes += [len(json.dumps(x)) for x in mine]
    for letter in letters:
        if id(letter) not in claimed:
            for r in _rules(letter) or ["?"]:
                v.unplanned[r] += 1
    if v.unplanned:
        v.examples.append(f"dead letters of no bad input: {dict(v.unplanned)}")
    return v
