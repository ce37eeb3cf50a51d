"""The worker's link to the metadata history log: apply events, and keep a current catalog.

The log in PostgreSQL is the source of truth: every worker reloads the validators' catalog from
it when its transaction high-water mark moves, so a change reaches running workers within
seconds whichever worker applied it.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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


# --- producing events (pipeline metadata apply / datamodels) ---------------------------------

EVENT_NAMESPACE = uuid.UUID("5b0f4c1e-3c2a-4f43-9d0e-6e0d7d1c2a10")


def read_event_file(path: Path) -> list[dict[str, Any]]:
    """Events from a file: a JSON array, or one JSON object per line. Every event is checked
    first; one bad event refuses the whole file (nothing is produced)."""
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    docs: list[Any]
    if stripped.startswith("["):
        docs = json.loads(text)
    else:
        docs = [json.loads(line) for line in text.splitlines() if line.strip()]
    events = []
    for n, doc in enumerate(docs, start=1):
        try:
            events.append(parse_event(doc).as_dict())
        except MetadataEventError as exc:
            raise MetadataEventError(exc.field, exc.rule, f"{path}, event {n}: {exc.message}") from None
    return events


def _event(entity: str, key: dict[str, Any], value: dict[str, Any], author: str, comment: str,
           op: str = "upsert") -> dict[str, Any]:
    body = json.dumps({"entity": entity, "key": key, "op": op, "value": value}, sort_keys=True)
    # the same content gives the same event id: loading a file twice changes nothing
    return {
        "event_id": str(uuid.uuid5(EVENT_NAMESPACE, body)), "entity": entity, "key": key, "op": op,
        "value": value, "valid_from": None, "valid_to": None, "author": author, "comment": comment,
        "produced_at": datetime.now(UTC).isoformat(),
    }


def datamodel_events(paths: Sequence[Path], author: str, comment: str) -> list[dict[str, Any]]:
    """Events that register datamodel files and a bindings.json. Every file is checked with the
    datamodel and binding rules first: a bad file refuses the whole set."""
    from processors.binding import load_bindings_file
    from processors.datamodel import load_datamodels_file

    events: list[dict[str, Any]] = []
    binding_files = [p for p in paths if p.name == "bindings.json"]
    for path in paths:
        if path in binding_files:
            continue
        load_datamodels_file(path)  # raises DatamodelError naming datamodel, datastream, field
        raw = json.loads(path.read_text(encoding="utf-8"))
        for doc in raw if isinstance(raw, list) else [raw]:
            events.append(_event("datamodel", {"identifier": doc["identifier"]}, doc, author, comment))
    for path in binding_files:
        load_bindings_file(path)
        raw = json.loads(path.read_text(encoding="utf-8"))
        for doc in raw["bindings"] if isinstance(raw, dict) else raw:
            key = {"node_id": doc.get("node_id"), "source_pattern": doc["source_pattern"],
                   "valid_from_ms": doc.get("valid_from_ms")}
            value = {k: v for k, v in doc.items() if k not in key}
            events.append(_event("source_binding", key, value, author, comment))
    for e in events:
        parse_event(e)
    return events


# --- set operations (WRITE datastreams) -----------------------------------------------------


def send_set_request(settings: Any, node_id: int, datastream: str, value: object,
                     source_id: str | None = None, requested_by: str = "pipeline") -> dict[str, Any]:
    """Check a set request against the current templates; publish it to the node's command
    topic when accepted. Returns {"accepted": bool, ...command or reason}."""
    import time

    from pipeline.producer import DatumProducer
    from processors.datum import Rejection
    from processors.setop import set_request

    link = MetadataLink(settings.postgres_dsn)
    try:
        now_ms = int(time.time() * 1000)
        catalog = link.load().at(now_ms)
    finally:
        link.close()
    outcome = set_request(catalog, node_id, datastream, value, source_id=source_id)
    if isinstance(outcome, Rejection):
        return {"accepted": False, **outcome.as_dict()}
    command = {**outcome.as_dict(), "requested_at": now_ms, "requested_by": requested_by,
               "command_id": str(uuid.uuid4())}
    producer = DatumProducer(settings)
    topic = producer.topics.commands(node_id)
    producer.send_raw(topic, json.dumps(command).encode(), key=outcome.source_id.encode())
    producer.flush()
    return {"accepted": True, "topic": topic, **command}
