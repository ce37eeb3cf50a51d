"""Set operations (`pipeline set`): a value for a WRITE datastream, checked against the templates
in force (processors/setop.py) and published to the node's command topic for its gateway."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from pipeline.history.link import MetadataLink
from pipeline.wire.producer import DatumProducer
from processors.datum import Rejection
from processors.setop import set_request


def send_set_request(
    settings: Any,
    node_id: int,
    datastream: str,
    value: object,
    source_id: str | None = None,
    requested_by: str = "pipeline",
) -> dict[str, Any]:
    """Check a set request against the current templates; publish it to the node's command
    topic when accepted. Returns {"accepted": bool, ...command or reason}."""
    link = MetadataLink(settings.postgres_dsn)
    try:
        now_ms = int(time.time() * 1000)
        catalog = link.catalog().at(now_ms)
    finally:
        link.close()
    outcome = set_request(catalog, node_id, datastream, value, source_id=source_id)
    if isinstance(outcome, Rejection):
        return {"accepted": False, **outcome.as_dict()}
    command = {
        **outcome.as_dict(),
        "requested_at": now_ms,
        "requested_by": requested_by,
        "command_id": str(uuid.uuid4()),
    }
    producer = DatumProducer(settings)
    topic = producer.topics.commands(node_id)
    producer.send_raw(topic, json.dumps(command).encode(), key=outcome.source_id.encode())
    producer.flush()
    return {"accepted": True, "topic": topic, **command}
