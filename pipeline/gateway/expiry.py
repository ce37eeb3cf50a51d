"""Datums already past their datastream's storage period, as the sending commands report them.

`pipeline ingest` and `pipeline replay` see datums before the workers do; with the history log's
catalog (PostgreSQL, when a DSN is set) they can say how many will be stored already expired:
accepted, rolled up, and their raw rows gone within the grace period (docs/rollups.md). The
workers count the same thing per batch (AcceptResult.samples_expired, the metrics
pipeline_samples_expired_total / pipeline_datums_expired_total).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from processors.catalog_versions import VersionedCatalog
from processors.datum import Datum
from processors.rows import ExpiryCount, count_expired

log = logging.getLogger(__name__)


def load_catalog(dsn: str) -> VersionedCatalog | None:
    """The current versioned catalog from the history log; None without a DSN or when it cannot
    be read (the report then says the expiry is unknown, nothing else changes)."""
    if not dsn:
        return None
    from pipeline.history.link import MetadataLink

    link = MetadataLink(dsn)
    try:
        return link.catalog()
    except Exception as exc:  # PostgreSQL away: the datums still go, only this figure is missing
        log.warning("expiry: catalog not loaded from the history log: %s", exc)
        return None
    finally:
        link.close()


@dataclass
class ExpiryReport:
    """Counts expired datums and samples of everything a command sends."""

    catalog: VersionedCatalog | None
    clock_ms: Callable[[], int] = field(default=lambda: int(time.time() * 1000))
    count: ExpiryCount = field(default_factory=ExpiryCount)

    @classmethod
    def from_dsn(cls, dsn: str) -> ExpiryReport:
        return cls(load_catalog(dsn))

    def see(self, datums: Sequence[Datum]) -> None:
        """Call with every chunk of datums sent."""
        count_expired(datums, self.catalog, self.clock_ms(), into=self.count)

    def summary(self) -> str:
        """'' without a catalog (nothing known)."""
        if self.catalog is None:
            return ""
        return (
            f"already past their storage period {self.count.datums} datums / {self.count.samples} samples"
            " (stored and rolled up; raw rows expire)"
        )
