"""Who talks to whom in a compose config: edges from URLs, depends_on, scrape and LB configs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.conftest import DEPLOY, GRAFANA, PROMETHEUS

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class Edge:
    client: str
    server: str
    why: str


def networks_of(service: dict[str, Any]) -> set[str]:
    nets = service.get("networks") or []
    return set(nets if isinstance(nets, list) else nets.keys())


def hosts_in_url(value: str) -> list[str]:
    """Hostnames in `scheme://[user[:pw]@]host[:port][,host[:port]...]/...` (multi-host aware)."""
    m = re.search(r"[a-z][a-z0-9+.-]*://([^/?#\s]*)", value)
    if not m:
        return []
    netloc = m.group(1).rsplit("@", 1)[-1]
    return [h.rsplit(":", 1)[0] if h.count(":") == 1 else h for h in netloc.split(",") if h]


def _values(service: dict[str, Any]) -> list[tuple[str, str]]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    found = [(f"env {k}", str(v)) for k, v in env.items() if v is not None]
    command = service.get("command") or []
    if isinstance(command, str):
        command = command.split()
    found += [("command", str(arg)) for arg in command]
    return found


def _mounted(service: dict[str, Any], name_pattern: str) -> list[Path]:
    paths = []
    for volume in service.get("volumes") or []:
        source = volume.get("source", "") if isinstance(volume, dict) else volume.split(":")[0]
        if re.search(name_pattern, Path(source).name):
            path = Path(source)
            paths.append(path if path.is_absolute() else (DEPLOY / path).resolve())
    return paths


def prometheus_targets() -> list[tuple[str, str]]:
    """(job, host) for every static and DNS scrape target in prometheus.yml."""
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    targets = []
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            targets += [(job["job_name"], t.rsplit(":", 1)[0]) for t in static["targets"]]
        for dns in job.get("dns_sd_configs", []):
            targets += [(job["job_name"], name) for name in dns["names"]]
    return targets


def edges(config: dict[str, Any]) -> list[Edge]:
    """Every connection a service is configured to open, by service name."""
    services: dict[str, Any] = config["services"]
    out: list[Edge] = []
    for name, svc in services.items():
        for where, value in _values(svc):
            for host in hosts_in_url(value):
                if host in LOOPBACK:  # the container itself (its own health check)
                    continue
                out.append(Edge(name, host, f"{where}: {value.split('@')[-1]}"))
            if where.endswith("seed_hosts"):
                out += [Edge(name, h.strip(), where) for h in value.split(",")]
            m = re.search(r"--replicaof\s+(\S+)", value)
            if m:
                out.append(Edge(name, m.group(1), "--replicaof"))
        for dep, spec in (svc.get("depends_on") or {}).items():
            condition = spec.get("condition") if isinstance(spec, dict) else None
            if condition != "service_completed_successfully":  # completion, not a connection
                out.append(Edge(name, dep, f"depends_on ({condition})"))
        for cfg in _mounted(svc, r"^haproxy.*\.cfg$"):
            for m in re.finditer(
                r"^\s*server(?:-template)?\s+\S+\s+(?:\d+\s+)?([\w.-]+):\d+", cfg.read_text(), re.M
            ):
                out.append(Edge(name, m.group(1), f"{cfg.name} backend"))
        for script in _mounted(svc, r"^sentinel-entrypoint\.sh$"):
            m = re.search(r"sentinel monitor \S+ (\S+) \d+", script.read_text())
            if m:
                out.append(Edge(name, m.group(1), "sentinel monitor"))
        if any(p.name == "prometheus.yml" for p in _mounted(svc, r"^prometheus\.yml$")):
            out += [
                Edge(name, host, f"scrape job {job}")
                for job, host in prometheus_targets()
                if host not in LOOPBACK
            ]
        if _mounted(svc, r"^provisioning$"):
            for ds in (GRAFANA / "provisioning/datasources").glob("*.yml"):
                for source in yaml.safe_load(ds.read_text())["datasources"]:
                    out += [
                        Edge(name, h, f"datasource {source['name']}")
                        for h in hosts_in_url(source["url"])
                    ]
    return out


def optional_hosts() -> set[str]:
    """Scrape targets found by DNS: a name with no service (an overlay's) simply has no target."""
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    return {
        name
        for job in config["scrape_configs"]
        for dns in job.get("dns_sd_configs", [])
        for name in dns["names"]
    }
