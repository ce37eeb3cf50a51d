"""A view of the metadata history log that follows it: what `load(connection)` makes of the log,
made again whenever the log's high-water mark (its latest applied transaction) moves. Every
follower of the log uses it: the HTTP API (node time zones, security tokens) and the worker (the
validators' catalog, through MetadataLink).

Two ways to ask, for two kinds of caller:

* `get()` checks at most every `check_s` and never raises for the log: when it cannot be read
  (PostgreSQL away), the last view made is kept and a warning logged; before the first it is None,
  and the caller decides what that means (UTC for zones; 503 for tokens). Without a log
  configured, or before it is migrated, the view is `missing`. (The API, per request.)
* `refresh(force)` checks now and raises psycopg.Error when the log cannot be read, keeping the
  last view for the next call: the caller decides whether to wait and retry. (The worker, which
  validates nothing without its catalog.)
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def connect(dsn: str) -> Any:
    import psycopg  # only when there is a log to read

    return psycopg.connect(dsn, autocommit=True, connect_timeout=3)


class LogView(Generic[T]):
    def __init__(
        self,
        dsn: str,
        what: str,
        load: Callable[[Any], T],
        check_s: float,
        missing: T | None = None,
        connect: Callable[[str], Any] = connect,
    ) -> None:
        self.dsn = dsn
        self.what = what  # for the log: "node time zones", "security tokens"
        self.load = load
        self.check_s = check_s
        self.missing = missing
        self.connect = connect  # tests hand in a fake connection
        self._value: T | None = None
        self._version = -1  # the high-water mark _value was made at; -1: none made
        self._checked = float("-inf")
        self._conn: Any = None
        self._lock = threading.Lock()  # one connection, one thread at a time

    def get(self) -> T | None:
        """The view, checked at most every check_s; the last one kept while the log is unreadable."""
        with self._lock:
            if time.monotonic() - self._checked >= self.check_s:
                self._get()
            return self._value

    def refresh(self, force: bool = False) -> T:
        """The view, checked now and made again if the log moved (always if `force`). Raises
        psycopg.Error (the log unreadable, or not migrated) and LookupError (no log configured)."""
        with self._lock:
            if not self.dsn:
                raise LookupError(f"{self.what}: no history log configured")
            self._checked = time.monotonic()
            return self._refresh(force)

    def _get(self) -> None:
        self._checked = time.monotonic()
        if not self.dsn:
            self._value = self.missing
            return
        import psycopg

        try:
            self._refresh(False)
        except psycopg.errors.UndefinedTable:
            # the log is not migrated yet: nothing was ever written
            self._value, self._version = self.missing, -1
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()
            log.warning(
                "%s unavailable (%s); %s",
                self.what,
                first[0] if first else type(exc).__name__,
                "keeping the last known" if self._value is not None else "none known yet",
            )

    def _refresh(self, force: bool) -> T:
        from sinks import history

        def follow(conn: Any) -> T:
            version = history.catalog_version(conn)
            value = self._value
            if force or version != self._version or value is None:
                value = self.load(conn)
                self._value, self._version = value, version
            return value

        return self._reading(follow)

    def _reading(self, read: Callable[[Any], R]) -> R:
        import psycopg

        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = self.connect(self.dsn)
        try:
            return read(self._conn)
        except psycopg.errors.UndefinedTable:
            raise  # the connection is fine: the log is just not migrated
        except psycopg.Error:
            self.close_connection()  # a fresh one next time
            raise

    def close_connection(self) -> None:
        with contextlib.suppress(Exception):
            if self._conn is not None:
                self._conn.close()
        self._conn = None

    def close(self) -> None:
        with self._lock:
            self.close_connection()
