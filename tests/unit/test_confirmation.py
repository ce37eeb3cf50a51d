"""What the producer calls confirmed (pipeline/wire/producer.py): delivery callbacks and the
workers' committed offsets driven by hand, no broker. Auxiliary changes (Reset markers) are
confirmed like datums; a producer that never confirms keeps nothing per message."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from pipeline.settings import Settings
from pipeline.wire.producer import DatumProducer

AUX = "aux"
DATA = "datum.x"


@dataclass
class Delivered:
    """The parts of a confluent_kafka Message a delivery callback reads."""

    t: str
    p: int
    o: int

    def topic(self) -> str:
        return self.t

    def partition(self) -> int:
        return self.p

    def offset(self) -> int:
        return self.o


@pytest.fixture
def make() -> Iterator[type[DatumProducer]]:
    made: list[DatumProducer] = []

    def build(**kw: bool) -> DatumProducer:
        # nothing listens there: the callbacks are driven by hand
        p = DatumProducer(Settings.from_env({})._with({"kafka_bootstrap": "127.0.0.1:9"}), track=True, **kw)
        p.flush = lambda timeout=0.0: None  # type: ignore[method-assign]
        made.append(p)
        return p

    yield build  # type: ignore[misc]
    for p in made:
        p.close()


def committed(producer: DatumProducer, offsets: dict[tuple[str, int], int]) -> None:
    producer._committed = lambda _tps: dict(offsets)  # type: ignore[method-assign]


def test_an_auxiliary_change_is_confirmed_only_once_committed_past(make: type[DatumProducer]) -> None:
    p = make()
    p._on_message_delivered(3, ((1, "/a", 10), (1, "/a", 20), (1, "/a", 30)), None, Delivered(DATA, 0, 5))
    p._on_change_delivered(None, Delivered(AUX, 0, 7))
    committed(p, {(DATA, 0): 6, (AUX, 0): 7})  # the datum message stored; the change not yet
    out = p.confirm(0.01)
    assert (out.confirmed_datums, out.unconfirmed_datums) == (3, 0)
    assert (out.confirmed_changes, out.unconfirmed_changes) == (0, 1)
    assert not out.complete, "an unconfirmed change must keep the report incomplete"
    assert out.reason is not None and "1 auxiliary change(s)" in out.reason
    committed(p, {(DATA, 0): 6, (AUX, 0): 8})
    out = p.confirm(1.0)
    assert (out.confirmed_changes, out.unconfirmed_changes) == (1, 0) and out.complete


def test_changes_a_restarted_broker_lost_are_failed_not_confirmed(make: type[DatumProducer]) -> None:
    p = make()
    p._on_change_delivered(None, Delivered(AUX, 1, 40))
    p._on_change_delivered(None, Delivered(AUX, 1, 41))
    p._on_change_delivered(None, Delivered(AUX, 1, 0))  # offsets went back: the partition was lost
    committed(p, {(AUX, 1): 1})  # the new log's commit covers the new message only
    out = p.confirm(0.01)
    assert (out.confirmed_changes, out.unconfirmed_changes) == (1, 2)
    assert not out.complete


def test_a_failed_delivery_of_a_change_is_unconfirmed(make: type[DatumProducer]) -> None:
    from confluent_kafka import KafkaError

    p = make()
    p._on_change_delivered(KafkaError(KafkaError._MSG_TIMED_OUT), Delivered(AUX, 0, -1))
    out = p.confirm(0.01)
    assert out.unconfirmed_changes == 1 and not out.complete


def test_a_producer_that_never_confirms_keeps_nothing_per_message(make: type[DatumProducer]) -> None:
    p = make(confirming=False)
    for k in range(10_000):
        p._on_message_delivered(1, ((1, "/a", k),), None, Delivered(DATA, 0, k))
        p._on_change_delivered(None, Delivered(AUX, 0, k))
    assert p._pending == {}
    assert p.delivered_identities() == set()
    with pytest.raises(RuntimeError, match="confirming=False"):
        p.confirm(0.01)  # it could only answer "all confirmed", which nobody checked
