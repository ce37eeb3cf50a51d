"""The contiguous-commit guard (pipeline/faust_fixes.py) on Faust's own bookkeeping structures."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from intervaltree import IntervalTree

from pipeline.faust_fixes import contiguous_new_offset, forget_taken, note_taken

TP = ("datum..S1", 0)


class FakeConsumer:
    """The attributes Faust's Consumer._new_offset reads, nothing else."""

    def __init__(self, committed: int | None, acked: list[int]) -> None:
        self._acked: dict[Any, list[int]] = defaultdict(list, {TP: list(acked)})
        self._acked_index: dict[Any, set[int]] = defaultdict(set, {TP: set(acked)})
        self._gap: dict[Any, IntervalTree] = defaultdict(IntervalTree)
        self._committed_offset: dict[Any, int | None] = defaultdict(lambda: None, {TP: committed})


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
        self._topic_name_index = {t: set() for t in index}
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
    from pipeline.faust_fixes import resubscribe_if_dropped

    app = FakeApp({"datum.a"})
    assert resubscribe_if_dropped(app, ["datum.a", "datum.b"]) == ["datum.b"]
    assert app.topics.flags == 1
    busy = FakeApp({"datum.a"}, rebalancing=True)  # not while the group rebalances: next scan
    assert resubscribe_if_dropped(busy, ["datum.a", "datum.b"]) == ["datum.b"] and busy.topics.flags == 0
    done = FakeApp({"datum.a", "datum.b"})
    assert resubscribe_if_dropped(done, ["datum.a", "datum.b"]) == [] and done.topics.flags == 0


def test_grow_subscription_updates_every_channel_of_the_source_topics() -> None:
    from pipeline.faust_fixes import grow_subscription

    app = FakeApp({"datum.a"})
    mine, clone, other = Channel("datum.a"), Channel("datum.a"), Channel("pipeline.metadata")
    app.topics.channels = [clone, other]
    known = ["datum.a"]
    grow_subscription(app, [mine], known, ["datum.b"])
    assert known == ["datum.a", "datum.b"]
    assert mine.topics == clone.topics == ("datum.a", "datum.b") and other.topics == ("pipeline.metadata",)
    assert app.topics.flags == 1
