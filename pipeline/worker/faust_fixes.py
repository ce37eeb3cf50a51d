"""Workarounds for faust-streaming, in one place (faust-streaming 0.15.3, pinned in pyproject).

Every use of Faust's (or mode's, or aiokafka's) private API in the pipeline is here, behind a
named function whose docstring says which bug or limitation it works around. What each relies on
is listed in `RELIES_ON` and checked against the installed Faust by `faust_api_problems`
(tests/unit/test_faust_fixes.py): an upgrade that removes or renames any of it fails that test,
naming the fix, instead of silently turning the workaround off.

1. Offsets commit only past contiguously acked events (faust-streaming #312, regressed as #606).
   Faust's `Consumer._new_offset` looks for a hole at the head of a partition's acked offsets only
   `if committed_offset:` — so on a partition with no commit yet (or committed 0) an event taken
   and never acked is committed past as soon as a later one is acked — and where it does look, it
   lets the first offset after the committed one be missing (`min(acked) - committed > 1`). Our
   agents ack in order and never drop a batch (pipeline/worker/commit.py), so this guard should never
   fire; it is the second line: a hole at the head holds the partition's commit back.

   Where no commit exists, the head is the first offset our agents took from the partition since
   it was assigned (`note_taken`).

2. Faust cannot subscribe by pattern (#62): the worker grows its subscription itself
   (`grow_subscription`): it puts the new topic names on every channel carrying source topics and
   flags the conductor. The conductor drops a flag raised while the group is rebalancing (its
   subscriber clears the event instead of deferring it), and a subscription change is itself a
   rebalance: a source topic found a moment after another was never consumed (375 of 3,000
   datums of the fault suite's baseline, nothing logged). So every scan also checks that the
   conductor's index holds every source topic, and flags again until it does. The conductor
   waits 45 s after a flag before it resubscribes, a class attribute with no setting
   (`fast_resubscribe`).

3. Faust's `take` closes a batch at a number of events only; one event may carry one datum (a
   gateway of a fleet) or a thousand (a bulk producer). `WeightedLimit` is a `max_` for
   `noack_take` that also closes the batch at a total weight (datums): a fleet's small messages
   then make batches of thousands of datums, not of a few hundred (issue 13: raw rows of the
   fleet benchmark 5.7k -> 18.5k datums/s). Faust tests `buffer_size() >= max_`; an int
   compared with this object hands the comparison to its `__le__`, called once per event added.

4. Faust reports committed offsets (`on_tp_commit`) and partition end offsets
   (`track_tp_end_offset`) to `app.monitor` only, not to the sensors of `app.sensors` (the
   SensorDelegate has neither hook): the position sensor (pipeline/worker/sensor.py) therefore
   is the app's monitor, a `faust.Monitor` subclass passed as `faust.App(monitor=...)`.
   Public API, but a Faust-internal convention, so it is checked here like the rest.

5. A commit that runs into a rebalance crashes the consumer thread (faust-streaming #94). Faust
   filters the offsets by its own view of the assignment, then awaits aiokafka's `commit` in the
   consumer thread; meanwhile a subscription change (a new source topic) resets aiokafka's
   assignment and `commit` raises `IllegalStateError('No partitions assigned')` (or "Partition …
   is not assigned"). Faust treats that like any unknown error: `crash()`. The crashed thread
   fetches nothing more, and the worker neither consumes nor exits (measured: 2 of 5 subscription
   growths at 1,000 source topics, docs/scale-out.md). `commit_racing_rebalance` replaces
   `AIOKafkaConsumerThread._commit`: such a commit is a lost race, not a failure — nothing is
   committed, Faust's next assignment seeks every partition to its committed offset, and what
   was not committed is delivered again (stored idempotently). Any other commit error still
   crashes the thread, and `consumer_crash` lets the worker's watchdog see a crashed consumer and
   exit, so that a supervisor (`pipeline up`, systemd, Kubernetes) restarts it.

6. Committed offsets asked partition by partition (aiokafka 0.14, pinned with Faust): after every
   assignment `AIOKafkaConsumer.seek_to_committed` awaits `committed(tp)` for one partition after
   another (a round trip each), and `Fetcher._update_fetch_positions` awaits each partition's
   `fetch_committed()` in turn, every one waking the commit-refresh routine, which scans every
   assigned partition for the ones waiting: one round trip and O(partitions) Python work per
   partition, O(partitions²) in all. With 5,000 source topics of 4 partitions one worker had
   stored nothing 10 minutes after its partitions were assigned, its consumer thread in that
   scan (docs/scale-out.md). `seek_to_committed_at_once` asks for every partition in one
   request; `update_fetch_positions_at_once` asks for every partition's committed point before
   awaiting any, so the routine fetches them in one request; it positions the partitions with a
   commit and marks the others for a reset by the strategy, as aiokafka would, and leaves the
   resets themselves to aiokafka's own method, which finds nothing more to ask.

7. A partition's log that starts again is dropped, silently (Faust 0.15.3). `Consumer._drain_messages`
   drops a message whose offset is below its partition's read offset (the last one handled), logged
   at Faust's dev level only; `Consumer.ack` ignores an offset below the partition's committed one.
   Offsets go back when the log is a new one: a broker restarted without its data (the embedded
   broker keeps nothing), a topic deleted and created again, an unclean leader election that
   truncated the log (the consumer's position is then out of range and aiokafka resets it to the
   earliest offset, under the same assignment). Every message of the new log below the old read
   offset would be dropped. `new_logs_kept` wraps Faust's `Consumer.getmany`: a message below its
   partition's read offset starts a new log — the partition's read offset, committed offset, acked
   offsets, gaps and head are forgotten, the old log's messages not yet acked are settled so that
   their late acks count for nothing, and the message is handled. Where the log did not start
   again (records of the same log fetched twice) that handles a message twice: the stores are
   idempotent. (This was the first suspect for the broker-killed drill's losses; with every fetched
   offset logged they turned out to be 8., and this guard never fired in 20 drill runs since.)

8. Work of one assignment counted in the next (Faust 0.15.3, aiokafka 0.14). Faust skips a message
   fetched under an earlier assignment by comparing generation ids, which are the broker's; a
   broker restarted without its data starts them again at 0, so the old log's messages still
   queued pass as current. Acks of messages taken before a revoke land in the next assignment's
   bookkeeping, and a commit computed before a rejoin is sent after it with the new member id.
   Any of these commits an offset of the old log to the new one: in the broker-killed drill one
   such commit (offset 6) landed between the rejoin and the seek to committed offsets, the worker
   read the new log from 6, and the resent datums at 0–5 were never stored (2 runs of 8, worker
   logs with every fetched offset). So: `count_generations_locally` makes the app's consumer
   generation a count of this process's assignments (Faust's own check then skips what an earlier
   assignment fetched); `forget_taken` settles, at a revoke, the messages still unacked of the
   revoked partitions (their late acks count for nothing; they are delivered again, stored
   idempotently); `commit_of_current_assignment` refuses to send a commit made for an assignment
   that has been replaced (a broker with generations that go up refuses it too, as
   IllegalGeneration).

9. A message the streams skipped is acked, and its ack committed past it (Faust 0.15.3). A stream
   skips a message fetched under an earlier assignment (8.) or one that arrives while a rebalance
   has suspended the flow — and acks it all the same, "otherwise the lag would increase"
   (`Stream._py_aiter`). The ack goes into the partition's bookkeeping like any other, and the
   commit timer, which runs on through a rebalance, commits past a message no agent handled; the
   next assignment starts after it. Seen in the broker-killed drill after 7. and 8.: a rebalance
   (the restarted broker's topics changed partition counts) came while new-log messages were
   flowing, and 225 resent datums were skipped and committed past (1 run of 12). Only a message
   the streams handed to an agent is marked `tracked` (the skips come before that), so
   `ack_of_handled_only` records the acks of tracked messages only and settles the others: a
   skipped message holds the commit until it is fetched again and handled.

10. A commit sent while the group has forgotten the member goes out as a standalone commit
   (aiokafka 0.14). When the coordinator answers a heartbeat with UnknownMemberId (a broker
   restarted without its data knows no member), aiokafka resets the member to generation -1 and
   rejoins; the assignment stays active until the rejoin ends, so 8. lets through a commit sent
   meanwhile. A commit of generation -1 is what a consumer outside any group sends, and the
   restarted broker takes it: offsets of the old log land on the new one, the rejoin seeks there,
   and the resent messages below them are never read. Seen once in CI (225 resent datums of
   /S1/INV1, the broker-killed drill, a clean rejoin and nothing logged); made to happen every
   time by holding the commit of the moment of the kill until the generation was reset (250 lost,
   worker logs with every commit sent: generation -1, offset 10, taken; the rejoin seeked to 10).
   `commit_of_current_assignment` also refuses a commit while the generation is -1: a member of a
   group never commits outside it. Not committed, it is delivered again after the rejoin.

11. A new assignment starts with the committed offsets of the last one (Faust 0.15.3).
   `Consumer._commit_offsets` writes the offsets it tried into `_committed_offset` whether or not
   they were committed, and after the await: a commit that lost the race with a rebalance (5.)
   writes them into the next assignment's bookkeeping, and `Consumer.perform_seek` updates only
   the partitions the broker has a commit for, so they stay (seen in every broker-killed drill:
   offsets 5, 9 and 11 of the old log held as committed for partitions whose new log has no
   commit). Faust then ignores the acks below them, and the guard (1.) takes them as the head.
   `seek_from_the_broker` sets every assigned partition's committed offset from the broker's
   answer, nothing where it has none.

12. A commit computed in one assignment can be sent in the next (Faust 0.15.3). Faust computes the
   offsets, then awaits the producer's flush (which waits out a broker that is away), then hands
   them to the consumer thread, where aiokafka takes its assignment of that moment: a rejoin that
   ends during the flush (the restarted broker must first get back the topics the producer waits
   for) makes the old log's offsets a commit of the new assignment, which 8. cannot tell. So
   `rebalance_epoch` counts the revokes and assignments of this process where aiokafka calls
   them (`revokes_counted`, `count_generations_locally`), `commit_tps_of_one_epoch` tags the
   offsets with the epoch they were computed in, `commit_with_its_epoch` hands it to the consumer
   thread, and `commit_racing_rebalance` refuses to send them in another epoch, checked with no
   await before aiokafka takes its assignment (a later rebalance then makes that inactive: 8.).
   Faust writes the refused offsets into `_committed_offset` all the same; the broker's answer at
   the last seek is put back.

13. A key's partition is hashed again at every call, in pure Python (aiokafka 0.14: `murmur2` of
   `DefaultPartitioner`, reached through Faust's `Producer.key_partition`). The worker puts each
   stream's stale marks on the partition the producer would give the stream's key (`bundle_marks`),
   and a fleet's raw batch names thousands of streams at every batch: the hashing was 5 % of a
   fleet worker's time (issue 13). `stale_partitioner` reads the topic's partitions from the
   producer's metadata once per batch of marks and gives each key the partition
   `DefaultPartitioner` would, from its hash kept by `KeyHashes`.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from time import monotonic
from typing import Any

log = logging.getLogger(__name__)

FIRST_TAKEN = "_pipeline_first_taken"
_applied = False
# the libraries' own methods that `apply` replaced, by (class, name)
_REPLACED: dict[tuple[Any, str], Any] = {}


def note_taken(consumer: Any, messages: Iterable[Any]) -> None:
    """Remember, per partition, the first offset an agent took (the head where no commit exists).

    Works around faust-streaming #312/#606 (1. above): Faust keeps no head for a partition without
    a commit. Kept in the consumer's own `__dict__`, next to the bookkeeping it completes."""
    firsts: dict[Any, int] = consumer.__dict__.setdefault(FIRST_TAKEN, {})
    for msg in messages:
        firsts.setdefault(msg.tp, msg.offset)


