"""The order of commitment of a batch, as one object, with one retry policy.

Every agent hands its batch to a `Committer`:

    1. write      decode and check, store, stale marks (the caller's `attempt`, idempotent)
    2. letters    dead letters produced and awaited (refusals are as durable as rows)
    3. ack        only now may the offsets move (Faust commits acked offsets)

Failures are of two sorts, told apart by `is_transient`:

- *transient* (a store, the broker or the history log unreachable, a sink's backpressure): the
  same step is retried with the policy's backoff (honouring `SinkBackpressure.retry_after`) until
  it succeeds. Nothing moves meanwhile: the batch keeps its place, the partition waits.
- *caused by the data* (anything else, from any stage, lookups done for the data included): the
  batch is split in halves until the offending unit is found; that unit is tried again a few
  times (a fluke is not the data's fault), then dead-lettered with an `internal.<stage>` rule and
  the exception's text. Every other unit of the batch is written as usual.

No exception but cancellation leaves `commit`: an agent never holds events it has taken and not
stored, so Faust never acks past a hole (faust-streaming #312/#606).

Pure of Kafka, ClickHouse and PostgreSQL: the steps are callables, so tests drive every order and
failure with fakes (tests/unit/test_commit.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from sinks.base import SinkBackpressure

log = logging.getLogger(__name__)

U = TypeVar("U")  # a unit of a batch: a message, or one datum of a message
L = TypeVar("L")  # a dead letter
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff, capped; a sink's `retry_after` hint wins when it asks for longer."""

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 30.0
    # a unit that fails alone is tried this many more times before it is dead-lettered
    confirm_attempts: int = 2

    def delays(self) -> Iterator[float]:
        delay = self.initial_s
        while True:
            yield delay
            delay = min(self.max_s, delay * self.factor)

    @staticmethod
    def delay_for(exc: BaseException, planned: float) -> float:
        if isinstance(exc, SinkBackpressure):
            return max(planned, exc.retry_after)
        return planned


class Unavailable(Exception):
    """A service the step needs is not there (yet): always transient."""


def _transient_types() -> tuple[type[BaseException], ...]:
    from pipeline.resources import ResourceMissing

    # a schema or migration missing from the install is our fault, never the data's: wait for a fix
    types: list[type[BaseException]] = [
        SinkBackpressure,
        Unavailable,
        OSError,
        TimeoutError,
        ConnectionError,
        ResourceMissing,
    ]
    try:
        from clickhouse_connect.driver.exceptions import OperationalError as CHOperational

        types.append(CHOperational)
    except ImportError:  # pragma: no cover - always installed
        pass
    try:
        import psycopg

        types += [psycopg.OperationalError, psycopg.errors.AdminShutdown]
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


TRANSIENT_TYPES = _transient_types()


def is_transient(exc: BaseException) -> bool:
    """Could the same step succeed later with the same data?"""
    if isinstance(exc, TRANSIENT_TYPES):
        return True
    from aiokafka.errors import KafkaError as AIOKafkaError
    from confluent_kafka import KafkaException

    if isinstance(exc, AIOKafkaError):  # the broker's own word (a message too large is not)
        return bool(getattr(exc, "retriable", False)) or type(exc).__name__ in (
            "KafkaConnectionError",
            "KafkaTimeoutError",
            "NodeNotReadyError",
            "RequestTimedOutError",
            "ProducerClosed",
            "NotLeaderForPartitionError",
            "LeaderNotAvailableError",
        )
    if isinstance(exc, KafkaException):
        err = exc.args[0] if exc.args else None
        return bool(getattr(err, "retriable", lambda: True)())
    # ClickHouse's "busy or away" (its codes are the ClickHouse sinks' knowledge: sinks/clickhouse.py)
    from sinks.clickhouse import busy_for

    return busy_for(exc) is not None


def describe(exc: BaseException) -> str:
    """The exception as a dead letter states it: type, message, and where it was raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""
    text = str(exc)
    if len(text) > 2000:
        text = text[:2000] + "..."
    return f"{type(exc).__name__}: {text}{where}"


class DataFault(Exception):
    """Raised by an attempt to say "this is the data's fault" explicitly (tests use it)."""


class stage_named:  # noqa: N801 - used as `with stage_named("rates"):`
    """Names the stage an exception came from, for the `internal.<stage>` rule of its dead letter."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        return None

    def __exit__(self, _t: object, exc: BaseException | None, _tb: object) -> Literal[False]:
        if exc is not None and not hasattr(exc, "pipeline_stage"):
            with contextlib.suppress(AttributeError):  # exceptions with __slots__
                exc.pipeline_stage = self.name  # type: ignore[attr-defined]
        return False


