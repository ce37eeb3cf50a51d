"""compose/: the docker-compose stacks cannot run here (no Docker engine), so check their structure:
healthchecks, PIPELINE_* names, a scalable worker, mounted paths, and the Dockerfile; for the
ClickHouse cluster variant (docker-compose.cluster.yml), also that it is the single-node stack but
for ClickHouse, and that its servers, macros, remote_servers and Keeper configuration agree."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from pipeline.settings import settings_reference

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
COMPOSE = COMPOSE_DIR / "docker-compose.yml"
COMPOSE_CLUSTER = COMPOSE_DIR / "docker-compose.cluster.yml"
CLUSTER_DIR = COMPOSE_DIR / "clickhouse" / "cluster"
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


@pytest.fixture(scope="module", params=[COMPOSE, COMPOSE_CLUSTER], ids=["single-node", "cluster"])
def compose_file(request: pytest.FixtureRequest) -> Path:
    """Every structure test runs over both stacks."""
    path: Path = request.param
    return path


@pytest.fixture(scope="module")
def compose(compose_file: Path) -> dict[str, Any]:
    return load_yaml(compose_file)


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


def test_pipeline_variables_are_settings(compose: dict[str, Any], compose_file: Path) -> None:
    known = {name for name, _default, _doc in settings_reference()}
    # every PIPELINE_ name anywhere in the file: environment keys, ${...} interpolations, comments
    used = set(re.findall(r"\bPIPELINE_[A-Z0-9_]+\b", compose_file.read_text()))
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
    # the API verifies signatures with the tokens' digests, which only the token reader sees
    roles = (COMPOSE.parent / "postgres" / "10-roles.sql").read_text()
    api_role = re.search(r"CREATE ROLE pipeline_api LOGIN .* IN ROLE ([\w, ]+);", roles)
    assert api_role is not None
    assert {r.strip() for r in api_role.group(1).split(",")} == {"pipeline_reader", "pipeline_token_reader"}
    assert env["PIPELINE_API_AUTH"] == "required"
    # ${VAR:-default} as Docker Compose fills it in with nothing set
    filled = {k: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", v) for k, v in env.items()}
    settings = Settings.from_env(filled)
    assert settings.api_host == "0.0.0.0" and settings.api_port == 8080
    assert api["command"] == ["pipeline", "api"]
    assert f"{settings.api_port}:{settings.api_port}" in api["ports"]
    assert f":{settings.api_port}/api/timeseries/openapi.json" in " ".join(api["healthcheck"]["test"])


# -- the ClickHouse cluster variant ---------------------------------------------------------------

CLICKHOUSE_CONFIG = "/etc/clickhouse-server/config.d/"


def _filled(value: str) -> str:
    """${VAR:-default} as Docker Compose fills it in with nothing set."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def _servers(stack: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        n: s for n, s in stack["services"].items() if str(s.get("image", "")).startswith("clickhouse/clickhouse-server")
    }


def _keepers(stack: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        n: s for n, s in stack["services"].items() if str(s.get("image", "")).startswith("clickhouse/clickhouse-keeper")
    }


def _binds(service: dict[str, Any]) -> dict[str, str]:
    """container path -> repository path (relative to compose/) of each bind mount."""
    out = {}
    for entry in service.get("volumes", []):
        parts = entry.split(":")
        if parts[0].startswith("./"):
            out[parts[1]] = parts[0][2:]
    return out


def test_the_cluster_stack_is_the_single_node_stack_but_for_clickhouse() -> None:
    single, cluster = load_yaml(COMPOSE), load_yaml(COMPOSE_CLUSTER)
    servers, keepers = _servers(cluster), _keepers(cluster)
    assert list(_servers(single)) == ["clickhouse"] and not _keepers(single)
    assert set(cluster["services"]) == set(single["services"]) - {"clickhouse"} | set(servers) | set(keepers)
    for name, service in single["services"].items():
        if name == "clickhouse":
            continue
        expected = json.loads(json.dumps(service))
        deps = expected.get("depends_on") or {}
        if "clickhouse" in deps:  # waits for every server instead of the one
            cond = deps.pop("clickhouse")
            expected["depends_on"] = {**deps, **dict.fromkeys(servers, cond)}
        env = expected.get("environment")
        if isinstance(env, dict) and "PIPELINE_CLICKHOUSE_URL" in env:
            env["PIPELINE_CLICKHOUSE_CLUSTER"] = "telemetry"
        assert cluster["services"][name] == expected, name
    # the same server image and settings as the single node, for every server of the cluster
    one = single["services"]["clickhouse"]
    for name, server in servers.items():
        assert server["image"] == one["image"] and server["ulimits"] == one["ulimits"]
        assert server["healthcheck"] == one["healthcheck"]
        assert {k: v for k, v in server["environment"].items() if k != "CLICKHOUSE_CLUSTER_SECRET"} == one[
            "environment"
        ]
        assert set(_binds(one).items()) <= set(_binds(server).items()), name  # the read-only user on every server
    # the servers' data volumes replace the single node's
    assert set(cluster["volumes"]) == set(single["volumes"]) - {"clickhouse-data"} | {
        f"{n}-data" for n in [*servers, *keepers]
    }


