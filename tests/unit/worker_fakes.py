"""A real DatumWorker for unit tests: its Faust app is never started, and the broker's topic list
and Faust's consumer are fakes (pipeline/worker/app.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any
from weakref import WeakSet

import faust
import pytest

import pipeline.worker.app as worker_app
from pipeline.settings import Settings
from pipeline.wire.topics import Topics
from pipeline.worker.app import DatumWorker

TOPIC = Topics().source("/room/a")
OTHER = Topics().source("/room/b")


class FakeAdmin:
    def __init__(self, _settings: Settings) -> None:
        pass

    def existing(self) -> set[str]:
        return {TOPIC, OTHER}

    def ensure(self, _names: Any, partitions: int | None = None) -> None:
        pass


def make_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **settings: Any) -> DatumWorker:
    monkeypatch.setattr(worker_app, "TopicAdmin", FakeAdmin)
    # what the worker hands Faust's consumer: never started, no threads; what faust_fixes settles at a revoke
    consumer = SimpleNamespace(_unacked_messages=WeakSet())
    monkeypatch.setattr(faust.App, "consumer", property(lambda _app: consumer))
    return DatumWorker(Settings(data_dir=tmp_path, kafka_bootstrap="localhost:1", metrics_port=0, **settings))