def stage_of(exc: BaseException) -> str:
    return str(getattr(exc, "pipeline_stage", "write"))


@dataclass
class Isolated(Generic[U]):
    unit: U
    error: BaseException
    stage: str


class Committer(Generic[U, L]):
    """One batch's order of commitment with one retry policy (see the module docstring)."""

    def __init__(
        self,
        policy: RetryPolicy | None = None,
        *,
        transient: Callable[[BaseException], bool] = is_transient,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_retry: Callable[[str, BaseException, float], None] | None = None,
        on_isolated: Callable[[Isolated[U]], None] | None = None,
    ) -> None:
        self.policy = policy or RetryPolicy()
        self.transient = transient
        self.sleep = sleep
        self.on_retry = on_retry
        self.on_isolated = on_isolated

    async def retry(self, what: str, fn: Callable[..., Awaitable[T]], *args: object) -> T:
        """`fn(*args)` until it does not fail transiently; a data error is raised to the caller."""
        delays = self.policy.delays()
        while True:
            try:
                return await fn(*args)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self.transient(exc):
                    raise
                delay = self.policy.delay_for(exc, next(delays))
                if self.on_retry is not None:
                    self.on_retry(what, exc, delay)
                log.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
                await self.sleep(delay)

    async def write(
        self,
        units: Sequence[U],
        attempt: Callable[[Sequence[U]], Awaitable[list[L]]],
        split: Callable[[U], Sequence[U] | None],
        letter: Callable[[Isolated[U]], L],
        stage: Callable[[BaseException], str] = stage_of,
    ) -> list[L]:
        """Step 1 for every unit: what `attempt` returns (refusals to dead-letter), plus a letter
        for each unit isolated as the cause of a data error."""
        if not units:
            return []
        try:
            return await self.retry("write", attempt, units)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if len(units) > 1:
                log.warning("a batch of %d failed (%s): splitting it to find the cause", len(units), describe(exc))
                mid = len(units) // 2
                first = await self.write(units[:mid], attempt, split, letter, stage)
                return first + await self.write(units[mid:], attempt, split, letter, stage)
            return await self._alone(units[0], exc, attempt, split, letter, stage)

    async def _alone(
        self,
        unit: U,
        exc: BaseException,
        attempt: Callable[[Sequence[U]], Awaitable[list[L]]],
        split: Callable[[U], Sequence[U] | None],
        letter: Callable[[Isolated[U]], L],
        stage: Callable[[BaseException], str],
    ) -> list[L]:
        # a unit that has parts (a message of many datums) is searched further
        try:
            parts = split(unit)
        except asyncio.CancelledError:
            raise
        except Exception as split_exc:  # the unit cannot even be taken apart: it is the culprit
            exc, parts = split_exc, None
        if parts is not None and (len(parts) > 1 or (len(parts) == 1 and parts[0] is not unit)):
            return await self.write(parts, attempt, lambda _u: None, letter, stage)
        delays = self.policy.delays()
        for _ in range(self.policy.confirm_attempts):
            await self.sleep(next(delays))
            try:
                return await self.retry("write", attempt, [unit])
            except asyncio.CancelledError:
                raise
            except Exception as again:
                exc = again
        isolated = Isolated(unit, exc, stage(exc))
        log.error("dead-lettering a unit that fails on its own (%s): %s", isolated.stage, describe(exc))
        if self.on_isolated is not None:
            self.on_isolated(isolated)
        return [letter(isolated)]

    async def commit(
        self,
        units: Sequence[U],
        attempt: Callable[[Sequence[U]], Awaitable[list[L]]],
        send_letters: Callable[[list[L]], Awaitable[None]],
        ack: Callable[[], Awaitable[None]],
        *,
        split: Callable[[U], Sequence[U] | None] = lambda _u: None,
        letter: Callable[[Isolated[U]], L],
        stage: Callable[[BaseException], str] = stage_of,
    ) -> list[L]:
        """write → dead letters → ack. Returns the letters sent."""
        letters = await self.write(units, attempt, split, letter, stage)
        if letters:
            await self.retry("dead letters", send_letters, letters)
        await self.retry("ack", ack)
        return letters
