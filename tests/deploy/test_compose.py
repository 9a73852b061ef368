"""The compose files: valid Compose, and faithful to the seed's deployment sections."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import (
    BASE,
    DEPLOY,
    DEV,
    SCALE,
    TEST_ENV,
    compose_config,
    docker_compose,
    load_compose,
    load_yaml,
)
from tests.deploy.topology import edges, hosts_in_url, networks_of, optional_hosts

jsonschema = pytest.importorskip("jsonschema")

# ---------------------------------------------------------------- the seed, as data

SEED_NETWORKS = {
    "frontend-net": ("172.20.0.0/24", False),
    "backend-net": ("172.21.0.0/24", False),
    "data-net": ("172.22.0.0/24", True),  # (subnet, internal)
    "monitoring-net": ("172.23.0.0/24", False),
}

F, B, D, M = "frontend-net", "backend-net", "data-net", "monitoring-net"
SERVICE_NETWORKS = {
    "postgres": {D},
    "redis": {D},
    "rabbitmq": {B},
    "elasticsearch": {B},
    "migrate": {D},
    "api": {F, B, D},
    "gateway": {F, B, D},
    "worker": {B, D},
    "relay": {B, D},
    "subscribers": {B, D},
    "scheduler": {B, D},
    "prometheus": {M, B},
    "grafana": {F, M},
    "node-exporter": {M},
    "postgres-exporter": {M, D},
    "redis-exporter": {M, D},
    "elasticsearch-exporter": {M, B},
}

CAPSTAN = {"migrate", "api", "gateway", "worker", "relay", "subscribers", "scheduler"}
MONITORING = {
    "prometheus",
    "grafana",
    "node-exporter",
    "postgres-exporter",
    "redis-exporter",
    "elasticsearch-exporter",
}
GIB, MIB = 1024**3, 1024**2
LIMITS = {
    "postgres": (2, 2 * GIB),
    "elasticsearch": (2, 2 * GIB),
    "redis": (1, GIB),
    "rabbitmq": (1, GIB),
    **dict.fromkeys(CAPSTAN, (2, GIB)),
    **dict.fromkeys(MONITORING, (1, 512 * MIB)),
}

# seed "DOCKER VOLUMES": volume -> (service, mount point); the dev caches are in the overlay.
SEED_VOLUMES = {
    "postgres_data": ("postgres", "/var/lib/postgresql/data"),
    "redis_data": ("redis", "/data"),
    "rabbitmq_data": ("rabbitmq", "/var/lib/rabbitmq"),
    "elasticsearch_data": ("elasticsearch", "/usr/share/elasticsearch/data"),
    "prometheus_data": ("prometheus", "/prometheus"),
    "grafana_data": ("grafana", "/var/lib/grafana"),
    "backups": ("scheduler", "/backups"),
}
DEV_VOLUMES = {"python_venv": "/app/.venv", "nodejs_modules": "/app/node_modules"}

PORTS = {
    8000: "api",
    3001: "gateway",
    3000: "grafana",
    9090: "prometheus",
    9100: "node-exporter",
    9187: "postgres-exporter",
    9121: "redis-exporter",
    9114: "elasticsearch-exporter",
}

HEALTH_TIMING = {"interval": "30s", "timeout": "10s", "retries": 3, "start_period": "5s"}


def _memory(value: str | int) -> int:
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kKmMgG])[bB]?", str(value)).groups()  # type: ignore[union-attr]
    return int(float(number) * 1024 ** {"k": 1, "m": 2, "g": 3}[unit.lower()])


def _one_shot(svc: dict[str, Any]) -> bool:
    return svc.get("restart") == "no"


def _published(svc: dict[str, Any]) -> set[int]:
    ports = set()
    for p in svc.get("ports") or []:
        if isinstance(p, dict):
            ports.add(int(p["published"]))
        else:
            ports.add(int(str(p).rsplit(":", 2)[-2]))
    return ports


# ---------------------------------------------------------------- validity


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((Path(__file__).parent / "compose-spec.json").read_text())
    return data


@pytest.mark.parametrize("path", [BASE, DEV, SCALE], ids=lambda p: p.name)
def test_compose_file_matches_the_compose_specification(path: Path, schema: dict[str, Any]) -> None:
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(load_yaml(path)), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)


@pytest.mark.parametrize(
    "files", [[BASE], [BASE, DEV], [BASE, SCALE]], ids=["base", "base+dev", "base+scale"]
)
def test_docker_compose_accepts_the_merged_config(files: list[Path], tmp_path: Path) -> None:
    config = compose_config(*files, tmp_path=tmp_path)
    assert config["name"] == "capstan"


def test_compose_refuses_to_start_without_secrets(tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    env = {k: v for k, v in os.environ.items() if k not in TEST_ENV}
    args = [*docker_compose(), "--env-file", str(empty), "-f", str(BASE), "config", "-q"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert out.returncode != 0
    assert re.search(
        r"required variable \w+ is missing a value: set \w+ in deploy/\.env", out.stderr
    )


def test_env_example_names_every_variable() -> None:
    used = set()
    for path in (BASE, DEV, SCALE):
        used |= set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", path.read_text()))
    example = (DEPLOY / ".env.example").read_text()
    declared = set(re.findall(r"^#?\s*([A-Z_][A-Z0-9_]*)=", example, re.M))
    assert used <= declared, f"missing from .env.example: {sorted(used - declared)}"
    # Secrets are never given a value in the example.
    for line in example.splitlines():
        if re.match(r"^[A-Z_]*(PASSWORD|COOKIE|SECRET)[A-Z_]*=", line):
            assert line.endswith("="), line


def test_no_secret_is_written_into_the_files() -> None:
    for path in (BASE, DEV, SCALE):
        for svc_name, svc in (load_yaml(path).get("services") or {}).items():
            env = svc.get("environment") or {}
            for key, value in env.items():
                text = str(value)
                if re.search(r"PASSWORD|SECRET|COOKIE|_PASS$", key):
                    assert text.startswith("${"), f"{path.name} {svc_name} {key}"
                for pw in re.findall(r"://[^:/@\s]*:([^@\s]+)@", text):
                    assert pw.startswith("${"), (
                        f"{path.name} {svc_name} {key} has a literal password"
                    )


# ---------------------------------------------------------------- the seed


def test_networks_are_the_seeds(base: dict[str, Any]) -> None:
    nets = base["networks"]
    assert set(nets) == set(SEED_NETWORKS)
    for name, (subnet, internal) in SEED_NETWORKS.items():
        assert [c["subnet"] for c in nets[name]["ipam"]["config"]] == [subnet], name
        assert bool(nets[name].get("internal", False)) is internal, name


def test_each_service_is_on_exactly_the_networks_it_needs(base: dict[str, Any]) -> None:
    got = {name: networks_of(svc) for name, svc in base["services"].items()}
    assert got == SERVICE_NETWORKS


def test_named_volumes_are_the_seeds(base: dict[str, Any]) -> None:
    assert set(base["volumes"]) == {*SEED_VOLUMES, *DEV_VOLUMES}
    for volume, (service, target) in SEED_VOLUMES.items():
        mounts = base["services"][service].get("volumes", [])
        assert f"{volume}:{target}" in mounts, f"{volume} not at {service}:{target}"


def test_dev_overlay_mounts_source_and_dependency_caches() -> None:
    dev = load_compose(DEV)["services"]
    for role in ("api", "worker", "relay", "subscribers", "scheduler", "migrate"):
        assert "..:/app" in dev[role]["volumes"], role
        assert f"python_venv:{DEV_VOLUMES['python_venv']}" in dev[role]["volumes"], role
    assert "../gateway:/app" in dev["gateway"]["volumes"]
    assert f"nodejs_modules:{DEV_VOLUMES['nodejs_modules']}" in dev["gateway"]["volumes"]


def test_resource_limits_are_the_seeds(base: dict[str, Any]) -> None:
    assert set(LIMITS) == set(base["services"])
    for name, (cpus, memory) in LIMITS.items():
        limits = base["services"][name]["deploy"]["resources"]["limits"]
        assert float(limits["cpus"]) == cpus, name
        assert _memory(limits["memory"]) == memory, name


def test_every_long_running_service_has_the_seeds_health_check(base: dict[str, Any]) -> None:
    for name, svc in base["services"].items():
        check = svc.get("healthcheck", {})
        if _one_shot(svc):
            assert check.get("disable") is True, name
            continue
        assert svc.get("restart") == "unless-stopped", name
        assert check.get("test"), f"{name} has no health check"
        assert {k: check.get(k) for k in HEALTH_TIMING} == HEALTH_TIMING, name


def test_published_ports(base: dict[str, Any]) -> None:
    published = {port: name for name, svc in base["services"].items() for port in _published(svc)}
    assert published == PORTS
    for name in ("postgres", "redis"):  # data-net is internal: nothing there is published
        assert not base["services"][name].get("ports"), name


def test_roles_wait_for_migrations_and_fast_stores(base: dict[str, Any]) -> None:
    services = base["services"]
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for role in CAPSTAN - {"migrate"}:
        deps = services[role]["depends_on"]
        assert deps["migrate"] == {"condition": "service_completed_successfully"}, role
        assert deps["postgres"]["condition"] == "service_healthy", role
        assert deps["redis"]["condition"] == "service_healthy", role
        # Slow starters: started is enough, the roles reconnect (docs/deployment.md).
        assert deps["rabbitmq"]["condition"] == "service_started", role
        assert deps["elasticsearch"]["condition"] == "service_started", role


def test_images_are_pinned(base: dict[str, Any]) -> None:
    own = {"capstan:latest", "capstan-gateway:latest"}  # built by compose from this repo
    for name, svc in base["services"].items():
        image = svc["image"]
        assert image in own or re.search(r":[\w.-]+$", image.split("/")[-1]), name
        assert not image.endswith(":latest") or image in own, name


# ---------------------------------------------------------------- who talks to whom


def _check_reachability(config: dict[str, Any]) -> None:
    services = config["services"]
    problems = []
    for e in edges(config):
        if e.server not in services:
            if e.server not in optional_hosts():
                problems.append(f"{e.client} -> {e.server} ({e.why}): no such service")
            continue
        if e.client == e.server:
            continue
        if not networks_of(services[e.client]) & networks_of(services[e.server]):
            problems.append(f"{e.client} -> {e.server} ({e.why}): no shared network")
    assert not problems, "\n".join(problems)


def _check_no_idle_network(config: dict[str, Any]) -> None:
    """A network a service joins is needed: without it one of its connections breaks.

    Exception: frontend-net and monitoring-net carry a service's published ports.
    """
    services = config["services"]
    links = [
        (e.client, e.server) for e in edges(config) if e.server in services and e.client != e.server
    ]
    idle = []
    for name, svc in services.items():
        for net in sorted(networks_of(svc)):
            if _published(svc) and net in {"frontend-net", "monitoring-net"}:
                continue
            without = networks_of(svc) - {net}

            def nets(n: str, without: set[str] = without, name: str = name) -> set[str]:
                return without if n == name else networks_of(services[n])

            if all(nets(a) & nets(b) for a, b in links if name in (a, b)):
                idle.append(f"{name}: {net}")
    assert not idle, "networks joined but not needed:\n" + "\n".join(idle)


def test_every_dependency_is_reachable(base: dict[str, Any]) -> None:
    _check_reachability(base)
    _check_no_idle_network(base)


def test_capstan_roles_use_the_seeds_backends(base: dict[str, Any]) -> None:
    targets = {(e.client, e.server) for e in edges(base) if e.why.startswith("env CAPSTAN_")}
    for role in CAPSTAN - {"migrate"}:
        for server in ("postgres", "redis", "rabbitmq", "elasticsearch"):
            assert (role, server) in targets, f"{role} is not configured for {server}"


@pytest.mark.parametrize("overlay", [DEV, SCALE], ids=["dev", "scale"])
def test_overlays_keep_every_dependency_reachable(overlay: Path, tmp_path: Path) -> None:
    config = compose_config(BASE, overlay, tmp_path=tmp_path)
    _check_reachability(config)
    _check_no_idle_network(config)


def test_scale_overlay_is_the_seeds_future_scaling(tmp_path: Path) -> None:
    config = compose_config(BASE, SCALE, tmp_path=tmp_path)
    services = config["services"]
    assert services["api"]["deploy"]["replicas"] == 3
    assert services["gateway"]["deploy"]["replicas"] == 2
    assert not services["api"].get("ports"), "the API is published only through HAProxy"
    assert not services["gateway"].get("ports"), "the gateway is published only through HAProxy"
    assert {8000, 3001} <= _published(services["haproxy"])
    assert {"postgres-replica-1", "postgres-replica-2"} <= set(services)
    assert {f"redis-sentinel-{i}" for i in (1, 2, 3)} <= set(services)
    assert {"rabbitmq", "rabbitmq-2", "rabbitmq-3"} <= set(services)
    assert {"elasticsearch", "elasticsearch-2", "elasticsearch-3"} <= set(services)
    assert "discovery.type" not in services["elasticsearch"]["environment"]
    for role in CAPSTAN - {"migrate"}:
        env = services[role]["environment"]
        assert "@haproxy-internal:5433/" in env["CAPSTAN_DATABASE_READ_URL"], role
        assert env["CAPSTAN_CACHE_URL"].startswith("redis+sentinel://"), role
        # Capstan lists the cluster nodes itself (capstan.node_urls) and uses quorum queues.
        assert hosts_in_url(env["CAPSTAN_BROKER_URL"]) == ["rabbitmq", "rabbitmq-2", "rabbitmq-3"]
        assert env["CAPSTAN_BROKER_QUEUE_TYPE"] == "quorum", role
        assert hosts_in_url(env["CAPSTAN_SEARCH_URL"]) == [
            "elasticsearch",
            "elasticsearch-2",
            "elasticsearch-3",
        ]
        assert env["CAPSTAN_SEARCH_REPLICAS"] == "1", role  # any one node may be lost
    # Replicas and cluster nodes get the limits of the server they replicate.
    for name, like in [
        ("postgres-replica-1", "postgres"),
        ("redis-replica-1", "redis"),
        ("rabbitmq-3", "rabbitmq"),
        ("elasticsearch-2", "elasticsearch"),
    ]:
        limits = services[name]["deploy"]["resources"]["limits"]
        assert (float(limits["cpus"]), _memory(limits["memory"])) == LIMITS[like], name
    for name, svc in services.items():
        if svc.get("restart") != "no":
            check = svc.get("healthcheck", {})
            assert check.get("interval") == "30s" and check.get("retries") == 3, name
