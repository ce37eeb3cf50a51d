"""compose/: the docker-compose stack cannot run here (no Docker engine), so check its structure:
healthchecks, PIPELINE_* names, a scalable worker, mounted paths, and the Dockerfile."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from pipeline.settings import settings_reference

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
COMPOSE = COMPOSE_DIR / "docker-compose.yml"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
SYSTEM_PYTHON = Path("/usr/bin/python3")

# Services that have no healthcheck, with the reason. None today.
NO_HEALTHCHECK: dict[str, str] = {}


def load_yaml(path: Path) -> Any:
    """PyYAML when the virtualenv has it (it is not a dependency of the project), otherwise
    Debian's python3-yaml through the system Python (.ci/install-system-packages installs it)."""
    try:
        import yaml
    except ImportError:
        pass
    else:
        return yaml.safe_load(path.read_text())
    code = "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)"
    if SYSTEM_PYTHON.exists():
        result = subprocess.run([str(SYSTEM_PYTHON), "-c", code, str(path)], capture_output=True, text=True, timeout=60)
        if result.returncode == 0:
            return json.loads(result.stdout)
        if "No module named 'yaml'" not in result.stderr:
            pytest.fail(f"{path}: not valid YAML:\n{result.stderr}")
    pytest.fail("no YAML parser: run .ci/install-system-packages (Debian python3-yaml), or install PyYAML")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def test_every_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if name in NO_HEALTHCHECK:
            continue
        check = service.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name}: no healthcheck"
    for name, service in compose["services"].items():
        for dep, cond in (service.get("depends_on") or {}).items():
            assert dep in compose["services"], f"{name} depends on unknown service {dep}"
            if cond.get("condition") == "service_healthy":
                assert dep not in NO_HEALTHCHECK, f"{name} waits for {dep} to be healthy, which has no healthcheck"


def test_pipeline_variables_are_settings(compose: dict[str, Any]) -> None:
    known = {name for name, _default, _doc in settings_reference()}
    # every PIPELINE_ name anywhere in the file: environment keys, ${...} interpolations, comments
    used = set(re.findall(r"\bPIPELINE_[A-Z0-9_]+\b", COMPOSE.read_text()))
    assert used, "the compose file configures no PIPELINE_* variable"
    unknown = sorted(used - known)
    assert not unknown, f"not settings (pipeline/settings.py): {unknown}"
    env = compose["services"]["worker"]["environment"]
    assert isinstance(env, dict)
    others = sorted(k for k in env if not k.startswith("PIPELINE_"))
    assert not others, f"the worker is configured only through PIPELINE_* variables: {others}"
    # all three services given, so the worker uses them and starts nothing embedded
    for name in ("PIPELINE_KAFKA_BOOTSTRAP", "PIPELINE_CLICKHOUSE_URL", "PIPELINE_POSTGRES_DSN"):
        assert env.get(name), f"worker: {name} not set"


