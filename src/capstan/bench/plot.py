"""A small PNG of a `bench read` result; matplotlib is optional (not a Capstan dependency)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

ORDER = ("trivial", "hit", "db")
COLORS = ("#8c8c8c", "#2f7ed8", "#d9822b")
LABELS = {"trivial": "trivial\n/healthz", "hit": "hit\n(Redis)", "db": "db\n(PostgreSQL)"}


class MissingMatplotlib(RuntimeError):
    pass


def plot_read(result: dict[str, Any], path: Path) -> None:
    """Two panels: median req/s per target, and median p50/p99 latency per target."""
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
    except ImportError as exc:
        raise MissingMatplotlib(
            "`capstan bench plot` needs matplotlib: `.venv/bin/pip install matplotlib`"
        ) from exc
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")

    median = result["median"]
    names = [n for n in ORDER if n in median]
    labels = [LABELS[n] for n in names]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=100)

    rps = [median[n]["rps"] for n in names]
    bars = left.bar(labels, rps, color=COLORS[: len(names)])
    left.bar_label(bars, labels=[f"{v:,.0f}" for v in rps], fontsize=8)
    left.set_title("requests/s (median of rounds)", fontsize=10)
    left.set_ylim(0, max(rps) * 1.15)

    x = list(range(len(names)))
    width = 0.38
    p50 = [median[n]["p50_ms"] for n in names]
    p99 = [median[n]["p99_ms"] for n in names]
    b50 = right.bar([i - width / 2 for i in x], p50, width, label="p50", color="#4a4a4a")
    b99 = right.bar([i + width / 2 for i in x], p99, width, label="p99", color="#c0c0c0")
    right.bar_label(b50, labels=[f"{v:.1f}" for v in p50], fontsize=8)
    right.bar_label(b99, labels=[f"{v:.1f}" for v in p99], fontsize=8)
    right.set_xticks(x, labels)
    right.set_title("latency, ms (median of rounds)", fontsize=10)
    right.set_ylim(0, max(p99) * 1.15)
    right.legend(fontsize=8)

    env = result["environment"]
    params = env["wrk_params"]
    fig.suptitle(
        f"capstan bench read — wrk -t{params['threads']} -c{params['connections']} "
        f"-d{params['duration_s']}s x{params['rounds']}, {env['cpu_count']} CPUs, "
        f"{(env['git']['commit'] or 'unknown')[:8]}",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
