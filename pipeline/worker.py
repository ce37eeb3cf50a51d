"""The Faust worker: agents that take datum batches from the per-source topics and store them.

Order of commitment for every batch of messages (at least once, idempotent store):

    1. decode and check                  (pure: processors/, nothing leaves the process)
    2. store accepted rows in ClickHouse (retried until it succeeds; offsets stay put)
    3. produce dead letters, await acks  (refusals are as durable as rows before we move on)
    4. ack the events                    (Faust commits acked offsets on its commit interval)

A crash anywhere before 4 redelivers the batch; the raw table's replacing key makes the
second store invisible to queries.

Faust cannot subscribe by pattern (faust-streaming #62), so the datum agent's topic list grows:
a timer lists the broker's topics, and a new source topic joins the subscription in seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.types import EventT
from prometheus_client import CollectorRegistry, start_http_server

from pipeline.codec import SCHEMA_HEADER, DeadLetter, DecodeError, Origin, decode_batch
from pipeline.metrics import Metrics, build_metrics
from pipeline.producer import TopicAdmin
from pipeline.settings import Settings
from pipeline.topics import Topics
from processors.datum import Rejection
from processors.rows import RawColumns, accept_batch
from sinks.base import SinkBackpressure
from sinks.clickhouse import RawSink, connect, ensure_schema

log = logging.getLogger(__name__)

RETRY_MAX_S = 30.0


def faust_broker_url(bootstrap: str) -> str:
    return ";".join(f"kafka://{h.strip()}" for h in bootstrap.split(",") if h.strip())


@dataclass
class BatchOutcome:
    rows: RawColumns = field(default_factory=RawColumns)
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


def process_messages(messages: Sequence[Any], now_ms: int) -> BatchOutcome:
    """Decode and check a batch of Kafka messages (anything with topic/partition/offset/value/headers)."""
    out = BatchOutcome()
    for msg in messages:
        origin = Origin(msg.topic, msg.partition, msg.offset)
        try:
            datums = decode_batch(msg.value, header(msg.headers, SCHEMA_HEADER))
        except DecodeError as exc:
            out.letters.append(
                DeadLetter([Rejection(exc.rule, str(exc))], origin, payload=bytes(msg.value or b""))
            )
            continue
        out.datums += len(datums)
        result = accept_batch(datums, now_ms)
        out.rows.extend(result.rows)
        out.accepted += result.datums_accepted
        for datum, reasons, stage in result.refused:
            out.letters.append(DeadLetter(reasons, origin, datum=datum, stage=stage))
        for d in datums:
            if d.created_ms > out.newest_created_ms:
                out.newest_created_ms = d.created_ms
    return out


class DatumWorker:
    """Wires one Faust app: the datum agent, topic discovery, the raw sink and the metrics."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.registry = registry or CollectorRegistry()
        self.metrics: Metrics = build_metrics(self.registry)
        self.app = faust.App(
            settings.app_id,
            broker=faust_broker_url(settings.kafka_bootstrap),
            store="memory://",
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
        self._sink: RawSink | None = None
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
        self.admin.ensure([self.topics.deadletter], partitions=1)
        return names

    @property
    def sink(self) -> RawSink:
        if self._sink is None:
            client = connect(self.settings.clickhouse_url)
            ensure_schema(client)
            self._sink = RawSink(client)
        return self._sink

    def _register(self) -> None:
        app, s = self.app, self.settings
        max_messages = max(1, s.batch_max_datums // max(1, s.producer_batch_datums)) * 4

        @app.agent(self.datum_topic, name="datums")
        async def datums(stream: faust.StreamT[Any]) -> None:
            async for events in stream.noack_take(max_messages, within=s.batch_within_s):
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

        @app.task
        async def warm_up() -> None:
            await asyncio.to_thread(lambda: self.sink)
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

    def update_lag(self) -> None:
        consumer = self.app.consumer
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            pos = self._positions.get((tp.topic, tp.partition))
            if high is not None and pos is not None:
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, high - pos - 1))

    _positions: dict[tuple[str, int], int] = {}

    async def handle(self, events: Sequence[EventT]) -> None:
        t0 = time.perf_counter()
        m = self.metrics
        messages = [e.message for e in events]
        m.messages_in.labels("datums").inc(len(messages))
        # 1. decode and check
        outcome = process_messages(messages, int(time.time() * 1000))
        m.datums_in.labels("datums").inc(outcome.datums)
        # 2. store first
        if len(outcome.rows):
            await self.store(outcome.rows)
            for kind in ("i", "a", "s"):
                count = outcome.rows.kind.count(kind)
                if count:
                    m.samples_accepted.labels(kind).inc(count)
            if outcome.newest_created_ms:
                m.created_to_stored_seconds.observe(max(0.0, time.time() - outcome.newest_created_ms / 1000))
        # 3. then the dead letters, each awaited until the broker has it
        if outcome.letters:
            futures = []
            for letter in outcome.letters:
                futures.append(await self.deadletter_topic.send(value=letter.to_json()))
                for reason in letter.reasons:
                    m.dead_letters.labels(letter.stage, reason.rule).inc()
            await asyncio.gather(*futures)
        for msg in messages:
            self._positions[(msg.topic, msg.partition)] = msg.offset
        m.agent_batch_seconds.labels("datums").observe(time.perf_counter() - t0)

    async def store(self, rows: RawColumns) -> None:
        delay = 0.5
        m = self.metrics
        while True:
            t0 = time.perf_counter()
            try:
                await asyncio.to_thread(self.sink.write_columns, rows)
            except SinkBackpressure as exc:
                m.sink_failures.labels("raw").inc()
                m.sink_retries.labels("raw").inc()
                log.warning("%s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(RETRY_MAX_S, delay * 2)
                continue
            m.sink_insert_seconds.labels("raw").observe(time.perf_counter() - t0)
            m.sink_batch_rows.labels("raw").observe(len(rows))
            m.last_stored_timestamp.labels("raw").set(time.time())
            return


def run_worker(settings: Settings) -> None:
    """Run one worker until SIGINT/SIGTERM; Faust drains and commits on the way out."""
    worker = DatumWorker(settings)
    faust.Worker(worker.app, loglevel=settings.log_level, quiet=True).execute_from_commandline()
