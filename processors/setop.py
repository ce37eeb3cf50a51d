"""Set operations: send a value to a device's datastream (OpenGate's WRITE access).

A set request (node, datastream, value[, source]) becomes a `SetCommand` only when:
  set.unknown_datastream  the datastream is in no datamodel of the catalog
  set.not_writable        its access is READ (only WRITE or READ,WRITE may be set)
  set.calculated          it is calculated by the platform; there is nothing on a device to set
  set.non_finite          the value is (or holds) NaN or infinity
  set.schema              the value breaks the datastream's JSON Schema
  set.source_not_bound    `source_id` was given but does not resolve, on that node, to a
                          datamodel holding the datastream
  set.source_unknown      no `source_id` given and the node has no literal (wildcard-free)
                          binding whose datamodel holds the datastream
  set.source_ambiguous    no `source_id` given and several literal bindings qualify
Each refusal is a `Rejection` with rule, message, datastream and value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from fastjsonschema import JsonSchemaValueException

from processors.antpath import is_pattern
from processors.binding import Catalog
from processors.datamodel import schema_validator
from processors.datum import Rejection


@dataclass(frozen=True, slots=True)
class SetCommand:
    """An accepted set operation, ready to be sent to the node."""

    node_id: int
    source_id: str
    datastream: str
    value: object
    datamodel: str

    def as_dict(self) -> dict[str, object]:
        return {
            "node_id": self.node_id,
            "source_id": self.source_id,
            "datastream": self.datastream,
            "value": self.value,
            "datamodel": self.datamodel,
        }


def _finite(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, Mapping):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_finite(v) for v in value)
    return True


def set_request(
    catalog: Catalog,
    node_id: int,
    datastream: str,
    value: object,
    *,
    source_id: str | None = None,
) -> SetCommand | Rejection:
    """Check a set request; the command to send, or why it is refused."""
    found = catalog.datastream(datastream)
    if found is None:
        return Rejection(
            "set.unknown_datastream",
            f"no datamodel holds datastream {datastream}",
            value=value,
            datastream=datastream,
        )
    model, template = found
    if not template.writable:
        return Rejection(
            "set.not_writable",
            f"{datastream} has access {template.access}; set operations need WRITE",
            value=value,
            datastream=datastream,
        )
    if template.calculated:
        return Rejection(
            "set.calculated",
            f"{datastream} is calculated by the platform and cannot be set",
            value=value,
            datastream=datastream,
        )
    if not _finite(value):
        return Rejection("set.non_finite", "NaN and infinity cannot be set", value=value, datastream=datastream)
    try:
        schema_validator(template)(value)
    except JsonSchemaValueException as exc:
        return Rejection(
            "set.schema",
            f"{value!r} breaks the schema of {datastream}: {exc.message} ({exc.rule})",
            value=value,
            datastream=datastream,
        )

    if source_id is not None:
        resolved = catalog.resolve(node_id, source_id)
        if resolved is None or resolved.datamodel.identifier != model.identifier:
            return Rejection(
                "set.source_not_bound",
                f"source {source_id} on node {node_id} is not bound to datamodel {model.identifier}",
                value=value,
                datastream=datastream,
            )
        return SetCommand(node_id, source_id, datastream, value, model.identifier)

    sources = sorted(
        {
            b.source_pattern
            for b in catalog.bindings
            if b.datamodel == model.identifier
            and b.node_id in (None, node_id)
            and not is_pattern(b.source_pattern)
            # the literal source must really resolve to this datamodel on this node
            and _resolves_to(catalog, node_id, b.source_pattern, model.identifier)
        }
    )
    if not sources:
        return Rejection(
            "set.source_unknown",
            f"node {node_id} has no literal source bound to {model.identifier}; give source_id",
            value=value,
            datastream=datastream,
        )
    if len(sources) > 1:
        return Rejection(
            "set.source_ambiguous",
            f"several sources of node {node_id} hold {datastream}: {', '.join(sources)}",
            value=value,
            datastream=datastream,
        )
    return SetCommand(node_id, sources[0], datastream, value, model.identifier)


def _resolves_to(catalog: Catalog, node_id: int, source_id: str, model: str) -> bool:
    resolved = catalog.resolve(node_id, source_id)
    return resolved is not None and resolved.datamodel.identifier == model
