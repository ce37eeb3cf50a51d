"""What one metadata event does to the history log, decided from plain data.

The history log is written by two paths in sinks/history.py: `apply_event` (one event per
transaction, answering with queries) and `import_events` (a batch, answering from an in-memory
replay of the keys it touches). Both drive the one step below, so they apply the same rules in
the same order and cannot disagree.

The split follows psycopg 3's generators (protocol) and waiting functions (I/O):
`apply_step(event, tx_time)` is a generator. It yields what it needs to know next, a `Need`,
and is sent the answer; it returns the `Outcome`. It never does I/O itself. The questions come
lazily, in the order the rules need them, so a duplicate costs one look-up and no key reads:

    AskRecord(event_id)         -> IdRecord | None: the applied record of the id if there is
                                   one, else its first refused one
    AskClock(entity, key)       -> Clock: the clock now and the key's last applied change
    AskRows(entity, key, window)-> Sequence[CurrentRow]: the key's rows (time-dependent: at least
                                   those overlapping window)
    AskExists(entity, key)      -> bool: whether a referenced entity exists now
    Write(plan, tx_time)        -> None, or the Violation a database constraint raised

`drive(step, answer)` runs a step with a function answering each need; `decide_apply(...)`
runs it on plain data (the tests' entry point).

The rules, in order:
1. the event id: recorded with other content -> refused `event.id_reused`, not recorded; already
   applied -> `duplicate`; refused before -> tried again (only an applied event spends its id);
2. the transaction time: the clock, kept after the key's last change; one asked for must be
   after it (`tx_time.not_after_last_change`);
3. `decide()` on the key's current rows (processors/metadata.py);
4. references: each entity the value names must exist (`reference.missing`);
5. the write: a constraint the database raises anyway is a refusal (`constraint.<name>`).
Every refusal but `event.id_reused` is recorded in the log with its transaction time.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Generator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Final, TypeVar

from processors.metadata import (
    CurrentRow,
    Interval,
    JsonValue,
    KeyValue,
    MetadataEvent,
    Plan,
    Refusal,
    decide,
    key_text,
    references,
    relevant_interval,
    same_json,
)

ONE_MICROSECOND: Final = timedelta(microseconds=1)  # PostgreSQL's timestamp resolution

# What an event says, as opposed to when, by whom and why it was sent: the same content
# re-published later (a new produced_at, another author or comment) is the same event.
CONTENT_FIELDS: Final[tuple[str, ...]] = ("entity", "key", "op", "value", "valid_from", "valid_to")


def event_content(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The content of an event document (MetadataEvent.as_dict() or the stored `event` jsonb)."""
    return {f: doc.get(f) for f in CONTENT_FIELDS}


