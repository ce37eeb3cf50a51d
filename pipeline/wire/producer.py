"""Gateway side: publish datums to their per-source topics (confluent-kafka).

Idempotent (no duplicates from producer retries), batching (many datums per message and
librdkafka's linger), compressed. Each (node, source) stream stays ordered on one partition: the
one librdkafka's partitioner gives the stream's key (`key_partition`). One message carries the
datums of the streams a send has for one partition (`bundles`): a fleet's send names thousands of
streams of a datum or two each, and a message per stream cost the workers more than the datums'
own work (issue 13).
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]  # not re-exported

from pipeline.settings import Settings
from pipeline.wire.codec import (
    DEAD_LETTER_MAX_BYTES,
    MIN_DEAD_LETTER_BYTES,
    DeadLetter,
    batch_headers,
    encode_batch,
    group_streams,
)
from pipeline.wire.kafka_config import client_config
from pipeline.wire.topics import Topics, stream_key
from processors.auxiliary import AuxChange
from processors.datum import Datum

log = logging.getLogger(__name__)


class DeliveryError(RuntimeError):
    pass


Identity = tuple[int, str, int]  # (node, source, created ms): what the datum contract identifies


@dataclass
class Confirmation:
    """What the pipeline has taken of what this producer sent.

    A datum is *confirmed* once the workers' consumer group has committed past the message that
    carried it: the worker commits only after the datum is stored (or dead-lettered with its
    reason), so a confirmed datum survives the loss of the broker. `unconfirmed` is what the
    producer must treat as not taken (resend it, or report it)."""

    confirmed_datums: int = 0
    unconfirmed_datums: int = 0
    confirmed: set[Identity] = field(default_factory=set)  # filled when the producer tracks identities
    unconfirmed: set[Identity] = field(default_factory=set)
    reason: str | None = None
    # auxiliary changes (Reset markers stored, moved, deleted), confirmed the same way: the
    # workers commit past one only once it is stored
    confirmed_changes: int = 0
    unconfirmed_changes: int = 0
    # dead letters of what the producer refused itself (`pipeline ingest`): the workers keep them
    # in the store before they commit past them
    confirmed_letters: int = 0
    unconfirmed_letters: int = 0

    @property
    def complete(self) -> bool:
        return self.unconfirmed_datums == 0 and self.unconfirmed_changes == 0 and self.unconfirmed_letters == 0


@dataclass
class _Sent:
    """One delivered message: where it landed and what it carried."""

    offset: int
    datums: int
    identities: tuple[Identity, ...] = ()
    changes: int = 0  # auxiliary changes
    letters: int = 0  # dead letters


def producer_config(settings: Settings) -> dict[str, Any]:
    return {
        **client_config(settings),
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": settings.producer_compression,
        "linger.ms": settings.producer_linger_ms,
        "batch.size": 1_000_000,
        "message.max.bytes": settings.max_message_bytes,
        "queue.buffering.max.kbytes": 256 * 1024,
    }


# A bundle to produce: topic, partition (None: keyed, the partitioner picks), key (a stream's, or
# None for a bundle of several streams), its datums.
Bundle = tuple[str, int | None, bytes | None, list[Datum]]
Stream = tuple[int, str]


def key_partition(key: bytes, partitions: int) -> int:
    """The partition librdkafka's default partitioner (consistent_random) gives a non-empty key:
    its CRC-32 modulo the partition count. A bundle goes where each of its streams' keyed messages
    would (`send_encoded`, a producer of an earlier version): a stream never spans two partitions."""
    return zlib.crc32(key) % partitions


def bundles(
    groups: Mapping[Stream, Sequence[Datum]],
    topic_of: Mapping[Stream, str],
    partitions: Mapping[str, int],
    max_datums: int,
) -> list[Bundle]:
    """The messages of a send: per (topic, partition), its streams' datums one stream after another
    (each stream's in its order), cut into messages of at most `max_datums`. The streams of a topic
    whose partition count is not known yet (None or missing: just created) go keyed, a stream a
    message, as the partitioner places them."""
    out: list[Bundle] = []
    held: dict[tuple[str, int], list[tuple[bytes, Sequence[Datum]]]] = {}
    for stream, items in groups.items():
        topic, key = topic_of[stream], stream_key(*stream)
        n = partitions.get(topic)
        if not n:
            out += [(topic, None, key, list(items[k : k + max_datums])) for k in range(0, len(items), max_datums)]
            continue
        held.setdefault((topic, key_partition(key, n)), []).append((key, items))

    def bundle(topic: str, partition: int, keys: set[bytes], chunk: list[Datum]) -> Bundle:
        # a message of one stream keeps that stream's key
        return (topic, partition, next(iter(keys)) if len(keys) == 1 else None, chunk)

    for (topic, partition), streams in held.items():
        chunk: list[Datum] = []
        keys: set[bytes] = set()
        for key, items in streams:
            start = 0
            while start < len(items):
                take = items[start : start + max_datums - len(chunk)]
                chunk += take
                keys.add(key)
                start += len(take)
                if len(chunk) >= max_datums:
                    out.append(bundle(topic, partition, keys, chunk))
                    chunk, keys = [], set()
        if chunk:
            out.append(bundle(topic, partition, keys, chunk))
    return out


# How long the partition counts of a listing are used before topics are listed again: a topic
# given more partitions (scaling out) moves its streams, as librdkafka's metadata refresh would.
PARTITIONS_REFRESH_S = 60.0
# How soon a topic the last listing had no count for (in error, or not there) is listed again: its
# streams go keyed meanwhile, and a send does not cost an admin round trip each.
PARTITIONS_MISSING_S = 2.0


class TopicAdmin:
    """Creates topics on first use; remembers which exist, as the broker last listed them: a broker
    restarted without its data (the embedded one keeps nothing) has lost them, and the next
    `ensure` after a listing creates them again."""

    def __init__(self, settings: Settings) -> None:
        self._admin = AdminClient(client_config(settings))
        self._partitions = settings.topic_partitions
        self._topics = Topics.of_settings(settings)
        self._known: set[str] = set()
        self._counts: dict[str, int] = {}  # partitions of each topic, as last listed
        self._listed_at = -PARTITIONS_REFRESH_S

    def existing(self) -> set[str]:
        meta = self._admin.list_topics(timeout=10)
        self._known = set(meta.topics)
        self._counts = {name: len(t.partitions) for name, t in meta.topics.items() if t.error is None and t.partitions}
        self._listed_at = time.monotonic()
        return set(meta.topics)

    def partition_counts(self, names: Iterable[str]) -> dict[str, int]:
        """The partition count of each of the topics the broker lists (listed again once the last
        listing is older than PARTITIONS_REFRESH_S, or PARTITIONS_MISSING_S when it does not have
        one of them; a topic `ensure` just made is listed at once)."""
        wanted = set(names)
        # from a listing, never from what `ensure` asked for: the topic may have been made by
        # another producer or auto-created with the broker's default, and the count must be the
        # one librdkafka places keys by
        age = time.monotonic() - self._listed_at
        if age >= PARTITIONS_REFRESH_S or (age >= PARTITIONS_MISSING_S and not wanted <= self._counts.keys()):
            self.existing()
        return {n: self._counts[n] for n in wanted if n in self._counts}

    def ensure(self, names: Iterable[str], partitions: int | None = None) -> None:
        missing = [n for n in set(names) if n not in self._known]
        if not missing:
            return
        listed = self.existing()  # one listing for all of them, not one per missing name
        missing = [n for n in missing if n not in listed]
        if not missing:
            return
        futures = self._admin.create_topics(
            [
                NewTopic(
                    n, num_partitions=partitions or self._topics.partitions(n, self._partitions), replication_factor=-1
                )
                for n in missing
            ],
            operation_timeout=10,
        )
        for name, fut in futures.items():
            try:
                fut.result()
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
            self._known.add(name)
        self._listed_at = -PARTITIONS_REFRESH_S  # the new topics' counts: from the next listing


class DatumProducer:
    """Sends datums; `confirm` tells which the pipeline has stored (see Confirmation).

    `track=True` keeps the identity of every datum of every delivered message (for tests and fault
    drills: the exact set acknowledged); otherwise only counts are kept per message.
    `confirming=False` is for producers that never ask (`confirm`): delivery is all they are told,
    and nothing is kept per delivered message, which a long-running producer (the simulator, HTTP
    ingest) would otherwise pile up for ever."""

    def __init__(
        self, settings: Settings, topics: Topics | None = None, *, track: bool = False, confirming: bool = True
    ) -> None:
        self.settings = settings
        self.topics = topics or Topics.of_settings(settings)
        self.admin = TopicAdmin(settings)
        self._producer = Producer(producer_config(settings))
        self._failures: list[str] = []
        self.messages_sent = 0
        self.datums_sent = 0
        self.changes_sent = 0  # auxiliary
        self.letters_sent = 0
        self.track = track
        self.confirming = confirming
        # delivered datum messages per (topic, partition), in offset order, not yet confirmed
        self._pending: dict[tuple[str, int], list[_Sent]] = {}
        self._confirmed = Confirmation()
        self._failed_datums = 0
        self._failed_identities: set[Identity] = set()
        self._failed_changes = 0
        self._failed_letters = 0
        self._offsets_reader: Any = None
        self._last_check = 0.0

    def _on_delivery(self, err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            self._failures.append(str(err))

    def _on_message_delivered(
        self,
        datums: int,
        identities: tuple[Identity, ...],
        err: KafkaError | None,
        msg: Any,
        changes: int = 0,
        letters: int = 0,
    ) -> None:
        if err is not None:
            self._failures.append(str(err))
            self._fail(_Sent(-1, datums, identities, changes, letters))
            return
        if not self.confirming:
            return
        tp, offset = (msg.topic(), msg.partition()), msg.offset()
        sent = self._pending.get(tp)
        if sent and offset <= sent[-1].offset:
            # offsets went back: the broker lost the partition (an embedded broker restarted). What
            # it held unconfirmed is gone, and its offsets must not be confirmed by the new log's.
            for m in sent:
                self._fail(m)
            self._failures.append(f"{tp[0]}[{tp[1]}] restarted at offset {offset}: {len(sent)} message(s) lost")
            sent.clear()
        self._pending.setdefault((msg.topic(), msg.partition()), []).append(
            _Sent(msg.offset(), datums, identities, changes, letters)
        )

    def _fail(self, m: _Sent) -> None:
        """A message the broker did not take, or lost: what it carried is not confirmed."""
        self._failed_datums += m.datums
        self._failed_identities.update(m.identities)
        self._failed_changes += m.changes
        self._failed_letters += m.letters

    def _on_change_delivered(self, err: KafkaError | None, msg: Any) -> None:
        self._on_message_delivered(0, (), err, msg, changes=1)

    def _on_letter_delivered(self, err: KafkaError | None, msg: Any) -> None:
        self._on_message_delivered(0, (), err, msg, letters=1)

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Sequence[tuple[str, bytes]],
        on_delivery: Any = None,
        partition: int | None = None,
    ) -> None:
        wire_headers: list[tuple[str, str | bytes | None]] = [*headers]
        while True:
            try:
                self._producer.produce(
                    topic,
                    value=value,
                    key=key,
                    headers=wire_headers,
                    on_delivery=on_delivery or self._on_delivery,
                    # -1: librdkafka's "unassigned", its partitioner picks one by the key
                    partition=-1 if partition is None else partition,
                )
                break
            except BufferError:
                # local queue full: let librdkafka deliver some, then go on (backpressure)
                self._producer.poll(0.1)
        self._producer.poll(0)
        self.messages_sent += 1

    def send(self, datums: Iterable[Datum]) -> int:
        """Queue datums for delivery, one batch envelope per partition's chunk of them (`bundles`).
        Returns datums queued."""
        groups = group_streams(datums)
        topic_of = {stream: self.topics.source(stream[1]) for stream in groups}
        names = set(topic_of.values())
        self.admin.ensure(names)
        counts = self.admin.partition_counts(names)
        n = 0
        for topic, partition, key, chunk in bundles(groups, topic_of, counts, self.settings.producer_batch_datums):
            ids = tuple((d.node_id, d.source_id, d.created_ms) for d in chunk) if self.track else ()
            self._produce(
                topic,
                key,
                encode_batch(chunk),
                batch_headers(len(chunk)),
                partial(self._on_message_delivered, len(chunk), ids),
                partition=partition,
            )
            n += len(chunk)
        self.datums_sent += n
        return n

    def send_raw(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Sequence[tuple[str, bytes]] = ()
    ) -> None:
        self.admin.ensure([topic])
        self._produce(topic, key, value, list(headers))

    def send_auxiliary(self, change: AuxChange) -> None:
        """A Reset marker stored, moved or deleted, keyed by its stream like its datums; confirmed
        like a datum (`Confirmation.confirmed_changes`)."""
        node, source = change.stream
        self.admin.ensure([self.topics.auxiliary])
        self._produce(self.topics.auxiliary, stream_key(node, source), change.to_json(), [], self._on_change_delivered)
        self.changes_sent += 1

    def send_dead_letter(self, letter: DeadLetter) -> None:
        """A refusal of the producer's own, keyed by its id; confirmed once a worker has kept it in
        the store (`Confirmation.confirmed_letters`)."""
        # well under the broker's message limit, like the worker's
        cap = max(MIN_DEAD_LETTER_BYTES, min(DEAD_LETTER_MAX_BYTES, self.settings.max_message_bytes // 2))
        self.admin.ensure([self.topics.deadletter])
        self._produce(
            self.topics.deadletter,
            letter.letter_id.encode(),
            letter.to_json(max_bytes=cap),
            [("stage", letter.stage.encode())],
            self._on_letter_delivered,
        )
        self.letters_sent += 1

    def send_encoded(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        datums: int,
        identities: Sequence[Identity] = (),
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """An already encoded datum message (replays, fault drills), confirmed like `send`'s."""
        self.admin.ensure([topic])
        self._produce(
            topic,
            key,
            value,
            list(headers) or batch_headers(datums),
            partial(self._on_message_delivered, datums, tuple(identities) if self.track else ()),
        )
        self.datums_sent += datums

    def delivered_identities(self) -> set[Identity]:
        """Identities the broker acknowledged (track=True): confirmed or still pending."""
        out = set(self._confirmed.confirmed)
        for sent in self._pending.values():
            for m in sent:
                out.update(m.identities)
        return out

    def check_confirmations(self, min_interval_s: float = 1.0) -> Confirmation:
        """Move delivered messages the workers have committed past into the confirmed set (cheap
        enough to call while sending: at most one offset request per `min_interval_s`). A broker
        that loses its data loses the commits too, so what was confirmed before stays confirmed."""
        self._producer.poll(0)
        now = time.monotonic()
        if self._pending and now - self._last_check >= min_interval_s:
            self._last_check = now
            committed = self._committed(list(self._pending))
            for tp, sent in list(self._pending.items()):
                upto = committed.get(tp, -1)
                keep = [m for m in sent if m.offset >= upto]
                for m in sent:
                    if m.offset < upto:
                        self._confirmed.confirmed_datums += m.datums
                        self._confirmed.confirmed.update(m.identities)
                        self._confirmed.confirmed_changes += m.changes
                        self._confirmed.confirmed_letters += m.letters
                if keep:
                    self._pending[tp] = keep
                else:
                    del self._pending[tp]
        return self._confirmed

    def _committed(self, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        from confluent_kafka import Consumer, TopicPartition

        try:
            if self._offsets_reader is None:
                # the workers' group id; never subscribes, so it never joins (or disturbs) the group
                self._offsets_reader = Consumer(
                    {**client_config(self.settings), "group.id": self.settings.app_id, "enable.auto.commit": False}
                )
            got = self._offsets_reader.committed([TopicPartition(t, p) for t, p in tps], timeout=10)
        except KafkaException as exc:
            log.warning("reading the pipeline's committed offsets failed: %s", exc)
            return {}
        return {(tp.topic, tp.partition): int(tp.offset) for tp in got if tp.error is None and tp.offset >= 0}

    def confirm(self, timeout: float, progress: Any = None) -> Confirmation:
        """Flush, then wait up to `timeout` s until the pipeline has stored (or dead-lettered) every
        datum sent. Returns what was confirmed and what was not (with the reason)."""
        if not self.confirming:
            raise RuntimeError("this producer keeps no record to confirm from (DatumProducer(confirming=False))")
        deadline = time.monotonic() + timeout
        try:
            self.flush(max(1.0, timeout))
        except DeliveryError as exc:
            self._confirmed.reason = str(exc)
        while self._pending and time.monotonic() < deadline:
            self.check_confirmations(0.5)
            if progress is not None:
                progress(self._confirmed.confirmed_datums)
            if self._pending:
                time.sleep(0.25)
        out = Confirmation(
            self._confirmed.confirmed_datums,
            self._failed_datums,
            set(self._confirmed.confirmed),
            set(self._failed_identities),
            self._confirmed.reason,
            self._confirmed.confirmed_changes,
            self._failed_changes,
            self._confirmed.confirmed_letters,
            self._failed_letters,
        )
        for sent in self._pending.values():
            for m in sent:
                out.unconfirmed_datums += m.datums
                out.unconfirmed.update(m.identities)
                out.unconfirmed_changes += m.changes
                out.unconfirmed_letters += m.letters
        if self._pending and out.reason is None:
            others = [
                f"{n} {what}"
                for n, what in (
                    (out.unconfirmed_changes, "auxiliary change(s)"),
                    (out.unconfirmed_letters, "dead letter(s)"),
                )
                if n
            ]
            more = "".join(f" and {o}" for o in others)
            out.reason = (
                f"the pipeline did not commit {out.unconfirmed_datums} datum(s){more} within {timeout:.0f}s "
                "(is a worker running? was the broker restarted?)"
            )
        return out

    def close(self) -> None:
        if self._offsets_reader is not None:
            self._offsets_reader.close()
            self._offsets_reader = None

    def flush(self, timeout: float = 60.0) -> None:
        """Wait for every queued message; raise if any could not be delivered."""
        remaining = self._producer.flush(timeout)
        if remaining:
            raise DeliveryError(f"{remaining} messages still undelivered after {timeout:.0f}s")
        if self._failures:
            first, count = self._failures[0], len(self._failures)
            self._failures.clear()
            raise DeliveryError(f"{count} messages failed delivery, first: {first}")


def end_offsets(
    client: Mapping[str, Any] | str, topic: str, partitions: Sequence[int], idle_s: float = 0.5
) -> dict[int, int]:
    """The offset after the last record of each partition, read, not asked for.

    The broker's high watermark should say this, but Tansu 0.6 (the embedded broker) reports
    the first offset of the last record batch + 1 (measured: 3 single records then a batch of 5
    gave 4, not 8). So: start at the reported watermark minus one and read on until the
    partition is quiet for `idle_s`; on Apache Kafka this reads one record per partition."""
    from confluent_kafka import Consumer, TopicPartition

    base = {"bootstrap.servers": client} if isinstance(client, str) else dict(client)  # client_config(settings)
    consumer = Consumer(
        {**base, "group.id": "pipeline-end-offsets", "enable.auto.commit": False, "enable.partition.eof": True}
    )
    ends: dict[int, int] = {}
    try:
        starts = []
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            ends[p] = int(high)
            if high > low:
                starts.append(TopicPartition(topic, p, max(int(low), int(high) - 1)))
        if not starts:
            return ends
        consumer.assign(starts)
        open_parts = {tp.partition for tp in starts}
        while open_parts:
            msg = consumer.poll(idle_s)
            if msg is None:
                break
            error, partition, offset = msg.error(), msg.partition(), msg.offset()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    open_parts.discard(partition)
                continue
            assert partition is not None and offset is not None  # a message, not an event
            ends[partition] = max(ends[partition], offset + 1)
        return ends
    finally:
        consumer.close()
