"""The pure logic of `capstan bench tasks`: URLs, the install check, rates, ratios, medians,
verdicts, the summary of rounds, and per-session CPU accounting."""

from __future__ import annotations

import os
from typing import Any

import pytest

from capstan_bench.ceiling import task_message_body
from capstan_bench.cpu import session_cpu
from capstan_bench.tasks import CELERY_INSTALL, celery_backend_url, missing_celery
from capstan_bench.tasks_report import (
    cpu_ms_per_task,
    median_of,
    rate,
    ratio,
    summarize,
    verdict,
)


def test_celery_backend_url_uses_psycopg2_and_keeps_credentials() -> None:
    url = celery_backend_url("postgresql://capstan:s3cret@127.0.0.1:5432/capstan_bench_x")
    assert url == "db+postgresql+psycopg2://capstan:s3cret@127.0.0.1:5432/capstan_bench_x"


def test_celery_backend_url_replaces_another_driver() -> None:
    url = celery_backend_url("postgresql+asyncpg://u:p@h/db")
    assert url == "db+postgresql+psycopg2://u:p@h/db"


def test_missing_celery_names_what_is_absent() -> None:
    assert missing_celery(lambda name: None) == ["celery", "psycopg2"]
    assert missing_celery(lambda name: object() if name == "celery" else None) == ["psycopg2"]
    assert missing_celery(lambda name: object()) == []
    assert "pip install celery psycopg2-binary" in CELERY_INSTALL


def test_rate_and_ratio() -> None:
    assert rate(2000, 4.0) == 500.0
    assert rate(10, 0.0) is None
    assert ratio(1000.0, 400.0) == 2.5
    assert ratio(None, 400.0) is None
    assert ratio(100.0, None) is None
    assert ratio(100.0, 0.0) is None


def test_median_of_skips_unknown_values() -> None:
    assert median_of([3.0, 1.0, 2.0]) == 2.0
    assert median_of([1.0, None, 4.0]) == 2.5
    assert median_of([None]) is None
    assert median_of([]) is None


@pytest.mark.parametrize(
    ("measured", "target", "higher", "expected"),
    [
        (2.0, 2.0, True, "PASS"),
        (1.99, 2.0, True, "MISS"),
        (9.9, 10.0, False, "PASS"),
        (10.0, 10.0, False, "MISS"),
        (None, 10.0, False, "NOT MEASURED"),
    ],
)
def test_verdict(measured: float | None, target: float, higher: bool, expected: str) -> None:
    assert verdict(measured, target, higher_is_better=higher) == expected


def _side(per_s: float, *, failed: int = 0, **extra: Any) -> dict[str, Any]:
    return {"per_s": per_s, "failed": failed, "submit_errors": 0, "cpu_cores": {}, **extra}


def _round(i: int, capstan: float, celery: float, top: float, lat: list[float]) -> dict[str, Any]:
    return {
        "round": i,
        "capstan": _side(capstan, drained_per_s=capstan / 2),
        "celery": _side(celery),
        "ceiling": _side(top),
        "capstan_latency": {"samples_ms": lat, "parts_ms": {"submit_call": [1.0, 2.0]}},
        "celery_latency": {"samples_ms": [x * 2 for x in lat], "parts_ms": {}},
    }


def test_summarize_takes_medians_ratios_and_verdicts() -> None:
    rounds = [
        _round(1, 900.0, 400.0, 9000.0, [4.0, 6.0]),
        _round(2, 1100.0, 600.0, 11000.0, [8.0, 12.0]),
        _round(3, 1000.0, 500.0, 10000.0, [5.0, 7.0]),
    ]
    result = summarize({"started_at": "2026-01-01T00:00:00+00:00"}, rounds)
    assert result["valid"] is True
    assert result["median"]["capstan"]["tasks_per_s"] == 1000.0
    assert result["median"]["capstan"]["per_round"] == [900.0, 1100.0, 1000.0]
    assert result["median"]["capstan"]["with_subscribers_drained_per_s"] == 500.0
    assert result["median"]["celery"]["tasks_per_s"] == 500.0
    assert result["ratios"] == {"capstan_vs_celery": 2.0, "capstan_vs_ceiling": 0.1}
    # Latency over every sample of every round (nearest rank).
    assert result["latency"]["capstan"]["count"] == 6
    assert result["latency"]["capstan"]["p50_ms"] == 6.0
    assert result["latency"]["capstan"]["parts"]["submit_call"]["count"] == 6
    assert result["latency"]["celery"]["p50_ms"] == 12.0
    assert result["targets"]["vs_celery"]["verdict"] == "PASS"
    assert result["targets"]["idle_submit_to_running_p50_ms"]["verdict"] == "PASS"
    assert "started_at" not in result["environment"]


def test_summarize_flags_failed_tasks_as_invalid() -> None:
    bad = _round(1, 100.0, 400.0, 9000.0, [40.0])
    bad["celery"]["failed"] = 3
    result = summarize({"started_at": "x"}, [bad])
    assert result["valid"] is False
    assert result["invalid_reasons"] == ["round 1: 3 celery tasks failed"]
    assert result["targets"]["vs_celery"]["verdict"] == "MISS"
    assert result["targets"]["idle_submit_to_running_p50_ms"]["verdict"] == "MISS"


def test_summarize_without_rounds_measures_nothing() -> None:
    result = summarize({"started_at": "x"}, [])
    assert result["ratios"] == {"capstan_vs_celery": None, "capstan_vs_ceiling": None}
    assert result["targets"]["vs_celery"]["verdict"] == "NOT MEASURED"


def test_session_cpu_counts_this_session() -> None:
    sid = os.getsid(0)
    totals = session_cpu({sid: "mine", -1: "nobody"})
    assert totals["nobody"] == 0.0
    assert totals["mine"] > 0.0


def test_task_message_body_is_a_capstan_task_message() -> None:
    body = task_message_body()
    assert body.startswith(b'{"task_id":"') and body.endswith(b'","priority":0}')
    assert 40 < len(body) < 100


def test_cpu_ms_per_task_leaves_the_machine_out_of_the_total() -> None:
    cores = {"machine": 2.0, "bench": 0.1, "capstan-worker": 0.5, "postgres": 0.4}
    per = cpu_ms_per_task(cores, wall_s=10.0, tasks=1000)
    assert per == {"bench": 1.0, "capstan-worker": 5.0, "postgres": 4.0, "total": 10.0}
    assert cpu_ms_per_task(cores, wall_s=10.0, tasks=0) == {}