class WeightedLimit:
    """`max_` of `Stream.noack_take(max_, within)`: the batch closes at `max_events` events or once
    the weights of its events reach `max_weight`, whichever comes first (see 3. above)."""

    def __init__(self, stream: Any, max_events: int, max_weight: int, weight: Callable[[Any], int]) -> None:
        self.stream = stream
        self.max_events = max(1, max_events)
        self.max_weight = max(1, max_weight)
        self.weight = weight
        self.total = 0

    def __le__(self, buffered: object) -> bool:
        # `buffered >= self`, asked by the take buffer right after it added the stream's current event
        if not isinstance(buffered, int):
            return NotImplemented
        if buffered <= 1:
            self.total = 0  # a new batch
        event = self.stream.current_event
        self.total += max(1, self.weight(event)) if event is not None else 1
        return buffered >= self.max_events or self.total >= self.max_weight

    def __int__(self) -> int:
        return self.max_events


def forget_taken(consumer: Any, tps: Iterable[Any]) -> None:
    """Partitions revoked: their head is learned again when they come back (faust-streaming
    #312/#606, 1. above), and their messages still unacked are settled (8.): acked after the
    revoke they would count in the next assignment's commits."""
    firsts: dict[Any, int] = consumer.__dict__.get(FIRST_TAKEN, {})
    revoked = set(tps)
    for tp in revoked:
        firsts.pop(tp, None)
    _settle(consumer, revoked)


