"""The one sink contract (sinks/base.py): every store the worker writes is a Sink, and each turns
its store's "not now" into SinkBackpressure with a wait, and nothing else (an error the batch
causes stays what it is, so the committer isolates and dead-letters the unit)."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from processors.auxiliary import AuxChange, AuxKey
from processors.datum import Datum
from processors.rollup import RollupRow
from processors.rows import RawColumns
from sinks.auxiliary import AuxiliarySink
from sinks.base import Sink, SinkBackpressure
from sinks.clickhouse import DeadLetterSink, RawSink, busy_for
from sinks.history import HistorySink
from sinks.rollups import RollupLedger, RollupSink, RollupWrite

ROOT = Path(__file__).resolve().parents[2]


class FailingClient:
    """A clickhouse-connect client whose every insert raises what the test says."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.inserts = 0

    def insert(self, *_a: Any, **_kw: Any) -> None:
        self.inserts += 1
        raise self.error

    insert_arrow = insert


def server_error(code: int, name: str) -> DatabaseError:
    # as clickhouse-connect words a server's refusal
    return DatabaseError(
        f"HTTPDriver for http://x:8123 received ClickHouse error code {code}\n"
        f" Code: {code}. DB::Exception: ... ({name})"
    )


def one_row() -> RawColumns:
    rows = RawColumns()
    rows.add_datum(Datum(1, "/S1", 1_700_000_000_000, {"watts": 1.0}, {}, {}, ()))
    return rows


ROLLUP = RollupRow("hour", 1, "/S1", "watts", "i", 0, 3_600_000)

# each ClickHouse sink with a batch it writes with one insert
CLICKHOUSE_SINKS: list[tuple[str, Callable[[Any], Sink[Any, Any]], Any]] = [
    ("raw", RawSink, one_row()),
    ("dead letters", DeadLetterSink, [("id", 0, "envelope", ["envelope.corrupt"], "t", 0, 1, b"{}")]),
    ("rollups", RollupSink, RollupWrite([ROLLUP])),
    ("rollup ledger", RollupLedger, [(1, "/S1", 5)]),
    ("auxiliary", AuxiliarySink, [AuxChange("delete", removed=AuxKey(1, "/S1", "Reset", 0))]),
]


@pytest.mark.parametrize(
    ("error", "wait"),
    [
        (OperationalError("connection refused"), 1.0),
        (ConnectionResetError(), 1.0),
        (server_error(252, "TOO_MANY_PARTS"), 5.0),
        (server_error(241, "MEMORY_LIMIT_EXCEEDED"), 2.0),
        (DatabaseError("HTTPDriver for http://x:8123 returned response code 503"), 1.0),
        (server_error(53, "TYPE_MISMATCH"), None),
        (server_error(62, "SYNTAX_ERROR"), None),
        (ValueError("a value the batch carries"), None),
    ],
)
def test_busy_or_the_batchs_fault(error: BaseException, wait: float | None) -> None:
    assert busy_for(error) == wait


@pytest.mark.parametrize(("name", "make", "batch"), CLICKHOUSE_SINKS, ids=[s[0] for s in CLICKHOUSE_SINKS])
def test_a_busy_store_is_backpressure_with_its_wait(
    name: str, make: Callable[[Any], Sink[Any, Any]], batch: Any
) -> None:
    client = FailingClient(server_error(252, "TOO_MANY_PARTS"))
    with pytest.raises(SinkBackpressure) as caught:
        make(client).write(batch)
    assert client.inserts == 1 and caught.value.retry_after == 5.0


@pytest.mark.parametrize(("name", "make", "batch"), CLICKHOUSE_SINKS, ids=[s[0] for s in CLICKHOUSE_SINKS])
def test_an_error_of_the_batch_is_not_backpressure(
    name: str, make: Callable[[Any], Sink[Any, Any]], batch: Any
) -> None:
    """Retried forever, a refusal the data causes would stop the partition; raised as it is, the
    committer splits the batch and dead-letters the unit."""
    client = FailingClient(server_error(53, "TYPE_MISMATCH"))
    with pytest.raises(DatabaseError, match="TYPE_MISMATCH"):
        make(client).write(batch)


def test_history_log_away_is_backpressure_and_the_next_write_reconnects() -> None:
    attempts: list[int] = []

    def connect() -> psycopg.Connection[Any]:
        attempts.append(1)
        raise psycopg.OperationalError("connection refused")

    sink = HistorySink(connect)
    with pytest.raises(SinkBackpressure, match="history log"):
        sink.write([])
    with pytest.raises(SinkBackpressure, match="migration"):
        sink.setup()
    with pytest.raises(SinkBackpressure):
        sink.write([])
    assert len(attempts) == 3


def test_the_worker_writes_every_store_through_a_sink() -> None:
    """No store write bypasses the contract: the worker imports no ClickHouse write function,
    and every store it writes is a Sink."""
    for sink in (RawSink, DeadLetterSink, RollupSink, RollupLedger, AuxiliarySink, HistorySink):
        assert issubclass(sink, Sink), sink
    writers = {
        "write_rollups",
        "write_changes",
        "mark_rolled_up",
        "write_dead_letters",
        "apply_event",
        "apply_events",
        "import_events",
        "insert",
        "insert_arrow",
        "insert_df",
    }
    for path in (
        "pipeline/worker/app.py",
        "pipeline/worker/batch.py",
        "pipeline/worker/rollups.py",
        "pipeline/history/link.py",
    ):
        tree = ast.parse((ROOT / path).read_text())
        used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        used |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        assert not used & writers, (path, used & writers)
