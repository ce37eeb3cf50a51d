"""The worker's link to the metadata history log: apply events, and keep a current catalog.

The log in PostgreSQL is the source of truth: every worker reloads the validators' catalog from
it when its transaction high-water mark moves, so a change reaches running workers within
seconds whichever worker applied it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import psycopg

from processors.catalog_versions import VersionedCatalog, build_versioned_catalog
from processors.metadata import MetadataEventError, parse_event
from sinks import history

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Applied:
    status: str  # applied | duplicate | refused | invalid
    rule: str | None = None
    reason: str | None = None
    event_id: str | None = None


class MetadataLink:
    """Two connections: one applies events, one reads the catalog (they run on separate threads)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._writer: psycopg.Connection | None = None
        self._reader: psycopg.Connection | None = None
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()  # one psycopg connection: one thread at a time

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(self.dsn, autocommit=True)

    def migrate(self) -> list[str]:
        with self._connect() as conn:
            return history.migrate(conn)

    def apply(self, raw: bytes) -> Applied:
        try:
            event = parse_event(raw)
        except MetadataEventError as exc:
            return Applied("invalid", exc.rule, str(exc))
        with self._lock:
            if self._writer is None or self._writer.closed:
                self._writer = self._connect()
            try:
                result = history.apply_event(self._writer, event)
            except psycopg.OperationalError:
                self._writer = None
                raise
        return Applied(result.status, result.rule, result.reason, str(event.event_id))

    def version(self) -> int:
        with self._read_lock:
            return history.catalog_version(self._read_conn())

    def load(self) -> VersionedCatalog:
        with self._read_lock:
            meta = history.current_catalog(self._read_conn())
        catalog = build_versioned_catalog(meta)
        for problem in catalog.problems:
            log.warning("catalog: %s left out: %s", problem.what, problem.message)
        return catalog

    def _read_conn(self) -> psycopg.Connection:
        if self._reader is None or self._reader.closed or self._reader.broken:
            self._reader = self._connect()
        return self._reader

    def close(self) -> None:
        for conn in (self._writer, self._reader):
            if conn is not None:
                conn.close()
