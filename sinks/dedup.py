"""Insert deduplication tokens for ClickHouse cluster mode (pure).

A replicated table drops an insert whose `insert_deduplication_token` it has seen within its
deduplication window (replicated_deduplication_window, by default the last 1,000 inserts and
a week), so a batch written again after a timeout or a crash adds no part at all. ClickHouse's
own Kafka Connect sink keys its inserts on the messages' topic, partition and offset range the
same way.

The token names the batch's Kafka messages (`offset_runs`) and a digest of the rows it writes.
The rows belong in it: the same messages processed again do not always give the same rows (the
metadata catalog or the clock moved, a datum refused before is accepted now, a narrowed-down
part holds one datum of a message), and a token of the offsets alone would drop those rows for
good. Same messages and same rows: the same token, the insert is dropped. Otherwise the insert
goes through, and the tables' replacing key (plus FINAL in the views) hides the copies, as it
always has; that also covers a redelivered batch taken with other boundaries, which gets
another token.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from itertools import groupby

Origin = tuple[str, int, int]  # (topic, partition, offset) of one Kafka message


def offset_runs(origins: Iterable[Origin]) -> str:
    """The messages as `topic:partition:first-last` runs of consecutive offsets, sorted, one per
    line: order and repeats do not matter, a gap starts a new run (a batch with a message taken
    out is not the whole batch)."""
    runs: list[str] = []
    for (topic, partition), group in groupby(sorted(set(origins)), key=lambda o: (o[0], o[1])):
        offsets = [o[2] for o in group]
        start = prev = offsets[0]
        for offset in offsets[1:] + [None]:
            if offset is not None and offset == prev + 1:
                prev = offset
                continue
            runs.append(f"{topic}:{partition}:{start}-{prev}")
            if offset is not None:
                start = prev = offset
    return "\n".join(runs)


def batch_token(origins: Iterable[Origin], content: Iterable[bytes | bytearray | memoryview]) -> str:
    """sha256 (hex) of the messages' offset runs and the rows' bytes: the insert's identity."""
    digest = hashlib.sha256(offset_runs(origins).encode())
    for chunk in content:
        digest.update(memoryview(chunk).nbytes.to_bytes(8, "little"))  # chunk boundaries are part of the identity
        digest.update(chunk)
    return digest.hexdigest()