def test_worker_is_scalable(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert "container_name" not in worker, "container_name prevents --scale worker=N"
    assert not worker.get("ports"), "a fixed host port prevents --scale worker=N"
    assert "hostname" not in worker
    deploy = worker.get("deploy") or {}
    assert "replicas" not in deploy or deploy["replicas"] != 1


def test_prometheus_scrapes_the_worker_service(compose: dict[str, Any]) -> None:
    prom = load_yaml(COMPOSE_DIR / "prometheus" / "prometheus.yml")
    port = int(compose["services"]["worker"]["environment"]["PIPELINE_METRICS_PORT"])
    sd = [cfg for job in prom["scrape_configs"] for cfg in job.get("dns_sd_configs", [])]
    assert sd, "workers are found through Docker's DNS"
    assert all(cfg["names"] == ["worker"] and cfg["type"] == "A" and cfg["port"] == port for cfg in sd), sd
    assert "worker" in compose["services"]
    assert prom["rule_files"] == ["alerts.yml"]


def _mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(type, source) of each volume entry: bind, volume (named) or anonymous."""
    out = []
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            out.append((entry.get("type", "volume"), str(entry.get("source", ""))))
            continue
        parts = entry.split(":")
        if len(parts) == 1:
            out.append(("anonymous", ""))
        elif parts[0].startswith((".", "/", "~")):
            out.append(("bind", parts[0]))
        else:
            out.append(("volume", parts[0]))
    return out


def test_mounted_paths_exist(compose: dict[str, Any]) -> None:
    named = set(compose.get("volumes") or {})
    binds = []
    for name, service in compose["services"].items():
        for kind, source in _mounts(service):
            if kind == "volume":
                assert source in named, f"{name}: volume {source} is not declared under volumes:"
            elif kind == "bind":
                binds.append(source)
                assert not source.startswith(("/", "~")), f"{name}: {source}: mount paths of this repository only"
                rel = (COMPOSE_DIR / source).resolve().relative_to(COMPOSE_DIR).as_posix()
                # a missing source would be created empty by Docker: the service starts unconfigured
                assert (COMPOSE_DIR / rel).exists(), f"{name}: {source} does not exist"
        build = service.get("build")
        if build:
            context = COMPOSE_DIR / (build if isinstance(build, str) else build.get("context", "."))
            assert context.is_dir(), f"{name}: build context {context}"
            if isinstance(build, dict) and "dockerfile" in build:
                assert (context / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']}"
    assert {"./prometheus", "./grafana/provisioning", "./grafana/dashboards"} <= set(binds)


def _dockerfile_copies() -> set[str]:
    copied: set[str] = set()
    for line in DOCKERFILE.read_text().splitlines():
        words = line.split()
        if words and words[0].upper() in ("COPY", "ADD"):
            sources = [w for w in words[1:] if not w.startswith("--")][:-1]
            copied.update(s.rstrip("/") for s in sources)
    return copied


def test_dockerfile_copies_what_the_packages_need() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {
        p.name
        for p in ROOT.iterdir()
        if (p / "__init__.py").is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in patterns)
    }
    assert {"pipeline", "processors", "sinks"} <= packages
    # directories beside the packages that their code reads (Path(__file__)...parent.parent / "x")
    beside = {
        m
        for pkg in packages
        for src in (ROOT / pkg).rglob("*.py")
        for m in re.findall(r'parent\.parent\s*/\s*"([^"/]+)"', src.read_text())
    }
    readme = project["project"].get("readme")
    needed = packages | beside | {"pyproject.toml"} | ({readme} if isinstance(readme, str) else set())
    missing = sorted(needed - _dockerfile_copies())
    assert not missing, f"compose/Dockerfile does not copy {missing}"
    text = DOCKERFILE.read_text()
    # editable: the code finds schemas/ beside the packages, not in site-packages
    assert re.search(r"pip install[^\n]*-e \.", text), "install the project editable (pip install -e .)"
    assert re.search(r"^USER (?!root)", text, re.M), "run as a user other than root"


def test_the_api_service_serves_on_its_settings(compose: dict[str, Any]) -> None:
    from pipeline.settings import Settings

    api, worker = compose["services"]["api"], compose["services"]["worker"]
    env = {k: str(v) for k, v in api["environment"].items()}
    # the same pipeline settings as the workers, plus where the API listens, and read-only
    # credentials for the stores (issue 14)
    reads_only = ("PIPELINE_CLICKHOUSE_URL", "PIPELINE_POSTGRES_DSN")
    assert {k: v for k, v in env.items() if not k.startswith("PIPELINE_API_") and k not in reads_only} == {
        k: str(v) for k, v in worker["environment"].items() if k not in reads_only
    }
    assert env["PIPELINE_CLICKHOUSE_URL"].startswith("http://pipeline_reader:")
    assert env["PIPELINE_POSTGRES_DSN"].startswith("postgresql://pipeline_api:")
    assert env["PIPELINE_API_AUTH"] == "required"
    # ${VAR:-default} as Docker Compose fills it in with nothing set
    filled = {k: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", v) for k, v in env.items()}
    settings = Settings.from_env(filled)
    assert settings.api_host == "0.0.0.0" and settings.api_port == 8080
    assert api["command"] == ["pipeline", "api"]
    assert f"{settings.api_port}:{settings.api_port}" in api["ports"]
    assert f":{settings.api_port}/api/timeseries/openapi.json" in " ".join(api["healthcheck"]["test"])
