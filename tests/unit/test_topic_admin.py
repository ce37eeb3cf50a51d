"""TopicAdmin (pipeline/wire/producer.py) against a fake admin client: which topics it creates, and
that a broker which lost its topics (the embedded broker restarted without its data) gets them again."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pipeline.settings import Settings
from pipeline.wire import producer


class FakeAdminClient:
    """The broker's topics as confluent-kafka's AdminClient lists and creates them."""

    def __init__(self, _config: dict[str, Any]) -> None:
        self.topics: set[str] = set()
        self.created: list[tuple[str, int]] = []

    def list_topics(self, timeout: float) -> Any:
        return SimpleNamespace(topics={t: None for t in self.topics})

    def create_topics(self, new: list[Any], operation_timeout: float) -> dict[str, Future[None]]:
        done: dict[str, Future[None]] = {}
        for topic in new:
            self.topics.add(topic.topic)
            self.created.append((topic.topic, topic.num_partitions))
            done[topic.topic] = fut = Future()
            fut.set_result(None)
        return done


@pytest.fixture
def admin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> producer.TopicAdmin:
    monkeypatch.setattr(producer, "AdminClient", FakeAdminClient)
    return producer.TopicAdmin(Settings(data_dir=tmp_path, kafka_bootstrap="localhost:1", topic_partitions=2))


def broker(admin: producer.TopicAdmin) -> FakeAdminClient:
    fake: FakeAdminClient = admin._admin
    return fake


def test_a_missing_topic_is_created_once(admin: producer.TopicAdmin) -> None:
    admin.ensure(["pipeline.rollup-stale"])
    admin.ensure(["pipeline.rollup-stale"])
    assert broker(admin).created == [("pipeline.rollup-stale", 2)]


def test_topics_a_restarted_broker_lost_are_created_again_after_the_next_listing(admin: producer.TopicAdmin) -> None:
    """The worker lists the topics every discovery tick and ensures its internal ones: before the fix
    it remembered every name it had ever seen and never created the stale topic again (its commits
    then retried UnknownTopicOrPartition until the worker was killed)."""
    admin.ensure(["pipeline.rollup-stale", "pipeline.deadletter"])
    first = sorted(broker(admin).created)
    broker(admin).topics.clear()  # the broker restarted, keeping nothing
    assert admin.existing() == set()
    admin.ensure(["pipeline.rollup-stale", "pipeline.deadletter"])
    assert sorted(broker(admin).created) == sorted(first * 2)  # again, with the same partitions


def test_one_listing_for_many_missing_topics(admin: producer.TopicAdmin, monkeypatch: pytest.MonkeyPatch) -> None:
    listings: list[int] = []
    fake = broker(admin)
    list_topics = fake.list_topics

    def counted(timeout: float) -> Any:
        listings.append(1)
        return list_topics(timeout)

    monkeypatch.setattr(fake, "list_topics", counted)
    admin.ensure(["a.1", "a.2", "a.3"])
    assert len(listings) == 1
    assert sorted(t for t, _ in fake.created) == ["a.1", "a.2", "a.3"]
