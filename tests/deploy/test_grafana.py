"""Grafana: provisioning, generated dashboards, and every PromQL expression parses."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from tests.deploy.conftest import BASE, GRAFANA, load_compose, promtool, run

DASHBOARDS = GRAFANA / "dashboards"
EXPECTED = {"api", "tasks", "events", "search", "infrastructure"}

# Grafana's variables, replaced by what they stand for so Prometheus can parse the query.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "build_dashboards", GRAFANA / "build_dashboards.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _boards() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


def dashboard_expressions() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, PromQL with Grafana variables substituted)."""
    out = []
    for name, board in _boards().items():
        for panel in _panels(board):
            for target in panel["targets"]:
                expr = target["expr"]
                for var, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(var, value)
                expr = re.sub(r"\$\w+", ".*", expr)  # template variables: match everything
                out.append((name, panel["title"], expr))
    return out


def test_the_seeds_dashboards_exist_and_are_generated_from_source() -> None:
    assert set(_boards()) == EXPECTED
    rendered = _generator().render_all()
    for name, text in rendered.items():
        assert (DASHBOARDS / name).read_text() == text, (
            f"{name} is out of date: run python3 deploy/grafana/build_dashboards.py"
        )


def test_dashboards_are_well_formed() -> None:
    uid = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())[
        "datasources"
    ][0]["uid"]
    uids = set()
    for name, board in _boards().items():
        assert board["uid"] not in uids
        uids.add(board["uid"])
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), name
        for panel in _panels(board):
            assert panel["datasource"]["uid"] == uid, (name, panel["title"])
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24, (name, panel["title"])
            assert panel["targets"], (name, panel["title"])


def test_provisioning_points_at_the_mounted_files() -> None:
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/capstan.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    grafana = load_compose(BASE)["services"]["grafana"]
    assert f"./grafana/dashboards:{path}:ro" in grafana["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    source = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"


def test_api_dashboard_shows_red_per_route_and_the_cache() -> None:
    exprs = " ".join(e for board, _, e in dashboard_expressions() if board == "api")
    assert "sum by (route) (rate(capstan_http_requests_total" in exprs
    assert 'status=~"5.."' in exprs
    assert "sum by (route, le) (rate(capstan_http_request_duration_seconds_bucket" in exprs
    assert "capstan_http_requests_in_flight" in exprs
    assert 'capstan_cache_requests_total{result="hit"}' in exprs


def test_every_promql_expression_parses(tmp_path: Path) -> None:
    """Dashboard queries become recording rules so promtool parses each one; the alert rules
    are parsed by `promtool check rules` (test_prometheus)."""
    rules = [
        {"record": f"dashboard:{board}:{i}", "expr": expr}
        for i, (board, _, expr) in enumerate(dashboard_expressions())
    ]
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    out = run([promtool(), "check", "rules", str(path)])
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(rules)} rules found" in out.stdout
