"""From datums to raw sample rows: the pure step between decode and store.

Plain data in (a batch of datums and the time), plain data out (column-oriented rows for the
raw table, and every refusal with its reasons). Nothing here touches a store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from processors.datum import Datum, Rejection, check_envelope

RAW_COLUMNS = (
    "node_id", "source_id", "created", "property", "kind", "value", "text", "tags",
    "datastream", "score", "performance", "label", "quality", "ttl_days",
)


@dataclass
class RawColumns:
    """Column-oriented raw rows: cheap to build in Python, one insert per batch."""

    node_id: list[int] = field(default_factory=list)
    source_id: list[str] = field(default_factory=list)
    created: list[int] = field(default_factory=list)  # epoch ms, UTC
    property: list[str] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)
    value: list[float | None] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    tags: list[Sequence[str]] = field(default_factory=list)
    datastream: list[str] = field(default_factory=list)
    score: list[float | None] = field(default_factory=list)
    performance: list[float | None] = field(default_factory=list)
    label: list[str] = field(default_factory=list)
    quality: list[str] = field(default_factory=list)
    ttl_days: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.node_id)

    def extend(self, other: RawColumns) -> None:
        for name in RAW_COLUMNS:
            getattr(self, name).extend(getattr(other, name))

    def columns(self) -> list[list[object]]:
        return [getattr(self, name) for name in RAW_COLUMNS]

    def add_datum(self, d: Datum) -> int:
        """Append one row per sample of an accepted datum; returns rows added."""
        n = 0
        tags = d.tags
        for kind, name, val in d.samples():
            self.node_id.append(d.node_id)
            self.source_id.append(d.source_id)
            self.created.append(d.created_ms)
            self.property.append(name)
            self.kind.append(kind)
            if kind == "s":
                self.value.append(None)
                self.text.append(str(val))
            else:
                self.value.append(float(val))
                self.text.append("")
            self.tags.append(tags)
            self.datastream.append("")
            self.score.append(None)
            self.performance.append(None)
            self.label.append("")
            self.quality.append("")
            self.ttl_days.append(0)
            n += 1
        return n


@dataclass
class AcceptResult:
    rows: RawColumns
    datums_accepted: int
    # (original datum, reasons): the whole datum or some of its samples were refused
    refused: list[tuple[Datum, list[Rejection]]]


def accept_batch(datums: Sequence[Datum], now_ms: int) -> AcceptResult:
    rows = RawColumns()
    refused: list[tuple[Datum, list[Rejection]]] = []
    accepted = 0
    for d in datums:
        kept, problems = check_envelope(d, now_ms)
        if problems:
            refused.append((d, problems))
        if kept is not None:
            rows.add_datum(kept)
            accepted += 1
    return AcceptResult(rows, accepted, refused)
