#!/usr/bin/env python3
"""Write Capstan's Grafana dashboards (deploy/grafana/dashboards/*.json) from this one source.

    python3 deploy/grafana/build_dashboards.py          # rewrite the JSON files
    python3 deploy/grafana/build_dashboards.py --check  # exit 1 if a file is out of date

Stdlib only. tests/deploy checks that the committed JSON matches this file and that every
PromQL expression parses (and, with the native stack up, evaluates). Metric names: the
contract in docs/alerts.md.
"""

# ruff: noqa: E501  (PromQL expressions read best on one line)

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
RATE = "$__rate_interval"

Panel = dict[str, Any]


class Board:
    """Lays panels out left to right on Grafana's 24-column grid, rows of height 8."""

    def __init__(self, uid: str, title: str, description: str, tags: list[str]) -> None:
        self.uid, self.title, self.description, self.tags = uid, title, description, tags
        self.panels: list[Panel] = []
        self.variables: list[dict[str, Any]] = []
        self._x = self._y = 0
        self._row_height = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"x": 0, "y": self._y, "w": 24, "h": 1},
                "panels": [],
            }
        )
        self._y += 1

    def _newline(self) -> None:
        if self._x:
            self._y += self._row_height
        self._x, self._row_height = 0, 0

    def _place(self, panel: Panel, w: int, h: int) -> None:
        if self._x + w > 24:
            self._newline()
        panel["gridPos"] = {"x": self._x, "y": self._y, "w": w, "h": h}
        self._x += w
        self._row_height = max(self._row_height, h)
        self.panels.append(panel)

    def timeseries(
        self,
        title: str,
        targets: list[tuple[str, str]],
        unit: str = "short",
        w: int = 12,
        h: int = 8,
        description: str = "",
        stack: bool = False,
    ) -> None:
        custom: dict[str, Any] = {"lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
        if stack:
            custom["stacking"] = {"mode": "normal", "group": "A"}
        self._place(
            {
                "type": "timeseries",
                "title": title,
                "description": description,
                "datasource": DATASOURCE,
                "fieldConfig": {"defaults": {"unit": unit, "custom": custom}, "overrides": []},
                "options": {
                    "legend": {
                        "displayMode": "table",
                        "placement": "bottom",
                        "calcs": ["mean", "max", "lastNotNull"],
                    },
                    "tooltip": {"mode": "multi", "sort": "desc"},
                },
                "targets": _targets(targets),
            },
            w,
            h,
        )

    def stat(
        self,
        title: str,
        expr: str,
        unit: str = "short",
        w: int = 6,
        h: int = 4,
        thresholds: list[tuple[float | None, str]] | None = None,
        description: str = "",
        legend: str = "",
    ) -> None:
        steps = [{"value": v, "color": c} for v, c in (thresholds or [(None, "green")])]
        self._place(
            {
                "type": "stat",
                "title": title,
                "description": description,
                "datasource": DATASOURCE,
                "fieldConfig": {
                    "defaults": {
                        "unit": unit,
                        "thresholds": {"mode": "absolute", "steps": steps},
                    },
                    "overrides": [],
                },
                "options": {
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "background",
                    "graphMode": "area",
                    "textMode": "auto",
                },
                "targets": _targets([(expr, legend)]),
            },
            w,
            h,
        )

    def variable(self, name: str, query: str, label: str) -> None:
        self.variables.append(
            {
                "type": "query",
                "name": name,
                "label": label,
                "datasource": DATASOURCE,
                "query": {"query": query, "refId": f"{name}-values"},
                "definition": query,
                "refresh": 2,
                "includeAll": True,
                "multi": True,
                "allValue": ".*",
                "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                "sort": 1,
            }
        )

    def render(self) -> dict[str, Any]:
        for i, panel in enumerate(self.panels, start=1):
            panel["id"] = i
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["capstan", *self.tags],
            "editable": False,
            "graphTooltip": 1,
            "refresh": "30s",
            "schemaVersion": 39,
            "version": 1,
            "time": {"from": "now-6h", "to": "now"},
            "timezone": "browser",
            "templating": {"list": self.variables},
            "annotations": {"list": []},
            "links": [
                {
                    "type": "dashboards",
                    "tags": ["capstan"],
                    "asDropdown": True,
                    "title": "Capstan",
                    "includeVars": False,
                    "keepTime": True,
                }
            ],
            "panels": self.panels,
        }