def _settle(consumer: Any, tps: set[Any]) -> None:
    """Mark the unacked messages of `tps` acked and stop waiting for them: Faust's `ack` then
    records nothing for them (7., 8.). The agents still store them; they are delivered again."""
    from faust.types.tuples import ack_lock

    with ack_lock:  # Faust's ack changes the set under it
        for message in [m for m in list(consumer._unacked_messages) if m.tp in tps]:
            _settle_message(consumer, message)


def _settle_message(consumer: Any, message: Any) -> None:
    from faust.types.tuples import ack_lock

    with ack_lock:  # reentrant
        message.acked = True
        consumer._unacked_messages.discard(message)


def contiguous_new_offset(self: Any, tp: Any) -> int | None:
    """Faust's `Consumer._new_offset` with the head of the partition checked in every case
    (faust-streaming #312, regressed as #606; 1. above). Reads and updates the consumer's private
    bookkeeping (`_acked`, `_acked_index`, `_gap`, `_committed_offset`) exactly as Faust's own
    version does."""
    from faust.utils.functional import consecutive_numbers

    acked = self._acked[tp]
    if not acked:
        return None
    max_offset = max(acked)
    gap_for_tp = self._gap[tp]
    if gap_for_tp:
        # offsets the broker never delivered (transaction markers, compaction): as Faust does
        candidates = sorted(gap_for_tp.overlap(0, max_offset), key=lambda x: x.begin)
        if candidates:
            stuff: list[int] = []
            for entry in candidates:
                stuff.extend(range(entry.begin, entry.end))
            acked.extend(stuff)
            gap_for_tp.chop(0, max(stuff[-1], max_offset + 1))
    acked.sort()
    committed = self._committed_offset[tp]
    head = committed if committed is not None else self.__dict__.get(FIRST_TAKEN, {}).get(tp)
    if head is not None and acked[0] > head:
        return None  # the event at `head` is not acked yet: commit nothing past it
    batch = next(consecutive_numbers(acked))
    acked[: len(batch)] = []
    self._acked_index[tp].difference_update(batch)
    return int(batch[-1]) + 1


def start_new_log(consumer: Any, tp: Any, offset: int) -> None:
    """The log of `tp` started again at `offset` (7. above): forget what Faust keeps of the old one
    (read and committed offsets, acked offsets, gaps) and our head, and settle the old log's
    messages still unacked, so that a late ack of one lands nowhere in the new log's bookkeeping."""
    from faust.types.tuples import ack_lock

    with ack_lock:
        consumer._read_offset[tp] = None
        consumer._committed_offset[tp] = None
        consumer._acked.pop(tp, None)
        consumer._acked_index.pop(tp, None)
        consumer._gap.pop(tp, None)
        consumer.__dict__.setdefault(FIRST_TAKEN, {})[tp] = offset
        _settle(consumer, {tp})


async def new_logs_kept(consumer: Any, messages: AsyncIterator[tuple[Any, Any]]) -> AsyncIterator[tuple[Any, Any]]:
    """`messages` (Faust's getmany) with every message below its partition's read offset taken as
    the start of a new log (7. above) instead of being dropped by Faust's drain loop. Checked as
    each message is handed on: the loop sets the read offset once it has handled the one before."""
    read_offset = consumer._read_offset
    async for tp, message in messages:
        last = read_offset.get(tp)
        if last is not None and message.offset < last:
            log.warning(
                "%s[%s]: offset %d after %d: the log started again (a broker restarted without its data, the "
                "topic created again, an unclean leader election); handling it as a new log, not dropping it",
                tp.topic,
                tp.partition,
                message.offset,
                last,
            )
            start_new_log(consumer, tp, message.offset)
        yield tp, message


def getmany_keeping_new_logs(self: Any, timeout: float) -> AsyncIterator[tuple[Any, Any]]:
    """Faust's `Consumer.getmany` whose messages of a log that started again reach the agents (7.)."""
    return new_logs_kept(self, _faust_own_getmany()(self, timeout))


GENERATIONS = "_pipeline_assignments"
EPOCH = "_pipeline_rebalances"  # revokes and assignments of this process, counted where aiokafka calls them
SEEKED = "_pipeline_seeked"  # (epoch, committed offsets the broker answered at the last seek)
# the epoch a commit's offsets were computed in, from Faust's `_commit_tps` to the consumer thread
_computed_in: ContextVar[int | None] = ContextVar("pipeline_commit_epoch", default=None)


def rebalance_epoch(app: Any) -> int:
    """How many revokes and assignments this process has seen (12. above)."""
    return int(app.__dict__.get(EPOCH, 0))


def _next_epoch(app: Any) -> None:
    app.__dict__[EPOCH] = rebalance_epoch(app) + 1


def revokes_counted(self: Any, revoked: Iterable[Any]) -> Any:
    """Faust's `ConsumerRebalanceListener.on_partitions_revoked`, counting the revoke in the epoch
    first (12. above). Called by aiokafka before the rejoin, so before the next assignment."""
    _next_epoch(self._thread.app)
    return _faust_own_on_revoked()(self, revoked)


async def count_generations_locally(self: Any, assigned: Iterable[Any]) -> None:
    """Faust's `ConsumerRebalanceListener.on_partitions_assigned` with the app's consumer generation
    one more than at the last assignment of this process, not the broker's generation id, which a
    restarted broker starts again at 0 (8. above): Faust's streams skip every message fetched
    under an earlier assignment by that number."""
    from faust.transport.consumer import ensure_TPset

    app = self._thread.app
    _next_epoch(app)  # 12.
    generation = int(app.__dict__.get(GENERATIONS, 0)) + 1
    app.__dict__[GENERATIONS] = generation
    app.consumer_generation_id = generation
    await self._thread.on_partitions_assigned(ensure_TPset(assigned), generation)


async def commit_of_current_assignment(self: Any, assignment: Any, offsets: Any) -> Any:
    """aiokafka's `GroupCoordinator._do_commit_offsets`, refusing a commit whose assignment has
    been replaced since it was made (8. above), or whose member the group has forgotten (10.): it
    may carry offsets of a log that is gone. Raised as aiokafka's own "No partitions assigned",
    which the commit (5.) takes as a lost race."""
    from aiokafka.errors import IllegalStateError
    from aiokafka.protocol.commit import OffsetCommitRequest

    if not assignment.active:
        raise IllegalStateError("No partitions assigned: the commit was made for an assignment since replaced")
    if self.generation == OffsetCommitRequest.DEFAULT_GENERATION_ID:
        # the coordinator no longer knows this member (aiokafka reset it and rejoins): a commit now
        # would go out as a standalone one, which a broker that lost its data takes
        raise IllegalStateError("No partitions assigned: the group forgot this member, which is rejoining")
    return await _do_commit_offsets()(self, assignment, offsets)


