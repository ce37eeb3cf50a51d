"""The one sink contract, implemented by every store the pipeline writes to (quix-streams'
`sinks/base/sink.py` lifecycle):

    setup()       once, before the first batch: create or migrate what the sink writes to.
                  Idempotent (every worker runs it at every start).
    write(batch)  store the whole batch, idempotently (a batch written twice leaves the state
                  one write leaves), or raise:
                  - SinkBackpressure: the store cannot take the batch now (away, busy, too many
                    parts). The caller keeps the batch, waits at least `retry_after` seconds and
                    writes the same batch again; no offset moves meanwhile, and the partition's
                    agent takes nothing more (Faust's buffer fills, its fetcher stops).
                  - anything else: the batch itself is at fault; the caller (pipeline/worker/
                    commit.py) splits it to find the unit and dead-letters that unit.

Implementations: `RawSink` and `DeadLetterSink` (sinks/clickhouse.py), `RollupSink` and
`RollupLedger` (sinks/rollups.py), `AuxiliarySink` (sinks/auxiliary.py), `HistorySink`
(sinks/history.py). Each says which of its store's errors are backpressure; the worker's
`Committer` holds the one retry policy.
"""

from __future__ import annotations

import abc
from typing import Generic, TypeVar

B = TypeVar("B", contravariant=True)  # what one write takes
R = TypeVar("R", covariant=True)  # what one write answers (rows written, results per event)


class SinkBackpressure(Exception):
    """The store cannot take this batch now; write the same batch again after `retry_after` s."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Sink(abc.ABC, Generic[B, R]):
    """A store the pipeline writes batches to (the module docstring is the contract)."""

    def setup(self) -> None:  # noqa: B027 - a store with nothing to create keeps the default
        """Create or migrate what this sink writes to; idempotent."""

    @abc.abstractmethod
    def write(self, batch: B) -> R:
        """Store the whole batch or raise (SinkBackpressure: try the same batch again later)."""