def _targets(pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return [
        {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
        for i, (expr, legend) in enumerate(pairs)
    ]


def _quantiles(metric: str, by: str, matcher: str = "") -> list[tuple[str, str]]:
    return [
        (
            f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{matcher}[{RATE}])))",
            f"p{round(q * 100)} {{{{{by}}}}}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


def api() -> Board:
    b = Board(
        "capstan-api",
        "Capstan / API",
        "REST API: rate, errors and duration per route; cache.",
        ["api"],
    )
    b.variable("route", "label_values(capstan_http_requests_total, route)", "Route")
    sel = '{route=~"$route"}'
    b.row("Overview")
    b.stat("Requests / s", f"sum(rate(capstan_http_requests_total{sel}[{RATE}]))", "reqps")
    b.stat(
        "5xx share",
        f'sum(rate(capstan_http_requests_total{{status=~"5..",route=~"$route"}}[{RATE}])) / sum(rate(capstan_http_requests_total{sel}[{RATE}]))',
        "percentunit",
        thresholds=[(None, "green"), (0.01, "orange"), (0.05, "red")],
    )
    b.stat(
        "p99 latency",
        f"histogram_quantile(0.99, sum by (le) (rate(capstan_http_request_duration_seconds_bucket{sel}[{RATE}])))",
        "s",
        thresholds=[(None, "green"), (0.25, "orange"), (0.5, "red")],
    )
    b.stat("In flight", "sum(capstan_http_requests_in_flight)", "short")
    b.row("Rate, errors, duration per route")
    b.timeseries(
        "Requests / s by route",
        [(f"sum by (route) (rate(capstan_http_requests_total{sel}[{RATE}]))", "{{route}}")],
        "reqps",
    )
    b.timeseries(
        "Responses / s by status",
        [(f"sum by (status) (rate(capstan_http_requests_total{sel}[{RATE}]))", "{{status}}")],
        "reqps",
        stack=True,
    )
    b.timeseries(
        "5xx share by route",
        [
            (
                f'sum by (route) (rate(capstan_http_requests_total{{status=~"5..",route=~"$route"}}[{RATE}])) / sum by (route) (rate(capstan_http_requests_total{sel}[{RATE}]))',
                "{{route}}",
            )
        ],
        "percentunit",
    )
    b.timeseries(
        "4xx / s by route",
        [
            (
                f'sum by (route) (rate(capstan_http_requests_total{{status=~"4..",route=~"$route"}}[{RATE}]))',
                "{{route}}",
            )
        ],
        "reqps",
    )
    b.timeseries(
        "p99 latency by route",
        [
            (
                f"histogram_quantile(0.99, sum by (route, le) (rate(capstan_http_request_duration_seconds_bucket{sel}[{RATE}])))",
                "{{route}}",
            )
        ],
        "s",
    )
    b.timeseries(
        "Latency quantiles (all selected routes)",
        [
            (
                f"histogram_quantile({q}, sum by (le) (rate(capstan_http_request_duration_seconds_bucket{sel}[{RATE}])))",
                f"p{round(q * 100)}",
            )
            for q in (0.5, 0.95, 0.99)
        ],
        "s",
    )
    b.timeseries(
        "Requests in flight",
        [("sum by (instance) (capstan_http_requests_in_flight)", "{{instance}}")],
    )
    b.timeseries(
        "Rate limited (429) / s",
        [(f"sum(rate(capstan_rate_limited_total[{RATE}]))", "429")],
        "reqps",
    )
    b.row("Cache (Redis cache-aside)")
    b.stat(
        "Cache hit ratio",
        f'sum(rate(capstan_cache_requests_total{{result="hit"}}[{RATE}])) / sum(rate(capstan_cache_requests_total{{result=~"hit|miss"}}[{RATE}]))',
        "percentunit",
        thresholds=[(None, "red"), (0.5, "orange"), (0.8, "green")],
        w=6,
        h=8,
        description="hits / (hits + misses); bypass and degraded lookups are shown on the right.",
    )
    b.timeseries(
        "Cache lookups / s by result",
        [(f"sum by (result) (rate(capstan_cache_requests_total[{RATE}]))", "{{result}}")],
        "ops",
        w=18,
        stack=True,
    )
    b.timeseries(
        "Fills and invalidations / s",
        [
            (f"sum by (outcome) (rate(capstan_cache_fills_total[{RATE}]))", "fill {{outcome}}"),
            (
                f"sum by (outcome) (rate(capstan_cache_invalidations_total[{RATE}]))",
                "invalidate {{outcome}}",
            ),
            (f"sum(rate(capstan_cache_coalesced_reads_total[{RATE}]))", "coalesced reads"),
        ],
        "ops",
    )
    b.timeseries(
        "Dependencies up (last readiness probe)",
        [("min by (dependency) (capstan_dependency_up)", "{{dependency}}")],
        "bool",
    )
    return b


def tasks() -> Board:
    b = Board(
        "capstan-tasks", "Capstan / Tasks", "Task queues, throughput, duration, workers.", ["tasks"]
    )
    b.row("Queues")
    b.stat(
        "Queued tasks",
        "sum(capstan_task_queue_depth)",
        thresholds=[(None, "green"), (1000, "orange")],
    )
    b.stat(
        "Oldest queued",
        "max(capstan_task_oldest_queued_age_seconds)",
        "s",
        thresholds=[(None, "green"), (60, "orange"), (300, "red")],
    )
    b.stat("Dead letters", "sum(capstan_dead_letters)", thresholds=[(None, "green"), (1, "red")])
    b.stat("Running", "sum(capstan_tasks_running)")
    b.timeseries(
        "Queue depth by queue", [("max by (queue) (capstan_task_queue_depth)", "{{queue}}")]
    )
    b.timeseries(
        "Oldest queued task age by queue",
        [("max by (queue) (capstan_task_oldest_queued_age_seconds)", "{{queue}}")],
        "s",
    )
    b.timeseries(
        "RabbitMQ ready / unacked by queue",
        [
            ("sum by (queue) (rabbitmq_detailed_queue_messages_ready)", "ready {{queue}}"),
            ("sum by (queue) (rabbitmq_detailed_queue_messages_unacked)", "unacked {{queue}}"),
        ],
    )
    b.timeseries("Dead letters by queue", [("max by (queue) (capstan_dead_letters)", "{{queue}}")])
    b.row("Throughput and duration")
    b.timeseries(
        "Task state changes / s",
        [(f"sum by (state) (rate(capstan_tasks_total[{RATE}]))", "{{state}}")],
        "ops",
        stack=True,
    )
    b.timeseries(
        "Failures / s by type",
        [
            (
                f'sum by (type) (rate(capstan_tasks_total{{state=~"failed|dead"}}[{RATE}]))',
                "{{type}}",
            )
        ],
        "ops",
    )
    b.timeseries("Run time by type", _quantiles("capstan_task_duration_seconds", "type"), "s")
    b.timeseries(
        "Queue wait (submit -> running) by type",
        _quantiles("capstan_task_queue_wait_seconds", "type"),
        "s",
    )
    b.row("Workers")
    b.timeseries(
        "Seconds since last heartbeat",
        [
            (
                "time() - max by (worker) (capstan_worker_last_heartbeat_timestamp_seconds)",
                "{{worker}}",
            )
        ],
        "s",
    )
    b.timeseries(
        "Running tasks by worker", [("sum by (instance) (capstan_tasks_running)", "{{instance}}")]
    )
    return b


def events() -> Board:
    b = Board(
        "capstan-events",
        "Capstan / Events",
        "Outbox relay, RabbitMQ topic exchange, subscribers, realtime gateway.",
        ["events"],
    )
    b.row("Outbox relay")
    b.stat(
        "Outbox backlog",
        "max(capstan_outbox_backlog)",
        thresholds=[(None, "green"), (1000, "orange")],
    )
    b.stat(
        "Oldest unsent",
        "max(capstan_outbox_oldest_unsent_age_seconds)",
        "s",
        thresholds=[(None, "green"), (10, "orange"), (60, "red")],
    )
    b.stat("Published / s", f"sum(rate(capstan_events_published_total[{RATE}]))", "ops")
    b.stat(
        "Max subscriber lag",
        "max(capstan_subscriber_lag_seconds)",
        "s",
        thresholds=[(None, "green"), (5, "orange"), (60, "red")],
    )
    b.timeseries(
        "Outbox backlog and age",
        [
            ("max(capstan_outbox_backlog)", "backlog"),
            ("max(capstan_outbox_oldest_unsent_age_seconds)", "oldest unsent (s)"),
        ],
    )
    b.timeseries(
        "Published / s by type",
        [(f"sum by (type) (rate(capstan_events_published_total[{RATE}]))", "{{type}}")],
        "ops",
    )
    b.timeseries(
        "Relay wake-ups / s by result (writers' notifications after commit)",
        [(f"sum by (result) (rate(capstan_outbox_rings_total[{RATE}]))", "{{result}}")],
        "ops",
    )
    b.row("Subscribers")
    b.timeseries(
        "Consumed / s by subscriber",
        [(f"sum by (subscriber) (rate(capstan_events_consumed_total[{RATE}]))", "{{subscriber}}")],
        "ops",
    )
    b.timeseries(
        "Failed / s by subscriber",
        [
            (
                f'sum by (subscriber) (rate(capstan_events_consumed_total{{outcome=~"retried|dead_lettered"}}[{RATE}]))',
                "{{subscriber}}",
            )
        ],
        "ops",
    )
    b.timeseries(
        "Lag by subscriber",
        [("max by (subscriber) (capstan_subscriber_lag_seconds)", "{{subscriber}}")],
        "s",
    )
    b.timeseries(
        "Handling time p99 by subscriber",
        [
            (
                f"histogram_quantile(0.99, sum by (subscriber, le) (rate(capstan_subscriber_handle_duration_seconds_bucket[{RATE}])))",
                "{{subscriber}}",
            )
        ],
        "s",
    )
    b.timeseries("Dead letters by queue", [("max by (queue) (capstan_dead_letters)", "{{queue}}")])
    b.timeseries(
        "RabbitMQ messages in / out / s",
        [
            (f"sum(rate(rabbitmq_global_messages_received_total[{RATE}]))", "received"),
            (f"sum(rate(rabbitmq_global_messages_delivered_total[{RATE}]))", "delivered"),
            (f"sum(rate(rabbitmq_global_messages_confirmed_total[{RATE}]))", "confirmed"),
        ],
        "ops",
    )
    b.row("Realtime gateway")
    b.timeseries(
        "Open connections by transport",
        [("sum by (transport) (capstan_gateway_connections)", "{{transport}}")],
    )
    b.timeseries(
        "Messages pushed / s",
        [
            (
                f"sum by (transport) (rate(capstan_gateway_messages_sent_total[{RATE}]))",
                "{{transport}}",
            )
        ],
        "ops",
    )
    return b


def search() -> Board:
    b = Board(
        "capstan-search",
        "Capstan / Search",
        "Search latency per engine, indexing, drift.",
        ["search"],
    )
    b.row("Queries")
    b.stat(
        "p50 merged search",
        f'histogram_quantile(0.5, sum by (le) (rate(capstan_search_duration_seconds_bucket{{engine="merged"}}[{RATE}])))',
        "s",
        thresholds=[(None, "green"), (0.025, "orange"), (0.1, "red")],
    )
    b.stat(
        "Searches / s",
        f'sum(rate(capstan_search_requests_total{{engine="merged"}}[{RATE}]))',
        "reqps",
    )
    b.stat(
        "Drifted documents",
        "max(capstan_search_drift_documents)",
        thresholds=[(None, "green"), (1, "orange")],
    )
    b.stat(
        "Cluster status",
        'max(elasticsearch_cluster_health_status{color="green"}) * 2 + max(elasticsearch_cluster_health_status{color="yellow"})',
        thresholds=[(None, "red"), (1, "orange"), (2, "green")],
        description="2 green, 1 yellow, 0 red.",
    )
    b.timeseries("Latency by engine", _quantiles("capstan_search_duration_seconds", "engine"), "s")
    b.timeseries(
        "Searches / s by engine and outcome",
        [
            (
                f"sum by (engine, outcome) (rate(capstan_search_requests_total[{RATE}]))",
                "{{engine}} {{outcome}}",
            )
        ],
        "reqps",
    )
    b.row("Indexing")
    b.timeseries(
        "Index operations / s",
        [
            (
                f"sum by (operation, outcome) (rate(capstan_search_index_operations_total[{RATE}]))",
                "{{operation}} {{outcome}}",
            )
        ],
        "ops",
    )
    b.timeseries("Drift (documents)", [("max(capstan_search_drift_documents)", "drift")])
    b.timeseries(
        "Elasticsearch query and indexing rate",
        [
            (f"sum(rate(elasticsearch_indices_search_query_total[{RATE}]))", "queries"),
            (f"sum(rate(elasticsearch_indices_indexing_index_total[{RATE}]))", "index ops"),
        ],
        "ops",
    )
    b.timeseries(
        "Elasticsearch documents",
        [("sum(elasticsearch_indices_docs_primary)", "primary docs")],
    )
    return b


def infrastructure() -> Board:
    b = Board(
        "capstan-infrastructure",
        "Capstan / Infrastructure",
        "Host, PostgreSQL, Redis, RabbitMQ and Elasticsearch from their exporters.",
        ["infrastructure"],
    )
    b.row("Targets")
    b.timeseries("Scrape targets up by job", [("sum by (job) (up)", "{{job}}")], w=12)
    b.timeseries("Scrape targets down", [("count by (job) (up == 0)", "{{job}}")], w=12)
    b.row("Host (node-exporter)")
    b.timeseries(
        "CPU busy",
        [
            (
                f'1 - avg by (instance) (rate(node_cpu_seconds_total{{mode="idle"}}[{RATE}]))',
                "{{instance}}",
            )
        ],
        "percentunit",
        w=8,
    )
    b.timeseries(
        "Memory used",
        [("1 - node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes", "{{instance}}")],
        "percentunit",
        w=8,
    )
    b.timeseries(
        "Disk used",
        [
            (
                '1 - node_filesystem_avail_bytes{fstype!~"tmpfs|overlay|squashfs"} / node_filesystem_size_bytes{fstype!~"tmpfs|overlay|squashfs"}',
                "{{mountpoint}}",
            )
        ],
        "percentunit",
        w=8,
    )
    b.row("PostgreSQL (postgres-exporter)")
    b.stat("PostgreSQL up", "min(pg_up)", thresholds=[(None, "red"), (1, "green")], w=4)
    b.timeseries(
        "Transactions / s",
        [
            (f'sum(rate(pg_stat_database_xact_commit{{datname="capstan"}}[{RATE}]))', "commit"),
            (f'sum(rate(pg_stat_database_xact_rollback{{datname="capstan"}}[{RATE}]))', "rollback"),
        ],
        "ops",
        w=10,
    )
    b.timeseries(
        "Connections and size",
        [
            ('sum(pg_stat_database_numbackends{datname="capstan"})', "connections"),
            ('max(pg_database_size_bytes{datname="capstan"}) / 1024 / 1024', "size (MiB)"),
        ],
        w=10,
    )
    b.row("Redis (redis-exporter)")
    b.stat("Redis up", "min(redis_up)", thresholds=[(None, "red"), (1, "green")], w=4)
    b.timeseries(
        "Memory used / maxmemory",
        [("redis_memory_used_bytes / (redis_memory_max_bytes > 0)", "{{instance}}")],
        "percentunit",
        w=10,
    )
    b.timeseries(
        "Commands / s, clients, seconds since RDB save",
        [
            (f"sum(rate(redis_commands_processed_total[{RATE}]))", "commands/s"),
            ("sum(redis_connected_clients)", "clients"),
            ("time() - max(redis_rdb_last_save_timestamp_seconds)", "since last RDB save (s)"),
        ],
        w=10,
    )
    b.row("RabbitMQ (built-in Prometheus plugin)")
    b.stat(
        "Memory alarm",
        "max(rabbitmq_alarms_memory_used_watermark)",
        thresholds=[(None, "green"), (1, "red")],
        w=4,
    )
    b.timeseries(
        "Messages ready / unacked",
        [
            ("sum(rabbitmq_queue_messages_ready)", "ready"),
            ("sum(rabbitmq_queue_messages_unacked)", "unacked"),
        ],
        w=10,
    )
    b.timeseries(
        "Connections, channels, memory",
        [
            ("sum(rabbitmq_connections)", "connections"),
            ("sum(rabbitmq_channels)", "channels"),
            (
                "sum(rabbitmq_process_resident_memory_bytes) / sum(rabbitmq_resident_memory_limit_bytes)",
                "memory / watermark",
            ),
        ],
        w=10,
    )
    b.row("Elasticsearch (elasticsearch-exporter)")
    b.stat(
        "Unassigned shards",
        "max(elasticsearch_cluster_health_unassigned_shards)",
        thresholds=[(None, "green"), (1, "orange")],
        w=4,
    )
    b.timeseries(
        "JVM heap used",
        [
            (
                'elasticsearch_jvm_memory_used_bytes{area="heap"} / elasticsearch_jvm_memory_max_bytes{area="heap"}',
                "{{name}}",
            )
        ],
        "percentunit",
        w=10,
    )
    b.timeseries(
        "Nodes and free disk",
        [
            ("max(elasticsearch_cluster_health_number_of_nodes)", "nodes"),
            (
                "min(elasticsearch_filesystem_data_available_bytes / elasticsearch_filesystem_data_size_bytes)",
                "min free disk ratio",
            ),
        ],
        w=10,
    )
    return b


BOARDS = {
    "api": api,
    "tasks": tasks,
    "events": events,
    "search": search,
    "infrastructure": infrastructure,
}


def render_all() -> dict[str, str]:
    """File name -> JSON text, exactly as committed."""
    return {
        f"{name}.json": json.dumps(build().render(), indent=2, sort_keys=True) + "\n"
        for name, build in BOARDS.items()
    }


def main(argv: list[str]) -> int:
    stale = []
    for name, text in render_all().items():
        path = OUT / name
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(
            "out of date (run deploy/grafana/build_dashboards.py):",
            ", ".join(stale),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
