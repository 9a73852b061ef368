#!/usr/bin/env python3
"""Draw each Grafana dashboard from live Prometheus data: docs/img/dashboards/<name>.png.

    .venv/bin/pip install -c constraints.txt matplotlib     # not a Capstan dependency
    scripts/stack up                                        # the native stack, with some traffic
    .venv/bin/python deploy/grafana/render_preview.py [--prometheus URL] [--minutes 15]

These are previews, not Grafana screenshots (Grafana is not installable here: docs/deployment.md).
Every panel of deploy/grafana/dashboards/*.json is drawn where Grafana's grid puts it, titled
as in Grafana, from the panel's own PromQL run as a range query against Prometheus, with
Grafana's variables substituted as Grafana would ($__rate_interval, template variables = All).

The query helpers (`panels`, `promql`, `query_range`, `query`) are stdlib only and are also used
by tests/stack to evaluate every panel against the real Prometheus; only drawing needs matplotlib.
"""

# ruff: noqa: E501

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DASHBOARDS = HERE / "dashboards"
OUT = HERE.parents[1] / "docs" / "img" / "dashboards"
PROMETHEUS = "http://127.0.0.1:9090"


@dataclass
class Panel:
    title: str
    type: str  # timeseries | stat | row
    unit: str
    grid: dict[str, int]
    targets: list[tuple[str, str]] = field(default_factory=list)  # (expr, legendFormat)
    thresholds: list[tuple[float | None, str]] = field(default_factory=list)


def load(name: str, directory: Path = DASHBOARDS) -> dict[str, Any]:
    board: dict[str, Any] = json.loads((directory / f"{name}.json").read_text())
    return board


def names(directory: Path = DASHBOARDS) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.json"))


def panels(board: dict[str, Any]) -> list[Panel]:
    out = []
    for p in board["panels"]:
        defaults = p.get("fieldConfig", {}).get("defaults", {})
        steps = defaults.get("thresholds", {}).get("steps", [])
        out.append(
            Panel(
                title=p["title"],
                type=p["type"],
                unit=defaults.get("unit", "short"),
                grid=p["gridPos"],
                targets=[(t["expr"], t.get("legendFormat", "")) for t in p.get("targets", [])],
                thresholds=[(s["value"], s["color"]) for s in steps],
            )
        )
    return out


def promql(expr: str, rate_interval: str = "1m") -> str:
    """A panel's expression as Grafana sends it: its variables replaced (template variables
    at their default, All, which Grafana sends as the regex `.*`)."""
    for var, value in (
        ("$__rate_interval", rate_interval),
        ("$__interval", "15s"),
        ("$__range", "1h"),
    ):
        expr = expr.replace(var, value)
    return re.sub(r"\$\w+", ".*", expr)


class PrometheusError(RuntimeError):
    pass


def api_get(base: str, path: str, params: dict[str, str]) -> Any:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            body = json.load(r)
    except urllib.error.HTTPError as exc:  # 400/422 carry Prometheus' error text
        body = json.load(exc)
    if body.get("status") != "success":
        raise PrometheusError(f"{body.get('errorType')}: {body.get('error')}")
    return body["data"]


def query(base: str, expr: str) -> list[dict[str, Any]]:
    """Instant query; raises PrometheusError when Prometheus refuses the expression."""
    data = api_get(base, "/api/v1/query", {"query": expr})
    result: list[dict[str, Any]] = data["result"] if data["resultType"] == "vector" else []
    return result


def query_range(
    base: str, expr: str, start: float, end: float, step: float
) -> list[dict[str, Any]]:
    """Range query (what a Grafana panel runs); raises PrometheusError on an error."""
    data = api_get(
        base,
        "/api/v1/query_range",
        {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"},
    )
    result: list[dict[str, Any]] = data["result"]
    return result


def legend(fmt: str, labels: dict[str, str], expr: str) -> str:
    if fmt:
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)
    return "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else expr


# ---------------------------------------------------------------- drawing (matplotlib)

BG, PANEL_BG, FG, MUTED, GRID = "#111217", "#181b1f", "#d8d9da", "#8e8e8e", "#2c3235"
PALETTE = [
    "#73bf69",
    "#f2cc0c",
    "#8ab8ff",
    "#ff780a",
    "#f2495c",
    "#5794f2",
    "#b877d9",
    "#fade2a",
    "#ff9830",
    "#96d98d",
]
COLORS = {"green": "#73bf69", "orange": "#ff9830", "red": "#f2495c", "yellow": "#fade2a"}


def fmt_value(v: float, unit: str) -> str:
    if math.isnan(v):
        return "NaN"
    if unit == "percentunit":
        return f"{v * 100:.1f}%"
    if unit == "s":
        return f"{v * 1000:.1f} ms" if abs(v) < 1 else f"{v:.2f} s"
    if unit == "bool":
        return {0.0: "false", 1.0: "true"}.get(v, "")
    suffix = {"reqps": " req/s", "ops": " ops/s"}.get(unit, "")
    for div, s in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.2f}{s}{suffix}"
    return f"{v:.3g}{suffix}"


