"""Prometheus: config and rules pass promtool, every alert has unit tests and a runbook."""

from __future__ import annotations

import json
import re

import yaml

from tests.deploy.conftest import BASE, PROMETHEUS, ROOT, load_compose, promtool, run

RULES = sorted((PROMETHEUS / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
ALERTS_DOC = ROOT / "docs/alerts.md"

# The list: each of these conditions must have an alert.
REQUIRED_ALERTS = {
    "CapstanApiHighErrorRate": "capstan_http_requests_total",
    "CapstanApiHighLatencyP99": "capstan_http_request_duration_seconds_bucket",
    "CapstanTaskQueueBacklog": "capstan_task_queue_depth",
    "CapstanTaskQueueStalled": "capstan_task_oldest_queued_age_seconds",
    "CapstanDeadLetters": "capstan_dead_letters",
    "CapstanOutboxBacklog": "capstan_outbox_backlog",
    "CapstanOutboxStalled": "capstan_outbox_oldest_unsent_age_seconds",
    "CapstanSubscriberLag": "capstan_subscriber_lag_seconds",
    "CapstanWorkerHeartbeatMissing": "capstan_worker_last_heartbeat_timestamp_seconds",
    "CapstanSearchDrift": "capstan_search_drift_documents",
    "CapstanBackupTooOld": "capstan_backup_last_success_timestamp_seconds",
    "CapstanTargetDown": "up",
}


def _alerts() -> dict[str, dict[str, object]]:
    alerts = {}
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    alerts[rule["alert"]] = rule
    return alerts


def test_promtool_check_config() -> None:
    out = run([promtool(), "check", "config", "prometheus.yml"], cwd=PROMETHEUS)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr


def test_promtool_check_rules() -> None:
    out = run([promtool(), "check", "rules", *map(str, RULES)])
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_test_rules() -> None:
    out = run([promtool(), "test", "rules", *map(str, RULE_TESTS)], cwd=PROMETHEUS)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_the_required_alerts_exist() -> None:
    alerts = _alerts()
    for name, metric in REQUIRED_ALERTS.items():
        assert name in alerts, name
        assert re.search(rf"\b{metric}\b", str(alerts[name]["expr"])), name
    assert str(alerts["CapstanTargetDown"]["expr"]).strip() == "up == 0"
    assert "26 * 3600" in str(alerts["CapstanBackupTooOld"]["expr"])


def test_every_alert_has_a_firing_unit_test_and_a_quiet_one() -> None:
    fired, quiet = set(), set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = set(_alerts())
    assert alerts - fired == set(), "alerts never shown firing"
    assert alerts - quiet == set(), "alerts never shown quiet"


def test_every_alert_is_documented() -> None:
    doc = ALERTS_DOC.read_text()
    headings = {h.strip() for h in re.findall(r"^###\s+(\S+)", doc, re.M)}
    for name, rule in _alerts().items():
        assert name in headings, f"docs/alerts.md has no section for {name}"
        annotations = rule["annotations"]
        assert isinstance(annotations, dict)
        assert annotations["runbook"] == f"docs/alerts.md#{name.lower()}", name
        labels = rule["labels"]
        assert isinstance(labels, dict)
        assert labels["severity"] in {"warning", "critical"}, name


def test_every_capstan_process_and_exporter_is_scraped() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    targets = set()
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            targets |= set(static["targets"])
        for dns in job.get("dns_sd_configs", []):
            targets |= {f"{name}:{dns['port']}" for name in dns["names"]}
    assert {
        "api:8000",
        "worker:9400",
        "relay:9400",
        "subscribers:9400",
        "scheduler:9400",
        "gateway:3001",
        "node-exporter:9100",
        "postgres-exporter:9187",
        "redis-exporter:9121",
        "elasticsearch-exporter:9114",
        "rabbitmq:15692",
        "localhost:9090",
    } <= targets
    # The rule files prometheus.yml loads are the ones mounted into the container.
    assert config["rule_files"] == ["rules/*.yml"]
    mounts = load_compose(BASE)["services"]["prometheus"]["volumes"]
    assert "./prometheus/rules:/etc/prometheus/rules:ro" in mounts
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


def test_metrics_used_are_exported_or_in_the_contract() -> None:
    """Every capstan_* metric in rules and dashboards is exported today or listed, with the
    process that must export it, in docs/alerts.md ("Metric contract")."""
    exported = set(
        re.findall(r'"(capstan_\w+)"', (ROOT / "src/capstan/observability/metrics.py").read_text())
    )
    contract = set(re.findall(r"^\|\s*`(capstan_\w+)`", ALERTS_DOC.read_text(), re.M))
    text = " ".join(str(rule["expr"]) for rule in _alerts().values())
    for board in (ROOT / "deploy/grafana/dashboards").glob("*.json"):
        for panel in json.loads(board.read_text())["panels"]:
            text += " ".join(t["expr"] for t in panel.get("targets", []))
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for m in re.findall(r"\bcapstan_\w+", text)}
    known = exported | contract
    assert used - known == set(), "metrics neither exported nor in docs/alerts.md's contract"
