"""One settings object, built from the environment (and optionally a TOML config file).

Every tunable of the pipeline is defined here once, with its environment variable.
When PIPELINE_KAFKA_BOOTSTRAP, PIPELINE_CLICKHOUSE_URL and PIPELINE_POSTGRES_DSN are set,
`pipeline up` uses those services and starts none of its own.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

ENV_PREFIX = "PIPELINE_"


@dataclass(frozen=True)
class Settings:
    # Where the services are. Empty means "start the embedded one" (pipeline up only).
    kafka_bootstrap: str = field(default="", metadata={"doc": "Kafka bootstrap servers, host:port[,host:port]"})
    clickhouse_url: str = field(default="", metadata={"doc": "ClickHouse HTTP URL, e.g. http://user:pw@host:8123/db"})
    clickhouse_cluster: str = field(
        default="",
        metadata={
            "doc": "ClickHouse cluster (a remote_servers name) for cluster mode: replicated tables ON CLUSTER,"
            " Distributed tables sharded by stream (docs/scale-out.md); empty: one server"
        },
    )
    postgres_dsn: str = field(default="", metadata={"doc": "PostgreSQL DSN for the metadata history log"})
    kafka_security_protocol: str = field(
        default="PLAINTEXT",
        metadata={
            "doc": "Kafka security: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (every client: producer, Faust, admin)"
        },
    )
    kafka_sasl_mechanism: str = field(
        default="SCRAM-SHA-512", metadata={"doc": "SASL mechanism: SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN"}
    )
    kafka_sasl_username: str = field(default="", metadata={"doc": "SASL user name"})
    kafka_sasl_password: str = field(default="", metadata={"doc": "SASL password"})
    kafka_ssl_cafile: str = field(default="", metadata={"doc": "CA bundle that signed the brokers' certificates"})
    data_dir: Path = field(default=Path("data"), metadata={"doc": "Embedded stack data directory"})

    # Kafka naming
    topic_prefix: str = field(default="", metadata={"doc": "Prefix for every topic (lets deployments share a cluster)"})
    topic_map: str = field(
        default="",
        metadata={
            "doc": "Topic-mapping rule: '<Ant pattern of sourceIds> = <group>' rules separated by ';', first match"
            " wins, `{n}` the n-th wildcard's text; matching sources share the topic datumgroup.<group> (keyed by"
            " stream, so each stream keeps its order). Empty: one topic per source. Same for every producer"
            " (docs/scale-out.md)"
        },
    )
    topic_partitions: int = field(default=4, metadata={"doc": "Partitions of each source topic created"})
    app_id: str = field(default="telemetry-pipeline", metadata={"doc": "Faust app id, i.e. consumer group"})

    # Consumer behaviour
    batch_max_datums: int = field(default=20_000, metadata={"doc": "Most datums stored per sink flush"})
    batch_within_s: float = field(default=0.5, metadata={"doc": "Longest wait to fill a sink batch, seconds"})
    rollup_within_s: float = field(
        # A take waits this long even with a backlog in hand (Faust closes it early only when it
        # is full); a shorter wait means more, smaller rollup steps, each costing the store about
        # the same. 0.05 s was tried (docs/hot-path.md): nothing to tell from the host's noise.
        default=0.2,
        metadata={"doc": "Longest wait to fill a batch of stale marks, seconds (rollups lag raw rows by about this)"},
    )
    rollup_take_marks: int = field(
        # A fleet's worker has a mark of each of its thousands of streams every raw batch: a take
        # of a few thousand marks left a backlog of them, each stream recomputed once per mark,
        # where a larger take recomputes it once for all (docs/hot-path.md, 2026-12-03).
        default=40_000,
        metadata={
            "doc": "Most stale marks per rollup batch (a batch costs about ten statements whatever its size, so a"
            " backlog is best taken in large batches; smaller ones bound the memory of one batch)"
        },
    )
    rollup_lanes: int = field(
        default=1,
        metadata={
            "doc": "Rollup lanes per worker: the streams of a large batch of stale marks recomputed side by"
            " side, each lane its own ClickHouse client (1: one at a time; more for a store on other machines,"
            " docs/rollups.md)"
        },
    )
    rollup_lane_streams: int = field(
        default=1000,
        metadata={
            "doc": "Streams of a batch of stale marks per rollup lane, at least (a lane costs its own statements:"
            " a smaller batch stays in fewer lanes)"
        },
    )
    rollup_cache_points: int = field(
        default=2_000_000,
        metadata={
            "doc": "Recent raw points the rollup agent holds between steps, so a step reads from the store only the"
            " points its stale marks say changed (0: none held, every step reads its windows whole;"
            " docs/rollups.md)"
        },
    )
    rollup_cache_min_points: int = field(
        default=1000,
        metadata={
            "doc": "Fewest points a stream must have over half an hour to be held (a sparse stream's few points"
            " cost less to read again than to keep in step)"
        },
    )
    rollup_running_series: int = field(
        default=100_000,
        metadata={
            "doc": "Series (a stream's property) whose open rollup buckets the rollup agent keeps as running sums,"
            " so a step of appended readings extends them instead of recomputing from the store (0: none;"
            " docs/rollups.md)"
        },
    )
    rollup_combine_buckets: int = field(
        default=300,
        metadata={
            "doc": "Most stale hour-to-year buckets a rollup step combines in the worker, from their stored rows"
            " read in one query; a step with more has the store combine them, a statement per level"
            " (0: always the store; docs/rollups.md)"
        },
    )
    topic_scan_interval_s: float = field(default=2.0, metadata={"doc": "How often new source topics are looked for"})
    metadata_max_age_s: float = field(
        default=10.0,
        metadata={
            "doc": "Oldest the workers' view of a topic's partitions may grow: a partition added (or a topic a"
            " broker created again with other partitions) is assigned and read within this"
        },
    )
    session_timeout_s: float = field(default=10.0, metadata={"doc": "Consumer group session timeout"})
    rebalance_timeout_s: float = field(default=6.0, metadata={"doc": "Consumer group rebalance timeout"})
    max_message_bytes: int = field(default=8 * 1024 * 1024, metadata={"doc": "Largest Kafka message"})
    # each worker is one Python process, so it uses at most one core: one per core uses them all
    workers: int = field(default=0, metadata={"doc": "Worker processes `pipeline up` starts (0: one per core)"})

    # Producer behaviour (gateway side)
    producer_batch_datums: int = field(default=1000, metadata={"doc": "Datums per Kafka message (one batch envelope)"})
    producer_linger_ms: int = field(default=20, metadata={"doc": "librdkafka linger.ms"})
    producer_compression: str = field(default="zstd", metadata={"doc": "librdkafka compression.type"})
    confirm_timeout_s: float = field(
        default=300.0,
        metadata={"doc": "How long `pipeline ingest` waits for the pipeline to store what it sent (0: do not wait)"},
    )

    # Serving
    metrics_port: int = field(default=9108, metadata={"doc": "Prometheus /metrics port of the worker (0: off)"})
    metrics_host: str = field(
        default="127.0.0.1",
        metadata={"doc": "Address the worker's /metrics listens on (0.0.0.0 for a Prometheus on another host)"},
    )
    api_host: str = field(default="127.0.0.1", metadata={"doc": "Address the time-series HTTP API listens on"})
    api_port: int = field(default=8080, metadata={"doc": "Port of the time-series HTTP API (0: off in pipeline up)"})
    api_auth: str = field(
        default="auto",
        metadata={"doc": "API access: 'auto' (a token is required once any token exists) or 'required' (always)"},
    )
    http_ingest_group_requests: int = field(
        default=500,
        metadata={
            "doc": "Most HTTP ingest requests published together, answered by one broker acknowledgement"
            " (a group holds what arrived while the one before it was flushing; 1: one request at a time)"
        },
    )
    clickhouse_port: int = field(default=8123, metadata={"doc": "Port of the embedded ClickHouse HTTP endpoint"})
    kafka_port: int = field(default=9092, metadata={"doc": "Port of the embedded Tansu broker"})
    postgres_port: int = field(default=5433, metadata={"doc": "Port of the embedded PostgreSQL"})
    log_level: str = field(default="info", metadata={"doc": "Log level: debug, info, warn, error"})

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, config_file: Path | None = None) -> Settings:
        """Defaults, then the config file (PIPELINE_CONFIG or given), then environment variables."""
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        path = config_file or (Path(env[ENV_PREFIX + "CONFIG"]) if env.get(ENV_PREFIX + "CONFIG") else None)
        if path is not None:
            with path.open("rb") as fh:
                raw = tomllib.load(fh)
            known = {f.name for f in fields(cls)}
            unknown = set(raw) - known
            if unknown:
                raise ValueError(f"{path}: unknown settings {sorted(unknown)}")
            values.update(raw)
        for f in fields(cls):
            name = ENV_PREFIX + f.name.upper()
            if name in env and env[name] != "":
                values[f.name] = env[name]
        return cls()._with(values)

    def _with(self, values: dict[str, Any]) -> Settings:
        typed: dict[str, Any] = {}
        for f in fields(self):
            if f.name not in values:
                continue
            raw = values[f.name]
            default = getattr(self, f.name)
            try:
                if isinstance(default, bool):
                    typed[f.name] = str(raw).lower() in ("1", "true", "yes", "on")
                elif isinstance(default, int):
                    typed[f.name] = int(raw)
                elif isinstance(default, float):
                    typed[f.name] = float(raw)
                elif isinstance(default, Path):
                    typed[f.name] = Path(raw)
                else:
                    typed[f.name] = str(raw)
            except ValueError as exc:
                raise ValueError(f"{ENV_PREFIX}{f.name.upper()}={raw!r}: {exc}") from None
        return replace(self, **typed)

    @property
    def external(self) -> bool:
        """All three services given: start nothing embedded."""
        return bool(self.kafka_bootstrap and self.clickhouse_url and self.postgres_dsn)

    def as_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process."""
        return {ENV_PREFIX + f.name.upper(): str(getattr(self, f.name)) for f in fields(self)}


def settings_reference() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting: the README and --help print this."""
    return [(ENV_PREFIX + f.name.upper(), str(f.default), f.metadata.get("doc", "")) for f in fields(Settings)]
