"""SolarNetwork auxiliary records (datum/auxiliary): meter Reset markers, and their changes.

One JSON object per line, in SolarNetwork's own shape:

    store  {"nodeId":1,"sourceId":"/S1/M1","type":"Reset","created":"2020-06-01 12:20:00Z",
            "final":{"a":{"wattHours":115}},"start":{"a":{"wattHours":5}},"notes":"meter swap"}
    delete {"action":"delete","nodeId":1,"sourceId":"/S1/M1","type":"Reset","created":"..."}
    move   {"from":{"nodeId":1,"sourceId":"/S1/M1","type":"Reset","created":"..."},
            "to":{"nodeId":1,"sourceId":"/S1/M1","type":"Reset","created":"...","final":...,"start":...}}

A store with the key (node, source, type, created) of an existing record replaces it (SolarNetwork
updates in place). Move is SolarNetwork's `datum/auxiliary/move`: the record leaves `from` and is
stored as `to`. Only type Reset has a meaning for rollups; it needs `final` and `start`
accumulating samples naming the same properties (the meter read `final`, then restarted at
`start`). Plain data in, plain data out: the worker stores the change and marks the rollup
buckets around both times stale.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from processors.datum import NODE_ID_MAX, SAMPLE_ABS_MAX, Rejection, parse_created

AUX_TYPES = ("Reset",)
Action = Literal["store", "delete", "move"]


@dataclass(frozen=True, slots=True)
class AuxKey:
    node_id: int
    source_id: str
    type: str
    created_ms: int


@dataclass(frozen=True, slots=True)
class AuxRecord:
    key: AuxKey
    final: Mapping[str, float] = field(default_factory=dict)
    start: Mapping[str, float] = field(default_factory=dict)
    notes: str = ""

    @property
    def properties(self) -> frozenset[str]:
        return frozenset(self.final) | frozenset(self.start)


@dataclass(frozen=True, slots=True)
class AuxChange:
    """What one line asks: store `record`; delete `removed`; or move (both)."""

    action: Action
    record: AuxRecord | None = None  # stored (store, move)
    removed: AuxKey | None = None  # deleted (delete, move)

    @property
    def stream(self) -> tuple[int, str]:
        key = self.record.key if self.record is not None else self.removed
        assert key is not None
        return key.node_id, key.source_id

    def to_json(self) -> bytes:
        """The change as the worker's auxiliary topic carries it (this module's own line shape)."""
        doc: dict[str, Any]
        if self.action == "store":
            assert self.record is not None
            doc = _record_doc(self.record)
        elif self.action == "delete":
            assert self.removed is not None
            doc = {"action": "delete", **_key_doc(self.removed)}
        else:
            assert self.record is not None and self.removed is not None
            doc = {"from": _key_doc(self.removed), "to": _record_doc(self.record)}
        return json.dumps(doc, separators=(",", ":")).encode()


def _key_doc(key: AuxKey) -> dict[str, Any]:
    return {"nodeId": key.node_id, "sourceId": key.source_id, "type": key.type, "created": key.created_ms}


def _record_doc(r: AuxRecord) -> dict[str, Any]:
    doc = {**_key_doc(r.key), "final": {"a": dict(r.final)}, "start": {"a": dict(r.start)}}
    if r.notes:
        doc["notes"] = r.notes
    return doc


class AuxError(ValueError):
    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule

    def as_rejection(self) -> Rejection:
        return Rejection(self.rule, str(self))


def is_auxiliary(doc: Mapping[str, Any]) -> bool:
    """A JSON line is an auxiliary record (not a datum) when it has a type, or is a move."""
    return "type" in doc or "from" in doc or "to" in doc or doc.get("action") in ("delete", "move")


def _key(doc: Any, where: str) -> AuxKey:
    if not isinstance(doc, dict):
        raise AuxError("aux.not_object", f"{where} must be a JSON object")
    node = doc.get("nodeId")
    if isinstance(node, bool) or not isinstance(node, int) or not 0 <= node <= NODE_ID_MAX:
        raise AuxError("aux.node_id", f"{where}nodeId must be an integer in 0..{NODE_ID_MAX} (2^63-1)")
    source = doc.get("sourceId")
    if not isinstance(source, str) or not source:
        raise AuxError("aux.source_id", f"{where}sourceId must be a non-empty string")
    kind = doc.get("type")
    if kind not in AUX_TYPES:
        raise AuxError("aux.type", f"{where}type must be one of {', '.join(AUX_TYPES)}, got {kind!r}")
    if "created" not in doc:
        raise AuxError("aux.created", f"{where}created is missing")
    try:
        created = parse_created(doc["created"])
    except ValueError as exc:
        raise AuxError("aux.created", f"{where}{exc}") from None
    return AuxKey(node, source, kind, created)


def _samples(doc: Mapping[str, Any], name: str, where: str) -> dict[str, float]:
    group = doc.get(name)
    if not isinstance(group, dict):
        raise AuxError(f"aux.{name}", f'{where}{name} must be an object like {{"a": {{"wattHours": 5}}}}')
    acc = group.get("a")
    if not isinstance(acc, dict) or not acc:
        raise AuxError(f"aux.{name}", f"{where}{name}.a must name at least one accumulating property")
    out: dict[str, float] = {}
    for prop, value in acc.items():
        # the bound of datum samples (processors/datum.py): resets take part in rollup sums too
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (isinstance(value, float) and not math.isfinite(value))
            or abs(value) > SAMPLE_ABS_MAX
        ):
            shown = repr(value) if not isinstance(value, int) or value.bit_length() < 200 else "a huge integer"
            raise AuxError(f"aux.{name}", f"{where}{name}.a.{prop} must be a finite number within ±2^53, got {shown}")
        out[str(prop)] = float(value)
    return out


def _record(doc: Any, where: str = "") -> AuxRecord:
    key = _key(doc, where)
    final = _samples(doc, "final", where)
    start = _samples(doc, "start", where)
    if set(final) != set(start):
        raise AuxError(
            "aux.reset_properties",
            f"{where}final and start must name the same properties: {sorted(final)} vs {sorted(start)}",
        )
    notes = doc.get("notes", "")
    if not isinstance(notes, str):
        raise AuxError("aux.notes", f"{where}notes must be a string")
    return AuxRecord(key, final, start, notes)


def parse_change(doc: Any) -> AuxChange:
    """A decoded JSON line → the change it asks for; AuxError with a rule id otherwise."""
    if not isinstance(doc, dict):
        raise AuxError("aux.not_object", "an auxiliary line must be a JSON object")
    if "from" in doc or "to" in doc or doc.get("action") == "move":
        if "from" not in doc or "to" not in doc:
            raise AuxError("aux.move", "a move needs both from and to")
        removed = _key(doc["from"], "from.")
        record = _record(doc["to"], "to.")
        if removed.type != record.key.type:
            raise AuxError("aux.move", "a move cannot change the type")
        return AuxChange("move", record, removed)
    action = doc.get("action", "store")
    if action == "delete":
        return AuxChange("delete", removed=_key(doc, ""))
    if action != "store":
        raise AuxError("aux.action", f"action must be store, delete or move, got {action!r}")
    return AuxChange("store", record=_record(doc))


def parse_change_bytes(raw: bytes | str) -> AuxChange:
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, a 4300-digit int
        raise AuxError("aux.syntax", f"not JSON: {exc}") from None
    return parse_change(doc)