def draw(name: str, base: str, minutes: float, out: Path, dpi: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    board = load(name)
    ps = panels(board)
    end = time.time()
    start = end - minutes * 60
    step = max(5.0, minutes * 60 / 240)
    height = max(p.grid["y"] + p.grid["h"] for p in ps)
    fig = plt.figure(figsize=(16, 0.4 * height + 0.8), facecolor=BG)
    grid = fig.add_gridspec(
        height,
        24,
        left=0.04,
        right=0.99,
        top=1 - 0.6 / (0.4 * height + 0.8),
        bottom=0.01,
        hspace=3.0,
        wspace=1.2,
    )
    span = f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(start))}-{time.strftime('%H:%M', time.gmtime(end))} UTC"
    fig.suptitle(
        f"{board['title']}  —  preview drawn from the live Prometheus of the native stack (scripts/stack), not a Grafana screenshot  —  {span}",
        color=FG,
        fontsize=10,
        x=0.01,
        ha="left",
    )
    for p in ps:
        g = p.grid
        if p.type == "row":
            ax = fig.add_subplot(grid[g["y"] : g["y"] + 1, :])
            ax.axis("off")
            ax.text(
                0,
                0.5,
                p.title,
                color=FG,
                fontsize=11,
                fontweight="bold",
                va="center",
                transform=ax.transAxes,
            )
            continue
        ax = fig.add_subplot(grid[g["y"] : g["y"] + g["h"], g["x"] : g["x"] + g["w"]])
        ax.set_facecolor(PANEL_BG)
        for side in ax.spines.values():
            side.set_color(GRID)
        ax.set_title(p.title, color=FG, fontsize=8.5, loc="left")
        ax.tick_params(colors=MUTED, labelsize=6.5)
        series: list[tuple[str, list[float], list[float]]] = []
        error = ""
        for expr, fmt in p.targets:
            try:
                for s in query_range(base, promql(expr), start, end, step):
                    xs = [float(t) for t, _ in s["values"]]
                    ys = [float(v) for _, v in s["values"]]
                    series.append((legend(fmt, s["metric"], expr), xs, ys))
            except PrometheusError as exc:
                error = str(exc)
        if error:
            ax.text(
                0.5,
                0.5,
                f"query error: {error}",
                color=COLORS["red"],
                ha="center",
                va="center",
                fontsize=7,
                transform=ax.transAxes,
                wrap=True,
            )
            ax.set_xticks([]), ax.set_yticks([])
        elif not series:
            ax.text(
                0.5,
                0.5,
                "No data",
                color=MUTED,
                ha="center",
                va="center",
                fontsize=9,
                transform=ax.transAxes,
            )
            ax.set_xticks([]), ax.set_yticks([])
        elif p.type == "stat":
            _draw_stat(ax, p, series)
        else:
            for i, (label, xs, ys) in enumerate(series[:12]):
                ax.plot(xs, ys, lw=1.1, color=PALETTE[i % len(PALETTE)], label=label[:40] or " ")
            ax.set_xlim(start, end)
            ax.grid(color=GRID, lw=0.5)
            ax.xaxis.set_major_formatter(
                FuncFormatter(lambda x, _pos: time.strftime("%H:%M", time.gmtime(x)))
            )
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos, u=p.unit: fmt_value(v, u)))
            ax.legend(
                loc="upper left",
                fontsize=5.5,
                frameon=False,
                labelcolor=FG,
                ncol=2 if len(series) > 4 else 1,
            )
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.savefig(path, dpi=dpi, facecolor=BG)
    plt.close(fig)
    from PIL import Image  # matplotlib's own dependency: a 128-colour palette keeps files small

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=128)
    small.save(path, optimize=True)
    return path


def _draw_stat(ax: Any, p: Panel, series: list[tuple[str, list[float], list[float]]]) -> None:
    _label, xs, ys = series[0]
    finite = [y for y in ys if not math.isnan(y)]
    value = finite[-1] if finite else float("nan")
    color = COLORS["green"]
    for threshold, c in p.thresholds:
        if threshold is None or (not math.isnan(value) and value >= threshold):
            color = COLORS.get(c, c)
    ax.plot(xs, ys, color=color, lw=1, alpha=0.5)
    ax.fill_between(xs, ys, color=color, alpha=0.12)
    ax.text(
        0.5,
        0.5,
        fmt_value(value, p.unit),
        color=color,
        ha="center",
        va="center",
        fontsize=17,
        fontweight="bold",
        transform=ax.transAxes,
    )
    ax.set_xticks([]), ax.set_yticks([])


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prometheus", default=PROMETHEUS)
    ap.add_argument("--minutes", type=float, default=15.0, help="time range drawn (default 15)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--dpi", type=int, default=60)
    ap.add_argument("dashboards", nargs="*", help="names (default: all)")
    args = ap.parse_args(argv)
    for name in args.dashboards or names():
        path = draw(name, args.prometheus, args.minutes, args.out, args.dpi)
        print(f"{path} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
