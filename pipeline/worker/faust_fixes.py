"""Workarounds for faust-streaming, in one place (faust-streaming 0.15.3, pinned in pyproject).

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
   conductor's index holds every source topic, and flags again until it does.

3. Faust's `take` closes a batch at a number of events only; one event may carry one datum (a
   gateway of a fleet) or a thousand (a bulk producer). `WeightedLimit` is a `max_` for
   `noack_take` that also closes the batch at a total weight (datums): a fleet's small messages
   then make batches of thousands of datums, not of a few hundred (issue 13: raw rows of the
   fleet benchmark 5.7k -> 18.5k datums/s). Faust tests `buffer_size() >= max_`; an int
   compared with this object hands the comparison to its `__le__`, called once per event added.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

FIRST_TAKEN = "_pipeline_first_taken"
_applied = False


def note_taken(consumer: Any, messages: Iterable[Any]) -> None:
    """Remember, per partition, the first offset an agent took (the head where no commit exists)."""
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
    """Partitions revoked: their head is learned again when they come back."""
    firsts: dict[Any, int] = consumer.__dict__.get(FIRST_TAKEN, {})
    for tp in tps:
        firsts.pop(tp, None)


def contiguous_new_offset(self: Any, tp: Any) -> int | None:
    """Faust's `_new_offset` with the head of the partition checked in every case."""
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


def apply() -> None:
    """Install the workarounds (idempotent)."""
    global _applied
    if _applied:
        return
    from faust.transport.consumer import Consumer

    Consumer._new_offset = contiguous_new_offset  # type: ignore[method-assign]
    _applied = True


def fast_resubscribe(app: Any, seconds: float = 1.0) -> None:
    """Seconds, not Faust's 45, between a subscription change and the resubscribe: a new source
    should flow without a long wait (the conductor's own knob, no public setting)."""
    app.topics._resubscribe_sleep_lock_seconds = seconds


def grow_subscription(app: Any, channels: Iterable[Any], known: list[str], new: list[str]) -> None:
    """Add `new` topic names to every channel that carries the `known` ones, and flag the change."""
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
    """Source topics the conductor has not (yet) put in its subscription."""
    index = getattr(app.topics, "_topic_name_index", None)
    if index is None:
        return []
    return [n for n in names if n not in index]


def resubscribe_if_dropped(app: Any, names: Iterable[str]) -> list[str]:
    """Flag the conductor again when a change was dropped (see 2. above); returns the missing."""
    missing = unsubscribed(app, names)
    if missing and not app.rebalancing:
        log.warning("%d source topic(s) not in the subscription yet (%s): flagging the change again",
                    len(missing), ", ".join(missing[:3]))
        app.topics._flag_changes()
    return missing
