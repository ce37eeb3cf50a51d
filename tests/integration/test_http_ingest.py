"""HTTP ingest (`POST /solarin/api/v1/sec/datum`) with a Node token, signed by SolarNetwork's own
client (solarnetwork-api-core's AuthorizationV2Builder, Digest header and all).

The oracle is the broker itself: the datums a 200 answer reports are exactly the datums on their
source topics (decoded as the workers decode them); a refused body leaves its topics empty."""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from pipeline.wire.codec import SCHEMA_HEADER, decode_batch
from pipeline.wire.topics import Topics
from processors.datum import Datum
from sinks.clickhouse import connect, ensure_schema
from tests.integration.helpers import scratch_stores, token_cli
from tests.integration.test_api import Api, api_process, api_settings
from tests.snjs import sign_requests

pytestmark = pytest.mark.integration

PATH = "/solarin/api/v1/sec/datum"
NOW_MS = int(time.time() * 1000) - 3_600_000


@dataclass
class Setup:
    api: Api
    tokens: dict[str, tuple[str, str]]
    bootstrap: str
    topics: Topics

    def post(self, name: str | None, body: bytes, content_type: str = "application/json") -> tuple[int, Any]:
        headers = {"Content-Type": content_type}
        if name is not None:
            [headers] = self.signed(name, [body], content_type)
        return self.send(body, headers)

    def signed(self, name: str, bodies: list[bytes], content_type: str = "application/json") -> list[dict[str, str]]:
        """The headers of each body's POST signed with the named token (one Node process for all)."""
        token, secret = self.tokens[name]
        now = datetime.now(UTC).isoformat()
        host = f"127.0.0.1:{self.api.port}"
        requests = [
            {
                "token": token,
                "secret": secret,
                "method": "POST",
                "host": host,
                "path": PATH,
                "query": {},
                "contentType": content_type,
                "body": body.decode(),
                "date": now,
            }
            for body in bodies
        ]
        return [signed["headers"] for signed in sign_requests(requests)]

    def send(self, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.api.port, timeout=60)
        try:
            conn.request("POST", PATH, body=body, headers=headers)
            r = conn.getresponse()
            return r.status, json.loads(r.read())
        finally:
            conn.close()

    def published(self, source: str) -> list[Datum]:
        """Every datum on a source's topic (none when the topic does not exist)."""
        topic = self.topics.source(source)
        consumer = Consumer(
            {"bootstrap.servers": self.bootstrap, "group.id": f"r{uuid.uuid4().hex}", "enable.auto.commit": False}
        )
        try:
            meta = consumer.list_topics(timeout=10)
            if topic not in meta.topics:
                return []
            parts = list(meta.topics[topic].partitions)
            ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
            out: list[Datum] = []
            seen = {p: 0 for p in parts}
            deadline = time.monotonic() + 30
            while any(seen[p] < ends[p] for p in parts) and time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is None or msg.error():
                    continue
                seen[msg.partition()] = msg.offset() + 1
                schema = dict(msg.headers() or []).get(SCHEMA_HEADER, b"").decode()
                out += decode_batch(msg.value(), schema)
            return out
        finally:
            consumer.close()