def same_content(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    # one side is usually read back from jsonb: compared as jsonb compares (1e23 is 10**23)
    return same_json(event_content(a), event_content(b))


# --- needs: what the step asks ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AskRecord:
    """What the log holds for this event id. Answer: IdRecord | None."""

    event_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class AskClock:
    """The clock now and the key's last applied change. Answer: Clock."""

    entity: str
    key_text: str


@dataclass(frozen=True, slots=True)
class AskRows:
    """The key's current rows; time-dependent: at least those overlapping `window`.
    Answer: a list or tuple of CurrentRow (row_id: the driver's handle to close the row)."""

    entity: str
    key_text: str
    window: Interval | None


@dataclass(frozen=True, slots=True)
class AskExists:
    """Whether the entity `key` names exists now (a reference of the value). Answer: bool."""

    entity: str
    key: Mapping[str, KeyValue]
    key_text: str


@dataclass(frozen=True, slots=True)
class Write:
    """Record the event as applied at tx_time and write its plan (an unchanged plan writes only
    the record). Answer: None, or the Violation of a database constraint (nothing written)."""

    plan: Plan
    tx_time: datetime


Need = AskRecord | AskClock | AskRows | AskExists | Write


# --- answers ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IdRecord:
    """A recorded delivery of an event id: the applied one if there is one, else the first."""

    tx_id: int
    applied: bool
    content: Mapping[str, JsonValue]  # the recorded event (or its content: CONTENT_FIELDS)


@dataclass(frozen=True, slots=True)
class Clock:
    now: datetime  # the transaction time if none is asked for and the key allows it
    last_change: datetime | None  # the key's latest applied transaction time, None if none


@dataclass(frozen=True, slots=True)
class Violation:
    constraint: str  # the constraint's name (or the error's kind when it has none)
    message: str


# --- outcomes -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Applied:
    plan: Plan
    tx_time: datetime

    @property
    def changed(self) -> bool:
        return not self.plan.unchanged  # False: the event re-stated what is there


@dataclass(frozen=True, slots=True)
class Duplicate:
    tx_id: int  # the applied delivery

    rule: ClassVar[str] = "event.duplicate"

    @property
    def reason(self) -> str:
        return f"already applied as tx {self.tx_id}"


@dataclass(frozen=True, slots=True)
class Refused:
    rule: str
    reason: str
    tx_time: datetime | None  # the refusal's log row; None: not recorded (event.id_reused)
    earlier_tx: int | None = None  # event.id_reused: the delivery that owns the id

    @property
    def recorded(self) -> bool:
        return self.tx_time is not None


Outcome = Applied | Duplicate | Refused
Step = Generator[Need, object, Outcome]
T = TypeVar("T")


# --- the rules ----------------------------------------------------------------------------------


def transaction_time(asked: datetime | None, clock: Clock) -> tuple[datetime, Refusal | None]:
    """The transaction time of a change to a key, and why it is refused if it is: a key's
    changes are strictly ordered in transaction time."""
    last = clock.last_change
    if asked is None:
        # the clock, unless it lags the key (another writer's clock, or tx_times replayed)
        return (clock.now if last is None or clock.now > last else last + ONE_MICROSECOND), None
    now = asked.astimezone(UTC)
    if last is not None and now <= last:
        return now, Refusal(
            "tx_time.not_after_last_change",
            f"transaction time {now.isoformat()} is not after the key's last change {last.isoformat()}",
        )
    return now, None


def apply_step(event: MetadataEvent, tx_time: datetime | None = None) -> Step:
    """The outcome of applying `event`, asking for what it needs (see the module docstring).

    tx_time: the transaction time asked for (replays, tests); None: the clock.
    """
    need: Need = AskRecord(event.event_id)
    record = _optional(need, (yield need), IdRecord)
    if record is not None:
        if not same_content(record.content, event.as_dict()):
            return Refused(
                "event.id_reused",
                f"event_id {event.event_id} was used by another event (tx {record.tx_id})",
                None,
                record.tx_id,
            )
        if record.applied:
            return Duplicate(record.tx_id)
        # refused before: tried again, and the attempt gets its own log row
    ktext = event.key_text
    need = AskClock(event.entity, ktext)
    clock = _expect(need, (yield need), Clock)
    now, late = transaction_time(tx_time, clock)
    if late is not None:
        return Refused(late.rule, late.message, now)
    need = AskRows(event.entity, ktext, relevant_interval(event))
    rows = _rows(need, (yield need))
    outcome = decide(event, rows)
    if isinstance(outcome, Refusal):
        return Refused(outcome.rule, outcome.message, now)
    for target, key in references(event):
        target_text = key_text(key)
        need = AskExists(target, key, target_text)
        if not _expect(need, (yield need), bool):
            return Refused(
                "reference.missing",
                f"{event.entity} {ktext} refers to {target} {target_text}, which does not exist",
                now,
            )
    need = Write(outcome, now)
    violation = _optional(need, (yield need), Violation)
    if violation is not None:
        return Refused(f"constraint.{violation.constraint}", f"refused by the database: {violation.message}", now)
    return Applied(outcome, now)


# Answers are checked as they come: a driver that answers the wrong thing fails at once, naming
# the need, not deep inside a rule.


def _expect(need: Need, answer: object, kind: type[T]) -> T:
    if isinstance(answer, kind):
        return answer
    raise TypeError(f"{type(need).__name__} answered with {type(answer).__name__}, expected {kind.__name__}")


def _optional(need: Need, answer: object, kind: type[T]) -> T | None:
    return None if answer is None else _expect(need, answer, kind)


def _rows(need: AskRows, answer: object) -> Sequence[CurrentRow]:
    if isinstance(answer, (list, tuple)):
        return answer
    raise TypeError(f"AskRows answered with {type(answer).__name__}, expected a list of CurrentRow")


# --- running a step -----------------------------------------------------------------------------


def drive(step: Step, answer: Callable[[Need], object]) -> Outcome:
    """Run a step to its outcome, `answer` supplying what each need asks (the driver's I/O)."""
    try:
        need = next(step)
        while True:
            need = step.send(answer(need))
    except StopIteration as done:
        outcome: Outcome = done.value
        return outcome


def decide_apply(
    event: MetadataEvent,
    *,
    clock: datetime,
    last_change: datetime | None = None,
    tx_time: datetime | None = None,
    record: IdRecord | None = None,
    rows: Sequence[CurrentRow] = (),
    missing: Collection[tuple[str, str]] = (),
    violation: Violation | None = None,
) -> Outcome:
    """The outcome from plain data: what the log holds for the id (`record`), the clock and the
    key's last change, its current rows, the (entity, key_text) references that do not exist
    (`missing`; every other one exists) and the violation a write would meet (None: none)."""

    def answer(need: Need) -> object:
        if isinstance(need, AskRecord):
            return record
        if isinstance(need, AskClock):
            return Clock(clock, last_change)
        if isinstance(need, AskRows):
            return list(rows)
        if isinstance(need, AskExists):
            return (need.entity, need.key_text) not in missing
        return violation

    return drive(apply_step(event, tx_time), answer)


__all__ = [
    "CONTENT_FIELDS",
    "ONE_MICROSECOND",
    "Applied",
    "AskClock",
    "AskExists",
    "AskRecord",
    "AskRows",
    "Clock",
    "Duplicate",
    "IdRecord",
    "Need",
    "Outcome",
    "Refused",
    "Step",
    "Violation",
    "Write",
    "apply_step",
    "decide_apply",
    "drive",
    "event_content",
    "same_content",
    "transaction_time",
]
