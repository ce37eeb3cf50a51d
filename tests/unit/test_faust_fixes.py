"""The Faust workarounds (pipeline/worker/faust_fixes.py): the contiguous-commit guard on Faust's own bookkeeping
structures, batches closed at a weight of datums by Faust's real take, and what every workaround relies on, looked
up on the installed Faust (an upgrade that removes or renames it fails here, naming the fix)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from types import MethodType, SimpleNamespace
from typing import Any
from weakref import WeakSet

import pytest
from faust.types import TP as FaustTP
from intervaltree import IntervalTree

from pipeline.wire.codec import message_weight
from pipeline.worker.faust_fixes import (
    FIRST_TAKEN,
    RELIES_ON,
    ack_of_handled_only,
    commit_of_current_assignment,
    contiguous_new_offset,
    count_generations_locally,
    forget_taken,
    is_rebalance_race,
    new_logs_kept,
    note_taken,
    start_new_log,
)

TP = ("datum..S1", 0)


class FakeConsumer:
    """The attributes Faust's Consumer._new_offset reads, nothing else."""

    def __init__(self, committed: int | None, acked: list[int]) -> None:
        self._acked: dict[Any, list[int]] = defaultdict(list, {TP: list(acked)})
        self._acked_index: dict[Any, set[int]] = defaultdict(set, {TP: set(acked)})
        self._gap: dict[Any, IntervalTree] = defaultdict(IntervalTree)
        self._committed_offset: dict[Any, int | None] = defaultdict(lambda: None, {TP: committed})
        self._unacked_messages: WeakSet[Any] = WeakSet()


class Msg:
    def __init__(self, offset: int) -> None:
        self.tp, self.offset = TP, offset


def test_contiguous_acks_commit_past_the_last() -> None:
    assert contiguous_new_offset(FakeConsumer(10, [10, 11, 12]), TP) == 13


def test_the_event_right_after_the_commit_missing_holds_the_commit() -> None:
    """Faust lets min(acked) be committed + 1: offset 10 (taken, never acked) would be skipped."""
    assert contiguous_new_offset(FakeConsumer(10, [11, 12]), TP) is None


def test_no_commit_yet_the_first_taken_offset_is_the_head() -> None:
    """Faust does not look at the head at all without a commit: 3900 of 15,000 lost that way."""
    consumer = FakeConsumer(None, [5, 6, 7])
    note_taken(consumer, [Msg(0), Msg(1)])  # 0..4 taken, their batch not acked
    assert contiguous_new_offset(consumer, TP) is None
    consumer._acked[TP] = [0, 1, 2, 3, 4, 5, 6, 7]
    assert contiguous_new_offset(consumer, TP) == 8


def test_a_hole_in_the_middle_commits_up_to_it() -> None:
    assert contiguous_new_offset(FakeConsumer(0, [0, 1, 3]), TP) == 2


def test_broker_gaps_are_filled_as_faust_does() -> None:
    consumer = FakeConsumer(4, [4, 7])
    consumer._gap[TP].addi(5, 7)  # 5 and 6 were never delivered (markers)
    assert contiguous_new_offset(consumer, TP) == 8


def test_revoked_partitions_forget_their_head() -> None:
    consumer = FakeConsumer(None, [5])
    note_taken(consumer, [Msg(3)])
    forget_taken(consumer, [TP])
    note_taken(consumer, [Msg(5)])  # assigned again, reading from 5
    assert contiguous_new_offset(consumer, TP) == 6


class FakeConductor:
    def __init__(self, index: set[str]) -> None:
        self._topic_name_index: dict[str, set[Any]] = {t: set() for t in index}
        self.flags = 0
        self.channels: list[Any] = []

    def _flag_changes(self) -> None:
        self.flags += 1

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.channels)


class FakeApp:
    def __init__(self, index: set[str], rebalancing: bool = False) -> None:
        self.topics = FakeConductor(index)
        self.rebalancing = rebalancing


class Channel:
    def __init__(self, *topics: str) -> None:
        self.topics = topics


def test_a_change_the_conductor_dropped_is_flagged_again() -> None:
    """Faust's subscriber clears a flag raised during a rebalance: the new topic never joined."""
    from pipeline.worker.faust_fixes import resubscribe_if_dropped

    app = FakeApp({"datum.a"})
    assert resubscribe_if_dropped(app, ["datum.a", "datum.b"]) == ["datum.b"]
    assert app.topics.flags == 1
    busy = FakeApp({"datum.a"}, rebalancing=True)  # not while the group rebalances: next scan
    assert resubscribe_if_dropped(busy, ["datum.a", "datum.b"]) == ["datum.b"] and busy.topics.flags == 0
    done = FakeApp({"datum.a", "datum.b"})
    assert resubscribe_if_dropped(done, ["datum.a", "datum.b"]) == [] and done.topics.flags == 0


def test_grow_subscription_updates_every_channel_of_the_source_topics() -> None:
    from pipeline.worker.faust_fixes import grow_subscription

    app = FakeApp({"datum.a"})
    mine, clone, other = Channel("datum.a"), Channel("datum.a"), Channel("pipeline.metadata")
    app.topics.channels = [clone, other]
    known = ["datum.a"]
    grow_subscription(app, [mine], known, ["datum.b"])
    assert known == ["datum.a", "datum.b"]
    assert mine.topics == clone.topics == ("datum.a", "datum.b") and other.topics == ("pipeline.metadata",)
    assert app.topics.flags == 1