def test_the_cluster_is_two_shards_of_two_replicas_named_alike_everywhere() -> None:
    stack = load_yaml(COMPOSE_CLUSTER)
    servers, keepers = _servers(stack), _keepers(stack)
    remote = ET.parse(CLUSTER_DIR / "remote_servers.xml").getroot()
    clusters = remote.find("remote_servers")
    assert clusters is not None
    (cluster,) = list(clusters)
    # the pipeline's cluster name is the servers'
    env = {k: _filled(str(v)) for k, v in stack["x-pipeline-env"].items()}
    assert cluster.tag == env["PIPELINE_CLICKHOUSE_CLUSTER"] == "telemetry"
    shards = cluster.findall("shard")
    assert [len(shard.findall("replica")) for shard in shards] == [2, 2]
    seen: set[tuple[str, str]] = set()
    hosts = []
    for number, shard in enumerate(shards, start=1):
        assert (shard.findtext("internal_replication") or "").strip() == "true"
        for replica in shard.findall("replica"):
            host = replica.findtext("host") or ""
            assert replica.findtext("port") == "9000"
            hosts.append(host)
            # a service of that name and hostname, with remote_servers and its own macros mounted
            service = servers[host]
            assert service["hostname"] == host
            binds = _binds(service)
            assert binds[CLICKHOUSE_CONFIG + "remote_servers.xml"] == "clickhouse/cluster/remote_servers.xml"
            assert binds[CLICKHOUSE_CONFIG + "macros.xml"] == f"clickhouse/cluster/macros/{host}.xml"
            macros = ET.parse(COMPOSE_DIR / binds[CLICKHOUSE_CONFIG + "macros.xml"]).getroot()
            shard_macro, replica_macro = macros.findtext("macros/shard"), macros.findtext("macros/replica")
            assert (shard_macro, replica_macro) == (str(number), host)
            assert macros.findtext("interserver_http_host") == host
            seen.add((str(shard_macro), str(replica_macro)))
            # the inter-server secret the cluster names is in every server's environment
            secret = cluster.find("secret")
            assert secret is not None and secret.get("from_env") in service["environment"]
    assert len(seen) == 4 and sorted(hosts) == sorted(servers)
    # the pipeline's URL names the one server with the `clickhouse` alias
    aliased = [
        n
        for n, s in servers.items()
        if "clickhouse" in ((s.get("networks") or {}).get("default") or {}).get("aliases", [])
    ]
    assert len(aliased) == 1 and "@clickhouse:8123/" in env["PIPELINE_CLICKHOUSE_URL"]
    assert aliased == [n for n, s in servers.items() if s.get("ports")]

    # Keeper: the servers' <zookeeper> nodes are the keeper services, the keepers' Raft servers too
    nodes = [(n.findtext("host"), n.findtext("port")) for n in remote.findall("zookeeper/node")]
    keeper = ET.parse(CLUSTER_DIR / "keeper.xml").getroot()
    port = keeper.findtext("keeper_server/tcp_port")
    assert sorted(nodes) == [(k, port) for k in sorted(keepers)] and len(keepers) == 3
    raft = {s.findtext("hostname"): s.findtext("id") for s in keeper.findall("keeper_server/raft_configuration/server")}
    assert set(raft) == set(keepers)
    server_id = keeper.find("keeper_server/server_id")
    assert server_id is not None and server_id.get("from_env") == "KEEPER_SERVER_ID"
    for name, service in keepers.items():
        assert service["hostname"] == name
        assert service["environment"]["KEEPER_SERVER_ID"] == raft[name]
        assert _binds(service)["/etc/clickhouse-keeper/keeper_config.xml"] == "clickhouse/cluster/keeper.xml"
        for server in servers.values():
            assert server["depends_on"][name] == {"condition": "service_healthy"}
