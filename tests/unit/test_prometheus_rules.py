"""compose/prometheus: promtool checks the scrape config and the alert rules and runs the rules'
unit tests; every pipeline_* metric the rules name must exist in pipeline.worker.metrics."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from pipeline.worker.metrics import build_metrics
from tests.unit.test_compose import load_yaml

PROM_DIR = Path(__file__).resolve().parents[2] / "compose" / "prometheus"
ALERTS = PROM_DIR / "alerts.yml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is not installed: run .ci/install-system-packages (Debian package prometheus)")
    return subprocess.run([exe, *args], cwd=PROM_DIR, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "args",
    [
        ("check", "config", "prometheus.yml"),
        ("check", "rules", "alerts.yml"),
        ("test", "rules", "alerts_test.yml"),
    ],
    ids=["check-config", "check-rules", "test-rules"],
)
def test_promtool(args: tuple[str, ...]) -> None:
    result = promtool(*args)
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}\n{result.stderr}"


def exported_series() -> set[str]:
    """The series names Prometheus sees from pipeline.worker.metrics (prometheus-client adds _total to
    counters; histograms export _bucket, _count and _sum; both may export _created)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "gauge": ("",),
    }
    names: set[str] = set()
    for metric in vars(build_metrics(CollectorRegistry())).values():
        for family in metric.describe():
            names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def used_metric_names(rules: dict) -> set[str]:
    """pipeline_* names in the rules' expressions (annotations mention some in prose)."""
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert exprs, "no rules"
    return {name for expr in exprs for name in re.findall(r"\bpipeline_[a-z_]+\b", expr)}


def test_every_metric_in_the_rules_exists() -> None:
    used = used_metric_names(load_yaml(ALERTS))
    missing = sorted(used - exported_series())
    assert not missing, f"alerts.yml uses metrics pipeline/worker/metrics.py does not export: {missing}"
    # the alerts the rules must cover, by the metrics they rest on
    assert {
        "pipeline_datums_in_total",
        "pipeline_last_stored_timestamp_seconds",
        "pipeline_consumer_lag",
        "pipeline_dead_letters_total",
        "pipeline_sink_failures_total",
        "pipeline_created_to_stored_seconds_bucket",
        "pipeline_dependency_up",
        "pipeline_internal_errors_total",
    } <= used


def test_the_name_check_catches_wrong_names() -> None:
    rules = {
        "groups": [
            {
                "rules": [
                    {"alert": "A", "expr": "rate(pipeline_dead_letter_total[5m]) > 0"},  # misspelt
                    {"alert": "B", "expr": "rate(pipeline_sink_failures[5m]) > 0"},  # a counter without _total
                    {"alert": "C", "expr": "pipeline_created_to_stored_seconds > 60"},  # a histogram's bare name
                    {"alert": "D", "expr": "pipeline_consumer_lag > 0 and up == 1"},  # a gauge: fine
                ]
            }
        ]
    }
    assert used_metric_names(rules) - exported_series() == {
        "pipeline_dead_letter_total",
        "pipeline_sink_failures",
        "pipeline_created_to_stored_seconds",
    }


def test_every_alert_has_for_severity_summary_and_description() -> None:
    for group in load_yaml(ALERTS)["groups"]:
        for rule in group["rules"]:
            assert "alert" in rule, f"recording rules belong elsewhere: {rule}"
            assert rule.get("for"), f"{rule['alert']}: no for:"
            assert rule.get("labels", {}).get("severity") in {"critical", "warning", "info"}, rule["alert"]
            assert {"summary", "description"} <= set(rule.get("annotations", {})), rule["alert"]


def test_the_promtool_tests_fire_the_main_alerts() -> None:
    tests = load_yaml(PROM_DIR / "alerts_test.yml")
    fired = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert {"PipelineStalled", "PipelineDeadLetterRateHigh", "PipelineSinkFailing"} <= fired
    alerts = {rule["alert"] for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]}
    assert fired == alerts, f"alerts without a firing test: {sorted(alerts - fired)}"
