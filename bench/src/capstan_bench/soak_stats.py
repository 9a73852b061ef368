"""The pure logic of `capstan bench soak`: memory of a process session from /proc, the growth of
RSS over the measured window (first vs last, and a least-squares slope) and the verdict."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAT_WITHIN_PCT = 10.0  # the target: RSS flat within 10% over the soak


def rss_kb(pid: int) -> int:
    """VmRSS of one process, in kB (0 for a kernel thread or a zombie, which have none)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def session_usage(sessions: Mapping[int, str]) -> dict[str, tuple[int, float, int]]:
    """Per label, over every process of its session: (RSS kB, CPU seconds, process count).
    A session covers what a role forks (a pool child counts to its role)."""
    tick = os.sysconf("SC_CLK_TCK")
    totals = {label: (0, 0.0, 0) for label in sessions.values()}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            label = sessions.get(int(fields[3]))
            if label is None:
                continue
            rss = rss_kb(int(entry.name))
        except OSError:  # exited between the listing and the read
            continue
        kb, cpu, count = totals[label]
        totals[label] = (kb + rss, cpu + (int(fields[11]) + int(fields[12])) / tick, count + 1)
    return totals


@dataclass
class Series:
    """One process's samples: seconds since the load started, RSS (kB), CPU seconds so far."""

    t_s: list[float] = field(default_factory=list)
    rss_kb: list[int] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    processes: list[int] = field(default_factory=list)

    def add(self, t_s: float, rss: int, cpu: float, processes: int) -> None:
        self.t_s.append(round(t_s, 2))
        self.rss_kb.append(rss)
        self.cpu_s.append(round(cpu, 3))
        self.processes.append(processes)


def least_squares(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line through the points; slope 0 if x is fixed."""
    n = len(xs)
    if n == 0:
        raise ValueError("no points")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0, my
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return slope, my - slope * mx


def growth(series: Series, warmup_s: float) -> dict[str, Any]:
    """RSS after the warm-up, at the end, the max, and the growth over the window (samples at
    or after `warmup_s`): last vs first, and the fitted line's end vs its start, in %; PASS when
    both stay within FLAT_WITHIN_PCT."""
    window = [i for i, t in enumerate(series.t_s) if t >= warmup_s]
    if not series.t_s:
        return {"samples": 0, "verdict": "NOT MEASURED"}
    if len(window) < 2:
        return {
            "samples": len(series.t_s),
            "window_samples": len(window),
            "max_mb": _mb(max(series.rss_kb)),
            "verdict": "NOT MEASURED",
        }
    xs = [series.t_s[i] for i in window]
    ys = [float(series.rss_kb[i]) for i in window]
    first, last = ys[0], ys[-1]
    slope, intercept = least_squares(xs, ys)
    fit_start = slope * xs[0] + intercept
    fit_end = slope * xs[-1] + intercept
    first_last = _pct(last - first, first)
    fitted = _pct(fit_end - fit_start, fit_start)
    flat = abs(first_last) <= FLAT_WITHIN_PCT and abs(fitted) <= FLAT_WITHIN_PCT
    wall = xs[-1] - xs[0]
    cpu = series.cpu_s[window[-1]] - series.cpu_s[window[0]]
    return {
        "samples": len(series.t_s),
        "window_samples": len(window),
        "window_s": round(wall, 1),
        "rss_after_warmup_mb": _mb(first),
        "rss_end_mb": _mb(last),
        "rss_max_mb": _mb(max(series.rss_kb)),
        "rss_min_in_window_mb": _mb(min(ys)),
        "growth_first_last_pct": round(first_last, 2),
        "growth_slope_pct": round(fitted, 2),
        "slope_mb_per_hour": round(slope * 3600 / 1024, 2),
        "cpu_cores_in_window": round(cpu / wall, 4) if wall > 0 else None,
        "processes": max(series.processes),
        "verdict": "PASS" if flat else "MISS",
    }


def _mb(kb: float) -> float:
    return round(kb / 1024, 1)


def _pct(delta: float, base: float) -> float:
    return delta / base * 100 if base > 0 else 0.0


def op_kind(i: int, mix: Sequence[str]) -> str:
    """The kind of operation i: the mix, repeated."""
    return mix[i % len(mix)]
