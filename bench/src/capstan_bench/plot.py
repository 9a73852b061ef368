"""Small PNGs of `capstan bench` results; matplotlib is optional (not a Capstan dependency)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from capstan_bench.report import fmt

ORDER = ("trivial", "hit", "db")
COLORS = ("#8c8c8c", "#2f7ed8", "#d9822b")
LABELS = {"trivial": "trivial\n/healthz", "hit": "hit\n(Redis)", "db": "db\n(PostgreSQL)"}
TARGET_COLOR = "#d9822b"


class MissingMatplotlib(RuntimeError):
    pass


def _pyplot(needed_by: str = "`capstan bench plot`") -> Any:
    """matplotlib.pyplot on the Agg backend, or MissingMatplotlib saying how to install it."""
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
    except ImportError as exc:
        raise MissingMatplotlib(
            f"{needed_by} needs matplotlib: `.venv/bin/pip install matplotlib`"
        ) from exc
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def _latency_bars(ax: Any, labels: list[str], p50: Sequence[float], p99: Sequence[float]) -> None:
    """p50 and p99 side by side per label, their values on top."""
    x = list(range(len(labels)))
    width = 0.38
    b50 = ax.bar([i - width / 2 for i in x], p50, width, label="p50", color="#4a4a4a")
    b99 = ax.bar([i + width / 2 for i in x], p99, width, label="p99", color="#c0c0c0")
    ax.bar_label(b50, labels=[f"{v:.1f}" for v in p50], fontsize=8)
    ax.bar_label(b99, labels=[f"{v:.1f}" for v in p99], fontsize=8)
    ax.set_xticks(x, labels)


def _commit(env: dict[str, Any]) -> str:
    return str(env["git"]["commit"] or "unknown")[:8]


def _save(plt: Any, fig: Any, title: str, path: Path) -> None:
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def plot_read(result: dict[str, Any], path: Path) -> None:
    """Two panels: median req/s per target, and median p50/p99 latency per target."""
    plt = _pyplot()
    median = result["median"]
    names = [n for n in ORDER if n in median]
    labels = [LABELS[n] for n in names]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=100)

    rps = [median[n]["rps"] for n in names]
    bars = left.bar(labels, rps, color=COLORS[: len(names)])
    left.bar_label(bars, labels=[f"{v:,.0f}" for v in rps], fontsize=8)
    left.set_title("requests/s (median of rounds)", fontsize=10)
    left.set_ylim(0, max(rps) * 1.15)

    p99 = [median[n]["p99_ms"] for n in names]
    _latency_bars(right, labels, [median[n]["p50_ms"] for n in names], p99)
    right.set_title("latency, ms (median of rounds)", fontsize=10)
    right.set_ylim(0, max(p99) * 1.15)
    right.legend(fontsize=8)

    env = result["environment"]
    params = env["wrk_params"]
    title = (
        f"capstan bench read — wrk -t{params['threads']} -c{params['connections']} "
        f"-d{params['duration_s']}s x{params['rounds']}, {env['cpu_count']} CPUs, "
        f"{_commit(env)}"
    )
    _save(plt, fig, title, path)


def plot_events(result: dict[str, Any], path: Path) -> None:
    """Two panels per offered rate: p50/p99 commit → done latency (log scale, with the
    100 ms target), and the write rate achieved (sustained steps in green)."""
    plt = _pyplot()
    steps = [s for s in result["steps"] if s["latency"]["p50_ms"] is not None]
    labels = [f"{s['offered_rate']:,}/s" for s in steps]
    x = list(range(len(steps)))
    width = 0.38
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)

    p50 = [s["latency"]["p50_ms"] for s in steps]
    p99 = [s["latency"]["p99_ms"] for s in steps]
    left.plot(x, p99, marker="o", color="#8c8c8c", label="p99")
    left.plot(x, p50, marker="o", color="#2b2b2b", label="p50")
    for i, (a, b) in enumerate(zip(p50, p99, strict=True)):
        left.annotate(f"{a:,.0f}", (i, a), textcoords="offset points", xytext=(6, -10), fontsize=7)
        left.annotate(f"{b:,.0f}", (i, b), textcoords="offset points", xytext=(6, 4), fontsize=7)
    target = result["target"]
    left.axhline(target["p99_ms_below"], color=TARGET_COLOR, linestyle="--", linewidth=1)
    left.text(
        0, target["p99_ms_below"] * 1.15, f"target: p99 < {target['p99_ms_below']:g} ms at "
        f"{target['rate']}/s", fontsize=7, color=TARGET_COLOR,
    )  # fmt: skip
    left.set_yscale("log")
    left.set_ylim(min([*p50, target["p99_ms_below"]]) / 2, max([*p99, 100.0]) * 3)
    left.set_xticks(x, labels)
    left.set_xlim(-0.5, len(x) - 0.5)
    left.set_xlabel("offered rate", fontsize=8)
    left.set_title("commit → audit log recorded, ms (log)", fontsize=10)
    left.legend(fontsize=8, loc="upper left")

    offered = [s["offered_rate"] for s in steps]
    achieved = [s["achieved_rate"] for s in steps]
    colors = ["#3a9a4a" if s["sustained"] else "#c94a3a" for s in steps]
    right.bar([i - width / 2 for i in x], offered, width, color="#d0d0d0", label="offered")
    bars = right.bar([i + width / 2 for i in x], achieved, width, color=colors, label="written")
    right.bar_label(bars, labels=[f"{v:,.0f}" for v in achieved], fontsize=7)
    right.set_xticks(x, labels)
    right.set_xlabel("offered rate", fontsize=8)
    right.set_title("writes/s committed (green: sustained, red: not)", fontsize=10)
    right.legend(fontsize=8, loc="upper left")

    env = result["environment"]
    best = result["max_sustained_rate"]
    title = (
        f"capstan bench events — {env['params']['duration_s']}s per rate, "
        f"{env['cpu_count']} CPUs, max sustained "
        f"{'none' if best is None else f'{best:,.0f}/s'}, "
        f"{_commit(env)}"
    )
    _save(plt, fig, title, path)


def plot_tasks(result: dict[str, Any], path: Path) -> None:
    """Two panels: median tasks/s of the three (log scale), and idle p50/p99 latency."""
    plt = _pyplot("the chart")
    med, lat, env = result["median"], result["latency"], result["environment"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    names = ["Capstan", "Celery", "ceiling\n(aio-pika)"]
    values = [med[s]["tasks_per_s"] or 0 for s in ("capstan", "celery", "ceiling")]
    bars = left.bar(names, values, color=["#2f7ed8", "#3a9a4a", "#8c8c8c"])
    left.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=8)
    left.set_yscale("log")
    left.set_ylim(max(min(v for v in values if v) / 3, 1), max(values) * 3)
    left.set_title("no-op tasks/s, submit → result committed (log)", fontsize=10)

    sides = ("capstan", "celery")
    p50 = [lat[s]["p50_ms"] or 0 for s in sides]
    p99 = [lat[s]["p99_ms"] or 0 for s in sides]
    _latency_bars(right, ["Capstan", "Celery"], p50, p99)
    target = result["targets"]["idle_submit_to_running_p50_ms"]["below"]
    right.axhline(target, color=TARGET_COLOR, linestyle="--", linewidth=1)
    right.text(-0.4, target * 1.05, f"target p50 < {target:g} ms", fontsize=7, color=TARGET_COLOR)
    right.set_title("idle submit → running, ms", fontsize=10)
    right.legend(fontsize=8)
    ratios = result["ratios"]
    title = (
        f"capstan bench tasks — concurrency {env['params']['concurrency']}, "
        f"{env['params']['tasks']:,} tasks x {env['params']['rounds']} rounds, "
        f"Capstan/Celery {fmt(ratios['capstan_vs_celery'], '.2f')}x, "
        f"{env['cpu_count']} CPUs, {_commit(env)}"
    )
    _save(plt, fig, title, path)