# Faust's real `noack_take` in a child process: a Faust app leaves event loops and sockets for the
# garbage collector, which strict pytest would report as this test's unraisable warnings.
_TAKE_SCRIPT = """
import asyncio, json, sys
import faust
from pipeline.worker.faust_fixes import WeightedLimit

def datums(event):
    return int(dict(event.message.headers)["datums"])

def taken(name, sizes, limit):
    app = faust.App(name, broker="kafka://localhost:1", store="memory://")
    out = []

    @app.agent()
    async def take(stream):
        max_ = WeightedLimit(stream, limit[0], limit[1], datums) if isinstance(limit, list) else limit
        async for events in stream.noack_take(max_, within=0.1):
            out.append([datums(e) for e in events])
            for e in events:
                await stream.ack(e)

    async def drive():
        async with take.test_context() as agent:
            for n in sizes:
                await agent.put(b"x", headers={"datums": str(n).encode()})
            for _ in range(100):
                if sum(map(len, out)) >= len(sizes):
                    break
                await asyncio.sleep(0.02)

    asyncio.run(drive())
    return out

cases = json.loads(sys.argv[1])
print(json.dumps([taken(f"weight-{k}", sizes, limit) for k, (sizes, limit) in enumerate(cases)]))
"""
MIXED = [1, 1, 5, 10, 3, 3, 3, 30, 1]


