"""A revoked partition takes the per-stream state of its streams with it (pipeline/worker/app.py).

qRating's rate of a cumulative datastream is taken against the stream's previous datapoint, which
the worker keeps in memory once it has loaded it from the store. When a partition moves to another
worker, that worker stores the stream's next datapoints; should the partition come back, the state
kept here is stale. So a revocation drops the state of the streams of the revoked partitions, and the
next batch loads it again from the store.

A real DatumWorker (its Faust app is never started), with fakes for the broker's topic list, the
store (the rate-baseline lookup, the inserts) and Faust's consumer; the revocation goes through the
app's own on_partitions_revoked signal, as Faust sends it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

import pipeline.worker.app as worker_app
from pipeline.wire.codec import CURRENT, SCHEMA_HEADER, encode_batch
from pipeline.wire.topics import stream_key
from pipeline.worker.app import DatumWorker
from pipeline.worker.batch import Part, process_parts
from processors.catalog_versions import VersionedCatalog
from processors.datum import Datum
from tests.samples import SEED_QRATING, room_catalog, stream
from tests.unit.worker_fakes import OTHER, TOPIC, make_worker

NOW = int(time.time() * 1000)
HOUR = 3_600_000
Stream = tuple[int, str]
ROOM = room_catalog(stream("room.energy", "CUMULATIVE", qrating={**SEED_QRATING, "cumulative_period_divisor": 3600}))


@dataclass
class FakeStore:
    """The last stored energy reading of each stream, as the rate-baseline lookup finds it."""

    last: dict[Stream, tuple[int, float]] = field(default_factory=dict)
    asked: list[set[Stream]] = field(default_factory=list)

    def baselines(self, _client: Any, first: Mapping[Stream, int]) -> dict[Stream, list[tuple[str, int, float]]]:
        self.asked.append(set(first))
        return {s: [("room.energy", *self.last[s])] for s in first if s in self.last}


@dataclass
class Msg:
    topic: str
    partition: int
    offset: int
    value: bytes
    key: bytes
    headers: list[tuple[str, bytes]]


def energy(node: int, source: str, topic: str, partition: int, offset: int, created: int, value: float) -> Part:
    """One message of one datum with an accumulating `energy` reading (room.energy: a rate per hour)."""
    datum = Datum(node, source, created, {}, {"energy": value}, {}, ())
    return Part(
        Msg(
            topic,
            partition,
            offset,
            encode_batch([datum]),
            stream_key(node, source),
            [(SCHEMA_HEADER, CURRENT.encode())],
        )
    )


@pytest.fixture
def worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[DatumWorker, FakeStore]]:
    store = FakeStore()
    monkeypatch.setattr(worker_app, "rate_baselines_many", store.baselines)
    w = make_worker(tmp_path, monkeypatch)
    w.catalog = VersionedCatalog((), (ROOM,))
    w._sink = SimpleNamespace(client=None)  # type: ignore[assignment]  # the lookup is faked: no client used

    async def stored(_rows: Any, **_kw: Any) -> None:
        return None

    async def marked(_marks: Any) -> None:
        return None

    monkeypatch.setattr(w, "store", stored)
    monkeypatch.setattr(w, "mark_stale", marked)
    yield w, store


def revoke(w: DatumWorker, *tps: TP) -> Callable[[], Any]:
    return lambda: w.app.on_partitions_revoked.send(set(tps))


def test_a_revoked_partition_loads_its_streams_rate_state_from_the_store_again(
    worker: tuple[DatumWorker, FakeStore],
) -> None:
    w, store = worker
    a, b = (1, "/room/a"), (1, "/room/b")
    store.last = {a: (NOW - 4 * HOUR, 100.0), b: (NOW - 4 * HOUR, 50.0)}

    async def scenario() -> None:
        await w.write_datums(
            [energy(*a, TOPIC, 0, 0, NOW - 3 * HOUR, 110.0), energy(*b, OTHER, 0, 0, NOW - 3 * HOUR, 60.0)]
        )
        assert store.asked == [{a, b}]  # first sight since start: both from the store
        # the partition of /room/a goes to another worker, which stores its next readings ...
        await revoke(w, TP(TOPIC, 0))()
        store.last[a] = (NOW - 2 * HOUR, 200.0)
        # ... and comes back: the next batch continues from the store, not from what this worker saw
        await w.write_datums([energy(*a, TOPIC, 0, 7, NOW - HOUR, 210.0), energy(*b, OTHER, 0, 1, NOW - HOUR, 70.0)])

    asyncio.run(scenario())
    assert store.asked == [{a, b}, {a}], "the stream of the revoked partition was not loaded again from the store"
    # and the rate state now continues from the reading the store had
    assert w.scoring.rates[(*a, "room.energy")].value == 210.0


def test_a_batch_finishing_after_the_revocation_keeps_no_state_of_the_revoked_streams(
    worker: tuple[DatumWorker, FakeStore],
) -> None:
    """Faust does not wait for an agent's batch on revocation (stream_wait_empty=False): a batch taken
    before it may finish after it, and must not bring the stale state back."""
    w, store = worker
    a = (1, "/room/a")
    store.last = {a: (NOW - 4 * HOUR, 100.0)}

    async def revoked_while_storing(_rows: Any, **_kw: Any) -> None:
        await revoke(w, TP(TOPIC, 0))()

    async def scenario() -> None:
        plain_store = w.store
        setattr(w, "store", revoked_while_storing)  # noqa: B010
        await w.write_datums([energy(*a, TOPIC, 0, 0, NOW - 3 * HOUR, 110.0)])
        setattr(w, "store", plain_store)  # noqa: B010
        store.last[a] = (NOW - 2 * HOUR, 200.0)
        await w.write_datums([energy(*a, TOPIC, 0, 7, NOW - HOUR, 210.0)])

    asyncio.run(scenario())
    assert store.asked == [{a}, {a}]


def test_the_streams_of_a_message_are_known_by_their_partition() -> None:
    """One stream per message, as producers send them; a message of several streams maps each."""
    one = energy(1, "/room/a", TOPIC, 3, 0, NOW - HOUR, 1.0)
    mixed = Msg(
        OTHER,
        2,
        5,
        encode_batch(
            [
                Datum(1, "/room/b", NOW - HOUR, {}, {"energy": 1.0}, {}, ()),
                Datum(2, "/room/b", NOW - HOUR, {}, {"energy": 1.0}, {}, ()),
            ]
        ),
        b"",
        [(SCHEMA_HEADER, CURRENT.encode())],
    )
    out = process_parts([one, Part(mixed)], NOW)
    assert out.partitions == {(1, "/room/a"): (TOPIC, 3), (1, "/room/b"): (OTHER, 2), (2, "/room/b"): (OTHER, 2)}
    taken_apart = Part(mixed, [Datum(2, "/room/b", NOW - HOUR, {}, {"energy": 1.0}, {}, ())])  # narrowed down
    assert process_parts([taken_apart], NOW).partitions == {(2, "/room/b"): (OTHER, 2)}
