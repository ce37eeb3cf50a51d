"""`pipeline up`, `pipeline worker`, `pipeline api`: the launcher and the long-running processes."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.cli.common import embedded_defaults, need
from pipeline.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = sub.add_parser(
        "up",
        help="start the whole pipeline (embedded services unless URLs are set)",
        description="Start the Tansu broker, embedded PostgreSQL and the ClickHouse HTTP endpoint "
        "(each only if its URL is not set), then the Faust worker(s). Prints where everything "
        "listens; Ctrl-C or SIGTERM drains in-flight batches and stops everything.",
    )
    up.add_argument("--data-dir", help="where embedded services keep their data (default: ./data)")
    up.add_argument("--demo", action="store_true", help="also load sample data and run the simulator")
    up.add_argument(
        "--workers",
        type=int,
        default=None,
        help="Faust worker processes (default: PIPELINE_WORKERS, else one per core)",
    )
    up.set_defaults(func=cmd_up)

    worker = sub.add_parser("worker", help="run one Faust worker against the configured services")
    worker.set_defaults(func=cmd_worker)

    api = sub.add_parser(
        "api",
        help="serve the OpenOrg time-series HTTP API at /api/timeseries",
        description="Serve the OpenOrg time-series API (GET /api/timeseries, OpenAPI at /api/timeseries/openapi.json) "
        "on PIPELINE_API_HOST:PIPELINE_API_PORT, reading raw data and rollups from ClickHouse and node "
        "time zones from the history log. `pipeline up` starts it.",
    )
    api.set_defaults(func=cmd_api)


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.embedded import stack
    from sinks.clickhouse import ensure_schema, wait_for

    args.workers = worker_count(args.workers, settings)
    data_dir = settings.data_dir.resolve()
    try:  # before anything in the data directory is touched
        lock = stack.DataDirLock(data_dir).acquire()
    except stack.DataDirInUse as exc:
        print(f"pipeline up: {exc}", file=sys.stderr)
        return 1
    logs = data_dir / "logs"
    supervisor = stack.Supervisor()
    services: list[stack.Service] = []  # embedded ones, in start order
    workers: list[stack.Service] = []
    others: list[stack.Service] = []  # api, simulate
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if settings.clickhouse_cluster and not settings.clickhouse_url:
            raise stack.StackError(
                "PIPELINE_CLICKHOUSE_CLUSTER needs ClickHouse servers (PIPELINE_CLICKHOUSE_URL): the embedded"
                " endpoint is one chDB process, which has no cluster"
            )
        stack.require_embedded(
            *[
                name
                for name, url in (
                    ("broker", settings.kafka_bootstrap),
                    ("postgres", settings.postgres_dsn),
                    ("clickhouse", settings.clickhouse_url),
                )
                if not url
            ]
        )
        if not settings.kafka_bootstrap:
            services.append(stack.tansu(settings.kafka_port, log_dir=logs))
        if not settings.postgres_dsn:
            services.append(stack.postgres(data_dir / "postgres", settings.postgres_port))
        embedded_clickhouse = not settings.clickhouse_url
        if embedded_clickhouse:
            # only its users get in: the pipeline's writer, and a reader for the API (issue 14)
            services.append(
                stack.clickhouse(
                    data_dir / "clickhouse",
                    settings.clickhouse_port,
                    log_dir=logs,
                    users_file=stack.clickhouse_users_file(data_dir),
                )
            )
        for svc in services:
            supervisor.add(svc.start())
        settings = embedded_defaults(settings)
        ensure_schema(wait_for(settings.clickhouse_url), settings.clickhouse_cluster)
        env = {**os.environ, **settings.as_env()}

        def child(
            name: str, argv: list[str], extra: dict[str, str] | None = None, restart: bool = True
        ) -> stack.Service:
            child_env = {**env, **(extra or {})}
            svc = stack.Service(
                name,
                "",
                spawn=lambda: stack.spawn_process(argv, logs / f"{name}.log", child_env),
                log_file=logs / f"{name}.log",
            )
            return supervisor.add(svc.start(), restart=restart)

        for n in range(args.workers):
            # each worker its own metrics port: base, base+1, ...
            port = settings.metrics_port + n if settings.metrics_port else 0
            workers.append(
                child(
                    f"worker-{n}",
                    [sys.executable, "-m", "pipeline.cli", "worker"],
                    {"PIPELINE_METRICS_PORT": str(port)},
                )
            )
        if settings.api_port:
            # the API only reads ClickHouse: as the read-only user on the embedded endpoint
            reader = (
                {
                    "PIPELINE_CLICKHOUSE_URL": stack.embedded_clickhouse_url(
                        data_dir, settings.clickhouse_port, user=stack.CLICKHOUSE_READER
                    )
                }
                if embedded_clickhouse
                else {}
            )
            others.append(child("api", [sys.executable, "-m", "pipeline.cli", "api"], reader))
        if args.demo:
            # the sample datamodels and bindings go through the metadata topic like any change
            from pipeline.resources import schemas_dir

            models = schemas_dir("datamodels")  # in the tree, or inside an installed wheel
            published = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pipeline.cli",
                    "metadata",
                    "datamodels",
                    str(models),
                    "--author",
                    "demo",
                    "--comment",
                    "sample datamodels",
                ],
                env=env,
                preexec_fn=stack.dies_with_parent(),
            )
            # Ctrl-C reaches the publisher too (one process group): then it is no failure
            if published.returncode != 0 and not stopping:
                raise stack.StackError(f"publishing the sample datamodels failed (exit {published.returncode})")
            bindings = json.loads((models / "bindings.json").read_text())["bindings"]
            if not stopping and _wait_for_bindings(
                settings.postgres_dsn, timeout=120, count=len(bindings), stop=lambda: stopping
            ):
                # a day of history from a small fleet, then live data every 10 s; not restarted:
                # it would send its day of history again
                others.insert(
                    0,
                    child(
                        "simulate",
                        [
                            sys.executable,
                            "-m",
                            "pipeline.cli",
                            "simulate",
                            "--nodes",
                            "3",
                            "--interval",
                            "10",
                            "--backfill",
                            "24",
                            "--realtime",
                            "--bad-ratio",
                            "0.01",
                        ],
                        restart=False,
                    ),
                )
        print(_banner(settings, data_dir, args.workers), flush=True)
        while not stopping:
            supervisor.check()  # restarts what died, with backoff, on the same ports
            time.sleep(0.25)
        print("pipeline: stopping (draining in-flight batches)...", flush=True)
        return 0
    except stack.StackError as exc:
        print(f"pipeline up: {exc}", file=sys.stderr)
        return 1
    finally:
        # the producer first, then the workers drain, then the API, then the services they used
        simulate = [s for s in others if s.name == "simulate"]
        supervisor.stop(
            [simulate, workers, [s for s in others if s not in simulate], *([s] for s in reversed(services))]
        )
        lock.release()
        print("pipeline: stopped", flush=True)


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    need(settings, "kafka_bootstrap", "clickhouse_url")
    from pipeline.worker.app import run_worker

    run_worker(settings)
    return 0


def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    need(settings, "clickhouse_url")
    from pipeline.api.server import serve

    serve(settings)
    return 0


def worker_count(requested: int | None, settings: Settings) -> int:
    """--workers, else PIPELINE_WORKERS, else one per core this process may run on: a worker is
    one Python process (one event loop, the GIL), so it keeps at most one core busy."""
    if requested:
        return requested
    if settings.workers > 0:
        return settings.workers
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # no affinity on this platform
        return os.cpu_count() or 1


def _wait_for_bindings(dsn: str, timeout: float, count: int = 1, stop: Callable[[], bool] = lambda: False) -> bool:
    """Until a worker has applied `count` of the demo's bindings: data sent before would go
    unvalidated (the datamodels come first in the events, so they are there too). False when
    `stop()` says to give up first (Ctrl-C while `pipeline up --demo` starts)."""
    import psycopg

    from sinks import history

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stop():
            return False
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                if len(history.current_catalog(conn).bindings) >= count:
                    return True
        except psycopg.Error:
            pass  # schema not migrated yet: the worker does it on start
        time.sleep(0.5)
    raise SystemExit("pipeline up --demo: the sample datamodels were not applied in time; see logs/worker-0.log")


def _without_password(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def _banner(settings: Settings, data_dir: Path, workers: int) -> str:
    return "\n".join(
        [
            "pipeline is up:",
            f"  Kafka bootstrap    {settings.kafka_bootstrap}",
            f"  ClickHouse HTTP    {_without_password(settings.clickhouse_url)}"
            "   (try: pipeline sql 'SELECT count() FROM datum')",
            f"  PostgreSQL         {settings.postgres_dsn}",
            f"  Prometheus metrics http://127.0.0.1:{settings.metrics_port}/metrics" if settings.metrics_port else "",
            f"  time-series API    http://{settings.api_host}:{settings.api_port}/api/timeseries"
            if settings.api_port
            else "",
            f"  Faust workers      {workers}",
            f"  data directory     {data_dir}",
            "Ctrl-C to stop.",
        ]
    )
