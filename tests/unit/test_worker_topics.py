"""The worker's topic scan creates again the internal topics a broker lost (a restart of the embedded
broker, which keeps nothing): a real DatumWorker, its Faust app never started (tests/unit/worker_fakes.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.unit.worker_fakes import OTHER, TOPIC, make_worker


def test_the_topic_scan_creates_lost_internal_topics_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    worker = make_worker(tmp_path, monkeypatch)
    broker: set[str] = {TOPIC, OTHER}  # restarted: only the source topics a producer sent to again
    created: list[list[str]] = []
    monkeypatch.setattr(worker.admin, "existing", lambda: set(broker))

    def ensure(names: Any, partitions: int | None = None) -> None:
        created.append(list(names))
        broker.update(names)

    monkeypatch.setattr(worker.admin, "ensure", ensure)
    asyncio.run(worker.grow_subscription())
    assert created == [worker.internal_topics]
    asyncio.run(worker.grow_subscription())  # there now: nothing more
    assert created == [worker.internal_topics]


def test_partitions_a_topic_gains_are_seen_within_the_metadata_age(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Faust's default view of a topic's partitions may be 5 minutes old: the broker-killed drill lost
    (for its 80 s of patience) the datums sent to partitions 2 and 3 of topics the restarted broker had
    created again with 4, where the group's leader still knew 2."""
    worker = make_worker(tmp_path, monkeypatch, metadata_max_age_s=7.5)
    assert worker.app.conf.consumer_metadata_max_age_ms == 7500
    assert worker.app.conf.producer_metadata_max_age_ms == 7500
    assert make_worker(tmp_path, monkeypatch).app.conf.consumer_metadata_max_age_ms == 10_000
