"""The PNG of `capstan bench soak`: RSS per process over time, absolute and relative to the
value after the warm-up (with the ±10% band of the target)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from capstan_bench.plot import TARGET_COLOR, _commit, _pyplot, _save

COLORS = {
    "api": "#2f7ed8",
    "worker": "#3a9a4a",
    "relay": "#8c8c8c",
    "subscribers": "#d9822b",
    "gateway": "#8e44ad",
}


def plot_soak(result: dict[str, Any], path: Path) -> None:
    """Two panels: RSS MB per process over minutes; RSS in % of its after-warm-up value."""
    plt = _pyplot("the chart")
    env = result["environment"]
    warmup_min = env["params"]["warmup_s"] / 60
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.0), dpi=100)
    flat = result["target"]["flat_within_pct"]
    low, high = 100 - 1.5 * flat, 100 + 1.5 * flat  # the band and some room, at least
    for label, s in result["samples"].items():
        if not s["t_s"]:
            continue
        minutes = [t / 60 for t in s["t_s"]]
        mb = [kb / 1024 for kb in s["rss_kb"]]
        color = COLORS.get(label)
        p = result["processes"][label]
        left.plot(minutes, mb, color=color, linewidth=1.2, label=f"{label} ({p['verdict']})")
        base = p.get("rss_after_warmup_mb")
        if base:
            pct = [v / base * 100 for v in mb]
            right.plot(minutes, pct, color=color, linewidth=1.2)
            # The window sets the scale; a warm-up far below it is clipped.
            window = [v for t, v in zip(minutes, pct, strict=True) if t >= warmup_min]
            low, high = min([low, *window]), max([high, *window])
    for ax in (left, right):
        ax.axvspan(0, warmup_min, color="#eeeeee", zorder=0)
        ax.set_xlabel("minutes of load (grey: warm-up)", fontsize=8)
        ax.set_xlim(left=0)
    left.set_ylim(bottom=0)
    left.set_title("RSS, MB (VmRSS of each role's processes)", fontsize=10)
    left.legend(fontsize=7, loc="lower right")
    right.set_ylim(low - 2, high + 2)
    for y in (100 - flat, 100 + flat):
        right.axhline(y, color=TARGET_COLOR, linestyle="--", linewidth=1)
    right.axhline(100, color="#bbbbbb", linewidth=0.8)
    right.set_title(f"RSS, % of the value after warm-up (target: ±{flat:g}%)", fontsize=10)
    params = env["params"]
    seconds = params["duration_s"]
    length = f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds} s"
    title = (
        f"capstan bench soak — {length} at "
        f"{params['rate_per_s']:g} ops/s, {params['websocket_clients']} WebSocket clients, "
        f"{env['cpu_count']} CPUs, {_commit(env)}"
    )
    _save(plt, fig, title, path)