@pytest.fixture(scope="module")
def taken() -> list[list[list[int]]]:
    """Batches for: datum weights with a limit of 10 datums, 1-datum events with a limit of 3
    events, and the control: the mixed events under a plain `max_` of 100."""
    cases = [[MIXED, [100, 10]], [[1] * 7, [3, 1000]], [MIXED, 100]]
    done = subprocess.run(
        [sys.executable, "-c", _TAKE_SCRIPT, json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    result: list[list[list[int]]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_batch_closes_at_a_weight_of_datums(taken: list[list[list[int]]]) -> None:
    # closed by the first event that brings the batch to 10 datums or more; the rest by `within`
    assert taken[0] == [[1, 1, 5, 10], [3, 3, 3, 30], [1]]


def test_a_batch_still_closes_at_its_count_of_events(taken: list[list[list[int]]]) -> None:
    assert taken[1] == [[1, 1, 1], [1, 1, 1], [1]]


def test_without_the_limit_faust_counts_events_only(taken: list[list[list[int]]]) -> None:
    """The control: the same events under a plain `max_` make one batch, whatever they hold."""
    assert taken[2] == [MIXED]


def test_message_weight_from_the_header_else_the_size() -> None:
    assert message_weight(b"x" * 10_000, "250") == 250
    assert message_weight(b"x" * 640, None) == 10
    assert message_weight(b"", None) == 1
    assert message_weight(b"x" * 640, "garbage") == 10


# -- what the workarounds rely on, on the real Faust classes (no broker) ------------------------------------------

# In a child process, as for the take above: a Faust consumer, even never started, makes a thread with its own event
# loop and sockets, which strict pytest would report as unraisable warnings. The second check is the same with two
# Faust internals renamed, as an upgrade could: the check must then fail, naming the workaround.
_CHECK_SCRIPT = """
import json
import faust
from faust.streams import Stream
from faust.transport.conductor import Conductor
from pipeline.worker.faust_fixes import apply, faust_api_problems

apply()  # as the worker does: the check must see Faust's own _new_offset through the patch
app = faust.App("faust-fixes-check", broker="kafka://localhost:1", store="memory://")
real = faust_api_problems(app)

async def noack_take(self, max_items, within):  # a renamed parameter, and no `buffer_size() >= max_`
    yield []

del Conductor._flag_changes
Stream.noack_take = noack_take
print(json.dumps({"real": real, "renamed": faust_api_problems(app)}))
"""


@pytest.fixture(scope="module")
def api_problems() -> dict[str, list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", _CHECK_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    result: dict[str, list[str]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("fix", sorted({r.fix for r in RELIES_ON}))
def test_faust_still_has_what_the_workaround_relies_on(fix: str, api_problems: dict[str, list[str]]) -> None:
    problems = [p for p in api_problems["real"] if p.startswith(fix)]
    assert not problems, "A Faust upgrade broke a workaround of pipeline/worker/faust_fixes.py:\n" + "\n".join(problems)


def test_every_workaround_has_its_reliances_listed() -> None:
    """Each workaround of faust_fixes.py has what it relies on checked (a new one must add its own)."""
    assert {r.fix.split(" ")[0] for r in RELIES_ON} == {
        "apply/contiguous_new_offset/note_taken",
        "fast_resubscribe",
        "grow_subscription/resubscribe_if_dropped",
        "WeightedLimit",
        "pipeline.worker.sensor.PositionMonitor",
        "commit_racing_rebalance/consumer_crash",
        "seek_to_committed_at_once/update_fetch_positions_at_once",
        "new_logs_kept/start_new_log",
        "count_generations_locally/forget_taken/commit_of_current_assignment",
        "ack_of_handled_only",
        "commit_of_current_assignment",
        "seek_from_the_broker",
        "revokes_counted/commit_tps_of_one_epoch/commit_with_its_epoch",
        "stale_partitioner/KeyHashes",
    }


def test_a_renamed_faust_internal_fails_loudly_naming_the_workaround(api_problems: dict[str, list[str]]) -> None:
    problems = api_problems["renamed"]
    assert len(problems) == 3, problems  # _flag_changes; noack_take's signature, and its comparison
    assert problems[0].startswith("grow_subscription") and "_flag_changes" in problems[0]
    assert all(p.startswith("WeightedLimit") for p in problems[1:]), problems
    assert "faust-streaming 0.15.3" in problems[0] and "faust_fixes.py" in problems[0]


# -- a commit overtaken by a rebalance (faust-streaming #94) --------------------------------------


class FakeAioKafka:
    """aiokafka's consumer as the consumer thread's `_commit` sees it: `commit` answers `error` or records."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error
        self.committed: list[dict[Any, Any]] = []

    async def commit(self, offsets: dict[Any, Any]) -> None:
        if self.error is not None:
            raise self.error
        self.committed.append(offsets)


class FakeConsumerThread:
    """What `AIOKafkaConsumerThread._commit` uses of its thread, nothing else."""

    def __init__(self, error: BaseException | None, assigned: set[Any]) -> None:
        import logging

        self.consumer = FakeAioKafka(error)
        self.assigned = assigned
        self.tp_last_committed_at: dict[Any, float] = {}
        self.log = logging.getLogger("fake-consumer-thread")
        self.crashes: list[BaseException] = []

    def _ensure_consumer(self) -> FakeAioKafka:
        return self.consumer

    def assignment(self) -> set[Any]:
        return self.assigned

    async def crash(self, exc: BaseException) -> None:
        self.crashes.append(exc)


def _commit_with(commit: Any, error: BaseException | None) -> tuple[bool, FakeConsumerThread]:
    import asyncio

    from faust.types import TP as FaustTP

    tp, other = FaustTP("datum..S1", 0), FaustTP("datum..S2", 1)
    thread = FakeConsumerThread(error, {tp})
    done = asyncio.run(commit(thread, {tp: 12, other: 7}))
    return done, thread


def _race_errors() -> list[BaseException]:
    from aiokafka.errors import IllegalStateError

    return [
        IllegalStateError("No partitions assigned"),
        IllegalStateError("Partition TopicPartition(x, 0) is not assigned"),
    ]


@pytest.mark.parametrize("error", _race_errors(), ids=["no-partitions", "partition-not-assigned"])
def test_a_commit_overtaken_by_a_rebalance_is_not_committed_and_does_not_crash(error: BaseException) -> None:
    from pipeline.worker.faust_fixes import commit_racing_rebalance

    done, thread = _commit_with(commit_racing_rebalance, error)
    assert done is False  # not committed: Faust's next assignment seeks to the committed offset
    assert thread.crashes == []


@pytest.mark.parametrize("error", _race_errors(), ids=["no-partitions", "partition-not-assigned"])
def test_faust_own_commit_crashes_the_consumer_thread_on_the_race(error: BaseException) -> None:
    """The defect the replacement fixes, shown on the installed Faust's own method (negative control)."""
    from pipeline.worker.faust_fixes import _faust_own_commit

    done, thread = _commit_with(_faust_own_commit(), error)
    assert done is False
    assert thread.crashes == [error]


def test_any_other_commit_error_still_crashes_the_thread() -> None:
    from aiokafka.errors import IllegalStateError, KafkaConnectionError

    from pipeline.worker.faust_fixes import commit_racing_rebalance

    for error in (KafkaConnectionError("broker gone"), IllegalStateError("Not subscribed to any topics")):
        done, thread = _commit_with(commit_racing_rebalance, error)
        assert done is False and thread.crashes == [error]


def test_a_commit_without_error_commits_the_assigned_partitions_only() -> None:
    from pipeline.worker.faust_fixes import commit_racing_rebalance

    done, thread = _commit_with(commit_racing_rebalance, None)
    assert done is True and thread.crashes == []
    ((offsets,),) = [thread.consumer.committed]
    assert {(tp.topic, tp.partition): o.offset for tp, o in offsets.items()} == {("datum..S1", 0): 12}
    assert [(tp.topic, tp.partition) for tp in thread.tp_last_committed_at] == [("datum..S1", 0)]


class FakeService:
    def __init__(self, reason: BaseException | None = None, crashed: bool = False) -> None:
        self.crash_reason, self.crashed = reason, crashed


class AppWithConsumer:
    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer


def test_consumer_crash_names_the_crashed_service_reason() -> None:
    from pipeline.worker.faust_fixes import consumer_crash

    consumer = FakeService()
    consumer._thread = FakeService()  # type: ignore[attr-defined]
    assert consumer_crash(AppWithConsumer(consumer)) is None
    reason = RuntimeError("thread gone")
    consumer._thread = FakeService(reason, crashed=True)  # type: ignore[attr-defined]
    assert consumer_crash(AppWithConsumer(consumer)) is reason
    crashed = consumer_crash(AppWithConsumer(FakeService(None, crashed=True)))
    assert isinstance(crashed, RuntimeError) and "crashed" in str(crashed)


WATCHDOG = """
import time
from pipeline.worker.app import watch_consumer

class Service:
    crashed, crash_reason = False, None

class App:
    consumer = Service()

app = App()
watch_consumer(app, interval_s=0.05)
time.sleep(0.3)
app.consumer.crashed = True
time.sleep(5)
raise SystemExit(0)
"""


def test_the_worker_exits_for_its_supervisor_once_the_consumer_crashed() -> None:
    from pipeline.worker.app import EXIT_CONSUMER_CRASHED

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", WATCHDOG], cwd=root, capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_CONSUMER_CRASHED, done.stderr
    assert "the Kafka consumer crashed" in done.stderr


# -- committed offsets asked at once (aiokafka, one partition at a time) ---------------------------


class FakeCoordinator:
    """aiokafka's group coordinator as `committed`/`seek_to_committed` use it: each request recorded."""

    def __init__(self, commits: dict[Any, int]) -> None:
        self.commits = commits
        self.requests: list[list[Any]] = []

    async def fetch_committed_offsets(self, partitions: list[Any]) -> dict[Any, Any]:
        from aiokafka.structs import OffsetAndMetadata

        self.requests.append(list(partitions))
        return {tp: OffsetAndMetadata(self.commits[tp], "") for tp in partitions if tp in self.commits}


def _fake_consumer(commits: dict[Any, int], assigned: set[Any]) -> Any:
    """What seek_to_committed uses of an AIOKafkaConsumer, with aiokafka's own `committed`."""
    from functools import partial
    from types import SimpleNamespace

    from aiokafka import AIOKafkaConsumer

    seeks: list[tuple[Any, int]] = []
    me = SimpleNamespace(
        _group_id="g",
        _coordinator=FakeCoordinator(commits),
        _subscription=SimpleNamespace(assigned_partitions=lambda: set(assigned)),
        _fetcher=SimpleNamespace(seek_to=lambda tp, offset: seeks.append((tp, offset))),
        seeks=seeks,
    )
    me.committed = partial(AIOKafkaConsumer.committed, me)
    return me


def test_seek_to_committed_asks_once_for_every_partition_and_seeks_as_aiokafka_does() -> None:
    import asyncio

    from aiokafka.structs import TopicPartition

    from pipeline.worker.faust_fixes import _seek_to_committed, seek_to_committed_at_once

    tps = [TopicPartition(f"datum..S{k}", p) for k in range(50) for p in range(4)]
    # committed 7 + k, or -1 (committed nothing), or none at all, or 0
    commits = {tp: [7 + n, -1, 0][n % 3] for n, tp in enumerate(tps) if n % 5}
    ours, theirs = _fake_consumer(commits, set(tps)), _fake_consumer(commits, set(tps))
    got = asyncio.run(seek_to_committed_at_once(ours))
    want = asyncio.run(_seek_to_committed()(theirs))  # aiokafka's own (negative control: 200 requests)
    assert got == want and sorted(ours.seeks) == sorted(theirs.seeks)
    assert len(ours._coordinator.requests) == 1 and set(ours._coordinator.requests[0]) == set(tps)
    assert len(theirs._coordinator.requests) == len(tps)
    some = tps[:3]
    assert asyncio.run(seek_to_committed_at_once(ours, *some)) == asyncio.run(_seek_to_committed()(theirs, *some))


class FakePartitionState:
    """aiokafka's TopicPartitionState as `_update_fetch_positions` uses it."""

    def __init__(self, refresher: FakeRefresher) -> None:
        self.refresher = refresher
        self.position: int | None = None
        self.awaiting_reset = False
        self.reset_strategy: int | None = None
        self.futures: list[Any] = []

    @property
    def has_valid_position(self) -> bool:
        return self.position is not None

    def fetch_committed(self) -> Any:
        import asyncio

        fut = asyncio.get_running_loop().create_future()
        self.futures.append(fut)
        self.refresher.wake()
        return fut

    def reset_to(self, offset: int) -> None:
        self.position, self.awaiting_reset = offset, False

    def await_reset(self, strategy: int) -> None:
        self.awaiting_reset, self.reset_strategy = True, strategy


class FakeRefresher:
    """aiokafka's commit-refresh routine: woken by any waiting partition, it scans every partition of
    the assignment and answers all that wait, in one request."""

    def __init__(self, commits: dict[Any, int]) -> None:
        self.commits = commits
        self.states: dict[Any, FakePartitionState] = {}
        self.rounds = 0
        self.scanned = 0
        self._woken = False

    def wake(self) -> None:
        import asyncio

        if not self._woken:
            self._woken = True
            asyncio.get_running_loop().call_soon(self.refresh)

    def refresh(self) -> None:
        from aiokafka.structs import OffsetAndMetadata

        self._woken = False
        self.rounds += 1
        self.scanned += len(self.states)
        for tp, st in self.states.items():
            for fut in st.futures:
                fut.set_result(OffsetAndMetadata(self.commits.get(tp, -1), ""))
            st.futures.clear()


def _fetch_positions(update: Any, commits: dict[Any, int], tps: list[Any]) -> tuple[dict[Any, Any], FakeRefresher]:
    import asyncio
    from types import SimpleNamespace

    from aiokafka.consumer.fetcher import OffsetResetStrategy

    refresher = FakeRefresher(commits)
    refresher.states = {tp: FakePartitionState(refresher) for tp in tps}
    tps[0:1] and refresher.states[tps[0]].reset_to(99)  # one with a position already: left alone

    async def offsets(_node: int, topic_data: dict[str, list[tuple[int, int]]]) -> dict[Any, tuple[int, int]]:
        from aiokafka.structs import TopicPartition

        return {TopicPartition(t, p): (1000 + p, -1) for t, parts in topic_data.items() for p, _ in parts}

    fetcher = SimpleNamespace(
        _default_reset_strategy=OffsetResetStrategy.EARLIEST, _proc_offset_request=offsets, _retry_backoff=0.01
    )
    assignment = SimpleNamespace(state_value=lambda tp: refresher.states[tp])
    asyncio.run(update(fetcher, assignment, 0, list(tps)))
    return {tp: st.position for tp, st in refresher.states.items()}, refresher


def test_fetch_positions_ask_every_committed_point_in_one_round() -> None:
    from aiokafka.structs import TopicPartition

    from pipeline.worker.faust_fixes import _update_fetch_positions, update_fetch_positions_at_once

    tps = [TopicPartition(f"datum..S{k}", p) for k in range(100) for p in range(4)]
    commits = {tp: 5 + n for n, tp in enumerate(tps) if n % 7}  # the rest: no commit, reset to earliest
    ours, at_once = _fetch_positions(update_fetch_positions_at_once, commits, tps)
    theirs, one_by_one = _fetch_positions(_update_fetch_positions(), commits, tps)
    assert ours == theirs
    assert ours[tps[0]] == 99 and ours[tps[1]] == commits[tps[1]] and ours[tps[7]] == 1000 + tps[7].partition
    assert at_once.rounds == 1 and at_once.scanned == len(tps)
    # aiokafka's own: a round, and a scan of the whole assignment, per partition (negative control)
    assert one_by_one.rounds == len(tps) - 1 and one_by_one.scanned == len(tps) * (len(tps) - 1)


# -- a log that starts again: Faust's drain loop drops it (7.) -------------------------------------


class Record:
    """A consumed message as Faust's drain loop and `Consumer.ack` read it."""

    def __init__(self, tp: Any, offset: int) -> None:
        self.tp, self.offset, self.topic = tp, offset, tp.topic
        self.key = self.value = None
        self.acked = False
        self.tracked = True  # handed to an agent (a stream skipping it would leave it False)


class DrainingConsumer:
    """What Faust's own `Consumer._drain_messages` and `Consumer.ack` read, nothing else; `getmany`
    hands out one scripted fetch per call (Faust's own getmany, or it wrapped by `new_logs_kept`)."""

    def __init__(self, fetches: list[list[Record]], keep_new_logs: bool) -> None:
        self.fetches = list(fetches)
        self.keep_new_logs = keep_new_logs
        self.handled: list[int] = []
        self._read_offset: dict[Any, int | None] = defaultdict(lambda: None)
        self._committed_offset: dict[Any, int | None] = defaultdict(lambda: None)
        self._acked: dict[Any, list[int]] = defaultdict(list)
        self._acked_index: dict[Any, set[int]] = defaultdict(set)
        self._gap: dict[Any, IntervalTree] = defaultdict(IntervalTree)
        self._unacked_messages: WeakSet[Record] = WeakSet()
        self._waiting_for_ack = None
        self._n_acked = 0
        self._commit_every = None
        self._stopped = asyncio.Event()
        self.should_stop = False
        self.suspend_flow = asyncio.Event()
        self.consumer_stopped_errors = ()
        self.diag = SimpleNamespace(set_flag=lambda _flag: None, unset_flag=lambda _flag: None)
        self.app = SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda _topic: True))
        self.transport = SimpleNamespace(app=SimpleNamespace(should_stop=False))
        self.log = SimpleNamespace(dev=lambda *_a: None, info=lambda *_a: None)

    def getmany(self, timeout: float) -> Any:
        async def fetch() -> Any:
            if not self.fetches:
                self._stopped.set()
                return
            for record in self.fetches.pop(0):
                yield record.tp, record

        return new_logs_kept(self, fetch()) if self.keep_new_logs else fetch()

    async def callback(self, message: Record) -> None:  # the conductor: tracked, handed to an agent
        self._unacked_messages.add(message)
        self.handled.append(message.offset)

    async def wait_first(self, *coros: Any) -> None:
        first, *rest = coros
        for coro in rest:
            coro.close()
        await first

    async def sleep(self, _seconds: float) -> None:
        await asyncio.sleep(0)

    async def _add_gap(self, *_args: Any) -> None:
        pass

    async def commit(self) -> None:
        pass


LOG_TP = FaustTP("datum..S1.WX1", 0)


def _drain(fetches: list[list[int]], keep_new_logs: bool) -> tuple[DrainingConsumer, list[list[Record]]]:
    from faust.transport.consumer import Consumer

    records = [[Record(LOG_TP, o) for o in fetch] for fetch in fetches]
    consumer = DrainingConsumer(records, keep_new_logs)
    asyncio.run(Consumer._drain_messages(consumer, SimpleNamespace(_stopped=asyncio.Event())))  # type: ignore[arg-type]
    return consumer, records


def test_faust_own_drain_loop_drops_a_log_that_started_again() -> None:
    """The defect: the broker restarted without its data, the new log's offsets are below the read
    offset the old one left, and Faust drops them (the broker-killed drill's lost resent datums)."""
    consumer, _ = _drain([[100, 101, 102], [0, 1, 2]], keep_new_logs=False)
    assert consumer.handled == [100, 101, 102]


def test_a_log_that_started_again_is_handled_not_dropped(caplog: pytest.LogCaptureFixture) -> None:
    consumer, _ = _drain([[100, 101, 102], [0, 1, 2], [3]], keep_new_logs=True)
    assert consumer.handled == [100, 101, 102, 0, 1, 2, 3]
    assert consumer._read_offset[LOG_TP] == 3
    assert "datum..S1.WX1[0]: offset 0 after 102: the log started again" in caplog.text


def test_a_late_ack_from_the_old_log_never_lets_the_commit_pass_the_new_one() -> None:
    """The old log's 1 and 2 are still with an agent when the new log starts; acked late, they must
    not count as the new log's 1 and 2 (not acked yet): the commit may pass only the new 0."""

    consumer, (old, new) = _drain([[1, 2], [0, 1, 2]], keep_new_logs=True)
    for record in old:
        faust_own_ack(consumer, record)  # type: ignore[arg-type]
    faust_own_ack(consumer, new[0])  # type: ignore[arg-type]
    assert contiguous_new_offset(consumer, LOG_TP) == 1
    consumer._committed_offset[LOG_TP] = 1  # as Faust records the commit
    assert not any(r in consumer._unacked_messages for r in old)  # settled: no wait for them at stop
    for record in new[1:]:
        faust_own_ack(consumer, record)  # type: ignore[arg-type]
    assert contiguous_new_offset(consumer, LOG_TP) == 3


def test_a_commit_of_the_old_log_is_forgotten() -> None:
    consumer = DrainingConsumer([], keep_new_logs=True)
    consumer._committed_offset[LOG_TP] = 103
    consumer._acked[LOG_TP] = [101]
    consumer._acked_index[LOG_TP] = {101}
    consumer._gap[LOG_TP].addi(98, 100)
    start_new_log(consumer, LOG_TP, 0)
    assert consumer._committed_offset[LOG_TP] is None
    assert LOG_TP not in consumer._acked and LOG_TP not in consumer._gap
    assert consumer.__dict__[FIRST_TAKEN][LOG_TP] == 0  # the head of the new log, for the guard (1.)


# -- work of one assignment counted in the next (8.) ----------------------------------------------


class CommittingCoordinator:
    """What aiokafka's own GroupCoordinator._do_commit_offsets reads; records what it sends."""

    group_id, generation, member_id, coordinator_id = "chaos", 0, "member-2", 111

    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def _send_req(self, request: Any) -> Any:
        self.sent.append(request)
        return SimpleNamespace(topics=[(t, [(p, 0) for p, _o, _m in parts]) for t, parts in request._topics])


def _commit_under(
    replaced: bool, forgotten: bool = False, commit: Any = commit_of_current_assignment
) -> tuple[CommittingCoordinator, BaseException | None]:
    from aiokafka.consumer.group_coordinator import GroupCoordinator
    from aiokafka.consumer.subscription_state import Assignment
    from aiokafka.structs import OffsetAndMetadata, TopicPartition

    coordinator = CommittingCoordinator()
    tp = TopicPartition("datum..S1.WX1", 1)
    if forgotten:  # the heartbeat was answered UnknownMemberId: aiokafka's own reset, then a rejoin
        coordinator.request_rejoin = lambda: None  # type: ignore[attr-defined]
        GroupCoordinator.reset_generation(coordinator)  # type: ignore[arg-type]

    async def run() -> BaseException | None:
        made_for = Assignment({tp})  # the assignment the offsets were computed under
        if replaced:
            made_for._unassign()  # as aiokafka does when the rejoin brings the next one
        try:
            await commit(coordinator, made_for, {tp: OffsetAndMetadata(6, "")})
        except Exception as exc:
            return exc
        return None

    return coordinator, asyncio.run(run())


def test_a_commit_made_for_a_replaced_assignment_is_never_sent() -> None:
    """The drill's loss: offset 6 of the old log committed to the restarted broker right after the
    rejoin (the new member id, generation 0 again), then read back as the new log's position."""
    coordinator, error = _commit_under(replaced=True)
    assert coordinator.sent == []
    assert error is not None and is_rebalance_race(error)  # the commit (5.) takes it as a lost race


def test_a_commit_for_the_current_assignment_is_sent_by_aiokafka_own_method() -> None:
    coordinator, error = _commit_under(replaced=False)
    assert error is None
    assert [r._topics for r in coordinator.sent] == [[("datum..S1.WX1", [(1, 6, "")])]]


def test_aiokafka_sends_a_commit_of_a_forgotten_member_as_a_standalone_one() -> None:
    """The defect (10.): the assignment is still active while the member rejoins, and the commit
    goes out with generation -1, which a broker that lost its data takes."""
    from pipeline.worker.faust_fixes import _do_commit_offsets

    coordinator, error = _commit_under(replaced=False, forgotten=True, commit=_do_commit_offsets())
    assert error is None
    sent = [(r._consumer_group_generation_id, r._topics) for r in coordinator.sent]
    assert sent == [(-1, [("datum..S1.WX1", [(1, 6, "")])])]


def test_a_commit_while_the_group_forgot_the_member_is_never_sent() -> None:
    """The drill's loss in CI: offset 10 of the old log taken as a standalone commit by the restarted
    broker, the rejoin seeking there, the resent messages below it never read."""
    coordinator, error = _commit_under(replaced=False, forgotten=True)
    assert coordinator.sent == []
    assert error is not None and is_rebalance_race(error)
    assert "forgot this member" in str(error)


class SeekingConsumer:
    """What Faust's Consumer.perform_seek reads and writes; the broker has a commit for one partition."""

    def __init__(self) -> None:
        self.app = SimpleNamespace()
        self._read_offset: dict[Any, int | None] = defaultdict(lambda: None)
        self._committed_offset: dict[Any, int | None] = defaultdict(lambda: None)

    async def seek_to_committed(self) -> dict[Any, int | None]:
        return {FaustTP("datum..S1.WX1", 1): None, FaustTP("datum..S2.WX1", 1): 7}


def _seek(perform_seek: Any) -> SeekingConsumer:
    consumer = SeekingConsumer()
    # a commit of the last assignment that lost its race with the rebalance, written anyway by Faust
    consumer._committed_offset[FaustTP("datum..S1.WX1", 1)] = 5
    asyncio.run(perform_seek(consumer))
    return consumer


def test_faust_keeps_the_last_assignment_committed_offset_where_the_broker_has_none() -> None:
    from pipeline.worker.faust_fixes import _faust_own_perform_seek

    consumer = _seek(_faust_own_perform_seek())
    assert consumer._committed_offset[FaustTP("datum..S1.WX1", 1)] == 5  # acks of 0..4 would be ignored


def test_a_new_assignment_takes_every_committed_offset_from_the_broker() -> None:
    from pipeline.worker.faust_fixes import seek_from_the_broker

    consumer = _seek(seek_from_the_broker)
    assert consumer._committed_offset[FaustTP("datum..S1.WX1", 1)] is None
    assert consumer._committed_offset[FaustTP("datum..S2.WX1", 1)] == 7
    assert consumer._read_offset[FaustTP("datum..S1.WX1", 1)] is None
    assert consumer._read_offset[FaustTP("datum..S2.WX1", 1)] == 7


def test_messages_unacked_at_a_revoke_count_for_nothing_after_it() -> None:
    """Taken before the revoke, acked after it: Faust would put 5 and 6 in the next assignment's
    bookkeeping (then commit 7 to a broker whose log starts again at 0)."""

    consumer = DrainingConsumer([], keep_new_logs=True)
    revoked, kept = Record(LOG_TP, 5), Record(LOG_TP, 6)
    other = Record(FaustTP("datum..S2.WX1", 0), 9)
    for record in (revoked, kept, other):
        consumer._unacked_messages.add(record)
    forget_taken(consumer, [LOG_TP])
    for record in (revoked, kept, other):
        faust_own_ack(consumer, record)  # type: ignore[arg-type]
    assert consumer._acked[LOG_TP] == []
    assert consumer._acked[other.tp] == [9]  # partitions not revoked are untouched
    assert set(consumer._unacked_messages) == set()


def test_each_assignment_is_a_new_generation_even_when_the_broker_repeats_its_own() -> None:
    """A restarted broker's generation ids start again at 0: Faust's streams could not tell the
    old assignment's queued messages from the new one's."""
    got: list[tuple[set[Any], int]] = []

    class Thread:
        app = SimpleNamespace(consumer_generation_id=0)

        async def on_partitions_assigned(self, tps: set[Any], generation: int) -> None:
            got.append((tps, generation))

    listener = SimpleNamespace(_thread=Thread())
    for _ in range(2):  # the broker says generation 0 both times
        asyncio.run(count_generations_locally(listener, [LOG_TP]))
    assert [g for _, g in got] == [1, 2]
    assert listener._thread.app.consumer_generation_id == 2


# -- a message the streams skipped is acked (9.) ------------------------------------------------------


def faust_own_ack(consumer: Any, message: Any) -> bool:
    from pipeline.worker.faust_fixes import _faust_own_ack

    done: bool = _faust_own_ack()(consumer, message)
    return done


def _acked_around_a_skip(ack: Any) -> DrainingConsumer:
    consumer = DrainingConsumer([], keep_new_logs=True)
    handled, skipped, later = Record(LOG_TP, 0), Record(LOG_TP, 1), Record(LOG_TP, 2)
    skipped.tracked = False  # fetched under the last assignment, or while a rebalance suspended the flow
    for record in (handled, later):
        consumer._unacked_messages.add(record)
    consumer.__dict__[FIRST_TAKEN] = {LOG_TP: 0}
    for record in (handled, skipped, later):  # Faust's stream acks what it skipped too
        ack(consumer, record)
    return consumer


def test_faust_commits_past_a_message_its_streams_skipped() -> None:
    """The drill's last loss: skipped during a rebalance, acked, committed past, never handled."""
    assert contiguous_new_offset(_acked_around_a_skip(faust_own_ack), LOG_TP) == 3


def test_a_skipped_message_holds_the_commit_until_it_is_handled() -> None:
    consumer = _acked_around_a_skip(ack_of_handled_only)
    assert contiguous_new_offset(consumer, LOG_TP) == 1
    consumer._committed_offset[LOG_TP] = 1
    again = Record(LOG_TP, 1)  # fetched again after the assignment, handed to an agent this time
    ack_of_handled_only(consumer, again)
    assert contiguous_new_offset(consumer, LOG_TP) == 3


# -- a commit computed in one assignment, sent in the next (12.) -------------------------------------


class EpochThread(FakeConsumerThread):
    """The consumer thread: its `commit` hands `_commit` over as Faust's does (or with the epoch)."""

    def __init__(self, app: Any, assigned: set[Any], with_epoch: bool) -> None:
        from pipeline.worker.faust_fixes import _faust_own_thread_commit, commit_racing_rebalance, commit_with_its_epoch

        super().__init__(None, assigned)
        self.app = app
        self._commit = MethodType(commit_racing_rebalance, self)
        self.commit = MethodType(commit_with_its_epoch if with_epoch else _faust_own_thread_commit(), self)

    async def call_thread(self, fun: Any, *args: Any) -> Any:
        return await fun(*args)


class CommittingConsumer:
    """Faust's own commit path (`_commit_tps` to `_commit_offsets`) on the bookkeeping it reads; the
    producer's flush waits out a broker that restarted, during which the workers rejoined."""

    from faust.transport.consumer import Consumer as _Faust

    _filter_committable_offsets = _Faust._filter_committable_offsets
    _should_commit = _Faust._should_commit
    _handle_attached = _Faust._handle_attached
    _commit_offsets = _Faust._commit_offsets
    _new_offset = contiguous_new_offset
    in_transaction = False

    def __init__(self, with_epoch: bool, rejoin: bool = True) -> None:
        import logging

        self.log = SimpleNamespace(dev=lambda *_a: None, info=lambda *_a: None, logger=logging.getLogger("fake"))
        self.app = SimpleNamespace(
            producer=SimpleNamespace(flush=self._rejoin_while_flushing if rejoin else self._flushed),
            tables=SimpleNamespace(on_commit=lambda _offsets: None),
            monitor=SimpleNamespace(on_tp_commit=lambda _offsets: None),
            _attachments=SimpleNamespace(publish_for_tp_offset=self._nothing_attached),
        )
        self._thread = EpochThread(self.app, {LOG_TP}, with_epoch)
        self._committed_offset: dict[Any, int | None] = defaultdict(lambda: None, {LOG_TP: 5})
        self._acked: dict[Any, list[int]] = defaultdict(list, {LOG_TP: [5, 6, 7]})  # the old log's
        self._acked_index: dict[Any, set[int]] = defaultdict(set, {LOG_TP: {5, 6, 7}})
        self._gap: dict[Any, IntervalTree] = defaultdict(IntervalTree)
        self._read_offset: dict[Any, int | None] = defaultdict(lambda: None)

    def assignment(self) -> set[Any]:
        return {LOG_TP}

    async def _nothing_attached(self, _tp: Any, _offset: int) -> list[Any]:
        return []

    async def _commit(self, offsets: Any) -> bool:  # the aiokafka driver's Consumer._commit
        done: bool = await self._thread.commit(offsets)
        return done

    async def seek_to_committed(self) -> dict[Any, int | None]:
        return {LOG_TP: None}  # the restarted broker has no commit

    async def _flushed(self) -> None:
        pass

    async def _rejoin_while_flushing(self) -> None:
        from pipeline.worker.faust_fixes import _next_epoch, seek_from_the_broker

        _next_epoch(self.app)  # the revoke, as the listener counts it
        for bookkeeping in (self._acked, self._acked_index, self._committed_offset, self._read_offset):
            bookkeeping.pop(LOG_TP, None)  # as Faust's revoke does
        _next_epoch(self.app)  # the assignment, the same partition again
        await seek_from_the_broker(self)


def _commit_across(with_epoch: bool, rejoin: bool = True) -> tuple[CommittingConsumer, bool]:
    from pipeline.worker.faust_fixes import _faust_own_commit_tps, commit_tps_of_one_epoch

    consumer = CommittingConsumer(with_epoch, rejoin)
    commit_tps = commit_tps_of_one_epoch if with_epoch else _faust_own_commit_tps()
    done = asyncio.run(commit_tps(consumer, [LOG_TP], True))
    return consumer, done


def _sent(consumer: CommittingConsumer) -> list[dict[int, int]]:
    """The offsets aiokafka was asked to commit, per commit, by partition."""
    return [{tp.partition: o.offset for tp, o in c.items()} for c in consumer._thread.consumer.committed]


def test_faust_sends_offsets_of_one_assignment_in_the_next() -> None:
    """The defect: offset 8 of the old log committed for the new one, and held as committed."""
    consumer, _ = _commit_across(with_epoch=False)
    assert _sent(consumer) == [{0: 8}]
    assert consumer._committed_offset[LOG_TP] == 8


def test_a_commit_computed_before_a_rebalance_is_never_sent_after_it() -> None:
    consumer, _ = _commit_across(with_epoch=True)
    assert consumer._thread.consumer.committed == []
    assert consumer._committed_offset[LOG_TP] is None  # the broker's answer at the seek, put back


def test_a_commit_within_one_epoch_is_sent() -> None:
    consumer, done = _commit_across(with_epoch=True, rejoin=False)
    assert done is True
    assert _sent(consumer) == [{0: 8}]
    assert consumer._committed_offset[LOG_TP] == 8
