"""`pipeline replay`: send datums through the pipeline again.

Two sources:

* **store**: the datums stored in ClickHouse for a time range (optionally one node / source),
  rebuilt from their sample rows and re-published to their source topics. The workers validate
  and score them again with the template versions valid at each datum's `created` (a corrected
  qrating threshold, say) and store them over the old rows (same key: the newest insert wins),
  and their rollups are recomputed.
* **deadletter**: the refused datums and JSON lines kept on the dead-letter topic, re-published
  after a template or binding was fixed. Letters whose original is not a datum (a corrupt
  envelope, a line-protocol line) are counted as not replayable; their bytes stay on the topic.

Both stream in constant memory, and show progress.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from pipeline.gateway.expiry import ExpiryReport
from pipeline.progress import Progress
from pipeline.settings import Settings
from pipeline.wire.producer import DatumProducer, end_offsets
from processors.datum import Datum
from processors.solarnetwork_json import parse_line
from sinks.clickhouse import DATUM_VIEW, connect

log = logging.getLogger(__name__)
CHUNK = 5000


@dataclass
class ReplayReport:
    datums_sent: int = 0
    letters_read: int = 0
    not_replayable: int = 0
    skipped: int = 0  # letters filtered out by --stage / --rule
    by_reason: dict[str, int] = field(default_factory=dict)
    # of datums_sent, those already past their storage period (None: no catalog to tell)
    datums_expired: int | None = None
    samples_expired: int | None = None

    def summary(self) -> str:
        parts = [f"datums sent {self.datums_sent}"]
        if self.datums_expired is not None:
            parts.append(
                f"already past their storage period {self.datums_expired} datums / "
                f"{self.samples_expired} samples (stored and rolled up; raw rows expire)"
            )
        if self.letters_read:
            parts += [
                f"dead letters read {self.letters_read}",
                f"not replayable {self.not_replayable}",
                f"filtered out {self.skipped}",
            ]
        return ", ".join(parts)

    def expiry(self, seen: ExpiryReport) -> None:
        if seen.catalog is not None:
            self.datums_expired, self.samples_expired = seen.count.datums, seen.count.samples


def _send(producer: DatumProducer, chunk: list[Datum], expiry: ExpiryReport) -> int:
    expiry.see(chunk)
    return producer.send(chunk)


def _datums_from_rows(rows: Iterator[tuple[int, str, int, str, str, float | None, str, list[str]]]) -> Iterator[Datum]:
    """Consecutive sample rows of one (node, source, created) → one Datum (rows come ordered)."""
    current: tuple[int, str, int] | None = None
    i: dict[str, float] = {}
    a: dict[str, float] = {}
    s: dict[str, str] = {}
    tags: tuple[str, ...] = ()
    for node, source, created, prop, kind, value, text, row_tags in rows:
        key = (int(node), str(source), int(created))
        if key != current:
            if current is not None:
                yield Datum(*current, i, a, s, tags)
            current, i, a, s = key, {}, {}, {}
            tags = tuple(row_tags)
        if kind == "s":
            s[prop] = text
        elif value is not None:
            (a if kind == "a" else i)[prop] = float(value)
    if current is not None:
        yield Datum(*current, i, a, s, tags)


def replay_store(
    settings: Settings,
    start_ms: int,
    end_ms: int,
    node: int | None = None,
    source: str | None = None,
    progress: Progress | None = None,
) -> ReplayReport:
    client = connect(settings.clickhouse_url)
    where = (
        "created >= fromUnixTimestamp64Milli({lo:Int64}, 'UTC')"
        " AND created < fromUnixTimestamp64Milli({hi:Int64}, 'UTC')"
    )
    params: dict[str, object] = {"lo": start_ms, "hi": end_ms}
    if node is not None:
        where += " AND node_id = {node:UInt64}"
        params["node"] = node
    if source is not None:
        where += " AND source_id = {source:String}"
        params["source"] = source
    total = int(
        client.query(
            f"SELECT count() FROM (SELECT DISTINCT node_id, source_id, created FROM {DATUM_VIEW} WHERE {where})",
            parameters=params,
        ).result_rows[0][0]
    )
    if progress is not None:
        progress.total = total
    report = ReplayReport()
    producer = DatumProducer(settings)
    expiry = ExpiryReport.from_dsn(settings.postgres_dsn)
    chunk: list[Datum] = []

    def rows() -> Iterator[tuple[int, str, int, str, str, float | None, str, list[str]]]:
        with client.query_rows_stream(
            f"SELECT node_id, source_id, toUnixTimestamp64Milli(created), property, toString(kind), value, text,"
            f" tags FROM {DATUM_VIEW} WHERE {where} ORDER BY node_id, source_id, created",
            parameters=params,
        ) as stream:
            yield from stream

    for datum in _datums_from_rows(rows()):
        chunk.append(datum)
        if len(chunk) >= CHUNK:
            report.datums_sent += _send(producer, chunk, expiry)
            chunk.clear()
            if progress is not None:
                progress.update(report.datums_sent - progress.n)
    report.datums_sent += _send(producer, chunk, expiry)
    producer.flush()
    report.expiry(expiry)
    if progress is not None:
        progress.update(report.datums_sent - progress.n)
    return report


def letter_datum(letter: dict[str, object]) -> Datum | None:
    """The datum a dead letter carries: its `datum`, or the JSON line it quotes; None otherwise."""
    doc = letter.get("datum")
    if isinstance(doc, dict) and doc.get("truncated"):
        return None  # cut to fit the letter (pipeline/wire/codec.py): its samples are not all there
    if isinstance(doc, dict):
        parsed = parse_line(json.dumps(doc), 0)
        return parsed if isinstance(parsed, Datum) else None
    text = letter.get("text")
    if isinstance(text, str):
        parsed = parse_line(text, 0)
        return parsed if isinstance(parsed, Datum) else None
    return None


def replay_deadletters(
    settings: Settings, stage: str | None = None, rule: str | None = None, progress: Progress | None = None
) -> ReplayReport:
    """Every letter on the dead-letter topic up to its end when the command starts."""
    from confluent_kafka import Consumer, TopicPartition

    from pipeline.wire.topics import Topics

    topic = Topics.of_settings(settings).deadletter
    from pipeline.wire.kafka_config import client_config

    consumer = Consumer({**client_config(settings), "group.id": "pipeline-replay", "enable.auto.commit": False})
    report = ReplayReport()
    producer = DatumProducer(settings)
    expiry = ExpiryReport.from_dsn(settings.postgres_dsn)
    chunk: list[Datum] = []
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise SystemExit(f"pipeline replay: no dead-letter topic {topic!r}")
        ends = end_offsets(client_config(settings), topic, list(meta.partitions))
        if progress is not None:
            progress.total = sum(ends.values())
        todo = {p for p, end in ends.items() if end > 0}
        consumer.assign([TopicPartition(topic, p, 0) for p in todo])
        while todo:
            msg = consumer.poll(5.0)
            if msg is None or msg.error() is not None:
                continue
            partition, offset, value = msg.partition(), msg.offset(), msg.value()
            assert partition is not None and offset is not None  # a message, not an event
            if offset >= ends[partition] - 1:
                todo.discard(partition)
            report.letters_read += 1
            try:
                letter = json.loads(value or b"")
            except ValueError:
                report.not_replayable += 1
                continue
            reasons = [r.get("rule") for r in letter.get("reasons", []) if isinstance(r, dict)]
            if (stage is not None and letter.get("stage") != stage) or (rule is not None and rule not in reasons):
                report.skipped += 1
                continue
            datum = letter_datum(letter)
            if datum is None:
                report.not_replayable += 1
                continue
            for r in reasons:
                report.by_reason[str(r)] = report.by_reason.get(str(r), 0) + 1
            chunk.append(datum)
            if len(chunk) >= CHUNK:
                report.datums_sent += _send(producer, chunk, expiry)
                chunk.clear()
            if progress is not None:
                progress.update(1)
                progress.set_postfix(sent=report.datums_sent + len(chunk))
        report.datums_sent += _send(producer, chunk, expiry)
        producer.flush()
        report.expiry(expiry)
    finally:
        consumer.close()
    return report
