"""The Faust worker: agents that take datum batches from the per-source topics and store them.

Order of commitment for every batch of messages (at least once, idempotent store), kept by one
`pipeline.worker.commit.Committer` with one retry policy:

    1. decode and check                  (pure: processors/, nothing leaves the process)
    2. store accepted rows in ClickHouse (transient failures retried; offsets stay put)
    2b. mark their rollup buckets stale   (marks produced to pipeline.rollup-stale, acks awaited)
    3. produce dead letters, await acks  (refusals are as durable as rows before we move on)
    4. ack the events                    (Faust commits acked offsets on its commit interval)

A crash anywhere before 4 redelivers the batch; the raw table's replacing key makes the
second store invisible to queries. An exception caused by the data, at any step, is narrowed
down to the datum (or message) that causes it, which is dead-lettered as `internal.<stage>`;
the rest of the batch is stored. No exception leaves an agent.

The rollup agent takes the stale marks, keyed by stream, and for each batch of marks:
    1. recompute the stale buckets from the stored raw rows and cascade (pipeline/worker/rollups.py)
    2. store them (replacing rows, tombstones for emptied buckets; idempotent)
    2b. record the raw batches as rolled up (the rollup ledger, `rollup_done`)
    3. ack the marks
so raw ingestion never waits for rollups, and a crash recomputes the same buckets again. Marks
live on the broker, which may lose them: at start a worker re-marks every stored raw batch the
ledger does not list.

Metadata events are applied to the history log one at a time and acked only once applied (or
refused with a dead letter); while PostgreSQL is away the agent waits, and says so.

Faust cannot subscribe by pattern (faust-streaming #62), so the datum agent's topic list grows:
a timer lists the broker's topics, and a new source topic joins the subscription in seconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar, cast

import faust
import pyarrow as pa
from clickhouse_connect.driver.client import Client
from faust.types import EventT
from prometheus_client import CollectorRegistry, start_http_server

from pipeline.history.link import MetadataLink
from pipeline.settings import Settings
from pipeline.wire.codec import (
    DATUMS_HEADER,
    DEAD_LETTER_MAX_BYTES,
    MIN_DEAD_LETTER_BYTES,
    DeadLetter,
    Origin,
    kept_on_read,
    letter_row,
    message_weight,
    read_letter_row,
)
from pipeline.wire.kafka_config import client_config, faust_credentials
from pipeline.wire.producer import TopicAdmin, end_offsets
from pipeline.wire.topics import Topics
from pipeline.worker import faust_fixes, memory
from pipeline.worker.batch import (
    Part,
    Stamps,
    bundle_marks,
    column_bundles,
    event_letter,
    header,
    internal_letter,
    process_parts,
    read_marks,
    split_part,
    stale_marks,
    stored_marks,
)
from pipeline.worker.commit import Committer, RetryPolicy, Unavailable, stage_named
from pipeline.worker.metrics import Metrics, build_metrics, observe_many
from pipeline.worker.rollups import RollupLanes, RollupMaintainer
from pipeline.worker.sensor import PositionMonitor
from processors.auxiliary import AuxChange, AuxError, parse_change_bytes
from processors.catalog_versions import VersionedCatalog
from processors.datum import Rejection
from processors.point_cache import PointCache
from processors.qrating import RateState
from processors.rollup_running import RunningRollups
from processors.rows import Overlay, RawColumns, Scoring
from processors.stale_marks import Change, MarkColumns, marks_in
from sinks.auxiliary import AuxiliarySink, stored_properties
from sinks.base import Sink
from sinks.clickhouse import LATEST_TABLE, DeadLetterSink, RawSink, connect, rate_baselines_many
from sinks.dedup import Origin as MessageAt
from sinks.rollups import RollupLedger, RollupSink, not_rolled_up

log = logging.getLogger(__name__)

T = TypeVar("T")
S = TypeVar("S", bound=Sink[Any, Any])
StreamKey = tuple[int, str]  # (node, source)
PartitionKey = tuple[str, int]  # (topic, partition)


def take_events(
    stream: faust.StreamT[Any], max_: int | faust_fixes.WeightedLimit, within: float
) -> AsyncIterator[Sequence[EventT[Any]]]:
    """`Stream.noack_take`: batches of events that the agent acks (a public method of Faust's
    Stream that StreamT, the type agents are given, does not declare)."""
    taken: AsyncIterator[Sequence[EventT[Any]]] = cast(Any, stream).noack_take(max_, within=within)
    return taken


def faust_broker_url(bootstrap: str) -> str:
    return ";".join(f"kafka://{h.strip()}" for h in bootstrap.split(",") if h.strip())


class StreamPartitions:
    """The topic partition each stream with per-stream state (qRating's rate baselines) came from,
    so that a revoked partition takes the state of its streams with it: another worker stores
    their next datapoints, and should the partition come back, that state would be stale.

    Faust does not wait for an agent's batch when partitions are revoked (stream_wait_empty is
    off), so a batch taken before a revocation may finish after it: `learn` tells which of its
    streams lost their partition meanwhile, whose state the batch must then not keep."""

    def __init__(self) -> None:
        self.of: dict[StreamKey, PartitionKey] = {}
        self.revocations = 0
        self._revoked_at: dict[PartitionKey, int] = {}  # the revocation that last took a partition

    def learn(self, partitions: Mapping[StreamKey, PartitionKey], since: int) -> set[StreamKey]:
        """Note where the streams of a batch came from; the batch was taken when `revocations` was
        `since`. Returns the streams whose partition was revoked since (their state is not kept)."""
        lost: set[StreamKey] = set()
        for stream, tp in partitions.items():
            if self._revoked_at.get(tp, 0) > since:
                lost.add(stream)
            else:
                self.of[stream] = tp
        return lost

    def revoke(self, tps: Iterable[PartitionKey]) -> set[StreamKey]:
        """Partitions revoked: the streams that came from them (forgotten here)."""
        self.revocations += 1
        gone = set(tps)
        for tp in gone:
            self._revoked_at[tp] = self.revocations
        streams = {stream for stream, tp in self.of.items() if tp in gone}
        for stream in streams:
            del self.of[stream]
        return streams


class CommittedOffset:
    """A consumer group's committed offset of one partition, read with one confluent-kafka client,
    made on the first read and closed by `close` (a wait that polls it would otherwise open one
    client, and its connections, per poll)."""

    def __init__(self, config: Mapping[str, Any], topic: str, partition: int) -> None:
        self.config = {**config, "enable.auto.commit": False}
        self.topic, self.partition = topic, partition
        self._consumer: Any = None

    def read(self) -> int:
        from confluent_kafka import Consumer, TopicPartition

        if self._consumer is None:
            self._consumer = Consumer(self.config)
        (tp,) = self._consumer.committed([TopicPartition(self.topic, self.partition)], timeout=10)
        return max(0, int(tp.offset))

    def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.close()


class DatumWorker:
    """Wires one Faust app: the datum agent, topic discovery, the raw sink and the metrics."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.topics = Topics.of_settings(settings)
        self.registry = registry or CollectorRegistry()
        self.metrics: Metrics = build_metrics(self.registry)
        (settings.data_dir / "faust").mkdir(parents=True, exist_ok=True)  # Faust makes only the last level
        faust_fixes.apply()
        # the app's monitor: Faust's sensor hooks keep every partition's positions there (lag)
        self.positions = PositionMonitor(self.metrics.consumer_lag)
        # stream keys hashed once for the stale topic's partitions (pipeline/worker/faust_fixes.py 13.)
        self._key_hashes = faust_fixes.KeyHashes()
        self.app = faust.App(
            settings.app_id,
            broker=faust_broker_url(settings.kafka_bootstrap),
            broker_credentials=faust_credentials(settings),
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
            # Faust's default is 5 min: partitions a topic gained (an operator scaling out, or a broker
            # that restarted without its data and created the topic again with its own count) went
            # unassigned that long, their datums unread (the broker-killed drill: 4 partitions where
            # the group's leader still knew 2)
            consumer_metadata_max_age_ms=int(settings.metadata_max_age_s * 1000),
            producer_metadata_max_age_ms=int(settings.metadata_max_age_s * 1000),
            consumer_max_fetch_size=settings.max_message_bytes,
            producer_max_request_size=settings.max_message_bytes,
            stream_wait_empty=False,
            monitor=self.positions,
        )
        faust_fixes.fast_resubscribe(self.app)
        self.admin = TopicAdmin(settings)
        # The per-source topics known at start; grow_subscription adds to it.
        self.source_topic_names: list[str] = self._discover()
        self.datum_topic = self.app.topic(*self.source_topic_names, value_serializer="raw", key_serializer="raw")
        self.deadletter_topic = self.app.topic(self.topics.deadletter, value_serializer="raw", key_serializer="raw")
        self.metadata_topic = self.app.topic(self.topics.metadata, value_serializer="raw", key_serializer="raw")
        self.stale_topic = self.app.topic(self.topics.rollup_stale, value_serializer="raw", key_serializer="raw")
        self.aux_topic = self.app.topic(self.topics.auxiliary, value_serializer="raw", key_serializer="raw")
        # ClickHouse: the sinks (sinks/base.py's contract), made and set up by setup_stores when
        # the worker starts
        self._sink: RawSink | None = None
        self._latest_sink: RawSink | None = None
        self._letters: DeadLetterSink | None = None
        self._rollups: RollupLanes | None = None
        self.rollup_cache: PointCache | None = None
        self.rollup_running: RunningRollups | None = None
        self._running_seen = (0, 0, 0, 0)  # the running rollups' counts last put into the metrics
        self._cache_seen = (0, 0)  # the cache's counts last put into the metrics
        self._ledger: RollupLedger | None = None
        self._aux_client: Client | None = None
        self._aux_sink: AuxiliarySink | None = None
        # Metadata: the history log decides what templates apply. Without a PostgreSQL DSN
        # every source is unbound (stored unvalidated), which the log says at start.
        self.metadata = MetadataLink(settings.postgres_dsn) if settings.postgres_dsn else None
        self.catalog: VersionedCatalog | None = None
        self.catalog_ready = asyncio.Event()
        self.metadata_ready = asyncio.Event()  # migrations done: events may be applied
        self._refresh_lock = asyncio.Lock()
        # per-stream state, kept between batches (loaded from the store on a stream's first batch
        # since start, or since its partition came back): qRating's rate baselines
        self.scoring = Scoring()
        self._baselined: set[StreamKey] = set()
        self.stream_partitions = StreamPartitions()
        self.stamps = Stamps()
        self.committer: Committer[Any, DeadLetter] = Committer(
            RetryPolicy(),
            on_retry=self._on_retry,
            on_isolated=lambda i: self.metrics.internal_errors.labels(i.stage).inc(),
        )
        self._register()

    # retry labels (pipeline_sink_retries_total{sink}) that mean "ClickHouse is not answering"
    CLICKHOUSE_STEPS = frozenset({"raw", "latest", "rollup", "auxiliary", "clickhouse"})

    def _on_retry(self, what: str, exc: BaseException, delay: float) -> None:
        self.metrics.sink_retries.labels(what).inc()
        self.metrics.sink_failures.labels(what).inc()
        if what in self.CLICKHOUSE_STEPS:
            self.metrics.dependency_up.labels("clickhouse").set(0)

    def _discover(self) -> list[str]:
        pattern = self.topics.source_pattern
        names = sorted(n for n in self.admin.existing() if pattern.match(n))
        if not names:
            # Faust needs a topic to subscribe to; the inbox is a real source topic that
            # gateways without topic-create rights may also use.
            inbox = self.topics.source("inbox")
            self.admin.ensure([inbox])
            names = [inbox]
        self.admin.ensure(self.internal_topics)
        return names

    @property
    def internal_topics(self) -> list[str]:
        """The topics the worker writes and reads besides the sources."""
        return [self.topics.deadletter, self.topics.metadata, self.topics.rollup_stale, self.topics.auxiliary]

    # -- the stores -------------------------------------------------------------------------------

    def setup_stores(self) -> None:
        """Connect to ClickHouse and create what the worker writes to (sinks/clickhouse.py's schema;
        the rollups', their ledger and the reset markers'): one step at start, in a thread and
        inside the retry policy (a store that is away at start is waited for, not a crash), before
        any agent handles a batch. A retry goes on from where the failed attempt stopped."""
        url, cluster = self.settings.clickhouse_url, self.settings.clickhouse_cluster

        def set_up(make: Callable[[Client], S]) -> S:
            client = connect(url)
            try:
                sink = make(client)
                sink.setup()
            except BaseException:
                client.close()
                raise
            return sink

        if self._sink is None:
            # the raw, latest and dead-letter tables: one schema, one client
            raw = set_up(lambda client: RawSink(client, cluster=cluster))
            self._sink, self._letters = raw, DeadLetterSink(raw.client, cluster)
        if self._latest_sink is None:
            self._latest_sink = RawSink(self._sink.client, LATEST_TABLE, cluster)
        if self._rollups is None:
            # the rollups, their ledger and the reset markers
            rollup_sink = set_up(lambda client: RollupSink(client, cluster))
            self._ledger = RollupLedger(rollup_sink.client, cluster)
            # lane 0 on the rollup sink's client, each further lane its own (one query at a time each)
            lane_clients = [rollup_sink.client]
            try:
                lane_clients += [connect(url) for _ in range(self.settings.rollup_lanes - 1)]
            except BaseException:
                for client in lane_clients:
                    client.close()
                raise
            # one cache for the lanes: a stream is in one lane at a time, not always the same one
            self.rollup_cache = (
                PointCache(self.settings.rollup_cache_points, min_points=self.settings.rollup_cache_min_points)
                if self.settings.rollup_cache_points
                else None
            )
            self.rollup_running = (
                RunningRollups(self.settings.rollup_running_series) if self.settings.rollup_running_series else None
            )
            self._rollups = RollupLanes(
                [
                    RollupMaintainer(
                        client,
                        lambda node, ms: self.catalog.timezone_at(node, ms) if self.catalog else "UTC",
                        pulse=lambda: self.catalog.catalogs[-1].pulse_datastreams() if self.catalog else frozenset(),
                        cluster=cluster,
                        cache=self.rollup_cache,
                        combine_buckets=self.settings.rollup_combine_buckets,
                        running=self.rollup_running,
                    )
                    for client in lane_clients
                ],
                self.settings.rollup_lane_streams,
            )
        # Each agent its own ClickHouse client: a client's session takes one query at a time.
        if self._aux_sink is None:
            self._aux_sink = set_up(lambda client: AuxiliarySink(client, cluster))
            self._aux_client = self._aux_sink.client

    def _set_up(self, store: T | None) -> T:
        if store is None:
            raise RuntimeError(
                "the ClickHouse stores are set up when the worker starts (setup_stores), before any batch is handled"
            )
        return store

    @property
    def sink(self) -> RawSink:
        return self._set_up(self._sink)

    @property
    def latest_sink(self) -> RawSink:
        return self._set_up(self._latest_sink)

    @property
    def rollups(self) -> RollupLanes:
        return self._set_up(self._rollups)

    @property
    def aux_client(self) -> Client:
        return self._set_up(self._aux_client)

    async def in_thread(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) in a thread, retried while it fails transiently; a data error is raised."""
        return await self.committer.retry(what, asyncio.to_thread, fn, *args)

    async def mark_stale(self, marks: Sequence[tuple[bytes, bytes]] | MarkColumns) -> None:
        """Produce the marks, a bundle per partition of the stale topic (`bundle_marks`; marks as
        arrays: `column_bundles`), and wait for the broker to take every one."""
        # each stream's marks on the partition the producer gives its key (None: no metadata yet)
        partition_of = faust_fixes.stale_partitioner(self.app, self.topics.rollup_stale, self._key_hashes)
        messages = (
            column_bundles(marks, partition_of) if isinstance(marks, MarkColumns) else bundle_marks(marks, partition_of)
        )
        futures = [
            await self.stale_topic.send(key=key, value=value, partition=partition) for partition, key, value in messages
        ]
        await asyncio.gather(*futures)

    # -- rollups --------------------------------------------------------------------------------

    async def handle_marks(self, events: Sequence[EventT[Any]], ack: Callable[[], Any]) -> None:
        """Recompute what a batch of stale marks names, store it, record it in the ledger, ack."""
        m = self.metrics
        m.messages_in.labels("rollups").inc(len(events))

        async def attempt(batch: Sequence[EventT[Any]]) -> list[DeadLetter]:
            t0 = time.perf_counter()
            with stage_named("rollup"):
                spans, batches = read_marks([e.message.value or b"" for e in batch])
            written = await self.in_thread("rollup", lambda: self.rollups.update_spans(spans))
            if batches:
                await self.in_thread("rollup", lambda: self._set_up(self._ledger).write(batches))
            m.sink_batch_rows.labels("rollup").observe(written)
            m.sink_insert_seconds.labels("rollup").observe(self.rollups.last_seconds)
            self.observe_cache()
            m.last_stored_timestamp.labels("rollup").set(time.time())
            m.agent_batch_seconds.labels("rollups").observe(time.perf_counter() - t0)
            return []

        await self.committer.commit(events, attempt, self.send_dead_letters, ack, letter=event_letter)

    async def repair_rollups(self) -> int:
        """Re-mark every stored raw batch the rollup ledger does not list (marks lost with a
        broker, or a crash between the store and the marks): a full crash heals itself."""

        def scan() -> list[tuple[int, str, int, list[tuple[str, str, int]]]]:
            client = connect(self.settings.clickhouse_url)  # its own: the rollup agent uses the other
            try:
                return not_rolled_up(client, cluster=self.settings.clickhouse_cluster)
            finally:
                client.close()

        missing = await self.in_thread("rollup", scan)
        for node, source, inserted, changes in missing:
            await self.committer.retry(
                "stale_marks",
                self.mark_stale,
                stale_marks([(node, source, created, prop, kind) for prop, kind, created in changes], inserted),
            )
        if missing:
            log.warning(
                "rollup repair: %d stored raw batch(es) had no rollups recorded; marked stale again", len(missing)
            )
        self.metrics.rollup_repairs.inc(len(missing))
        return len(missing)

    # -- auxiliary (meter resets) ---------------------------------------------------------------

    async def handle_auxiliary(self, events: Sequence[EventT[Any]], ack: Callable[[], Any]) -> None:
        """Reset markers stored, moved or deleted. Order of commitment as for datums:
        1. parse (refusals kept aside)  2. store the changes  2b. mark the buckets around the
        old and new times stale (the rollup agent recomputes them with the resets)
        3. dead letters, awaited  4. ack."""
        t0 = time.perf_counter()
        self.metrics.messages_in.labels("auxiliary").inc(len(events))

        async def attempt(batch: Sequence[EventT[Any]]) -> list[DeadLetter]:
            changes: list[AuxChange] = []
            letters: list[DeadLetter] = []
            for e in batch:
                msg = e.message
                try:
                    changes.append(parse_change_bytes(bytes(msg.value or b"")))
                except AuxError as exc:
                    letters.append(
                        DeadLetter(
                            [exc.as_rejection()],
                            Origin(msg.topic, msg.partition, msg.offset),
                            payload=bytes(msg.value or b""),
                            stage="auxiliary",
                        )
                    )
            if changes:
                removed = [c.removed for c in changes if c.removed is not None]
                # what a delete or move takes away: the stored record's properties, read before the write
                gone = await self.in_thread("auxiliary", lambda: stored_properties(self.aux_client, removed))
                await self.in_thread("auxiliary", lambda: self._set_up(self._aux_sink).write(changes))
                marks: list[Change] = [
                    (k.node_id, k.source_id, k.created_ms, p, "a")
                    for k, props in zip(removed, gone, strict=True)
                    for p in sorted(props)
                ]
                for c in changes:
                    if c.record is not None:
                        k = c.record.key
                        marks += [(k.node_id, k.source_id, k.created_ms, p, "a") for p in sorted(c.record.properties)]
                if marks:
                    await self.committer.retry("stale_marks", self.mark_stale, stale_marks(marks))
            return letters

        await self.committer.commit(events, attempt, self.send_dead_letters, ack, letter=event_letter)
        self.metrics.agent_batch_seconds.labels("auxiliary").observe(time.perf_counter() - t0)

    # -- datums ---------------------------------------------------------------------------------

    def observe_cache(self) -> None:
        """The point cache's and the running rollups' figures into the metrics (their counts only
        grow)."""
        m = self.metrics
        cache = self.rollup_cache
        if cache is not None:
            m.rollup_cache_points.set(cache.points)
            m.rollup_cache_windows.inc(cache.served - self._cache_seen[0])
            m.rollup_cache_fills.inc(cache.filled - self._cache_seen[1])
            self._cache_seen = (cache.served, cache.filled)
        running = self.rollup_running
        if running is not None:
            seen = self._running_seen
            m.rollup_running_series.set(len(running))
            m.rollup_running_appends.inc(running.appended - seen[0])
            m.rollup_running_seeded.inc(running.seeded - seen[1])
            m.rollup_running_fallbacks.inc(running.fell_back - seen[2])
            m.rollup_running_one_at_a_time.inc(running.one_at_a_time - seen[3])
            self._running_seen = (running.appended, running.seeded, running.fell_back, running.one_at_a_time)

    def forget_points(self) -> None:
        """Empty the rollup agent's point cache: once the stale topic's partitions move, another
        worker may take marks of streams held here, and what it stores is not spliced in here."""
        if self.rollup_cache is not None:
            self.rollup_cache.clear()
        if self.rollup_running is not None:
            self.rollup_running.clear()

    def forget_streams(self, revoked: Iterable[Any]) -> set[StreamKey]:
        """Drop the per-stream state of the streams of revoked partitions (Faust TPs): their next
        batch loads it from the store again."""
        streams = self.stream_partitions.revoke((tp.topic, tp.partition) for tp in revoked)
        if streams:
            self._baselined -= streams
            rates = self.scoring.rates
            for key in [k for k in rates if (k[0], k[1]) in streams]:
                del rates[key]
            log.info(
                "partitions revoked: the rate state of %d stream(s) is loaded again on their next batch", len(streams)
            )
        return streams

    def baseline_loader(
        self, rates: Overlay, seen: set[tuple[int, str]]
    ) -> Callable[[dict[tuple[int, str], int]], None]:
        """First sight of a stream since start (or since its partition came back: `forget_streams`):
        its cumulative rates continue from the store (the broker may have been restarted and kept
        nothing; another worker may have stored the stream meanwhile). Writes go to this attempt's
        overlay and `seen`, kept only if the attempt succeeds."""

        def prepare(first_seen: dict[tuple[int, str], int]) -> None:
            if self.catalog is None:
                return
            first = {k: c for k, c in first_seen.items() if k not in self._baselined and k not in seen}
            if not first:
                return
            for (node, source), found in rate_baselines_many(self.sink.client, first).items():
                for datastream, created, value in found:
                    rates.setdefault((node, source, datastream), RateState(created, value))
                seen.add((node, source))

        return prepare

    async def write_datums(self, parts: Sequence[Part]) -> list[DeadLetter]:
        """Steps 1, 2 and 2b for some parts of a batch; returns their refusals (step 3's letters).

        Idempotent: the rate baselines and states it moves are kept only if it succeeds, so a
        retry (or the halves of a split) sees them as they were."""
        m = self.metrics
        taken_at = self.stream_partitions.revocations
        rates = Overlay(self.scoring.rates)
        seen: set[tuple[int, str]] = set()
        scoring = Scoring(plan=self.scoring.plan, rates=rates, _scorers=self.scoring._scorers)
        # 1. decode and check (a thread: the baseline lookup talks to ClickHouse)
        outcome = await asyncio.to_thread(
            process_parts, parts, int(time.time() * 1000), self.catalog, scoring, self.baseline_loader(rates, seen)
        )
        # 2. store first
        stamp = self.stamps.next()
        # the messages the rows come from: with the rows, a cluster insert's deduplication token
        origins = [(p.origin.topic, p.origin.partition, p.origin.offset) for p in parts]
        if len(outcome.latest):
            await self.store(outcome.latest, latest=True, origins=origins)
        if len(outcome.rows):
            await self.store(outcome.rows, stamp=stamp, origins=origins)
            # 2b. mark the rollup buckets of what was just stored stale (before the ack)
            with stage_named("stale_marks"):
                await self.committer.retry("stale_marks", self.mark_stale, stored_marks(outcome.rows, stamp))
        # this part is in: keep what it learned (but of streams whose partition was revoked meanwhile), count it
        lost = self.stream_partitions.learn(outcome.partitions, taken_at)
        learned = rates.new
        self.scoring.rates.update(
            learned if not lost else {k: v for k, v in learned.items() if (k[0], k[1]) not in lost}
        )
        self._baselined |= seen - lost
        m.datums_in.labels("datums").inc(outcome.datums)
        m.datums_accepted.labels("datums").inc(outcome.accepted)
        m.samples_expired.inc(outcome.samples_expired)
        m.datums_expired.inc(outcome.datums_expired)
        if len(outcome.rows):
            kinds = outcome.rows.column("kind").value_counts().to_pylist()
            for count in kinds:
                m.samples_accepted.labels(count["values"]).inc(count["counts"])
            observe_many(m.qrating_performance, outcome.rows.column("performance").drop_null().to_numpy())
            if outcome.newest_created_ms:
                m.created_to_stored_seconds.observe(max(0.0, time.time() - outcome.newest_created_ms / 1000))
        return outcome.letters

    async def handle(self, events: Sequence[EventT[Any]], ack: Callable[[], Any] | None = None) -> None:
        """The order of commitment of one batch of datum messages (module docstring)."""
        t0 = time.perf_counter()
        messages = [e.message for e in events]
        self.metrics.messages_in.labels("datums").inc(len(messages))

        async def no_ack() -> None:
            return None

        await self.committer.commit(
            [Part(msg) for msg in messages],
            self.write_datums,
            self.send_dead_letters,
            ack or no_ack,
            split=split_part,
            letter=internal_letter,
        )
        self.metrics.agent_batch_seconds.labels("datums").observe(time.perf_counter() - t0)

    async def store(
        self,
        rows: pa.Table | RawColumns,
        *,
        latest: bool = False,
        stamp: int | None = None,
        origins: Sequence[MessageAt] = (),
    ) -> None:
        """One insert, retried by the policy while the store is away or pushes back."""
        m = self.metrics
        label = "latest" if latest else "raw"

        def insert() -> None:
            target = self.latest_sink if latest else self.sink
            t0 = time.perf_counter()
            with stage_named("store"):
                target.write(rows, stamp, origins)
            m.sink_insert_seconds.labels(label).observe(time.perf_counter() - t0)

        await self.in_thread(label, insert)
        m.dependency_up.labels("clickhouse").set(1)
        m.sink_batch_rows.labels(label).observe(len(rows))
        m.last_stored_timestamp.labels(label).set(time.time())

    async def send_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Keep dead letters in the store, then produce them and wait until the broker has every
        one (before the ack): a refusal outlives a broker that keeps nothing, like a stored row."""
        # well under the broker's message limit: a letter that cannot be produced would stall the partition
        cap = max(MIN_DEAD_LETTER_BYTES, min(DEAD_LETTER_MAX_BYTES, self.settings.max_message_bytes // 2))
        encoded = [(letter, letter.letter_id, letter.to_json(max_bytes=cap)) for letter in letters]
        rows = [
            letter_row(lid, letter.at_ms, letter.stage, [r.rule for r in letter.reasons], letter.origin, body)
            for letter, lid, body in encoded
        ]
        await self.in_thread("dead_letters", lambda: self._set_up(self._letters).write(rows))
        futures = []
        for _letter, lid, body in encoded:
            futures.append(await self.deadletter_topic.send(key=lid.encode(), value=body))
        await asyncio.gather(*futures)
        for letter in letters:  # counted once they are kept (a retry sends them again)
            for reason in letter.reasons:
                self.metrics.dead_letters.labels(letter.stage, reason.rule).inc()

    async def handle_letters(self, events: Sequence[EventT[Any]], ack: Callable[[], Any]) -> None:
        """Letters read back from the dead-letter topic, kept in the store when a producer wrote
        them (`pipeline ingest`'s refused lines, samples and datums reach the topic only, and an
        embedded broker keeps nothing), or when they are not letters at all (kept as
        `letter.unreadable`). Order: store, ack; the producer counts a letter taken only then."""
        t0 = time.perf_counter()
        self.metrics.messages_in.labels("deadletters").inc(len(events))

        async def attempt(batch: Sequence[EventT[Any]]) -> list[DeadLetter]:
            now = int(time.time() * 1000)
            rows = [
                read_letter_row(bytes(m.value or b""), Origin(m.topic, m.partition, m.offset), now)
                for m in (e.message for e in batch)
            ]
            rows = [r for r in rows if kept_on_read(r)]  # the worker's own were kept before they were produced
            if rows:
                await self.in_thread("dead_letters", lambda: self._set_up(self._letters).write(rows))
            return []

        await self.committer.commit(events, attempt, self.send_dead_letters, ack, letter=event_letter)
        self.metrics.agent_batch_seconds.labels("deadletters").observe(time.perf_counter() - t0)

    # -- metadata -------------------------------------------------------------------------------

    async def refresh_catalog(self, force: bool = False) -> None:
        if self.metadata is None:
            return
        link = self.metadata
        # warm-up, the metadata agent and the timer all refresh: one at a time
        async with self._refresh_lock:
            catalog = await asyncio.to_thread(link.catalog, force)
            if catalog is not self.catalog:  # made again: the log moved (or forced)
                self.catalog = catalog
                log.info("catalog version %d: %d data-time stretch(es)", catalog.version, len(catalog.catalogs))

    async def wait_for_history_log(self) -> None:
        """Migrate the history log, waiting (and saying so) while PostgreSQL is away."""
        assert self.metadata is not None
        link = self.metadata
        waiting_since: float | None = None

        def migrate() -> None:
            try:
                link.migrate()
            except Exception as exc:
                # any failure to reach or migrate the log is waited out: no datum is validated
                # and no metadata event is applied without it
                raise Unavailable(f"history log unavailable: {exc}") from exc

        def on_retry(what: str, exc: BaseException, delay: float) -> None:
            nonlocal waiting_since
            if waiting_since is None:
                waiting_since = time.monotonic()
                log.warning(
                    "waiting for PostgreSQL (the history log): %s; no metadata event is applied and no "
                    "datum validated until it answers",
                    exc,
                )
            self.metrics.dependency_up.labels("postgres").set(0)

        waiter: Committer[Any, Any] = Committer(self.committer.policy, on_retry=on_retry)
        await waiter.retry("postgres", asyncio.to_thread, migrate)
        self.metrics.dependency_up.labels("postgres").set(1)
        if waiting_since is not None:
            log.warning("PostgreSQL is back after %.0fs: history log migrated", time.monotonic() - waiting_since)
        else:
            log.info("history log migrated")

    async def handle_metadata_batch(self, events: Sequence[EventT[Any]], ack: Callable[[], Any]) -> None:
        """The metadata agent takes one event at a time (each applied and acked in order)."""
        (event,) = events
        await self.handle_metadata(event, ack)

    async def handle_metadata(self, event: EventT[Any], ack: Callable[[], Any]) -> None:
        """Apply one metadata event to the history log, then ack it: never acked unapplied.
        Refusals are logged and dead-lettered; an unreachable log is waited for."""
        if self.metadata is None:
            log.error(
                "metadata event at offset %d not applied: no PostgreSQL DSN; it stays unacked", event.message.offset
            )
            await asyncio.Event().wait()  # hold the partition: never ack what was not applied
            return
        await self.metadata_ready.wait()
        t0 = time.perf_counter()
        msg = event.message
        self.metrics.messages_in.labels("metadata").inc()
        link = self.metadata

        async def attempt(batch: Sequence[EventT[Any]]) -> list[DeadLetter]:
            def apply() -> Any:
                try:
                    return link.apply(bytes(msg.value or b""))
                except Exception as exc:
                    import psycopg

                    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
                        raise Unavailable(f"history log unavailable: {exc}") from exc
                    raise

            with stage_named("metadata"):
                result = await self.in_thread("metadata", apply)
            self.metrics.dependency_up.labels("postgres").set(1)
            if result.status in ("refused", "invalid"):
                log.warning("metadata event %s refused: %s (%s)", result.event_id, result.reason, result.rule)
                return [
                    DeadLetter(
                        [Rejection(result.rule or "metadata.refused", result.reason or "")],
                        Origin(msg.topic, msg.partition, msg.offset),
                        payload=bytes(msg.value or b""),
                        stage="metadata",
                    )
                ]
            log.info("metadata event %s %s", result.event_id, result.status)
            try:
                await self.refresh_catalog()
            except Exception as exc:  # the timer tries again within a second
                log.warning("catalog refresh after %s failed: %s", result.event_id, exc)
            return []

        await self.committer.commit([event], attempt, self.send_dead_letters, ack, letter=event_letter)
        self._metadata_next = msg.offset + 1
        self.metrics.agent_batch_seconds.labels("metadata").observe(time.perf_counter() - t0)

    # -- the app --------------------------------------------------------------------------------

    async def guarded(self, agent: str, batch: Callable[[], Any]) -> None:
        """Run one batch's commit; should anything escape it (a defect of ours), retry the same
        batch rather than let Faust restart the agent and lose the events it holds."""
        delays = self.committer.policy.delays()
        while True:
            try:
                await batch()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                delay = next(delays)
                self.metrics.internal_errors.labels(agent).inc()
                log.exception("%s agent: unexpected error; the batch is retried in %.1fs", agent, delay)
                await asyncio.sleep(delay)

    def _register(self) -> None:
        app, s = self.app, self.settings
        # a batch closes at this many datums (4 flushes of the sink) or as many messages
        max_datums = s.batch_max_datums * 4

        def weight(event: EventT[Any]) -> int:
            msg = event.message
            return message_weight(msg.value, header(msg.headers, DATUMS_HEADER))

        def acker(stream: faust.StreamT[Any], events: Sequence[EventT[Any]]) -> Callable[[], Any]:
            # the head of each partition, for the contiguous-commit guard (pipeline/worker/faust_fixes.py)
            faust_fixes.note_taken(app.consumer, [e.message for e in events])

            async def ack() -> None:
                for event in events:
                    await stream.ack(event)

            return ack

        Handler = Callable[[Sequence[EventT[Any]], Callable[[], Any]], Awaitable[None]]

        def batch_of(
            handler: Handler, stream: faust.StreamT[Any], events: Sequence[EventT[Any]]
        ) -> Callable[[], Awaitable[None]]:
            # one batch's handling, as `guarded` runs (and may run again) it
            async def run() -> None:
                await handler(events, acker(stream, events))

            return run

        @app.agent(self.datum_topic, name="datums")
        async def datums(stream: faust.StreamT[Any]) -> None:
            limit = faust_fixes.WeightedLimit(stream, max_datums, max_datums, weight)
            async for events in take_events(stream, limit, s.batch_within_s):
                # validate with the catalog from the history log, never without it
                await self.catalog_ready.wait()
                await self.guarded("datums", batch_of(self.handle, stream, events))

        # receivers of Faust's signals: (sender, *args, signal=..., **kwargs)
        async def on_revoked(_app: Any, /, *args: Any, signal: Any = None, **_kw: Any) -> None:
            (revoked,) = args
            faust_fixes.forget_taken(app.consumer, revoked)
            self.positions.forget(revoked)
            self.forget_streams(revoked)
            self.forget_points()

        app.on_partitions_revoked.connect(on_revoked)

        async def on_assigned(_app: Any, /, *_args: Any, signal: Any = None, **_kw: Any) -> None:
            # A new assignment may follow a broker that lost its data (the embedded one restarted
            # under running workers): the stale marks it held are gone, so look again (after start-up,
            # which runs the same repair itself).
            self.forget_points()
            if self.catalog_ready.is_set():
                asyncio.ensure_future(self.guarded("rollups", self.repair_rollups))

        app.on_partitions_assigned.connect(on_assigned)

        # Faust's timer and task decorators are untyped: registered by a call, the functions keep their types
        async def discover_sources() -> None:
            await self.grow_subscription()

        app.timer(s.topic_scan_interval_s)(discover_sources)

        async def lag() -> None:
            # the positions come from the sensor's hooks; the end offsets from the consumer, now
            consumer = app.consumer
            self.positions.update_lag(consumer.assignment(), consumer.highwater)

        app.timer(5.0)(lag)

        async def give_back_memory() -> None:
            # freed batch buffers back to the system (pipeline/worker/memory.py)
            await asyncio.to_thread(memory.trim)

        app.timer(MALLOC_TRIM_S)(give_back_memory)

        async def start_watchdog() -> None:
            # started with the app, once its consumer exists
            watch_consumer(app)

        app.task(start_watchdog)

        @app.agent(self.stale_topic, name="rollups")
        async def rollups(stream: faust.StreamT[Any]) -> None:
            # At most `rollup_take_marks` stale marks a batch, weighed in marks (a bundle holds many:
            # a backlog of bundles must not make one batch); without a backlog a batch closes after
            # `rollup_within_s` with what has come.
            take = s.rollup_take_marks
            marks = faust_fixes.WeightedLimit(stream, take, take, lambda e: marks_in(e.message.value or b""))
            async for events in take_events(stream, marks, s.rollup_within_s):
                await self.catalog_ready.wait()  # time zones come from the catalog
                await self.guarded("rollups", batch_of(self.handle_marks, stream, events))

        @app.agent(self.aux_topic, name="auxiliary")
        async def auxiliary(stream: faust.StreamT[Any]) -> None:
            async for events in take_events(stream, 200, 0.5):
                await self.catalog_ready.wait()
                await self.guarded("auxiliary", batch_of(self.handle_auxiliary, stream, events))

        @app.agent(self.deadletter_topic, name="deadletters")
        async def deadletters(stream: faust.StreamT[Any]) -> None:
            # a letter may be 4 MiB (DEAD_LETTER_MAX_BYTES): a few dozen a batch bound the memory
            async for events in take_events(stream, 50, 0.5):
                await self.guarded("deadletters", batch_of(self.handle_letters, stream, events))

        @app.agent(self.metadata_topic, name="metadata")
        async def metadata(stream: faust.StreamT[Any]) -> None:
            async for events in take_events(stream, 1, 0.1):
                for event in events:
                    await self.guarded("metadata", batch_of(self.handle_metadata_batch, stream, [event]))

        async def catalog() -> None:
            if not self.metadata_ready.is_set():
                return
            try:
                await self.refresh_catalog()
            except Exception as exc:  # PostgreSQL away: keep the catalog we have
                log.warning("catalog refresh failed: %s", exc)

        app.timer(1.0)(catalog)

        async def warm_up() -> None:
            if s.metrics_port:
                start_http_server(s.metrics_port, addr=s.metrics_host, registry=self.registry)
                log.info("metrics on %s:%d/metrics", s.metrics_host, s.metrics_port)
            await self.in_thread("clickhouse", self.setup_stores)  # before any batch is handled
            self.metrics.dependency_up.labels("clickhouse").set(1)
            if self.metadata is not None:
                await self.wait_for_history_log()
                self.metadata_ready.set()
                # Metadata produced before this start applies before any datum is validated.
                await self.catch_up_metadata()
                await self.committer.retry("catalog", self.refresh_catalog, True)
                # Only now: a refresh by the metadata agent during catch-up may hold a catalog
                # from half-way through the events (a datamodel without its bindings).
                self.catalog_ready.set()
            else:
                log.warning("no PostgreSQL DSN: templates are not applied, every source is stored unvalidated")
                self.catalog_ready.set()
            await self.repair_rollups()

        app.task(warm_up)

    async def grow_subscription(self) -> None:
        pattern = self.topics.source_pattern
        try:
            existing = await asyncio.to_thread(self.admin.existing)
        except Exception as exc:  # broker hiccup: try again next tick
            log.warning("topic scan failed: %s", exc)
            return
        lost = [t for t in self.internal_topics if t not in existing]
        if lost:
            # A broker restarted without its data (the embedded one keeps nothing) lost them: the stale
            # topic's commits would retry UnknownTopicOrPartition until a rebalance, stale marks and dead
            # letters would wait for it. Produced to, the broker creates them with its own partitions.
            log.warning("topic(s) %s missing from the broker (restarted without its data?): creating them", lost)
            try:
                await asyncio.to_thread(self.admin.ensure, lost)
            except Exception as exc:
                log.warning("creating %s failed: %s; tried again next scan", lost, exc)
        new = sorted(n for n in existing if pattern.match(n) and n not in self.source_topic_names)
        if new:
            log.info("subscribing to %d new source topic(s): %s", len(new), ", ".join(new[:5]))
            faust_fixes.grow_subscription(self.app, [self.datum_topic], self.source_topic_names, new)
        else:
            faust_fixes.resubscribe_if_dropped(self.app, self.source_topic_names)
        self.metrics.source_topics.set(len(self.source_topic_names))

    async def catch_up_metadata(self, timeout: float = 60.0) -> None:
        """Wait until the metadata topic's events that existed at start are applied (by this
        worker or whichever owns the partition: the group's committed offset tells). One client
        reads the committed offset for the whole wait, closed at its end."""
        end = await self.in_thread("kafka", self._metadata_end)
        committed = CommittedOffset(
            {**client_config(self.settings), "group.id": self.settings.app_id}, self.topics.metadata, 0
        )
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                # applied here, else ask the group (a worker that does not own the partition)
                done = self._metadata_next
                if done < end:
                    done = max(done, await self.in_thread("kafka", committed.read))
                if done >= end:
                    return
                await asyncio.sleep(0.25)
        finally:
            await asyncio.to_thread(committed.close)
        log.warning(
            "metadata not caught up after %.0fs (at %d of %d); validating with what is applied",
            timeout,
            self._metadata_next,
            end,
        )

    def _metadata_end(self) -> int:
        return end_offsets(client_config(self.settings), self.topics.metadata, [0])[0]

    _metadata_next = 0  # the offset after the last metadata event this worker applied


# glibc malloc arenas of a worker, and how often its free memory is handed back (pipeline/worker/memory.py)
MALLOC_ARENAS = 2
MALLOC_TRIM_S = 30.0

# The exit status of a worker whose Kafka consumer crashed (EX_SOFTWARE): its supervisor restarts it.
EXIT_CONSUMER_CRASHED = 70


def watch_consumer(app: faust.App, interval_s: float = 2.0) -> threading.Thread:
    """Exit the process once the app's Kafka consumer has crashed: Faust leaves a crashed consumer
    crashed, and the worker then neither consumes nor exits (pipeline/worker/faust_fixes.py, 5.).
    A thread of its own, so that it also sees a crash that stopped the event loop's services.
    Exiting is safe at any point: what was not committed is delivered again after the restart."""

    def watch() -> None:
        seen = 0
        while True:
            time.sleep(interval_s)
            reason = faust_fixes.consumer_crash(app)
            # crashed at two checks in a row: a crash that mode's supervisor restarts clears itself
            seen = seen + 1 if reason is not None else 0
            if reason is not None and seen >= 2:
                log.critical(
                    "the Kafka consumer crashed (%r): exiting with %d for the supervisor to restart this"
                    " worker; what was not committed is delivered again",
                    reason,
                    EXIT_CONSUMER_CRASHED,
                )
                logging.shutdown()
                os._exit(EXIT_CONSUMER_CRASHED)

    thread = threading.Thread(target=watch, name="consumer-watchdog", daemon=True)
    thread.start()
    return thread


def run_worker(settings: Settings) -> None:
    """Run one worker until SIGINT/SIGTERM; Faust drains and commits on the way out."""
    memory.limit_arenas(MALLOC_ARENAS)  # before any thread starts
    memory.arrow_from_malloc()  # before the first batch: Arrow's buffers under the same two remedies
    worker = DatumWorker(settings)
    faust.Worker(worker.app, loglevel=settings.log_level, quiet=True).execute_from_commandline()
