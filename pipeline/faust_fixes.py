"""Workarounds for faust-streaming, in one place (faust-streaming 0.15.3, pinned in pyproject).

1. Offsets commit only past contiguously acked events (faust-streaming #312, regressed as #606).
   Faust's `Consumer._new_offset` looks for a hole at the head of a partition's acked offsets only
   `if committed_offset:` — so on a partition with no commit yet (or committed 0) an event taken
   and never acked is committed past as soon as a later one is acked — and where it does look, it
   lets the first offset after the committed one be missing (`min(acked) - committed > 1`). Our
   agents ack in order and never drop a batch (pipeline/commit.py), so this guard should never
   fire; it is the second line: a hole at the head holds the partition's commit back.

   Where no commit exists, the head is the first offset our agents took from the partition since
   it was assigned (`note_taken`).

2. Faust cannot subscribe by pattern (#62): the worker grows its subscription itself
   (`DatumWorker.grow_subscription`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

FIRST_TAKEN = "_pipeline_first_taken"
_applied = False


def note_taken(consumer: Any, messages: Iterable[Any]) -> None:
    """Remember, per partition, the first offset an agent took (the head where no commit exists)."""
    firsts: dict[Any, int] = consumer.__dict__.setdefault(FIRST_TAKEN, {})
    for msg in messages:
        firsts.setdefault(msg.tp, msg.offset)


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
