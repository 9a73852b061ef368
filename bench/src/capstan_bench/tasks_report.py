"""The figures of `capstan bench tasks`: rates, ratios, CPU per task, the summary of the rounds
(medians, latency over all samples, PASS/MISS against the design targets) and its tables."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from capstan_bench.common import out
from capstan_bench.latency import summary_ms
from capstan_bench.report import fmt, print_invalid, result_header

# Design targets from the issue; informational: missing them does not fail the command.
TARGET_VS_CELERY = 2.0
TARGET_IDLE_P50_MS = 10.0


def rate(count: int, seconds: float) -> float | None:
    return round(count / seconds, 1) if seconds > 0 else None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def cpu_ms_per_task(cores: Mapping[str, float], wall_s: float, tasks: int) -> dict[str, float]:
    """CPU milliseconds per task of each process group (cores x wall / tasks), and their
    `total` (the machine-wide figure, which other sessions' work inflates, is left out)."""
    if tasks <= 0:
        return {}
    per = {k: round(v * wall_s / tasks * 1000, 2) for k, v in cores.items() if k != "machine"}
    per["total"] = round(sum(per.values()), 2)
    return per


def median_of(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 1) if known else None


def verdict(measured: float | None, target: float, *, higher_is_better: bool) -> str:
    """PASS / MISS against a target, or NOT MEASURED."""
    if measured is None:
        return "NOT MEASURED"
    ok = measured >= target if higher_is_better else measured < target
    return "PASS" if ok else "MISS"


def summarize(environment: dict[str, Any], rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds, latency over all samples, ratios and target verdicts."""
    invalid: list[str] = []
    for r in rounds:
        for side in ("capstan", "celery"):
            if r[side]["failed"]:
                invalid.append(f"round {r['round']}: {r[side]['failed']} {side} tasks failed")
            if r[side]["submit_errors"]:
                invalid.append(
                    f"round {r['round']}: {r[side]['submit_errors']} {side} submits failed"
                )
    if environment.get("aborted"):
        invalid.append(f"run aborted {environment['aborted']}"[:500])
    median: dict[str, dict[str, Any]] = {
        side: {
            "tasks_per_s": median_of([r[side]["per_s"] for r in rounds]),
            "per_round": [r[side]["per_s"] for r in rounds],
        }
        for side in ("capstan", "celery", "ceiling")
    }
    if rounds and "drained_per_s" in rounds[0]["capstan"]:
        median["capstan"]["with_subscribers_drained_per_s"] = median_of(
            [r["capstan"].get("drained_per_s") for r in rounds]
        )
    for side, key in (
        ("capstan", "cpu_ms_per_task_until_drained"),
        ("capstan", "cpu_ms_per_task"),
        ("celery", "cpu_ms_per_task"),
        ("ceiling", "cpu_ms_per_task"),
    ):
        per = [r[side].get(key) for r in rounds if r[side].get(key)]
        if per and key not in median[side]:
            median[side][key] = {
                k: median_of([p.get(k) for p in per])
                for k in dict.fromkeys(x for p in per for x in p)
            }
    latency: dict[str, Any] = {}
    for side in ("capstan", "celery"):
        samples = [s for r in rounds for s in r[f"{side}_latency"]["samples_ms"]]
        latency[side] = summary_ms(samples)
        parts = [r[f"{side}_latency"].get("parts_ms", {}) for r in rounds]
        names = dict.fromkeys(k for p in parts for k in p)
        if names:
            latency[side]["parts"] = {
                n: summary_ms([v for p in parts for v in p.get(n, [])]) for n in names
            }
    capstan, celery, ceiling = (median[s]["tasks_per_s"] for s in ("capstan", "celery", "ceiling"))
    vs_celery = ratio(capstan, celery)
    p50 = latency["capstan"]["p50_ms"]
    return {
        **result_header("tasks", environment, invalid),
        "median": median,
        "latency": latency,
        "ratios": {"capstan_vs_celery": vs_celery, "capstan_vs_ceiling": ratio(capstan, ceiling)},
        "targets": {
            "vs_celery": {
                "at_least": TARGET_VS_CELERY,
                "measured": vs_celery,
                "verdict": verdict(vs_celery, TARGET_VS_CELERY, higher_is_better=True),
            },
            "idle_submit_to_running_p50_ms": {
                "below": TARGET_IDLE_P50_MS,
                "measured": p50,
                "verdict": verdict(
                    None if p50 is None else float(p50), TARGET_IDLE_P50_MS, higher_is_better=False
                ),
            },
        },
        "rounds": rounds,
    }


def print_round(console: Console, r: dict[str, Any]) -> None:
    """One line per finished round, while the progress bars run."""
    cap, cel, top = r["capstan"], r["celery"], r["ceiling"]
    lat_c = summary_ms(r["capstan_latency"]["samples_ms"])
    lat_q = summary_ms(r["celery_latency"]["samples_ms"])
    drained = f" (subscribers drained: {cap['drained_per_s']}/s)" if "drained_per_s" in cap else ""
    console.print(
        f"  round {r['round']}: capstan {cap['per_s']} tasks/s{drained}, "
        f"celery {cel['per_s']} tasks/s, ceiling {top['per_s']} msg/s; idle submit→running "
        f"p50 capstan {lat_c['p50_ms']} ms, celery {lat_q['p50_ms']} ms; "
        f"load {r['load_average'][0]}"
    )


# ---------------------------------------------------------------- output


def _mean_cores(rounds: list[dict[str, Any]], side: str, key: str) -> float:
    values = [r[side]["cpu_cores"].get(key, 0.0) for r in rounds]
    return sum(values) / len(values) if values else 0.0


def render(result: dict[str, Any]) -> None:
    med, lat, rounds = result["median"], result["latency"], result["rounds"]
    env = result["environment"]
    table = Table(
        title=f"capstan bench tasks — {env['params']['tasks']:,} no-op tasks, concurrency "
        f"{env['params']['concurrency']}, median of {len(rounds)} rounds",
        title_justify="left",
    )
    for col in ("system", "tasks/s", "per round", "idle submit→running p50 / p99 ms"):
        table.add_column(col, justify="right" if col != "system" else "left", no_wrap=True)

    def per_round(side: str) -> str:
        return ", ".join(fmt(v, ",.0f") for v in med[side]["per_round"])

    def latency(side: str) -> str:
        return f"{fmt(lat[side]['p50_ms'], '.1f')} / {fmt(lat[side]['p99_ms'], '.1f')}"

    table.add_row(
        "Capstan",
        fmt(med["capstan"]["tasks_per_s"], ",.0f"),
        per_round("capstan"),
        latency("capstan"),
    )
    if "with_subscribers_drained_per_s" in med["capstan"]:
        table.add_row(
            "  … until subscribers drained",
            fmt(med["capstan"]["with_subscribers_drained_per_s"], ",.0f"),
            ", ".join(fmt(r["capstan"].get("drained_per_s"), ",.0f") for r in rounds),
            "",
        )
    table.add_row(
        f"Celery ({env['celery']['pool']})", fmt(med["celery"]["tasks_per_s"], ",.0f"),
        per_round("celery"), latency("celery"),
    )  # fmt: skip
    table.add_row(
        "ceiling (aio-pika)", fmt(med["ceiling"]["tasks_per_s"], ",.0f"), per_round("ceiling"), ""
    )
    out.print(table)

    parts = lat["capstan"].get("parts", {})
    if parts:
        out.print(
            "Capstan idle latency parts, p50 / p99 ms: "
            + "; ".join(
                f"{name.replace('_', ' ')} {fmt(p['p50_ms'], '.1f')} / {fmt(p['p99_ms'], '.1f')}"
                for name, p in parts.items()
            )
        )

    cpu = Table(
        title="CPU ms per task during the throughput runs (median of rounds; robust to other "
        "load, unlike tasks/s) and cores busy on the machine",
        title_justify="left",
    )
    labels = [
        ("bench", "bench"),
        ("capstan worker", "capstan-worker"),
        ("relay", "capstan-relay"),
        ("subscribers", "capstan-subscribers"),
        ("celery worker", "celery-worker"),
        ("postgres", "postgres"),
        ("rabbitmq", "rabbitmq"),
        ("total", "total"),
    ]
    cpu.add_column("run")
    for name, _ in labels:
        cpu.add_column(name, justify="right")
    cpu.add_column("machine cores", justify="right")
    rows = [
        ("capstan (tasks done)", "capstan", "cpu_ms_per_task"),
        ("capstan (events drained)", "capstan", "cpu_ms_per_task_until_drained"),
        ("celery", "celery", "cpu_ms_per_task"),
        ("ceiling", "ceiling", "cpu_ms_per_task"),
    ]
    for title, side, key in rows:
        per = med[side].get(key)
        if per:
            cpu.add_row(
                title,
                *(fmt(per.get(k), ".2f") for _, k in labels),
                f"{_mean_cores(rounds, side, 'machine'):.2f}",
            )
    out.print(cpu)

    ratios, targets = result["ratios"], result["targets"]
    out.print(
        f"Capstan/Celery = {fmt(ratios['capstan_vs_celery'], '.2f')}x, "
        f"Capstan/ceiling = {fmt(ratios['capstan_vs_ceiling'], '.3f')}x"
    )
    for name, t in targets.items():
        mark = {"PASS": "[green]PASS[/green]", "MISS": "[yellow]MISS[/yellow]"}.get(
            t["verdict"], "[yellow]NOT MEASURED[/yellow]"
        )
        goal = (
            f"Capstan ≥ {t['at_least']:g}x Celery"
            if name == "vs_celery"
            else f"idle submit→running p50 < {t['below']:g} ms"
        )
        out.print(
            f"design target: {goal} — measured {fmt(t['measured'], '.2f')}: {mark} (informational)"
        )
    out.print(
        f"{env['cpu_count']} CPUs shared by everything (bench, roles, Celery, servers); "
        f"load average {env['load_average_at_start'][0]} at start, "
        f"{env.get('load_average_at_end', ['?'])[0]} at end."
    )
    note = env["capstan"].get("subscribers_note")
    if note:
        out.print(f"[yellow]{note}[/yellow]")
    print_invalid(result)
