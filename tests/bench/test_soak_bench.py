"""`capstan bench soak`: the growth arithmetic and verdict, /proc sampling, and one tiny run end
to end against the real servers, the real roles and the built gateway."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from capstan_bench.soak import GATEWAY_BUILD, GATEWAY_JS
from capstan_bench.soak_load import MIX
from capstan_bench.soak_stats import Series, growth, least_squares, op_kind, session_usage
from tests.conftest import REQUIRE, service_url

ROLES = ["api", "worker", "relay", "subscribers", "gateway"]


def series(rss: list[int], step_s: float = 5.0) -> Series:
    s = Series()
    for i, kb in enumerate(rss):
        s.add(i * step_s, kb, i * 0.5, 1)
    return s


def test_least_squares_fits_a_line() -> None:
    assert least_squares([0.0, 1.0, 2.0, 3.0], [1.0, 3.0, 5.0, 7.0]) == (2.0, 1.0)
    assert least_squares([4.0, 4.0], [1.0, 3.0]) == (0.0, 2.0)  # x fixed: flat
    with pytest.raises(ValueError):
        least_squares([], [])


def test_growth_is_measured_after_the_warmup() -> None:
    # Warm-up from 50 to 100 MB, then flat with noise: PASS, whatever the warm-up did.
    view = growth(series([51200, 81920, 102400, 103000, 101900, 102800, 102400]), warmup_s=10)
    assert view["verdict"] == "PASS"
    assert view["window_samples"] == 5
    assert view["rss_after_warmup_mb"] == 100.0
    assert view["rss_end_mb"] == 100.0
    assert view["rss_max_mb"] == pytest.approx(100.6, abs=0.05)
    assert view["growth_first_last_pct"] == 0.0
    assert abs(view["growth_slope_pct"]) < 1
    assert view["cpu_cores_in_window"] == 0.1  # 0.5 CPU s per 5 s sample


def test_a_steady_leak_misses() -> None:
    view = growth(series([100_000 + 2_000 * i for i in range(10)]), warmup_s=0)
    assert view["verdict"] == "MISS"
    assert view["growth_first_last_pct"] == 18.0
    assert view["growth_slope_pct"] == 18.0
    assert view["slope_mb_per_hour"] == pytest.approx(2000 / 5 * 3600 / 1024, abs=0.01)


def test_a_spike_at_the_end_misses_though_the_fit_is_flat() -> None:
    view = growth(series([100_000] * 20 + [115_000]), warmup_s=0)
    assert abs(view["growth_slope_pct"]) <= 10
    assert view["growth_first_last_pct"] == 15.0
    assert view["verdict"] == "MISS"


def test_growth_without_enough_samples_is_not_measured() -> None:
    assert growth(Series(), warmup_s=0)["verdict"] == "NOT MEASURED"
    assert growth(series([1000, 1000, 1000]), warmup_s=10)["verdict"] == "NOT MEASURED"


def test_the_mix_repeats_and_covers_every_kind() -> None:
    kinds = [op_kind(i, MIX) for i in range(len(MIX) * 3)]
    assert kinds[: len(MIX)] == kinds[len(MIX) : 2 * len(MIX)]
    assert set(kinds) == {"create", "read", "update", "task", "search"}


def test_session_usage_sums_this_session() -> None:
    usage = session_usage({os.getsid(0): "mine", -1: "nobody"})
    assert usage["nobody"] == (0, 0.0, 0)
    rss, cpu, count = usage["mine"]
    assert rss > 10_000 and cpu > 0 and count >= 1  # this interpreter alone is over 10 MB


def test_warmup_must_be_shorter_than_the_run() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "capstan.cli.main", "bench", "soak", "--duration", "10",
         "--warmup", "10"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--warmup" in done.stderr


def test_soak_end_to_end_at_tiny_scale(tmp_path: Path) -> None:
    """Every role and the gateway started, loaded, sampled and cleaned up, in 20 s."""
    env = {
        **os.environ,
        "CAPSTAN_TEST_DATABASE_URL": service_url("postgres"),
        "CAPSTAN_TEST_REDIS_URL": service_url("redis"),
        "CAPSTAN_TEST_AMQP_URL": service_url("rabbitmq"),
    }
    for name in ("CAPSTAN_DATABASE_URL", "CAPSTAN_CACHE_URL", "CAPSTAN_BROKER_URL"):
        env.pop(name, None)  # the test servers, not whatever the shell points at
    if shutil.which("node") is None or not GATEWAY_JS.is_file():
        message = f"the gateway is not built: {GATEWAY_BUILD}"
        if REQUIRE:
            pytest.fail(message)
        pytest.skip(message)
    output = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, "-m", "capstan.cli.main", "bench", "soak", "--duration", "20",
         "--warmup", "5", "--interval", "1", "--rate", "5", "--clients", "2",
         "--output", str(output)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(output.read_text())
    assert result["benchmark"] == "soak"
    assert result["valid"] is True, result["invalid_reasons"]
    assert list(result["processes"]) == ROLES
    assert list(result["samples"]) == ROLES
    for role in ROLES:
        view, samples = result["processes"][role], result["samples"][role]
        assert view["verdict"] in ("PASS", "MISS"), role
        assert view["window_samples"] >= 2, role
        assert len(samples["t_s"]) == len(samples["rss_kb"]) == view["samples"] >= 2
        assert min(samples["rss_kb"]) > 0, role
        for key in ("rss_after_warmup_mb", "rss_end_mb", "rss_max_mb"):
            assert view[key] > 0, (role, key)
        for key in ("growth_first_last_pct", "growth_slope_pct"):
            assert isinstance(view[key], float | int), (role, key)
    assert set(result["target"]["verdicts"]) == set(ROLES)
    load = result["load"]
    assert load["errors"] == 0, load
    assert set(load["by_kind"]) == {"create", "read", "update", "task", "search"}
    assert all(kind["ok"] > 0 for kind in load["by_kind"].values())
    assert result["websocket"]["connected"] == 2
    assert result["websocket"]["event_messages"] > 0
    assert "deleted broker namespace" in done.stderr
    assert "dropped scratch database" in done.stderr
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "no chart" in done.stdout
    else:
        assert output.with_suffix(".png").stat().st_size > 0