@pytest.fixture(scope="module")
def setup(
    clickhouse_url: str, postgres_url: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    prefix = f"t{uuid.uuid4().hex[:12]}."
    with scratch_stores(clickhouse_url, postgres_url, "t_hi") as (database, ch_url, dsn):
        ensure_schema(connect(ch_url))
        tokens = {
            name: (made["tokenId"], made["tokenSecret"])
            for name, made in (
                ("gw1", token_cli(dsn, "create", "--type", "node", "--node", "1")),
                ("gw1_meters", token_cli(dsn, "create", "--type", "node", "--node", "1", "--source", "/meter/**")),
                ("reader", token_cli(dsn, "create", "--node", "1")),
            )
        }
        settings = api_settings(
            clickhouse_url, database, postgres_dsn=dsn, kafka_bootstrap=kafka_bootstrap, topic_prefix=prefix
        )
        with api_process(settings, tmp_path_factory.mktemp("hi") / "api.log") as running:
            yield Setup(running, tokens, kafka_bootstrap, Topics(prefix))


def datum_json(node: int, source: str, k: int) -> dict[str, Any]:
    return {
        "nodeId": node,
        "sourceId": source,
        "created": NOW_MS + k * 1000,
        "samples": {"i": {"watts": float(k)}, "a": {"wattHours": 100.0 + k}},
    }


def test_accepted_datums_are_on_their_topics_once_the_answer_comes(setup: Setup) -> None:
    array = json.dumps([datum_json(1, "/gw/a", k) for k in range(50)]).encode()
    lines = "\n".join(json.dumps(datum_json(1, "/gw/b", k)) for k in range(30)).encode()
    single = json.dumps(datum_json(1, "/gw/c", 0)).encode()
    for body, source, n in ((array, "/gw/a", 50), (lines, "/gw/b", 30), (single, "/gw/c", 1)):
        status, answer = setup.post("gw1", body)
        assert (status, answer) == (200, {"success": True, "data": {"datums": n, "auxiliary": 0}})
        got = setup.published(source)  # read right after the answer: already acknowledged
        assert sorted((d.created_ms, d.i["watts"], d.a["wattHours"]) for d in got) == [
            (NOW_MS + k * 1000, float(k), 100.0 + k) for k in range(n)
        ]


def test_concurrent_gateways_each_answered_once_their_datums_are_on_the_topics(setup: Setup) -> None:
    """Requests posted at once are published in groups (one acknowledgement answers several): every
    datum answered 200 is on its topic exactly once, in each gateway's order, and nothing else."""
    gateways, per = 8, 12
    bodies = {
        g: [json.dumps([datum_json(1, f"/gw/c{g}", k), datum_json(1, f"/gw/d{g}", k)]).encode() for k in range(per)]
        for g in range(gateways)
    }
    headers = dict(zip(bodies, [setup.signed("gw1", b) for b in bodies.values()], strict=True))
    answers: dict[int, list[int]] = {g: [] for g in bodies}

    def gateway(g: int) -> None:
        for body, signed in zip(bodies[g], headers[g], strict=True):
            status, _ = setup.send(body, signed)
            answers[g].append(status)

    threads = [threading.Thread(target=gateway, args=(g,)) for g in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert answers == {g: [200] * per for g in bodies}
    for g in bodies:
        for source in (f"/gw/c{g}", f"/gw/d{g}"):
            got = [d.created_ms for d in setup.published(source)]
            assert sorted(got) == [NOW_MS + k * 1000 for k in range(per)], source
            assert got == sorted(got), f"{source} out of order"


def test_another_nodes_datum_refuses_the_whole_body(setup: Setup) -> None:
    body = json.dumps([datum_json(1, "/gw/mixed", 0), datum_json(2, "/gw/mixed2", 0)]).encode()
    status, answer = setup.post("gw1", body)
    assert status == 403 and "node 2 is not one of the token's nodes" in answer["message"]
    assert setup.published("/gw/mixed") == [] and setup.published("/gw/mixed2") == []
    # a source outside the token's patterns, likewise
    status, _ = setup.post("gw1_meters", json.dumps(datum_json(1, "/other/x", 0)).encode())
    assert status == 403 and setup.published("/other/x") == []
    status, answer = setup.post("gw1_meters", json.dumps(datum_json(1, "/meter/x", 0)).encode())
    assert status == 200 and len(setup.published("/meter/x")) == 1


def test_a_bad_body_names_each_line_and_rule_and_publishes_nothing(setup: Setup) -> None:
    good = json.dumps(datum_json(1, "/gw/bad", 0))
    lines = [
        good,
        "{not json",
        json.dumps({**datum_json(1, "/gw/bad", 2), "sourceId": ""}),
        json.dumps({**datum_json(1, "/gw/bad", 3), "samples": {"i": {"w": "x"}}}),
    ]
    status, answer = setup.post("gw1", "\n".join(lines).encode())
    assert status == 400 and answer["success"] is False
    problems = {(p["line"], p["rule"]) for p in answer["data"]["problems"]}
    assert problems == {(2, "json.syntax"), (3, "source_id.empty"), (4, "sample.not_a_number")}
    assert setup.published("/gw/bad") == []


def test_credentials_are_checked_before_anything_is_read(setup: Setup) -> None:
    body = json.dumps(datum_json(1, "/gw/anon", 0)).encode()
    status, answer = setup.post(None, body)
    assert status == 401 and answer["success"] is False
    status, answer = setup.post("reader", body)
    assert status == 403 and "cannot post datums" in answer["message"]
    setup.tokens["forged"] = (setup.tokens["gw1"][0], "z" * 64)
    status, answer = setup.post("forged", body)
    assert status == 401 and "Bad credentials" in answer["message"]
    assert setup.published("/gw/anon") == []
