"""How many workers `pipeline up` starts: --workers, else PIPELINE_WORKERS, else one per core."""

from __future__ import annotations

import os

import pytest

from pipeline.cli import build_parser, worker_count
from pipeline.settings import Settings


def test_one_worker_per_core_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2}, raising=False)
    args = build_parser().parse_args(["up"])
    assert worker_count(args.workers, Settings.from_env({})) == 3


def test_the_setting_then_the_flag_override_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2}, raising=False)
    settings = Settings.from_env({"PIPELINE_WORKERS": "2"})
    assert settings.workers == 2
    assert worker_count(build_parser().parse_args(["up"]).workers, settings) == 2
    assert worker_count(build_parser().parse_args(["up", "--workers", "1"]).workers, settings) == 1


def test_without_affinity_the_core_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert worker_count(None, Settings()) == 4


def test_up_refuses_cluster_mode_without_clickhouse_servers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    """The embedded endpoint is one chDB process: a cluster needs servers, said before anything starts."""
    from pipeline.cli import main
    from pipeline.embedded import stack

    started: list[str] = []
    monkeypatch.setattr(stack, "start_clickhouse", lambda *a, **k: started.append("clickhouse"))
    monkeypatch.setattr(stack, "start_tansu", lambda *a, **k: started.append("tansu"))
    monkeypatch.setattr(stack, "start_postgres", lambda *a, **k: started.append("postgres"))
    for name in ("KAFKA_BOOTSTRAP", "CLICKHOUSE_URL", "POSTGRES_DSN"):
        monkeypatch.delenv(f"PIPELINE_{name}", raising=False)
    monkeypatch.setenv("PIPELINE_CLICKHOUSE_CLUSTER", "pipeline")
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(tmp_path))
    assert main(["up"]) == 1
    err = capsys.readouterr().err
    assert "PIPELINE_CLICKHOUSE_CLUSTER needs ClickHouse servers (PIPELINE_CLICKHOUSE_URL)" in err
    assert started == []


def test_the_demo_stops_waiting_for_its_bindings_when_told(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while `pipeline up --demo` waits for the sample bindings ends the wait at once (it
    waited its whole 120 s, then started the simulator)."""
    import psycopg

    from pipeline.cli import services

    tries: list[str] = []

    def unreachable(dsn: str, **_kw: object) -> None:
        tries.append(dsn)
        raise psycopg.OperationalError("not up yet")

    monkeypatch.setattr(psycopg, "connect", unreachable)
    monkeypatch.setattr(services.time, "sleep", lambda _s: None)
    told = iter([False, False, True])
    assert services._wait_for_bindings("postgresql://x/y", timeout=3600, stop=lambda: next(told)) is False
    assert tries == ["postgresql://x/y"] * 2
