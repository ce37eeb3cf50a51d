"""HTTP ingest: `POST /solarin/api/v1/sec/datum` with a Node token, for gateways without a Kafka
client. Accepted datums go to their source topics exactly as `pipeline ingest` sends them, and
the answer comes only once the broker acknowledged every message (a 503 otherwise: the gateway
keeps its datums and sends again; the pipeline stores a datum once whatever arrives twice).

The body rules are processors/http_ingest.py, the access decision
processors/security_policy.authorize_ingest: a datum of a node (or source) the token does not
name refuses the whole body with 403 and nothing is published.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

from pipeline.settings import Settings
from processors import security_policy as sp
from processors.http_ingest import parse_body
from processors.solarquery import error_body

log = logging.getLogger(__name__)

INGEST_PATH = "/solarin/api/v1/sec/datum"
ACK_TIMEOUT_S = 30.0


class HttpIngest:
    """One producer for the API process, made at the first request (the API may run without Kafka)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: Any = None
        self._lock = threading.Lock()  # one request's messages flushed and counted at a time

    def _get_producer(self) -> Any:
        if self._producer is None:
            from pipeline.wire.producer import DatumProducer

            # taken = acknowledged by the broker (the answer waits for it); never confirmed later
            self._producer = DatumProducer(self.settings, confirming=False)
        return self._producer

    def post(self, token: sp.Token | None, body: bytes, path: str = INGEST_PATH) -> tuple[int, bytes]:
        """(status, JSON answer) of one POST; `token` is the authenticated caller (None: none)."""
        if token is None:
            return 401, error_body("HTTP ingest needs a Node token (SNWS2-signed request)", 401)
        parsed = parse_body(body, int(time.time() * 1000))
        now = datetime.now(UTC)
        try:
            sp.check_token(token, now)
            for node, source in parsed.streams():
                sp.authorize_ingest(token, now=now, path=path, node_id=node, source_id=source)
        except sp.AccessDenied as exc:
            return exc.status, error_body(exc.reason, exc.status)
        if parsed.problems:
            doc = {
                "success": False,
                "code": "400",
                "message": f"{len(parsed.problems)} problem(s) in the body; nothing was published",
                "data": parsed.answer(),
            }
            return 400, json.dumps(doc, ensure_ascii=False).encode()
        if not self.settings.kafka_bootstrap:
            return 503, error_body("HTTP ingest is not configured here (no Kafka bootstrap)", 503)
        with self._lock:
            try:
                producer = self._get_producer()
                producer.send(parsed.datums)
                for change in parsed.auxiliary:
                    producer.send_auxiliary(change)
                producer.flush(ACK_TIMEOUT_S)
            except Exception as exc:  # DeliveryError, the broker away: not taken, the gateway sends again
                log.warning("HTTP ingest not acknowledged by the broker: %s", exc)
                self.close()
                return 503, error_body(f"not taken: the broker did not acknowledge ({exc}); send again", 503)
        doc = {"success": True, "data": {"datums": len(parsed.datums), "auxiliary": len(parsed.auxiliary)}}
        return 200, json.dumps(doc).encode()

    def close(self) -> None:
        if self._producer is not None:
            try:
                self._producer.close()
            finally:
                self._producer = None