async def seek_from_the_broker(self: Any) -> None:
    """Faust's `Consumer.perform_seek`, with the committed offset of every partition the broker was
    asked about taken from its answer, None where it has none, not left from an earlier
    assignment (11. above). Faust's own handling of offset 0 (no head) is kept."""
    from faust.transport.consumer import ensure_TP

    committed = await self.seek_to_committed()
    self._read_offset.update(
        {ensure_TP(tp): offset if offset is not None and offset >= 0 else None for tp, offset in committed.items()}
    )
    epoch = rebalance_epoch(self.app)
    seeked = {ensure_TP(tp): offset if offset else None for tp, offset in committed.items()}
    self._committed_offset.update(seeked)
    self.__dict__[SEEKED] = (epoch, seeked)  # what a commit overtaken by a rebalance puts back (12.)


def ack_of_handled_only(self: Any, message: Any) -> bool:
    """Faust's `Consumer.ack` for a message the streams handed to an agent (`tracked`); a message
    they skipped is settled instead, its ack recorded nowhere (9. above)."""
    if not message.tracked:
        _settle_message(self, message)
        return False
    done: bool = _faust_own_ack()(self, message)
    return done


async def commit_tps_of_one_epoch(self: Any, tps: Iterable[Any], start_new_transaction: bool) -> bool:
    """Faust's `Consumer._commit_tps`, its offsets tagged with the epoch they were computed in, so
    that the consumer thread refuses to send them after a rebalance (12. above). Faust writes the
    offsets it tried into `_committed_offset` however the commit ended; when a rebalance came
    meanwhile, the broker's answer at the last seek is put back (commits are one at a time, so
    nothing else was committed since)."""
    epoch = rebalance_epoch(self.app)
    token = _computed_in.set(epoch)  # Faust computes the offsets right away, before any await
    try:
        done: bool = await _faust_own_commit_tps()(self, tps, start_new_transaction)
    finally:
        _computed_in.reset(token)
    now = rebalance_epoch(self.app)
    if now != epoch:
        seeked_in, seeked = self.__dict__.get(SEEKED, (None, {}))
        if seeked_in == now:
            self._committed_offset.update(seeked)
        # else the next seek, still to come, sets every assigned partition (11.)
        return False
    return done


async def commit_with_its_epoch(self: Any, offsets: Mapping[Any, int]) -> bool:
    """Faust's `AIOKafkaConsumerThread.commit` (called in the app's loop) handing the consumer
    thread the epoch the offsets were computed in (12. above)."""
    done: bool = await self.call_thread(self._commit, offsets, _computed_in.get())
    return done


def is_rebalance_race(exc: BaseException) -> bool:
    """aiokafka's answer to a commit whose partitions a rebalance took away meanwhile (5. above)."""
    from aiokafka.errors import IllegalStateError

    text = str(exc)
    return isinstance(exc, IllegalStateError) and ("No partitions assigned" in text or "is not assigned" in text)


async def commit_racing_rebalance(self: Any, offsets: Mapping[Any, int], epoch: int | None = None) -> bool:
    """Faust's `AIOKafkaConsumerThread._commit` where a commit that a rebalance overtook returns
    False ("not committed") instead of crashing the consumer thread (faust-streaming #94; 5. above),
    and so does one whose offsets were computed before a rebalance since (`epoch`, 12.).
    Otherwise as Faust's: the same filter, bookkeeping and handling of every other error."""
    from aiokafka.errors import CommitFailedError
    from aiokafka.structs import OffsetAndMetadata
    from faust.transport.drivers.aiokafka import ensure_aiokafka_TP

    if epoch is not None and epoch != rebalance_epoch(self.app):
        # checked in the consumer thread, where rebalances run, with no await before aiokafka takes
        # its current assignment: a later rebalance makes that inactive, which 8. refuses
        log.warning("commit computed before a rebalance: not sent, delivered again after it")
        return False
    consumer = self._ensure_consumer()
    now = monotonic()
    assigned = self.assignment()
    commitable = {tp: offset for tp, offset in offsets.items() if tp in assigned}
    try:
        aiokafka_offsets = {ensure_aiokafka_TP(tp): OffsetAndMetadata(offset, "") for tp, offset in commitable.items()}
        self.tp_last_committed_at.update({tp: now for tp in commitable})
        await consumer.commit(aiokafka_offsets)
    except CommitFailedError as exc:
        if "already rebalanced" in str(exc):
            return False
        self.log.exception("Committing raised exception: %r", exc)
        await self.crash(exc)
        return False
    except Exception as exc:
        if is_rebalance_race(exc):
            log.warning("commit overtaken by a rebalance (%s): not committed, delivered again after it", exc)
            return False
        self.log.exception("Got exception: %r\nCurrent assignment: %r", exc, self.assignment())
        await self.crash(exc)
        return False
    return True


async def seek_to_committed_at_once(self: Any, *partitions: Any) -> dict[Any, int | None]:
    """aiokafka's `AIOKafkaConsumer.seek_to_committed` with one OffsetFetch for every partition
    instead of one per partition (6. above); the same checks, answers and seeks."""
    from aiokafka.errors import IllegalOperation, IllegalStateError
    from aiokafka.structs import TopicPartition

    if not all(isinstance(p, TopicPartition) for p in partitions):
        raise TypeError("partitions must be TopicPartition instances")
    if not partitions:
        partitions = tuple(self._subscription.assigned_partitions())
        assert partitions, "No partitions are currently assigned"
    else:
        not_assigned = set(partitions) - self._subscription.assigned_partitions()
        if not_assigned:
            raise IllegalStateError(f"Partitions {not_assigned} are not assigned")
    if self._group_id is None:
        raise IllegalOperation("Requires group_id")
    commit_map = await self._coordinator.fetch_committed_offsets(list(partitions))
    committed_offsets: dict[Any, int | None] = {}
    for tp in partitions:
        offset = commit_map[tp].offset if tp in commit_map else None
        committed_offsets[tp] = None if offset == -1 else offset
        if offset and offset > 0:
            self._fetcher.seek_to(tp, offset)
    return committed_offsets


