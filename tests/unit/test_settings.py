from pathlib import Path

import pytest

from pipeline.settings import Settings


def test_environment_overrides_defaults() -> None:
    s = Settings.from_env(
        {
            "PIPELINE_KAFKA_BOOTSTRAP": "k:9092",
            "PIPELINE_TOPIC_PARTITIONS": "8",
            "PIPELINE_BATCH_WITHIN_S": "0.25",
            "PIPELINE_DATA_DIR": "/x",
        }
    )
    assert s.kafka_bootstrap == "k:9092" and s.topic_partitions == 8
    assert s.batch_within_s == 0.25 and s.data_dir == Path("/x")
    assert not s.external


def test_external_when_all_three_urls_set() -> None:
    s = Settings.from_env(
        {
            "PIPELINE_KAFKA_BOOTSTRAP": "k:1",
            "PIPELINE_CLICKHOUSE_URL": "http://c:8123",
            "PIPELINE_POSTGRES_DSN": "postgresql://p/db",
        }
    )
    assert s.external


def test_bad_value_names_the_variable() -> None:
    with pytest.raises(ValueError, match="PIPELINE_TOPIC_PARTITIONS"):
        Settings.from_env({"PIPELINE_TOPIC_PARTITIONS": "many"})


def test_config_file_then_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "p.toml"
    cfg.write_text('topic_prefix = "prod."\nbatch_max_datums = 5\n')
    s = Settings.from_env({"PIPELINE_BATCH_MAX_DATUMS": "7"}, config_file=cfg)
    assert s.topic_prefix == "prod." and s.batch_max_datums == 7
    cfg.write_text("nonsense = 1\n")
    with pytest.raises(ValueError, match="unknown settings"):
        Settings.from_env({}, config_file=cfg)


def test_as_env_round_trips() -> None:
    s = Settings.from_env({"PIPELINE_TOPIC_PREFIX": "a.", "PIPELINE_METRICS_PORT": "0"})
    assert Settings.from_env(s.as_env()) == s
