"""The Faust worker: agents that take datum batches from the per-source topics and store them.

Order of commitment for every batch of messages (at least once, idempotent store):

    1. decode and check                  (pure: processors/, nothing leaves the process)
    2. store accepted rows in ClickHouse (retried until it succeeds; offsets stay put)
    2b. mark their rollup buckets stale   (marks produced to pipeline.rollup-stale, acks awaited)
    3. produce dead letters, await acks  (refusals are as durable as rows before we move on)
    4. ack the events                    (Faust commits acked offsets on its commit interval)

A crash anywhere before 4 redelivers the batch; the raw table's replacing key makes the
second store invisible to queries.

The rollup agent takes the stale marks, keyed by stream, and for each batch of marks:
    1. recompute the stale buckets from the stored raw rows and cascade (pipeline/rollups.py)
    2. store them (replacing rows, tombstones for emptied buckets; idempotent)
    3. ack the marks
so raw ingestion never waits for rollups, and a crash recomputes the same buckets again.

Faust cannot subscribe by pattern (faust-streaming #62), so the datum agent's topic list grows:
a timer lists the broker's topics, and a new source topic joins the subscription in seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import faust
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError
from faust.types import EventT
from prometheus_client import CollectorRegistry, start_http_server

from pipeline.codec import SCHEMA_HEADER, DeadLetter, DecodeError, Origin, decode_batch
from pipeline.metadata import MetadataLink
from pipeline.metrics import Metrics, build_metrics
from pipeline.producer import TopicAdmin, end_offsets
from pipeline.rollups import RollupMaintainer
from pipeline.settings import Settings
from pipeline.topics import Topics, stream_key
from processors.auxiliary import AuxChange, AuxError, parse_change_bytes
from processors.catalog_versions import VersionedCatalog
from processors.datum import Datum, Rejection
from processors.qrating import RateState
from processors.rows import RawColumns, Scoring, accept_batch
from sinks.auxiliary import stored_properties, write_changes
from sinks.base import SinkBackpressure
from sinks.clickhouse import LATEST_TABLE, RawSink, connect, ensure_schema, rate_baselines
from sinks.rollups import ensure_rollup_schema

log = logging.getLogger(__name__)

RETRY_MAX_S = 30.0
T = TypeVar("T")


def faust_broker_url(bootstrap: str) -> str:
    return ";".join(f"kafka://{h.strip()}" for h in bootstrap.split(",") if h.strip())


@dataclass
class BatchOutcome:
    rows: RawColumns = field(default_factory=RawColumns)
    latest: RawColumns = field(default_factory=RawColumns)
    letters: list[DeadLetter] = field(default_factory=list)
    datums: int = 0
    accepted: int = 0
    newest_created_ms: int = 0


def header(headers: Any, name: str) -> str | None:
    if not headers:
        return None
    items = headers.items() if isinstance(headers, dict) else headers
    for key, value in items:
        if key == name:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def process_messages(
    messages: Sequence[Any],
    now_ms: int,
    catalog: VersionedCatalog | None = None,
    scoring: Scoring | None = None,
    prepare: Callable[[list[Datum]], None] | None = None,
) -> BatchOutcome:
    """Decode and check a batch of Kafka messages (anything with topic/partition/offset/value/headers).

    `prepare` sees every decoded datum before any is accepted (the worker loads rate baselines
    of streams it has not seen since it started).
    """
    out = BatchOutcome()
    decoded: list[tuple[Origin, list[Datum]]] = []
    for msg in messages:
        origin = Origin(msg.topic, msg.partition, msg.offset)
        try:
            datums = decode_batch(msg.value, header(msg.headers, SCHEMA_HEADER))
        except DecodeError as exc:
            out.letters.append(
                DeadLetter([Rejection(exc.rule, str(exc))], origin, payload=bytes(msg.value or b""))
            )
            continue
        decoded.append((origin, datums))
        out.datums += len(datums)
    if prepare is not None:
        prepare([d for _, datums in decoded for d in datums])
    for origin, datums in decoded:
        result = accept_batch(datums, now_ms, catalog, scoring)
        out.rows.extend(result.rows)
        out.latest.extend(result.latest)
        out.accepted += result.datums_accepted
        for datum, reasons, stage in result.refused:
            out.letters.append(DeadLetter(reasons, origin, datum=datum, stage=stage))
        for d in datums:
            if d.created_ms > out.newest_created_ms:
                out.newest_created_ms = d.created_ms
    return out


Change = tuple[int, str, int, str, str]  # node, source, created, property, kind


def stale_marks(changes: Iterable[Change]) -> list[tuple[bytes, bytes]]:
    """One mark per stream: the (property, kind, created) of every changed reading or reset."""
    by_stream: dict[tuple[int, str], list[tuple[str, str, int]]] = {}
    for node, source, created, prop, kind in changes:
        by_stream.setdefault((node, source), []).append((prop, kind, created))
    return [
        (stream_key(node, source), json.dumps({"node": node, "source": source, "changes": changes}).encode())
        for (node, source), changes in by_stream.items()
    ]


def row_changes(rows: RawColumns) -> Iterable[Change]:
    return zip(rows.node_id, rows.source_id, rows.created, rows.property, rows.kind, strict=True)


def stale_rows(values: Sequence[bytes]) -> RawColumns:
    """Marks back to the columns the rollup maintainer reads (node, source, created, property, kind)."""
    rows = RawColumns()
    for value in values:
        mark = json.loads(value)
        for prop, kind, created in mark["changes"]:
            rows.node_id.append(mark["node"])
            rows.source_id.append(mark["source"])
            rows.created.append(created)
            rows.property.append(prop)
            rows.kind.append(kind)
    return rows


class DatumWorker:
    """Wires one Faust app: the datum agent, topic discovery, the raw sink and the metrics."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.registry = registry or CollectorRegistry()
        self.metrics: Metrics = build_metrics(self.registry)
        (settings.data_dir / "faust").mkdir(parents=True, exist_ok=True)  # Faust makes only the last level
        self.app = faust.App(
            settings.app_id,
            broker=faust_broker_url(settings.kafka_bootstrap),
            store="memory://",
            # Faust writes a per-app folder; keep it under the data directory, not the cwd.
            datadir=str(settings.data_dir / "faust" / "{conf.id}"),
            web_enabled=False,
            autodiscover=False,
            topic_partitions=settings.topic_partitions,
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=settings.session_timeout_s,
            broker_rebalance_timeout=settings.rebalance_timeout_s,
            broker_heartbeat_interval=1.0,
            broker_commit_interval=1.0,
            consumer_max_fetch_size=settings.max_message_bytes,
            producer_max_request_size=settings.max_message_bytes,
            stream_wait_empty=False,
        )
        # Seconds, not Faust's 45: a new source should flow without a long wait.
        self.app.topics._resubscribe_sleep_lock_seconds = 1.0  # type: ignore[attr-defined]
        self.admin = TopicAdmin(settings)
        # The per-source topics known at start; grow_subscription adds to it.
        self.source_topic_names: list[str] = self._discover()
        self.datum_topic = self.app.topic(
            *self.source_topic_names, value_serializer="raw", key_serializer="raw"
        )
        self.deadletter_topic = self.app.topic(
            self.topics.deadletter, value_serializer="raw", key_serializer="raw"
        )
        self.metadata_topic = self.app.topic(
            self.topics.metadata, value_serializer="raw", key_serializer="raw"
        )
        self.stale_topic = self.app.topic(
            self.topics.rollup_stale, value_serializer="raw", key_serializer="raw"
        )
        self.aux_topic = self.app.topic(
            self.topics.auxiliary, value_serializer="raw", key_serializer="raw"
        )
        self._sink: RawSink | None = None
        self._latest_sink: RawSink | None = None
        self._rollups: RollupMaintainer | None = None  # created on first use
        self._aux_client: Client | None = None
        # Metadata: the history log decides what templates apply. Without a PostgreSQL DSN
        # every source is unbound (stored unvalidated), which the log says at start.
        self.metadata = MetadataLink(settings.postgres_dsn) if settings.postgres_dsn else None
        self.catalog: VersionedCatalog | None = None
        self.catalog_ready = asyncio.Event()
        self.metadata_ready = asyncio.Event()  # migrations done: events may be applied
        self._refresh_lock = asyncio.Lock()
        self.scoring = Scoring()
        self._baselined: set[tuple[int, str]] = set()
        self._positions: dict[tuple[str, int], int] = {}  # last offset handled per partition, for lag
        self._register()

    def _discover(self) -> list[str]:
        pattern = self.topics.source_pattern
        names = sorted(n for n in self.admin.existing() if pattern.match(n))
        if not names:
            # Faust needs a topic to subscribe to; the inbox is a real source topic that
            # gateways without topic-create rights may also use.
            inbox = self.topics.source("inbox")
            self.admin.ensure([inbox])
            names = [inbox]
        self.admin.ensure([self.topics.deadletter, self.topics.metadata, self.topics.rollup_stale,
                           self.topics.auxiliary])
        return names

    @property
    def sink(self) -> RawSink:
        if self._sink is None:
            client = connect(self.settings.clickhouse_url)
            ensure_schema(client)
            self._sink = RawSink(client)
        return self._sink

    # Each agent its own ClickHouse client: a client's session takes one query at a time.
    @property
    def aux_client(self) -> Client:
        if self._aux_client is None:
            self._aux_client = connect(self.settings.clickhouse_url)
        return self._aux_client

    @property
    def rollups(self) -> RollupMaintainer:
        if self._rollups is None:
            client = connect(self.settings.clickhouse_url)
            ensure_rollup_schema(client)
            self._rollups = RollupMaintainer(
                client,
                lambda node, ms: self.catalog.timezone_at(node, ms) if self.catalog else "UTC",
                pulse=lambda: self.catalog.catalogs[-1].pulse_datastreams() if self.catalog else frozenset(),
            )
        return self._rollups

    async def mark_stale(self, changes: Iterable[Change]) -> None:
        futures = [await self.stale_topic.send(key=key, value=value) for key, value in stale_marks(changes)]
        await asyncio.gather(*futures)

    async def update_rollups(self, rows: RawColumns) -> None:
        """Recompute the rollups the stored rows stale; retried until ClickHouse takes them."""
        m = self.metrics
        t0 = time.perf_counter()
        written = await self.retrying("rollup", f"rollup update of {len(rows)} rows", self.rollups.update, rows)
        m.sink_batch_rows.labels("rollup").observe(written)
        m.sink_insert_seconds.labels("rollup").observe(self.rollups.last_seconds)
        m.last_stored_timestamp.labels("rollup").set(time.time())
        m.agent_batch_seconds.labels("rollups").observe(time.perf_counter() - t0)

    async def retrying(self, sink: str, what: str, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) in a thread until it succeeds: the offsets stay put meanwhile."""
        delay = 0.5
        while True:
            try:
                return await asyncio.to_thread(fn, *args)
            except (ClickHouseError, OSError) as exc:
                self.metrics.sink_failures.labels(sink).inc()
                self.metrics.sink_retries.labels(sink).inc()
                log.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
                await asyncio.sleep(delay)
                delay = min(RETRY_MAX_S, delay * 2)

    async def handle_auxiliary(self, events: Sequence[EventT]) -> None:
        """Reset markers stored, moved or deleted. Order of commitment as for datums:
        1. parse (refusals kept aside)  2. store the changes  2b. mark the buckets around the
        old and new times stale (the rollup agent recomputes them with the resets)
        3. dead letters, awaited  4. the caller acks."""
        t0 = time.perf_counter()
        m = self.metrics
        m.messages_in.labels("auxiliary").inc(len(events))
        changes: list[AuxChange] = []
        letters: list[DeadLetter] = []
        for e in events:
            msg = e.message
            try:
                changes.append(parse_change_bytes(bytes(msg.value or b"")))
            except AuxError as exc:
                letters.append(DeadLetter([exc.as_rejection()], Origin(msg.topic, msg.partition, msg.offset),
                                          payload=bytes(msg.value or b""), stage="auxiliary"))
        if changes:
            client = self.aux_client
            removed = [c.removed for c in changes if c.removed is not None]
            # what a delete or move takes away: the stored record's properties, read before the write
            gone = await self.retrying("auxiliary", "reading stored resets", stored_properties, client, removed)
            await self.retrying("auxiliary", f"storing {len(changes)} auxiliary change(s)",
                                write_changes, client, changes)
            marks: list[Change] = [(k.node_id, k.source_id, k.created_ms, p, "a")
                                   for k, props in zip(removed, gone, strict=True) for p in sorted(props)]
            for c in changes:
                if c.record is not None:
                    k = c.record.key
                    marks += [(k.node_id, k.source_id, k.created_ms, p, "a") for p in sorted(c.record.properties)]
            if marks:
                await self.mark_stale(marks)
        await self.send_dead_letters(letters)
        self.handled([e.message for e in events])
        m.agent_batch_seconds.labels("auxiliary").observe(time.perf_counter() - t0)

    @property
    def latest_sink(self) -> RawSink:
        if self._latest_sink is None:
            self._latest_sink = RawSink(self.sink.client, LATEST_TABLE)
        return self._latest_sink

    def prepare_rates(self, datums: list[Datum]) -> None:
        """First sight of a stream since start: its cumulative rates continue from the store
        (the broker may have been restarted and kept nothing)."""
        if self.catalog is None:
            return
        first: dict[tuple[int, str], int] = {}
        for d in datums:
            if d.stream not in self._baselined and d.a and d.created_ms < first.get(d.stream, 1 << 62):
                first[d.stream] = d.created_ms
        for (node, source), before in first.items():
            for datastream, created, value in rate_baselines(self.sink.client, node, source, before):
                self.scoring.rates.setdefault((node, source, datastream), RateState(created, value))
            self._baselined.add((node, source))

    async def refresh_catalog(self, force: bool = False) -> None:
        if self.metadata is None:
            return
        link = self.metadata
        # warm-up, the metadata agent and the timer all refresh: one at a time
        async with self._refresh_lock:
            version = await asyncio.to_thread(link.version)
            if force or self.catalog is None or version != self.catalog.version:
                self.catalog = await asyncio.to_thread(link.load)
                log.info("catalog version %d: %d data-time stretch(es)", self.catalog.version,
                         len(self.catalog.catalogs))

    def _register(self) -> None:
        app, s = self.app, self.settings
        max_messages = max(1, s.batch_max_datums // max(1, s.producer_batch_datums)) * 4

        @app.agent(self.datum_topic, name="datums")
        async def datums(stream: faust.StreamT[Any]) -> None:
            async for events in stream.noack_take(max_messages, within=s.batch_within_s):
                # validate with the catalog from the history log, never without it
                await self.catalog_ready.wait()
                await self.handle(events)
                # 4. only now may the offsets move
                for event in events:
                    await stream.ack(event)

        @app.timer(s.topic_scan_interval_s)
        async def discover_sources() -> None:
            await self.grow_subscription()

        @app.timer(5.0)
        async def lag() -> None:
            self.update_lag()

        @app.agent(self.stale_topic, name="rollups")
        async def rollups(stream: faust.StreamT[Any]) -> None:
            async for events in stream.noack_take(500, within=1.0):
                await self.catalog_ready.wait()  # time zones come from the catalog
                self.metrics.messages_in.labels("rollups").inc(len(events))
                await self.update_rollups(stale_rows([e.message.value for e in events]))
                self.handled([e.message for e in events])
                for event in events:
                    await stream.ack(event)

        @app.agent(self.aux_topic, name="auxiliary")
        async def auxiliary(stream: faust.StreamT[Any]) -> None:
            async for events in stream.noack_take(200, within=0.5):
                await self.catalog_ready.wait()
                await self.handle_auxiliary(events)
                for event in events:
                    await stream.ack(event)

        @app.agent(self.metadata_topic, name="metadata")
        async def metadata(stream: faust.StreamT[Any]) -> None:
            async for event in stream.events():
                await self.apply_metadata(event)

        @app.timer(1.0)
        async def catalog() -> None:
            try:
                await self.refresh_catalog()
            except Exception as exc:  # PostgreSQL away: keep the catalog we have
                log.warning("catalog refresh failed: %s", exc)

        @app.task
        async def warm_up() -> None:
            await asyncio.to_thread(lambda: self.sink)
            await asyncio.to_thread(ensure_rollup_schema, self.sink.client)
            if self.metadata is not None:
                await asyncio.to_thread(self.metadata.migrate)
                self.metadata_ready.set()
                # Metadata produced before this start applies before any datum is validated.
                await self.catch_up_metadata()
                await self.refresh_catalog(force=True)
                # Only now: a refresh by the metadata agent during catch-up may hold a catalog
                # from half-way through the events (a datamodel without its bindings).
                self.catalog_ready.set()
            else:
                log.warning("no PostgreSQL DSN: templates are not applied, every source is stored unvalidated")
                self.catalog_ready.set()
            if s.metrics_port:
                start_http_server(s.metrics_port, registry=self.registry)
                log.info("metrics on :%d/metrics", s.metrics_port)

    async def grow_subscription(self) -> None:
        pattern = self.topics.source_pattern
        try:
            existing = await asyncio.to_thread(self.admin.existing)
        except Exception as exc:  # broker hiccup: try again next tick
            log.warning("topic scan failed: %s", exc)
            return
        new = sorted(n for n in existing if pattern.match(n) and n not in self.source_topic_names)
        if new:
            old = set(self.source_topic_names)
            self.source_topic_names.extend(new)
            log.info("subscribing to %d new source topic(s): %s", len(new), ", ".join(new[:5]))
            # The agent iterates a clone of datum_topic that the conductor holds; update every
            # channel carrying our topics. Faust has no public call for "this channel's topic
            # list changed", hence the conductor's _flag_changes.
            names = tuple(self.source_topic_names)
            for channel in [self.datum_topic, *self.app.topics]:
                if old & set(getattr(channel, "topics", ()) or ()):
                    channel.topics = names
            self.app.topics._flag_changes()  # type: ignore[attr-defined]
        self.metrics.source_topics.set(len(self.source_topic_names))

    async def send_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Produce dead letters and wait until the broker has every one (before the ack)."""
        futures = []
        for letter in letters:
            futures.append(await self.deadletter_topic.send(value=letter.to_json()))
            for reason in letter.reasons:
                self.metrics.dead_letters.labels(letter.stage, reason.rule).inc()
        await asyncio.gather(*futures)

    def handled(self, messages: Sequence[Any]) -> None:
        """Remember the last offset handled per partition: consumer lag is measured from it."""
        for msg in messages:
            self._positions[(msg.topic, msg.partition)] = msg.offset

    def update_lag(self) -> None:
        consumer = self.app.consumer
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            pos = self._positions.get((tp.topic, tp.partition))
            if high is not None and pos is not None:
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, high - pos - 1))


    async def catch_up_metadata(self, timeout: float = 60.0) -> None:
        """Wait until the metadata topic's events that existed at start are applied (by this
        worker or whichever owns the partition: the group's committed offset tells)."""
        end = await asyncio.to_thread(self._metadata_end)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = max(self._metadata_next, await asyncio.to_thread(self._metadata_committed))
            if done >= end:
                return
            await asyncio.sleep(0.25)
        log.warning("metadata not caught up after %.0fs (at %d of %d); validating with what is applied",
                    timeout, self._metadata_next, end)

    def _metadata_end(self) -> int:
        return end_offsets(self.settings.kafka_bootstrap, self.topics.metadata, [0])[0]

    def _metadata_committed(self) -> int:
        from confluent_kafka import Consumer, TopicPartition

        c = Consumer({"bootstrap.servers": self.settings.kafka_bootstrap, "group.id": self.settings.app_id,
                      "enable.auto.commit": False})
        try:
            (tp,) = c.committed([TopicPartition(self.topics.metadata, 0)], timeout=10)
            return max(0, int(tp.offset))
        finally:
            c.close()

    _metadata_next = 0  # the offset after the last metadata event this worker applied

    async def apply_metadata(self, event: EventT) -> None:
        """Apply one metadata event to the history log; refusals are logged and dead-lettered."""
        if self.metadata is None:
            log.error("metadata event at offset %d ignored: no PostgreSQL DSN", event.message.offset)
            return
        msg = event.message
        await self.metadata_ready.wait()
        t0 = time.perf_counter()
        self.metrics.messages_in.labels("metadata").inc()
        delay = 0.5
        while True:
            try:
                result = await asyncio.to_thread(self.metadata.apply, bytes(msg.value or b""))
                break
            except Exception as exc:  # the log is unreachable: retry, the offset stays
                log.warning("applying metadata failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(RETRY_MAX_S, delay * 2)
        if result.status in ("refused", "invalid"):
            log.warning("metadata event %s refused: %s (%s)", result.event_id, result.reason, result.rule)
            letter = DeadLetter([Rejection(result.rule or "metadata.refused", result.reason or "")],
                                Origin(msg.topic, msg.partition, msg.offset), payload=bytes(msg.value or b""),
                                stage="metadata")
            await self.send_dead_letters([letter])
        else:
            log.info("metadata event %s %s", result.event_id, result.status)
            try:
                await self.refresh_catalog()
            except Exception as exc:  # the timer tries again within a second
                log.warning("catalog refresh after %s failed: %s", result.event_id, exc)
        self._metadata_next = msg.offset + 1
        self.handled([msg])
        self.metrics.agent_batch_seconds.labels("metadata").observe(time.perf_counter() - t0)

    async def handle(self, events: Sequence[EventT]) -> None:
        t0 = time.perf_counter()
        m = self.metrics
        messages = [e.message for e in events]
        m.messages_in.labels("datums").inc(len(messages))
        # 1. decode and check (a thread: the baseline lookup talks to ClickHouse)
        outcome = await asyncio.to_thread(
            process_messages, messages, int(time.time() * 1000), self.catalog, self.scoring, self.prepare_rates)
        m.datums_in.labels("datums").inc(outcome.datums)
        m.datums_accepted.labels("datums").inc(outcome.accepted)
        # 2. store first
        if len(outcome.latest):
            await self.store(outcome.latest, self.latest_sink)
        if len(outcome.rows):
            await self.store(outcome.rows)
            for kind in ("i", "a", "s"):
                count = outcome.rows.kind.count(kind)
                if count:
                    m.samples_accepted.labels(kind).inc(count)
            for perf in outcome.rows.performance:
                if perf is not None:
                    m.qrating_performance.observe(perf)
            if outcome.newest_created_ms:
                m.created_to_stored_seconds.observe(max(0.0, time.time() - outcome.newest_created_ms / 1000))
            # 2b. mark the rollup buckets of what was just stored stale (before the ack)
            await self.mark_stale(row_changes(outcome.rows))
        # 3. then the dead letters, each awaited until the broker has it
        await self.send_dead_letters(outcome.letters)
        self.handled(messages)
        m.agent_batch_seconds.labels("datums").observe(time.perf_counter() - t0)

    async def store(self, rows: RawColumns, sink: RawSink | None = None) -> None:
        delay = 0.5
        m = self.metrics
        target = sink if sink is not None else self.sink  # a sink with nothing pending is falsy
        label = "raw" if target is self.sink else "latest"
        while True:
            t0 = time.perf_counter()
            try:
                await asyncio.to_thread(target.write_columns, rows)
            except SinkBackpressure as exc:
                m.sink_failures.labels(label).inc()
                m.sink_retries.labels(label).inc()
                log.warning("%s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(RETRY_MAX_S, delay * 2)
                continue
            m.sink_insert_seconds.labels(label).observe(time.perf_counter() - t0)
            m.sink_batch_rows.labels(label).observe(len(rows))
            m.last_stored_timestamp.labels(label).set(time.time())
            return


def run_worker(settings: Settings) -> None:
    """Run one worker until SIGINT/SIGTERM; Faust drains and commits on the way out."""
    worker = DatumWorker(settings)
    faust.Worker(worker.app, loglevel=settings.log_level, quiet=True).execute_from_commandline()