async def update_fetch_positions_at_once(self: Any, assignment: Any, node_id: int, tps: Any) -> bool:
    """aiokafka's `Fetcher._update_fetch_positions` with the committed point of every partition
    asked for before any is awaited, so that the commit-refresh routine fetches them in one
    request and scans the assignment once (6. above). A partition with a commit is positioned
    here, one without is set to await its reset, as aiokafka would; the resets themselves (one
    request per broker) are aiokafka's method's, which finds nothing more to ask."""
    import asyncio

    from aiokafka.consumer.fetcher import UNKNOWN_OFFSET, OffsetResetStrategy

    waiting = []
    for tp in tps:
        state = assignment.state_value(tp)
        if not (state.has_valid_position or state.awaiting_reset):
            waiting.append((state, state.fetch_committed()))
    if waiting:
        try:
            await asyncio.gather(*(fut for _, fut in waiting))
        except asyncio.CancelledError:
            return False
        for state, fut in waiting:
            committed = fut.result()
            if state.has_valid_position or state.awaiting_reset:
                continue  # a seek came while waiting
            if committed.offset != UNKNOWN_OFFSET:
                state.reset_to(committed.offset)
            elif self._default_reset_strategy != OffsetResetStrategy.NONE:
                state.await_reset(self._default_reset_strategy)  # no commit: reset by the strategy
            # else: aiokafka's method asks again and reports the partition without an offset
    result: bool = await _update_fetch_positions()(self, assignment, node_id, tps)
    return result


def consumer_crash(app: Any) -> BaseException | None:
    """Why the app's consumer (or its aiokafka thread) crashed; None while it runs. A crashed
    consumer fetches nothing and Faust does not restart it: the worker should exit (5. above)."""
    consumer = app.consumer
    for service in (consumer, getattr(consumer, "_thread", None)):
        if service is not None and service.crashed:
            reason: BaseException | None = service.crash_reason
            return reason if reason is not None else RuntimeError(f"{type(service).__name__} crashed")
    return None


def apply() -> None:
    """Install, for every consumer of the process (idempotent): the contiguous-commit guard
    (faust-streaming #312/#606, 1. above) in place of Faust's `Consumer._new_offset`; the commit
    that survives a rebalance (#94, 5.) in place of `AIOKafkaConsumerThread._commit`; committed
    offsets asked at once (6.) in aiokafka; a log that starts again kept (7.) around Faust's
    `Consumer.getmany`; generations counted locally and commits bound to their assignment (8.);
    acks of skipped messages recorded nowhere (9.); no commit while the group forgot the member
    (10.); committed offsets of a new assignment from the broker only (11.); a commit bound to the
    epoch its offsets were computed in (12.)."""
    global _applied
    if _applied:
        return
    from aiokafka import AIOKafkaConsumer
    from aiokafka.consumer.fetcher import Fetcher
    from aiokafka.consumer.group_coordinator import GroupCoordinator
    from faust.transport.consumer import Consumer
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, ConsumerRebalanceListener

    _replace(Consumer, "_new_offset", contiguous_new_offset)
    _replace(AIOKafkaConsumerThread, "_commit", commit_racing_rebalance)
    _replace(AIOKafkaConsumer, "seek_to_committed", seek_to_committed_at_once)
    _replace(Fetcher, "_update_fetch_positions", update_fetch_positions_at_once)
    _replace(Consumer, "getmany", getmany_keeping_new_logs)
    _replace(ConsumerRebalanceListener, "on_partitions_assigned", count_generations_locally)
    _replace(GroupCoordinator, "_do_commit_offsets", commit_of_current_assignment)
    _replace(Consumer, "ack", ack_of_handled_only)
    _replace(Consumer, "perform_seek", seek_from_the_broker)
    _replace(ConsumerRebalanceListener, "on_partitions_revoked", revokes_counted)
    _replace(Consumer, "_commit_tps", commit_tps_of_one_epoch)
    _replace(AIOKafkaConsumerThread, "commit", commit_with_its_epoch)
    _applied = True


def fast_resubscribe(app: Any, seconds: float = 1.0) -> None:
    """Seconds, not Faust's 45, between a subscription change and the resubscribe: a new source
    should flow without a long wait. Faust limitation: the conductor's
    `_resubscribe_sleep_lock_seconds` has no public setting (2. above)."""
    app.topics._resubscribe_sleep_lock_seconds = seconds


def grow_subscription(app: Any, channels: Iterable[Any], known: list[str], new: list[str]) -> None:
    """Add `new` topic names to every channel that carries the `known` ones, and flag the change.

    Works around faust-streaming #62 (no subscription by pattern; 2. above): Faust has no call for
    "this channel's topic list changed", so the channels' `topics` are replaced and the conductor's
    private `_flag_changes` is called."""
    old = set(known)
    known.extend(new)
    names = tuple(known)
    # The agent iterates a clone of the topic that the conductor holds; update every channel
    # carrying our topics. Faust has no public call for "this channel's topic list changed".
    for channel in [*channels, *app.topics]:
        if old & set(getattr(channel, "topics", ()) or ()):
            channel.topics = names
    app.topics._flag_changes()


def unsubscribed(app: Any, names: Iterable[str]) -> list[str]:
    """Source topics the conductor has not (yet) put in its subscription, read from its private
    `_topic_name_index` (faust-streaming #62 and the dropped flag; 2. above)."""
    index = getattr(app.topics, "_topic_name_index", None)
    if index is None:
        return []
    return [n for n in names if n not in index]


def resubscribe_if_dropped(app: Any, names: Iterable[str]) -> list[str]:
    """Flag the conductor again when a change was dropped: Faust's subscriber clears a flag raised
    while the group rebalances instead of deferring it (2. above); returns the missing."""
    missing = unsubscribed(app, names)
    if missing and not app.rebalancing:
        log.warning(
            "%d source topic(s) not in the subscription yet (%s): flagging the change again",
            len(missing),
            ", ".join(missing[:3]),
        )
        app.topics._flag_changes()
    return missing


class KeyHashes:
    """The murmur2 hash of each key, as aiokafka's DefaultPartitioner takes it (13. above): a
    stream's key is hashed once, not at every batch of marks. Forgets them all past `limit` keys."""

    def __init__(self, limit: int = 1 << 20) -> None:
        self.limit = limit
        self._hashes: dict[bytes, int] = {}

    def partition(self, key: bytes, partitions: Sequence[int]) -> int:
        """`DefaultPartitioner()(key, partitions, ...)` for a key that is not None."""
        h = self._hashes.get(key)
        if h is None:
            from aiokafka.partitioner import murmur2

            if len(self._hashes) >= self.limit:
                self._hashes.clear()
            h = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return partitions[h % len(partitions)]


def stale_partitioner(app: Any, topic: str, hashes: KeyHashes) -> Callable[[bytes], int | None]:
    """`app.producer.key_partition(topic, key).partition` for the keys of one batch (13. above):
    the topic's partitions read once from the producer's metadata. Every key gets None while the
    producer has no metadata of the topic (its first send loads it)."""
    try:
        known = app.producer._ensure_producer()._metadata.partitions_for_topic(topic)
    except Exception:  # no producer yet (not started): as without metadata
        known = None
    if not known:
        return lambda _key: None
    partitions = list(known)  # in the order AIOKafkaProducer._partition hands them to the partitioner
    return lambda key: hashes.partition(key, partitions)


