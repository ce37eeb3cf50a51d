"""A view of the metadata history log that follows it: what `load(connection)` makes of the log,
made again whenever the log's high-water mark (its latest applied transaction) moves, checked at
most every `check_s`. The HTTP API keeps two: node time zones and security tokens.

When the log cannot be read (PostgreSQL away), the last view made is kept; before the first it
is None, and the caller decides what that means (UTC for zones; 503 for tokens). Without a log
configured, or before it is migrated, the view is `missing`.
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


class LogView(Generic[T]):
    def __init__(self, dsn: str, what: str, load: Callable[[Any], T], check_s: float,
                 missing: T | None = None) -> None:
        self.dsn = dsn
        self.what = what  # for the log: "node time zones", "security tokens"
        self.load = load
        self.check_s = check_s
        self.missing = missing
        self._value: T | None = None
        self._version = -1
        self._checked = float("-inf")
        self._conn: Any = None
        self._lock = threading.Lock()

    def get(self) -> T | None:
        with self._lock:
            if time.monotonic() - self._checked >= self.check_s:
                self._refresh()
            return self._value

    def _refresh(self) -> None:
        self._checked = time.monotonic()
        if not self.dsn:
            self._value = self.missing
            return
        import psycopg  # only when there is a log to read

        from sinks import history

        try:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=3)
            version = history.catalog_version(self._conn)
            if version != self._version or self._value is None:
                self._value, self._version = self.load(self._conn), version
        except psycopg.errors.UndefinedTable:
            self._value = self.missing  # the log is not migrated yet: nothing was ever written
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()
            log.warning("%s unavailable (%s); %s", self.what, first[0] if first else type(exc).__name__,
                        "keeping the last known" if self._value is not None else "none known yet")
            self.close_connection()

    def close_connection(self) -> None:
        with contextlib.suppress(Exception):
            if self._conn is not None:
                self._conn.close()
        self._conn = None

    def close(self) -> None:
        with self._lock:
            self.close_connection()
