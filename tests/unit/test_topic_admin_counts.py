"""`TopicAdmin.partition_counts`: how often the broker is asked, with a fake admin client and a
fake clock (the listing itself is tested against the broker in
tests/integration/test_producer_partitions.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from pipeline.settings import Settings
from pipeline.wire import producer
from pipeline.wire.producer import PARTITIONS_MISSING_S, PARTITIONS_REFRESH_S, TopicAdmin


@dataclass
class Listed:
    partitions: dict[int, Any]
    error: Any = None


@dataclass
class Meta:
    topics: dict[str, Listed]


class Done:
    def result(self) -> None:
        return None


@dataclass
class FakeAdmin:
    topics: dict[str, Listed] = field(default_factory=dict)
    listings: int = 0

    def list_topics(self, timeout: float = 0) -> Meta:
        self.listings += 1
        return Meta(dict(self.topics))

    def create_topics(self, new: list[Any], operation_timeout: float = 0) -> dict[str, Done]:
        for t in new:
            self.topics[t.topic] = Listed({p: None for p in range(t.num_partitions)})
        return {t.topic: Done() for t in new}


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(producer.time, "monotonic", lambda: now[0])
    return now


@pytest.fixture
def admin() -> tuple[TopicAdmin, FakeAdmin]:
    real = TopicAdmin(Settings.from_env({})._with({"kafka_bootstrap": "127.0.0.1:1"}))
    fake = FakeAdmin({"ok": Listed({0: None, 1: None}), "broken": Listed({}, error="LEADER_NOT_AVAILABLE")})
    real._admin = fake
    return real, fake


def test_a_topic_without_a_count_is_not_listed_again_at_every_send(
    admin: tuple[TopicAdmin, FakeAdmin], clock: list[float]
) -> None:
    topics, fake = admin
    for _ in range(5):
        assert topics.partition_counts(["ok", "broken"]) == {"ok": 2}
        clock[0] += 0.1
    assert fake.listings == 1
    fake.topics["broken"] = Listed({0: None, 1: None, 2: None})
    clock[0] += PARTITIONS_MISSING_S
    assert topics.partition_counts(["ok", "broken"]) == {"ok": 2, "broken": 3}
    assert fake.listings == 2


def test_counts_are_listed_again_after_the_refresh(admin: tuple[TopicAdmin, FakeAdmin], clock: list[float]) -> None:
    topics, fake = admin
    assert topics.partition_counts(["ok"]) == {"ok": 2}
    fake.topics["ok"] = Listed({p: None for p in range(6)})
    clock[0] += PARTITIONS_REFRESH_S - 1
    assert topics.partition_counts(["ok"]) == {"ok": 2}
    clock[0] += 1
    assert topics.partition_counts(["ok"]) == {"ok": 6}
    assert fake.listings == 2


def test_a_topic_ensure_just_made_has_its_count_at_once(
    admin: tuple[TopicAdmin, FakeAdmin], clock: list[float]
) -> None:
    topics, fake = admin
    assert topics.partition_counts(["ok"]) == {"ok": 2}
    topics.ensure(["new"], partitions=3)
    assert topics.partition_counts(["ok", "new"]) == {"ok": 2, "new": 3}