# -- what the fixes rely on ---------------------------------------------------------------------


@dataclass(frozen=True)
class Reliance:
    """One thing of Faust's that a fix relies on. `check(app)` is true while it is there, as the fix
    expects it; `app` is a Faust app that was never started (no broker needed)."""

    fix: str
    what: str
    check: Callable[[Any], bool]


def _params(fn: Any) -> list[str]:
    return list(inspect.signature(fn).parameters)


def _source(fn: Any) -> str:
    return inspect.getsource(getattr(fn, "fun", fn))  # mode's ServiceTask keeps the function as `fun`


def _consumer_class() -> Any:
    from faust.transport.consumer import Consumer

    return Consumer


def _conductor_class() -> Any:
    from faust.transport.conductor import Conductor

    return Conductor


def _stream_class() -> Any:
    from faust.streams import Stream

    return Stream


def _monitor_class() -> Any:
    from faust.sensors.monitor import Monitor

    return Monitor


def _replace(cls: Any, name: str, ours: Any) -> None:
    """Put `ours` in place of `cls.name`, keeping the library's own for `_own`."""
    _REPLACED[(cls, name)] = cls.__dict__[name]
    setattr(cls, name, ours)


def _own(cls: Any, name: str) -> Any:
    """The library's own `cls.name`: the one `apply` saved when it replaced it, else the class's."""
    return _REPLACED.get((cls, name), cls.__dict__.get(name))


def _faust_own_new_offset() -> Any:
    return _own(_consumer_class(), "_new_offset")


def _faust_own_ack() -> Any:
    return _own(_consumer_class(), "ack")


def _before(first: str, then: str, text: str) -> bool:
    """`first` is in `text` and comes before any `then`."""
    return first in text and (then not in text or text.index(first) < text.index(then))


def _aiokafka_commit_body() -> str:
    from aiokafka import AIOKafkaConsumer

    source = _source(AIOKafkaConsumer.commit)
    return source[source.index('"""', source.index('"""') + 3) :]  # after the docstring (it shows awaits)


def _faust_own_on_revoked() -> Any:
    from faust.transport.drivers.aiokafka import ConsumerRebalanceListener

    return _own(ConsumerRebalanceListener, "on_partitions_revoked")


def _faust_own_commit_tps() -> Any:
    return _own(_consumer_class(), "_commit_tps")


def _faust_own_thread_commit() -> Any:
    return _own(_consumer_thread_class(), "commit")


def _faust_own_perform_seek() -> Any:
    return _own(_consumer_class(), "perform_seek")


def _generation_reset_to_default() -> bool:
    from aiokafka.consumer.group_coordinator import GroupCoordinator
    from aiokafka.protocol.commit import OffsetCommitRequest

    return OffsetCommitRequest.DEFAULT_GENERATION_ID == -1 and (
        "self.generation = OffsetCommitRequest.DEFAULT_GENERATION_ID" in _source(GroupCoordinator.reset_generation)
    )


def _faust_own_getmany() -> Any:
    return _own(_consumer_class(), "getmany")


def _faust_own_on_assigned() -> Any:
    from faust.transport.drivers.aiokafka import ConsumerRebalanceListener

    return _own(ConsumerRebalanceListener, "on_partitions_assigned")


def _do_commit_offsets() -> Any:
    from aiokafka.consumer.group_coordinator import GroupCoordinator

    return _own(GroupCoordinator, "_do_commit_offsets")


def _consumer_thread_class() -> Any:
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    return AIOKafkaConsumerThread


def _faust_own_commit() -> Any:
    return _own(_consumer_thread_class(), "_commit")


def _consecutive_numbers_exists(_app: Any) -> bool:
    from faust.utils.functional import consecutive_numbers

    return callable(consecutive_numbers)


def _ensure_tpset() -> Any:
    from faust.transport.consumer import ensure_TPset

    return ensure_TPset


def _assignment_class() -> Any:
    from aiokafka.consumer.subscription_state import Assignment

    return Assignment


def _ack_lock_exists() -> bool:
    from faust.types import tuples

    return hasattr(tuples, "ack_lock")


def _topic_list_is_plain(app: Any) -> bool:
    topic = app.topic("faust-fixes-probe", value_serializer="raw")
    topic.topics = ("faust-fixes-probe", "faust-fixes-probe-2")
    return tuple(topic.topics) == ("faust-fixes-probe", "faust-fixes-probe-2")


_CONTIGUOUS = "apply/contiguous_new_offset/note_taken (faust-streaming #312, #606)"
_RESUBSCRIBE = "fast_resubscribe (no setting for the conductor's 45 s)"
_GROW = "grow_subscription/resubscribe_if_dropped (faust-streaming #62)"
_WEIGHT = "WeightedLimit (take closes at a count of events only)"
_RACE = "commit_racing_rebalance/consumer_crash (faust-streaming #94)"
_MONITOR = "pipeline.worker.sensor.PositionMonitor (commits and end offsets go to app.monitor only)"
_NEW_LOG = "new_logs_kept/start_new_log (a log that starts again is dropped)"
_ASSIGNMENT = "count_generations_locally/forget_taken/commit_of_current_assignment (work of one assignment in the next)"
_SKIPPED = "ack_of_handled_only (a skipped message is acked)"
_FORGOTTEN = "commit_of_current_assignment (a commit of a forgotten member goes out standalone)"
_SEEKED = "seek_from_the_broker (a new assignment keeps the last one's committed offsets)"
_EPOCH = "revokes_counted/commit_tps_of_one_epoch/commit_with_its_epoch (a commit sent in the next assignment)"
_AT_ONCE = "seek_to_committed_at_once/update_fetch_positions_at_once (committed offsets one partition at a time)"
_PARTITION = "stale_partitioner/KeyHashes (a key hashed in pure Python at every call)"


def _seek_to_committed() -> Any:
    from aiokafka import AIOKafkaConsumer

    return _own(AIOKafkaConsumer, "seek_to_committed")


def _update_fetch_positions() -> Any:
    from aiokafka.consumer.fetcher import Fetcher

    return _own(Fetcher, "_update_fetch_positions")


def _partition_state_has(*names: str) -> bool:
    from aiokafka.consumer.subscription_state import TopicPartitionState

    return all(hasattr(TopicPartitionState, n) for n in names)


def _default_partitioner_is_murmur2() -> bool:
    from aiokafka.partitioner import DefaultPartitioner

    text = _source(DefaultPartitioner.__call__)
    return (
        all(part in text for part in ("idx = murmur2(key)", "idx &= 0x7FFFFFFF", "idx %= len(all_partitions)"))
        and "return all_partitions[idx]" in text
    )


