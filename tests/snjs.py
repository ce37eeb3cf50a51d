"""SolarNetwork's own JavaScript clients (npm, pinned in tests/js/package.json + package-lock.json), run under Node.

`npm_clients()` installs them into tests/js/node_modules when that is missing (`npm ci`, the only
network the tests use) and skips the calling test, with the reason, only when node or npm are not
installed. `sign_requests()` signs requests with solarnetwork-api-core's AuthorizationV2Builder;
`solarquery_client()` loads data from a running API with solarnetwork-datum-loader.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

JS_DIR = Path(__file__).resolve().parent / "js"
NODE_MODULES = JS_DIR / "node_modules"
CORE_PACKAGE = NODE_MODULES / "solarnetwork-api-core" / "package.json"
LOADER_PACKAGE = NODE_MODULES / "solarnetwork-datum-loader" / "package.json"


def npm_clients() -> Path:
    """The tests/js directory with its node_modules installed; skips when node/npm are absent."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("SolarNetwork's JavaScript clients need node and npm, which are not installed")
    if not CORE_PACKAGE.exists() or not LOADER_PACKAGE.exists():
        # npm ci installs exactly the lock file's versions; fail loudly (not skip) if the registry is unreachable
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=JS_DIR,
            check=True,
            timeout=300,
            stdout=subprocess.DEVNULL,
        )
    return JS_DIR


def core_version() -> str:
    npm_clients()
    version: str = json.loads(CORE_PACKAGE.read_text(encoding="utf-8"))["version"]
    return version


def run_node(script: str, payload: Any, timeout: float = 60) -> Any:
    """Run tests/js/<script> with `payload` as JSON on stdin; returns its JSON stdout."""
    js_dir = npm_clients()  # skips first when node/npm are missing
    node = shutil.which("node")
    assert node is not None
    done = subprocess.run(
        [node, script],
        cwd=js_dir,
        input=json.dumps(payload).encode("utf-8"),
        capture_output=True,
        check=False,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise AssertionError(f"node {script} failed ({done.returncode}): {done.stderr.decode(errors='replace')}")
    return json.loads(done.stdout)


def sign_requests(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sign each request with AuthorizationV2Builder (see tests/js/snws2_sign.mjs for the fields).

    Returns, per request, {"headers": {...}, "canonicalRequest": "..."}: the headers the client sends.
    """
    out: list[dict[str, Any]] = run_node("snws2_sign.mjs", requests)
    assert len(out) == len(requests)
    return out


def solarquery_client(
    host: str, port: int, ops: list[dict[str, Any]], token: str | None = None, secret: str | None = None
) -> list[dict[str, Any]]:
    """Run SolarNetwork's clients (DatumLoader, DatumRangeFinder, DatumSourceFinder, signed
    SolarQueryApi URLs) against a running API; see tests/js/solarquery_client.mjs for the ops."""
    out: list[dict[str, Any]] = run_node(
        "solarquery_client.mjs", {"host": host, "port": port, "token": token, "secret": secret, "ops": ops}, timeout=120
    )
    assert len(out) == len(ops)
    return out
