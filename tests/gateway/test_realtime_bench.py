"""The realtime benchmark runs end to end at a small scale, from both sources, and every
delivery it counts is accounted for (the figures themselves are not asserted: timing)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import service_url
from tests.gateway.conftest import GATEWAY, _need_gateway

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.rabbitmq]


@pytest.mark.parametrize("source", ["api", "broker"])
def test_the_realtime_bench_delivers_every_event_to_every_client(
    source: str, tmp_path: Path
) -> None:
    _need_gateway()
    for name in ("postgres", "redis", "rabbitmq"):
        service_url(name)  # the script finds them through scripts/services env
    env = {**os.environ, "REALTIME_RESULTS_DIR": str(tmp_path), "WARMUP_SECONDS": "1"}
    run = subprocess.run(
        ["bash", str(GATEWAY / "bench" / "realtime.sh"), "20", "10", "2", source],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    [path] = tmp_path.glob(f"realtime-{source}-*.json")
    result = json.loads(path.read_text())
    assert result["source"] == source
    assert result["writes"] == 20 and result["write_errors"] == {}
    warm = result["warmup_writes"]
    assert warm == 10  # WARMUP_SECONDS=1 at 10/s, delivered but not measured
    assert result["deliveries"] == result["deliveries_expected"] == (warm + 20) * 20
    assert result["disconnected_during_run"] == 0
    assert result["latency_samples"] == 2 * 20  # clients 0 and 10 probe the measured writes
    assert sum(s["samples"] for s in result["latency_by_second"]) == 2 * 20
    assert result["latency_ms"]["p50"] >= 0
    roles = {"api", "relay", "audit", "gateway", "rabbitmq", "postgres"}
    assert roles <= set(result["cpu_seconds"])
    assert result["gateway_bytes_per_connection"] != 0
