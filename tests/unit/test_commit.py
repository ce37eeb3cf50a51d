"""The order of commitment (pipeline/worker/commit.py) driven with fakes: every step, every failure.

Like quix-streams' test_checkpointing.py: a fake store, a fake dead-letter producer and a fake
ack record what happened in which order; each test breaks one of them in one way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from pipeline.worker.commit import Committer, DataFault, Isolated, RetryPolicy, Unavailable, is_transient, stage_named
from sinks.base import SinkBackpressure


@dataclass
class Journal:
    """What the fakes saw, in order."""

    events: list[tuple[str, object]] = field(default_factory=list)
    slept: list[float] = field(default_factory=list)
    stored: list[int] = field(default_factory=list)
    letters: list[str] = field(default_factory=list)


class FakeStore:
    """Stores integers; `poison` values raise a data error, `outages` transient errors first."""

    def __init__(
        self,
        journal: Journal,
        poison: set[int] = frozenset(),
        outages: int = 0,  # type: ignore[assignment]
        backpressure: float | None = None,
    ) -> None:
        self.j = journal
        self.poison = set(poison)
        self.outages = outages
        self.backpressure = backpressure

    async def attempt(self, units: Sequence[int]) -> list[str]:
        self.j.events.append(("attempt", tuple(units)))
        if self.backpressure is not None:
            retry_after, self.backpressure = self.backpressure, None
            raise SinkBackpressure("store is full", retry_after=retry_after)
        if self.outages:
            self.outages -= 1
            raise ConnectionRefusedError("store unreachable")
        with stage_named("check"):
            bad = [u for u in units if u in self.poison]
            if bad:
                raise ValueError(f"cannot take {bad[0]}")
        self.j.stored.extend(units)
        # odd units are refused by the (pure) rules: they come back as letters to send
        return [f"refused:{u}" for u in units if u % 2]


def committer(j: Journal, policy: RetryPolicy | None = None) -> Committer[int, str]:
    async def sleep(s: float) -> None:
        j.slept.append(s)
        await asyncio.sleep(0)  # yield, as a real sleep does

    return Committer(policy or RetryPolicy(initial_s=0.5, max_s=4.0), sleep=sleep)


def run(
    j: Journal,
    store: FakeStore,
    units: list[int],
    *,
    letters_fail: int = 0,
    ack_fail: int = 0,
    policy: RetryPolicy | None = None,
) -> list[str]:
    c = committer(j, policy)
    fails = {"letters": letters_fail, "ack": ack_fail}

    async def send_letters(letters: list[str]) -> None:
        j.events.append(("letters", tuple(letters)))
        if fails["letters"]:
            fails["letters"] -= 1
            raise ConnectionError("broker away")
        j.letters.extend(letters)

    async def ack() -> None:
        j.events.append(("ack", None))
        if fails["ack"]:
            fails["ack"] -= 1
            raise Unavailable("commit failed")

    def letter(i: Isolated[int]) -> str:
        return f"internal.{i.stage}:{i.unit}:{type(i.error).__name__}"

    return asyncio.run(c.commit(units, store.attempt, send_letters, ack, letter=letter))


def kinds(j: Journal) -> list[str]:
    return [e[0] for e in j.events]


def test_happy_path_order_is_write_then_letters_then_ack() -> None:
    j = Journal()
    letters = run(j, FakeStore(j), [2, 3, 4])
    assert kinds(j) == ["attempt", "letters", "ack"]
    assert j.stored == [2, 3, 4]
    assert letters == j.letters == ["refused:3"]


def test_no_letters_no_letter_step() -> None:
    j = Journal()
    run(j, FakeStore(j), [2, 4])
    assert kinds(j) == ["attempt", "ack"]


def test_transient_store_failure_retries_the_same_batch_with_backoff_and_acks_once() -> None:
    j = Journal()
    run(j, FakeStore(j, outages=3), [1, 2, 3, 4])
    assert [e for e in j.events if e[0] == "attempt"] == [("attempt", (1, 2, 3, 4))] * 4
    assert j.slept == [0.5, 1.0, 2.0]  # the policy's backoff, nothing split
    assert kinds(j)[-2:] == ["letters", "ack"]
    assert j.stored == [1, 2, 3, 4]


def test_backoff_is_capped() -> None:
    j = Journal()
    run(j, FakeStore(j, outages=6), [2])
    assert j.slept == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_backpressure_retry_after_is_honoured() -> None:
    j = Journal()
    run(j, FakeStore(j, backpressure=7.5), [2])
    assert j.slept == [7.5]  # the sink asked for longer than the policy's first delay
    assert j.stored == [2]


def test_nothing_is_acked_while_the_store_is_away() -> None:
    j = Journal()
    c = committer(j)
    store = FakeStore(j, outages=10**9)
    acked: list[bool] = []

    async def ack() -> None:
        acked.append(True)

    async def letters(_l: list[str]) -> None:
        return None

    async def go() -> None:
        task = asyncio.ensure_future(c.commit([1, 2], store.attempt, letters, ack, letter=str))
        for _ in range(50):
            await asyncio.sleep(0)
        assert not task.done()
        task.cancel()  # a rebalance or shutdown: cancellation goes through, unacked
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert acked == [] and j.stored == []


def test_a_data_error_isolates_the_one_unit_and_stores_the_rest() -> None:
    j = Journal()
    letters = run(j, FakeStore(j, poison={6}), [2, 4, 6, 8, 10, 12, 14, 16])
    assert sorted(j.stored) == [2, 4, 8, 10, 12, 14, 16]  # every other unit is stored
    assert letters == ["internal.check:6:ValueError"]  # the culprit, with the stage and the exception
    assert kinds(j)[-2:] == ["letters", "ack"]


def test_isolation_retries_the_lone_unit_before_dead_lettering_it() -> None:
    j = Journal()
    run(j, FakeStore(j, poison={3}), [3], policy=RetryPolicy(initial_s=0.5, confirm_attempts=2))
    assert [e for e in j.events if e[0] == "attempt"] == [("attempt", (3,))] * 3


def test_a_fluke_is_not_blamed_on_the_data() -> None:
    j = Journal()
    store = FakeStore(j, poison={5})
    real = store.attempt
    calls = {"n": 0}

    async def flaky(units: Sequence[int]) -> list[str]:
        if units == [5] or tuple(units) == (5,):
            calls["n"] += 1
            if calls["n"] == 2:  # the second try alone succeeds: it was not the data
                store.poison.clear()
        return await real(units)

    c = committer(j)

    async def nothing(_l: list[str]) -> None:
        return None

    async def ack() -> None:
        return None

    letters = asyncio.run(c.commit([4, 5], flaky, nothing, ack, letter=str))
    assert 5 in j.stored and letters == ["refused:5"]


def test_several_culprits_each_get_one_letter() -> None:
    j = Journal()
    letters = run(j, FakeStore(j, poison={1, 8, 9}), list(range(1, 11)))
    internal = sorted(x for x in letters if x.startswith("internal"))
    assert internal == ["internal.check:1:ValueError", "internal.check:8:ValueError", "internal.check:9:ValueError"]
    assert sorted(j.stored) == [2, 3, 4, 5, 6, 7, 10]


def test_a_unit_with_parts_is_searched_down_to_the_part() -> None:
    """A message of many datums: the split finds the datum, its siblings are stored."""
    j = Journal()
    c = committer(j)
    poison = {23}

    async def attempt(units: Sequence[int]) -> list[str]:
        j.events.append(("attempt", tuple(units)))
        # a "message" unit (>= 100) stands for its datums 10*k .. 10*k+9 of k = unit - 100
        datums = [d for u in units for d in (range((u - 100) * 10, (u - 100) * 10 + 10) if u >= 100 else [u])]
        if poison & set(datums):
            raise KeyError("boom")
        j.stored.extend(datums)
        return []

    def split(u: int) -> list[int] | None:
        return list(range((u - 100) * 10, (u - 100) * 10 + 10)) if u >= 100 else None

    async def nothing(_l: list[str]) -> None:
        return None

    async def ack() -> None:
        j.events.append(("ack", None))

    letters = asyncio.run(
        c.commit([101, 102, 103], attempt, nothing, ack, split=split, letter=lambda i: f"{i.unit}:{i.stage}")
    )
    assert letters == ["23:write"]
    assert sorted(j.stored) == [d for d in range(10, 40) if d != 23]
    assert kinds(j)[-1] == "ack"


def test_letters_are_retried_before_the_ack_and_the_ack_is_retried() -> None:
    j = Journal()
    run(j, FakeStore(j), [1], letters_fail=2, ack_fail=1)
    assert kinds(j) == ["attempt", "letters", "letters", "letters", "ack", "ack"]
    assert j.letters == ["refused:1"]


def test_a_data_error_in_the_letter_step_is_not_swallowed() -> None:
    """The commit never acks past letters it could not send: the error reaches the agent's guard."""
    j = Journal()
    c = committer(j)

    async def attempt(units: Sequence[int]) -> list[str]:
        return ["x"]

    async def letters(_l: list[str]) -> None:
        raise DataFault("letter too large")

    acked: list[bool] = []

    async def ack() -> None:
        acked.append(True)

    with pytest.raises(DataFault):
        asyncio.run(c.commit([1], attempt, letters, ack, letter=str))
    assert acked == []


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (ConnectionRefusedError(), True),
        (TimeoutError(), True),
        (SinkBackpressure("x"), True),
        (Unavailable("pg"), True),
        (ValueError("bad"), False),
        (KeyError("k"), False),
        (OverflowError("big"), False),
    ],
)
def test_transient_classification(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_a_missing_install_resource_is_waited_for_never_blamed_on_the_data() -> None:
    """A wheel without its Avro schemas: every message would fail to decode. That is ours to fix,
    so it is retried (and logged), never dead-lettered as bad input."""
    from pipeline.wire.codec import SchemaUnavailable

    assert is_transient(SchemaUnavailable("schemas/avro/datum_batch.v1.avsc missing"))


def test_clickhouse_errors_are_told_apart_by_code() -> None:
    from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

    assert is_transient(OperationalError("connection refused"))
    assert is_transient(DatabaseError("HTTPDriver received ClickHouse error: Code: 241. DB::Exception: Memory limit"))
    assert not is_transient(DatabaseError("HTTPDriver received ClickHouse error: Code: 27. Cannot parse input"))


def test_kafka_errors_by_retriability() -> None:
    from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError

    assert is_transient(KafkaConnectionError())
    assert not is_transient(MessageSizeTooLargeError())
