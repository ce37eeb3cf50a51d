"""HTTP ingest: `POST /solarin/api/v1/sec/datum` with a Node token, for gateways without a Kafka
client. Accepted datums go to their source topics exactly as `pipeline ingest` sends them, and
the answer comes only once the broker acknowledged every message (a 503 otherwise: the gateway
keeps its datums and sends again; the pipeline stores a datum once whatever arrives twice).

The body rules are processors/http_ingest.py, the access decision
processors/security_policy.authorize_ingest: a datum of a node (or source) the token does not
name refuses the whole body with 403 and nothing is published.

Requests that arrive together are published together (`GroupCommit`): their datums sent in one
go (bundled per partition, as `pipeline ingest` bundles a send's streams) and one flush waited
for, whose acknowledgement answers them all. One request at a time, each waiting out its own
broker round trip, held a gateway fleet to about one request per round trip whatever the
concurrency (benchmarks/bench_http_ingest.py).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from pipeline.settings import Settings
from processors import security_policy as sp
from processors.auxiliary import AuxChange
from processors.datum import Datum
from processors.http_ingest import parse_body
from processors.solarquery import error_body

log = logging.getLogger(__name__)

INGEST_PATH = "/solarin/api/v1/sec/datum"
ACK_TIMEOUT_S = 30.0


class Publisher(Protocol):
    """What a group commit needs of a producer (`pipeline.wire.producer.DatumProducer`)."""

    def send(self, datums: Sequence[Datum]) -> int: ...

    def send_auxiliary(self, change: AuxChange) -> None: ...

    def flush(self, timeout: float = 60.0) -> None: ...

    def close(self) -> None: ...


@dataclass(eq=False)
class _Request:
    datums: Sequence[Datum]
    auxiliary: Sequence[AuxChange]
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def answer(self, error: BaseException | None = None) -> None:
        self.error = error
        self.done.set()


def _send(publisher: Publisher, datums: Sequence[Datum], auxiliary: Sequence[AuxChange]) -> None:
    publisher.send(datums)
    for change in auxiliary:
        publisher.send_auxiliary(change)


class GroupCommit:
    """Requests published by one thread, a group at a time: every request waiting when a group
    starts (up to `max_requests`), in arrival order, is sent in one `send` (its streams bundled per
    partition: fewer messages for the workers to drain), then one flush; each request is
    told taken only once the flush of its group returned without error, and not taken otherwise
    (the gateway sends again: the pipeline stores a datum once). A group holds what arrived
    while the one before it was flushing, so it grows with the load: one round trip answers many.

    When the group's send fails, its requests are sent one by one to find the one that cannot be:
    that request is told so alone, the ones before it still flush, the ones after it go back to
    the head of the queue for the next group (they were not sent). A
    failed flush answers every request of its group not taken and drops the producer (a new one
    is opened for the next group)."""

    def __init__(self, open_publisher: Callable[[], Publisher], max_requests: int, ack_timeout_s: float) -> None:
        self._open = open_publisher
        self.max_requests = max(1, max_requests)
        self.ack_timeout_s = ack_timeout_s
        # a request's answer comes within its group's send and flush and at most a group ahead of it
        self.answer_within_s = 2 * ack_timeout_s + 30
        self._publisher: Publisher | None = None
        self._queue: list[_Request] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.groups = 0  # groups flushed, for the benchmark and tests

    def publish(self, datums: Sequence[Datum], auxiliary: Sequence[AuxChange]) -> None:
        """Block until the request's datums and changes are acknowledged by the broker; raise
        (the reason) if they were not taken."""
        request = _Request(datums, auxiliary)
        with self._cond:
            if self._closed:
                raise RuntimeError("HTTP ingest is closing")
            self._queue.append(request)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="http-ingest-commit", daemon=True)
                self._thread.start()
            self._cond.notify()
        if not request.done.wait(self.answer_within_s):
            raise TimeoutError(f"no acknowledgement within {self.answer_within_s:.0f}s")
        if request.error is not None:
            raise request.error

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(self.answer_within_s)
        self._drop_publisher()

    def _drop_publisher(self) -> None:
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            try:
                publisher.close()
            except Exception:  # closing is best effort: what it held was answered already
                log.warning("HTTP ingest: closing the producer failed", exc_info=True)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                group = self._queue[: self.max_requests]
                del self._queue[: self.max_requests]
            try:
                self.commit(group)
            except BaseException as exc:  # a bug here must not leave requests waiting for ever
                log.exception("HTTP ingest group commit failed")
                for r in group:
                    if not r.done.is_set():
                        r.answer(exc)

    def commit(self, group: list[_Request]) -> None:
        """Send the group's requests in order, flush once, answer each (see the class)."""
        sent: list[_Request] = []
        try:
            publisher = self._publisher = self._publisher or self._open()
        except Exception as exc:
            for r in group:
                r.answer(exc)
            return
        try:
            # one send: the group's streams bundled per partition, each stream's datums in order
            _send(publisher, [d for r in group for d in r.datums], [c for r in group for c in r.auxiliary])
            sent = group
        except Exception:
            # find the request that cannot be sent (what went out already is sent again: stored once)
            for k, r in enumerate(group):
                try:
                    _send(publisher, r.datums, r.auxiliary)
                except Exception as exc:
                    r.answer(exc)
                    rest = group[k + 1 :]
                    if rest:
                        with self._cond:
                            self._queue[:0] = rest
                    break
                sent.append(r)
        if not sent:
            return
        try:
            publisher.flush(self.ack_timeout_s)
        except Exception as exc:  # DeliveryError, the broker away: not taken, the gateways send again
            log.warning("HTTP ingest not acknowledged by the broker: %s", exc)
            self._drop_publisher()
            for r in sent:
                r.answer(exc)
            return
        self.groups += 1
        for r in sent:
            r.answer()


class HttpIngest:
    """One producer for the API process, made at the first request (the API may run without Kafka)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.commits = GroupCommit(self._open_producer, settings.http_ingest_group_requests, ACK_TIMEOUT_S)

    def _open_producer(self) -> Publisher:
        from pipeline.wire.producer import DatumProducer

        # taken = acknowledged by the broker (the answer waits for it); never confirmed later
        return DatumProducer(self.settings, confirming=False)

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
        try:
            self.commits.publish(parsed.datums, parsed.auxiliary)
        except Exception as exc:  # DeliveryError, the broker away: not taken, the gateway sends again
            return 503, error_body(f"not taken: the broker did not acknowledge ({exc}); send again", 503)
        doc = {"success": True, "data": {"datums": len(parsed.datums), "auxiliary": len(parsed.auxiliary)}}
        return 200, json.dumps(doc).encode()

    def close(self) -> None:
        self.commits.close()
