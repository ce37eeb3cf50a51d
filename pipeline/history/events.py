"""Metadata events made from files: `pipeline metadata apply` (events as written) and
`pipeline metadata datamodels` (datamodel files and bindings.json as datamodel and source_binding
events). Every event is checked with processors/metadata.py's rules before anything is produced."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from processors.metadata import MetadataEventError, parse_event

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


def _event(
    entity: str, key: dict[str, Any], value: dict[str, Any], author: str, comment: str, op: str = "upsert"
) -> dict[str, Any]:
    body = json.dumps({"entity": entity, "key": key, "op": op, "value": value}, sort_keys=True)
    # the same content gives the same event id: loading a file twice changes nothing
    return {
        "event_id": str(uuid.uuid5(EVENT_NAMESPACE, body)),
        "entity": entity,
        "key": key,
        "op": op,
        "value": value,
        "valid_from": None,
        "valid_to": None,
        "author": author,
        "comment": comment,
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
            key = {
                "node_id": doc.get("node_id"),
                "source_pattern": doc["source_pattern"],
                "valid_from_ms": doc.get("valid_from_ms"),
            }
            value = {k: v for k, v in doc.items() if k not in key}
            events.append(_event("source_binding", key, value, author, comment))
    for e in events:
        parse_event(e)
    return events
