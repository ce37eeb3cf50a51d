"""`pipeline replay`: dead-lettered datums accepted after a template fix, stored datums re-scored
with the thresholds of their own time, on the real services."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from pipeline import cli
from pipeline.settings import Settings
from tests.integration.helpers import (
    model_events,
    publish_metadata,
    settings_in_env,
    wait_for,
    wait_for_catalog,
    worker_process,
)

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z
MIN = 60_000


def model(name: str, maximum: float) -> dict[str, Any]:
    return {
        "identifier": name,
        "name": "Probe",
        "version": "1.0",
        "description": "A temperature probe",
        "allowedResourceTypes": ["entity.device"],
        "categories": [
            {
                "identifier": "t",
                "name": "Temperature",
                "datastreams": [
                    {
                        "identifier": f"{name}.temp",
                        "name": "Temperature",
                        "description": "Degrees",
                        "period": "INSTANT",
                        "access": "READ",
                        "schema": {"type": "number", "maximum": maximum},
                    },
                ],
            }
        ],
    }


def publish(settings: Settings, tmp: Path, name: str, maximum: float, node: int | None) -> int:
    """A datamodel and a binding of /rp/** to it (for one node, which is created, or all)."""
    folder = tmp / f"models-{name}"
    folder.mkdir()
    events = model_events(
        folder,
        model(name, maximum),
        {
            "bindings": [
                {"node_id": node, "source_pattern": "/rp/**", "datamodel": name, "properties": {"temp": f"{name}.temp"}}
            ]
        },
        f"{name}: maximum {maximum}",
    )
    if node is not None:
        events.insert(
            0,
            {
                **events[0],
                "event_id": str(uuid.uuid4()),
                "entity": "node",
                "key": {"node_id": node},
                "op": "upsert",
                "value": {"name": f"node {node}"},
            },
        )
    publish_metadata(settings, events)
    return len(events)


def test_replay_dead_letters_after_a_fix_and_the_store(
    worker_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = worker_settings
    pg_dsn = settings.postgres_dsn
    client = settings_in_env(settings, monkeypatch)
    log = tmp_path / "worker.log"
    lines = [
        json.dumps(
            {
                "nodeId": 1,
                "sourceId": f"/rp/{k % 3}",
                "created": T0 + k * MIN,
                "samples": {"i": {"temp": float(40 + 5 * k)}},
            }
        )
        for k in range(30)
    ]
    too_hot = sum(1 for k in range(30) if 40 + 5 * k > 100)  # 17 of 30 above the first maximum
    (tmp_path / "in.json").write_text("\n".join(lines) + "\n")

    def stored(where: str = "1") -> int:
        return int(client.command(f"SELECT count() FROM datum WHERE {where}"))

    with worker_process(settings, log):
        events = publish(settings, tmp_path, "probe", 100, None)
        wait_for_catalog(pg_dsn, events, log)
        assert cli.main(["ingest", str(tmp_path / "in.json")]) == 0
        wait_for(lambda: stored() == 30 - too_hot, 60, f"{30 - too_hot} accepted datums stored")

        # the template was wrong (datamodels are static): bind the node to a corrected one, then
        # replay what the first refused
        events += publish(settings, tmp_path, "probefixed", 1000, 1)
        wait_for_catalog(pg_dsn, events, log)
        assert cli.main(["replay", "deadletter", "--stage", "validation"]) == 0
        wait_for(lambda: stored() == 30, 60, "every datum stored after the replay")
        assert stored("datastream = 'probefixed.temp'") == too_hot
        before = client.query("SELECT max(inserted) FROM datum").result_rows[0][0]

        # the store: every datum in the range sent again, stored over itself (no duplicates)
        assert (
            cli.main(
                [
                    "replay",
                    "store",
                    "--from",
                    "2026-01-01T00:00:00Z",
                    "--to",
                    "2026-01-01T00:20:00Z",
                    "--source",
                    "/rp/1",
                ]
            )
            == 0
        )
        again = sum(1 for k in range(20) if k % 3 == 1)
        wait_for(
            lambda: stored(f"source_id = '/rp/1' AND inserted > '{before}'") == again,
            60,
            f"{again} datums of /rp/1 stored again",
        )
        assert stored() == 30
        assert int(client.command("SELECT count() FROM datum_raw")) >= 30 + again  # new inserts, same key
    assert "Traceback" not in log.read_text()