def _producer_partition_source() -> str:
    from aiokafka.producer.producer import AIOKafkaProducer

    return _source(AIOKafkaProducer._partition)


def _faust_key_partition_source() -> str:
    from faust.transport.drivers.aiokafka import Producer

    return _source(Producer.key_partition)


RELIES_ON: tuple[Reliance, ...] = (
    Reliance(
        _PARTITION,
        "aiokafka's DefaultPartitioner: murmur2 of the key, & 0x7FFFFFFF, modulo the partitions it indexes",
        lambda _app: _default_partitioner_is_murmur2(),
    ),
    Reliance(
        _PARTITION,
        "AIOKafkaProducer._partition handing list(self._metadata.partitions_for_topic(topic)) to its partitioner",
        lambda _app: (
            "all_partitions = list(self._metadata.partitions_for_topic(topic))" in _producer_partition_source()
            and "self._partitioner(serialized_key, all_partitions" in _producer_partition_source()
        ),
    ),
    Reliance(
        _PARTITION,
        "Faust's Producer.key_partition through _ensure_producer()._partition; the app's partitioner the default",
        lambda app: (
            "self._ensure_producer()" in _faust_key_partition_source()
            and "producer._partition(" in _faust_key_partition_source()
            and app.conf.producer_partitioner is None
        ),
    ),
    Reliance(
        _CONTIGUOUS,
        "faust.transport.consumer.Consumer._new_offset(self, tp), the method replaced",
        lambda _app: _params(_faust_own_new_offset()) == ["self", "tp"],
    ),
    Reliance(
        _CONTIGUOUS,
        "Consumer._filter_committable_offsets calling self._new_offset(tp)",
        lambda _app: "self._new_offset(tp)" in _source(_consumer_class()._filter_committable_offsets),
    ),
    Reliance(
        _CONTIGUOUS,
        "the consumer's _acked, _acked_index, _gap and _committed_offset, per-partition mappings",
        lambda app: all(
            isinstance(getattr(app.consumer, name), Mapping)
            for name in ("_acked", "_acked_index", "_gap", "_committed_offset")
        ),
    ),
    Reliance(
        _CONTIGUOUS,
        "a consumer with a __dict__ (the heads note_taken keeps)",
        lambda app: isinstance(vars(app.consumer), dict),
    ),
    Reliance(_CONTIGUOUS, "faust.utils.functional.consecutive_numbers", _consecutive_numbers_exists),
    Reliance(
        _RESUBSCRIBE,
        "Conductor._resubscribe_sleep_lock_seconds, the seconds its subscriber sleeps",
        lambda _app: (
            isinstance(getattr(_conductor_class(), "_resubscribe_sleep_lock_seconds", None), int | float)
            and "self._resubscribe_sleep_lock_seconds" in _source(_conductor_class()._subscriber)
        ),
    ),
    Reliance(
        _GROW, "Conductor._flag_changes(self)", lambda _app: _params(_conductor_class()._flag_changes) == ["self"]
    ),
    Reliance(
        _GROW,
        "Conductor._topic_name_index, a mapping of the subscribed topic names",
        lambda app: isinstance(app.topics._topic_name_index, Mapping),
    ),
    Reliance(
        _GROW,
        "iterating the conductor gives its channels; it indexes them by their `topics`",
        lambda app: (
            isinstance(list(app.topics), list) and "channel.topics" in _source(_conductor_class()._update_indices)
        ),
    ),
    Reliance(_GROW, "a topic's `topics`, a plain attribute", _topic_list_is_plain),
    Reliance(_GROW, "App.rebalancing", lambda app: isinstance(app.rebalancing, bool)),
    Reliance(
        _WEIGHT,
        "Stream.noack_take(self, max_, within)",
        lambda _app: _params(_stream_class().noack_take)[:3] == ["self", "max_", "within"],
    ),
    Reliance(
        _WEIGHT,
        "noack_take testing `buffer_size() >= max_` once per event added",
        lambda _app: "buffer_size() >= max_" in _source(_stream_class().noack_take),
    ),
    Reliance(_WEIGHT, "Stream.current_event", lambda _app: hasattr(_stream_class(), "current_event")),
    Reliance(
        _RACE,
        "AIOKafkaConsumerThread._commit(self, offsets), the method replaced, filtering by"
        " self.assignment() and awaiting consumer.commit() with tp_last_committed_at kept",
        lambda _app: (
            _params(_faust_own_commit()) == ["self", "offsets"]
            and all(
                part in _source(_faust_own_commit())
                for part in ("self.assignment()", "await consumer.commit(", "tp_last_committed_at", "self.crash(")
            )
        ),
    ),
    Reliance(
        _RACE,
        "the app's consumer and its `_thread`: mode Services with `crashed` and `crash_reason`",
        lambda app: all(
            hasattr(svc, "crashed") and hasattr(svc, "crash_reason")
            for svc in (app.consumer, getattr(app.consumer, "_thread", None))
        ),
    ),
    Reliance(_MONITOR, "faust.App(monitor=...)", lambda _app: "monitor" in _params(type(_app).__init__)),
    Reliance(
        _MONITOR,
        "Monitor.on_message_in/on_message_out(self, tp, offset, message)",
        lambda _app: all(
            _params(getattr(_monitor_class(), m)) == ["self", "tp", "offset", "message"]
            for m in ("on_message_in", "on_message_out")
        ),
    ),
    Reliance(
        _MONITOR,
        "Monitor.on_tp_commit(self, tp_offsets), called by Consumer._commit_offsets",
        lambda _app: (
            _params(_monitor_class().on_tp_commit) == ["self", "tp_offsets"]
            and "monitor.on_tp_commit(" in _source(_consumer_class()._commit_offsets)
        ),
    ),
    Reliance(
        _MONITOR,
        "Monitor.track_tp_end_offset(self, tp, offset), called by Consumer.getmany",
        lambda _app: (
            _params(_monitor_class().track_tp_end_offset) == ["self", "tp", "offset"]
            and "monitor.track_tp_end_offset(" in _source(_faust_own_getmany())
        ),
    ),
    Reliance(
        _MONITOR,
        "Stream.ack reporting the acked message to the sensors (on_message_out)",
        lambda _app: "_on_message_out(" in _source(_stream_class().ack),
    ),
    Reliance(
        _AT_ONCE,
        "aiokafka's AIOKafkaConsumer.seek_to_committed(self, *partitions) awaiting committed(tp) per partition,"
        " then _fetcher.seek_to; _coordinator.fetch_committed_offsets(partitions)",
        lambda _app: (
            _params(_seek_to_committed()) == ["self", "partitions"]
            and all(
                part in _source(_seek_to_committed())
                for part in ("await self.committed(tp)", "self._fetcher.seek_to(tp, offset)", "assigned_partitions()")
            )
            and "self._coordinator.fetch_committed_offsets("
            in _source(_seek_to_committed().__globals__["AIOKafkaConsumer"].committed)
        ),
    ),
    Reliance(
        _AT_ONCE,
        "aiokafka's Fetcher._update_fetch_positions(self, assignment, node_id, tps) awaiting each partition's"
        " fetch_committed() in turn, skipping partitions with a valid position or awaiting a reset",
        lambda _app: (
            _params(_update_fetch_positions()) == ["self", "assignment", "node_id", "tps"]
            and all(
                part in _source(_update_fetch_positions())
                for part in (
                    "await tp_state.fetch_committed()",
                    "tp_state.has_valid_position or tp_state.awaiting_reset",
                    "tp_state.reset_to(committed.offset)",
                )
            )
            and _partition_state_has("fetch_committed", "reset_to", "has_valid_position", "awaiting_reset")
        ),
    ),
    Reliance(
        _NEW_LOG,
        "Consumer._drain_messages taking self.getmany once, reading self._read_offset per message and dropping"
        " offsets below it; Consumer.getmany(self, timeout)",
        lambda _app: (
            _params(_faust_own_getmany()) == ["self", "timeout"]
            and all(
                part in _source(_consumer_class()._drain_messages)
                for part in ("getmany = self.getmany", "self._read_offset.__getitem__", "offset >= r_offset")
            )
        ),
    ),
    Reliance(
        _NEW_LOG,
        "the consumer's _read_offset, _unacked_messages; Consumer.ack skipping a message whose `acked` is set;"
        " faust.types.tuples.ack_lock",
        lambda app: (
            isinstance(app.consumer._read_offset, Mapping)
            and hasattr(app.consumer._unacked_messages, "discard")
            and "if not message.acked" in _source(_faust_own_ack())
            and _ack_lock_exists()
        ),
    ),
    Reliance(
        _ASSIGNMENT,
        "Faust's ConsumerRebalanceListener.on_partitions_assigned(self, assigned) setting app.consumer_generation_id"
        " and awaiting self._thread.on_partitions_assigned(tps, generation); Stream skipping a message whose"
        " generation_id is not the app's; faust.transport.consumer.ensure_TPset",
        lambda _app: (
            _params(_faust_own_on_assigned()) == ["self", "assigned"]
            and all(
                part in _source(_faust_own_on_assigned())
                for part in ("app.consumer_generation_id = generation", "self._thread.on_partitions_assigned(")
            )
            and "message.generation_id != self.app.consumer_generation_id" in _source(_stream_class()._py_aiter)
            and callable(_ensure_tpset())
        ),
    ),
    Reliance(
        _ASSIGNMENT,
        "aiokafka's GroupCoordinator._do_commit_offsets(self, assignment, offsets), called by commit_offsets;"
        " Assignment.active",
        lambda _app: (
            _params(_do_commit_offsets()) == ["self", "assignment", "offsets"]
            and "self._do_commit_offsets(assignment, offsets)"
            in _source(_do_commit_offsets().__globals__["GroupCoordinator"].commit_offsets)
            and isinstance(_assignment_class().active, property)
        ),
    ),
    Reliance(
        _FORGOTTEN,
        "aiokafka's GroupCoordinator.reset_generation setting generation to OffsetCommitRequest.DEFAULT_GENERATION_ID"
        " (-1), and _do_commit_offsets sending self.generation",
        lambda _app: _generation_reset_to_default() and "self.generation," in _source(_do_commit_offsets()),
    ),
    Reliance(
        _SEEKED,
        "Faust's Consumer.perform_seek(self) awaiting self.seek_to_committed() and updating _committed_offset and"
        " _read_offset from it; Consumer._commit_offsets writing the offsets it tried into _committed_offset",
        lambda _app: (
            _params(_faust_own_perform_seek()) == ["self"]
            and all(
                part in _source(_faust_own_perform_seek())
                for part in ("await self.seek_to_committed()", "self._committed_offset.update(", "read_offset")
            )
            and "self._committed_offset.update(committable_offsets)" in _source(_consumer_class()._commit_offsets)
        ),
    ),
    Reliance(
        _EPOCH,
        "Faust's ConsumerRebalanceListener.on_partitions_revoked(self, revoked); Consumer._commit_tps(self, tps,"
        " start_new_transaction) computing its offsets before any await; AIOKafkaConsumerThread.commit(self,"
        " offsets) calling self.call_thread(self._commit, offsets); aiokafka's AIOKafkaConsumer.commit taking"
        " its subscription's assignment before any await",
        lambda _app: (
            _params(_faust_own_on_revoked()) == ["self", "revoked"]
            and _params(_faust_own_commit_tps()) == ["self", "tps", "start_new_transaction"]
            and _before("self._filter_committable_offsets(tps)", "await", _source(_faust_own_commit_tps()))
            and _params(_faust_own_thread_commit()) == ["self", "offsets"]
            and "self.call_thread(self._commit, offsets)" in _source(_faust_own_thread_commit())
            and _before("assignment = subscription.assignment", "await", _aiokafka_commit_body())
        ),
    ),
    Reliance(
        _SKIPPED,
        "Faust's Consumer.ack(self, message); Stream._py_aiter skipping (old generation, flow suspended) before it"
        " marks a message tracked, and acking what it skipped; a message's `tracked`",
        lambda _app: (
            _params(_faust_own_ack()) == ["self", "message"]
            and all(
                part in _source(_stream_class()._py_aiter)
                for part in ("message.tracked = True", "value is skipped_value", "event.ack()")
            )
            and _source(_stream_class()._py_aiter).index("message.generation_id != self.app.consumer_generation_id")
            < _source(_stream_class()._py_aiter).index("message.tracked = True")
        ),
    ),
)


def faust_api_problems(app: Any) -> list[str]:
    """What the fixes rely on (`RELIES_ON`) and the installed faust-streaming lacks or changed: one
    line per missing piece, naming the fix. Empty for the version the fixes were written against.
    `app`: a Faust app that was never started."""
    import faust

    problems: list[str] = []
    for reliance in RELIES_ON:
        try:
            ok, why = bool(reliance.check(app)), "not there, or changed"
        except Exception as exc:  # an attribute gone, a signature that cannot be read: all the same
            ok, why = False, f"{type(exc).__name__}: {exc}"
        if not ok:
            problems.append(
                f"{reliance.fix}: relies on {reliance.what}; faust-streaming {faust.__version__}: {why}. "
                "See pipeline/worker/faust_fixes.py before upgrading Faust."
            )
    return problems
