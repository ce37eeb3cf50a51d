"""The worker's link to the metadata history log: apply events, and keep a current catalog.

The log in PostgreSQL is the source of truth: every worker reloads the validators' catalog from
it when its transaction high-water mark moves, so a change reaches running workers within
seconds whichever worker applied it. The catalog follows the log through a LogView
(pipeline/history/view.py), the one way anything follows it (the API's zones and tokens too).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg

from pipeline.history.view import LogView
from processors.catalog_versions import VersionedCatalog, build_versioned_catalog
from processors.metadata import MetadataEventError, parse_event
from sinks import history

log = logging.getLogger(__name__)

# LogView.get's throttle; the worker asks with refresh() (from its 1 s timer), which checks at once.
CATALOG_CHECK_S = 1.0


@dataclass(frozen=True)
class Applied:
    status: str  # applied | duplicate | refused | invalid
    rule: str | None = None
    reason: str | None = None
    event_id: str | None = None


class MetadataLink:
    """Two connections: one applies events, the catalog's LogView reads (they run on separate threads)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.sink = history.HistorySink(self._connect)
        self.catalogs: LogView[VersionedCatalog] = LogView(
            dsn, "the validators' catalog", _load_catalog, CATALOG_CHECK_S
        )

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(self.dsn, autocommit=True)

    def migrate(self) -> None:
        """The history sink's setup: the log's tables, migrated (SinkBackpressure while away)."""
        self.sink.setup()

    def apply(self, raw: bytes) -> Applied:
        try:
            event = parse_event(raw)
        except MetadataEventError as exc:
            return Applied("invalid", exc.rule, str(exc))
        [result] = self.sink.write([event])
        return Applied(result.status, result.rule, result.reason, str(event.event_id))

    def catalog(self, force: bool = False) -> VersionedCatalog:
        """The current catalog: made again now if the log's high-water mark moved (always if
        `force`), else the one held. Raises psycopg.Error while the log cannot be read (the
        caller waits and retries; the catalog held stays for the next call)."""
        return self.catalogs.refresh(force)

    def close(self) -> None:
        self.sink.close()
        self.catalogs.close()


def _load_catalog(conn: psycopg.Connection) -> VersionedCatalog:
    catalog = build_versioned_catalog(history.current_catalog(conn))
    for problem in catalog.problems:
        log.warning("catalog: %s left out: %s", problem.what, problem.message)
    return catalog
