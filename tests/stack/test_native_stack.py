"""The production topology natively (`scripts/stack`) under the real Prometheus: every Capstan
process and exporter is scraped and `up`, every PromQL expression of every dashboard panel and
alert rule evaluates without error, and the core panels show data after real traffic.

The stack is brought up once for this module (or reused when it is already up, and then left
running) and stopped at the end when this module started it. It starts on free ports
(CAPSTAN_STACK_PORTS=auto), so a `capstan dev` on :8000 or anything else on the machine's usual
ports is no obstacle; its URLs come from `scripts/stack env`.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import fail_or_skip
from tests.stack.traffic import clients, one_round

pytestmark = [
    pytest.mark.services,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.rabbitmq,
    pytest.mark.elasticsearch,
]

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "scripts" / "stack"
RULES = sorted((ROOT / "deploy/prometheus/rules").glob("*.yml"))
COMPOSE_PROMETHEUS = ROOT / "deploy/prometheus/prometheus.yml"

CAPSTAN_JOBS = {
    "capstan-api",
    "capstan-worker",
    "capstan-relay",
    "capstan-subscribers",
    "capstan-scheduler",
    "capstan-gateway",
}
EXPORTER_JOBS = {"node", "postgres", "redis", "elasticsearch", "rabbitmq", "rabbitmq-per-queue"}
# HAProxy fronts the API and gateway natively too (scripts/stack): every compose job runs here.
SCALE_OVERLAY_ONLY: set[str] = set()

# Panels that may rightly be empty on a healthy stack after the traffic of tests/stack/traffic.
MAY_BE_EMPTY = {
    ("api", "5xx share"): "no 5xx answers",
    ("api", "5xx share by route"): "no 5xx answers",
    ("tasks", "Failures / s by type"): "no task fails",
    ("events", "Failed / s by subscriber"): "only retries and dead letters count",
    ("infrastructure", "Scrape targets down"): "every target is up",
    ("infrastructure", "Memory used / maxmemory"): "scripts/services' Redis has no maxmemory",
}


def _preview() -> ModuleType:
    """deploy/grafana/render_preview.py: the dashboards' panels and Prometheus queries."""
    spec = importlib.util.spec_from_file_location(
        "render_preview", ROOT / "deploy/grafana/render_preview.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


rp = _preview()


def _stack(
    *args: str, timeout: float = 900, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(STACK), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=os.environ | (env or {}),
    )


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` and its last value."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout:.0f}s")
        time.sleep(1)


@pytest.fixture(scope="module")
def stack() -> Iterator[dict[str, str]]:
    if os.geteuid() != 0:
        fail_or_skip("scripts/stack needs root (it runs scripts/services and apt)")
    was_up = _stack("status", timeout=60).returncode == 0
    if not was_up:
        started = time.monotonic()
        up = _stack("up", env={"CAPSTAN_STACK_PORTS": "auto"})
        assert up.returncode == 0, f"scripts/stack up failed:\n{up.stderr[-4000:]}"
        print(f"scripts/stack up: {time.monotonic() - started:.0f}s")
    env = dict(re.findall(r"^export (\w+)=(.*)$", _stack("env", timeout=60).stdout, flags=re.M))
    try:
        yield env
    finally:
        if not was_up:
            down = _stack("down", timeout=300)
            assert down.returncode == 0, down.stderr[-4000:]


@pytest.fixture(scope="module")
def prometheus(stack: dict[str, str]) -> str:
    return stack["CAPSTAN_STACK_PROMETHEUS_URL"]


@pytest.fixture(scope="module")
def traffic(stack: dict[str, str]) -> float:
    """Documents, reads, searches, realtime and tasks through the API and gateway; returns the
    time the traffic started."""
    started = time.time()
    api, gateway = clients(
        stack["CAPSTAN_STACK_API_URL"],
        stack["CAPSTAN_STACK_API_KEY"],
        stack["CAPSTAN_STACK_GATEWAY_URL"],
    )
    with api:
        for _ in range(3):
            one_round(api, gateway)
            time.sleep(1)
    if gateway is not None:
        gateway.close()
    return started


def _targets(prometheus: str) -> list[dict[str, Any]]:
    targets: list[dict[str, Any]] = rp.api_get(prometheus, "/api/v1/targets", {"state": "active"})[
        "activeTargets"
    ]
    return targets


def test_prometheus_scrapes_every_capstan_process_and_exporter(prometheus: str) -> None:
    compose_jobs = {
        j["job_name"] for j in yaml.safe_load(COMPOSE_PROMETHEUS.read_text())["scrape_configs"]
    }
    expected = CAPSTAN_JOBS | EXPORTER_JOBS | {"prometheus", "haproxy"}
    assert compose_jobs - SCALE_OVERLAY_ONLY == expected, "the native jobs are compose's jobs"

    def all_up() -> list[dict[str, Any]] | None:
        targets = _targets(prometheus)
        healthy = {t["labels"]["job"] for t in targets if t["health"] == "up"}
        return targets if healthy >= expected else None

    targets = wait_for(
        all_up,
        60,
        "every job up: "
        + str({t["labels"]["job"]: t["lastError"] or t["health"] for t in _targets(prometheus)}),
    )
    assert {t["labels"]["job"] for t in targets} == expected
    for t in targets:
        assert t["health"] == "up", (t["labels"]["job"], t["lastError"])
        assert t["scrapeUrl"].startswith("http://127.0.0.1:"), t["scrapeUrl"]
    services = {t["labels"].get("service") for t in targets if t["labels"]["job"] in CAPSTAN_JOBS}
    assert services == {"api", "worker", "relay", "subscribers", "scheduler", "gateway"}


def test_every_alert_rule_loads_and_evaluates(prometheus: str) -> None:
    """The real rule manager runs the same rule files without an evaluation error, and each
    expression also evaluates as an instant query."""
    alerts = {
        rule["alert"]: rule["expr"]
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }

    def evaluated() -> list[dict[str, Any]] | None:
        groups = rp.api_get(prometheus, "/api/v1/rules", {})["groups"]
        rules: list[dict[str, Any]] = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r["health"] != "unknown" for r in rules) else None

    rules = wait_for(evaluated, 30, "every rule evaluated once")
    assert {r["name"] for r in rules} == set(alerts)
    for r in rules:
        assert r["health"] == "ok", (r["name"], r.get("lastError"))
    for name, expr in alerts.items():
        try:
            rp.query(prometheus, expr)
        except rp.PrometheusError as exc:
            pytest.fail(f"{name}: {exc}")


def _panel_results(prometheus: str, since: float) -> dict[tuple[str, str], list[Any] | str]:
    """(dashboard, panel) -> its series over [since, now] as Grafana would query them, or the
    error text."""
    out: dict[tuple[str, str], list[Any] | str] = {}
    end = time.time()
    for name in rp.names():
        for panel in rp.panels(rp.load(name)):
            if panel.type == "row":
                continue
            series: list[Any] = []
            for expr, _legend in panel.targets:
                try:
                    series += rp.query_range(prometheus, rp.promql(expr), since, end, 5)
                except rp.PrometheusError as exc:
                    out[(name, panel.title)] = f"{expr}: {exc}"
                    break
            else:
                out[(name, panel.title)] = series
    return out


def _has_values(series: list[Any]) -> bool:
    return any(not math.isnan(float(v)) for s in series for _, v in s["values"])


def test_every_dashboard_expression_evaluates(prometheus: str, traffic: float) -> None:
    results = _panel_results(prometheus, traffic - 60)
    errors = {k: v for k, v in results.items() if isinstance(v, str)}
    assert errors == {}
    assert len(results) >= 60  # every panel of the five dashboards was queried
    # Template variables: Grafana's label_values(metric, label) through the label API.
    for name in rp.names():
        for variable in rp.load(name)["templating"]["list"]:
            m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["query"]["query"])
            assert m, variable["query"]
            values = rp.api_get(prometheus, f"/api/v1/label/{m[2]}/values", {"match[]": m[1]})
            assert values, (name, variable["name"])


def test_core_panels_return_series(prometheus: str, traffic: float) -> None:
    def without_data() -> list[tuple[str, str]]:
        results = _panel_results(prometheus, traffic - 60)
        return sorted(
            k
            for k, v in results.items()
            if k not in MAY_BE_EMPTY and (isinstance(v, str) or not _has_values(v))
        )

    deadline = time.monotonic() + 60  # the last scrapes after the traffic
    while (empty := without_data()) and time.monotonic() < deadline:
        time.sleep(2)
    assert empty == [], "panels without data after traffic"
    # Spot checks on what the traffic did.
    routes = {
        s["metric"].get("route")
        for s in rp.query(prometheus, "sum by (route) (capstan_http_requests_total)")
    }
    assert {"/v1/documents", "/v1/documents/{doc_id}", "/v1/search", "/v1/tasks"} <= routes
    states = {
        s["metric"]["state"]
        for s in rp.query(prometheus, 'sum by (state) (capstan_tasks_total{type="text.summarize"})')
    }
    assert "succeeded" in states


def test_capstan_metrics_used_by_dashboards_and_rules_are_exported(prometheus: str) -> None:
    """Every capstan_* name in a panel or rule is served by a running process, except those
    that appear only once their event has happened, and known mismatches (listed so that a fix
    shows up here)."""
    appear_later = {
        "capstan_cache_coalesced_reads_total": "labelled counter: first coalesced read",
        "capstan_backup_last_success_timestamp_seconds": "absent until the first backup",
    }
    missing_today: dict[str, str] = {}
    text = " ".join(
        expr
        for name in rp.names()
        for panel in rp.panels(rp.load(name))
        for expr, _ in panel.targets
    )
    text += " ".join(
        str(rule["expr"])
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    )
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for m in re.findall(r"\bcapstan_\w+", text)}
    names = {
        re.sub(r"_(bucket|sum|count|created)$", "", n)
        for n in rp.api_get(prometheus, "/api/v1/label/__name__/values", {})
    }
    absent = used - names - set(appear_later)
    assert absent == set(missing_today), {m: missing_today.get(m, "?") for m in absent}
