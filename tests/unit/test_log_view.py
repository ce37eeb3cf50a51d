"""LogView (pipeline/history/view.py), the one way the API and the worker follow the history log,
against a fake log: reload only when the high-water mark moves, get() keeps the last view while
the log is away, refresh() raises for the caller to retry, a broken connection is replaced."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

from pipeline.history.view import LogView


@dataclass
class FakeLog:
    version: int = 1
    down: bool = False
    migrated: bool = True
    connections: list[FakeConn] = field(default_factory=list)
    loads: int = 0

    def connect(self, dsn: str) -> FakeConn:
        if self.down:
            raise psycopg.OperationalError("connection refused")
        conn = FakeConn(self)
        self.connections.append(conn)
        return conn

    def load(self, conn: FakeConn) -> str:
        self.loads += 1
        return f"view at {self.version}"


@dataclass
class FakeConn:
    log: FakeLog
    closed: bool = False
    broken: bool = False

    def execute(self, sql: str, *args: Any) -> FakeConn:
        if self.log.down:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        if not self.log.migrated:
            raise psycopg.errors.UndefinedTable('relation "history.transactions" does not exist')
        return self

    def fetchone(self) -> tuple[int]:
        return (self.log.version,)

    def close(self) -> None:
        self.closed = True


def view(log: FakeLog, check_s: float = 0.0, dsn: str = "postgresql://log", missing: str | None = None) -> LogView[str]:
    return LogView(dsn, "test view", log.load, check_s, missing=missing, connect=log.connect)


def test_made_again_only_when_the_log_moves() -> None:
    log = FakeLog()
    v = view(log)
    assert v.get() == "view at 1" and v.get() == "view at 1"
    assert log.loads == 1
    log.version = 2
    assert v.get() == "view at 2" and log.loads == 2
    assert v.refresh() == "view at 2" and log.loads == 2
    assert v.refresh(force=True) == "view at 2" and log.loads == 3
    assert len(log.connections) == 1  # one connection throughout


def test_get_checks_at_most_every_check_s() -> None:
    log = FakeLog()
    v = view(log, check_s=3600)
    assert v.get() == "view at 1"
    log.version = 2
    assert v.get() == "view at 1"  # not checked again yet
    assert v.refresh() == "view at 2"  # refresh checks at once


def test_get_keeps_the_last_view_while_the_log_is_away(caplog: pytest.LogCaptureFixture) -> None:
    log = FakeLog(down=True)
    v = view(log)
    with caplog.at_level(logging.WARNING):
        assert v.get() is None
    assert "none known yet" in caplog.text
    log.down = False
    assert v.get() == "view at 1"
    log.down, log.version = True, 2
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert v.get() == "view at 1"
    assert "keeping the last known" in caplog.text
    assert log.connections[0].closed  # dropped: the next check connects afresh
    log.down = False
    assert v.get() == "view at 2" and len(log.connections) == 2


def test_refresh_raises_and_keeps_the_last_view_for_the_next_call() -> None:
    log = FakeLog()
    v = view(log)
    assert v.refresh() == "view at 1"
    log.down = True
    with pytest.raises(psycopg.OperationalError):
        v.refresh()
    log.down = False
    assert v.refresh() == "view at 1" and log.loads == 1


def test_missing_without_a_log_or_before_it_is_migrated() -> None:
    assert view(FakeLog(), dsn="", missing="none").get() == "none"
    with pytest.raises(LookupError):
        view(FakeLog(), dsn="").refresh()
    log = FakeLog(migrated=False)
    v = view(log, missing="none")
    assert v.get() == "none"
    with pytest.raises(psycopg.errors.UndefinedTable):
        v.refresh()
    assert not log.connections[0].closed  # the connection is fine, the log is just empty
    log.migrated = True
    assert v.get() == "view at 1"
