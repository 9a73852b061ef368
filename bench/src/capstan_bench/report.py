"""What every `capstan bench` command does around its measurement: the environment and header
of the result, the progress bar, the exit codes (2: could not run, 130: interrupted, 1: an
invalid measurement), and the result written as JSON (+ PNG) under bench/results/."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from capstan_bench.common import BenchError, err, out

Result = dict[str, Any]


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_environment(started_at: datetime) -> dict[str, Any]:
    """The first keys of every result's `environment`: when, and on what machine."""
    return {
        "started_at": started_at.isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": load_average(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def event_loop() -> str:
    """`uvloop <version>` when it is installed (the bench and `capstan api` use it), else
    `asyncio`."""
    try:
        return f"uvloop {importlib.metadata.version('uvloop')}"
    except importlib.metadata.PackageNotFoundError:
        return "asyncio"


def result_header(benchmark: str, environment: dict[str, Any], invalid: list[str]) -> Result:
    """The first keys of every result; takes `started_at` out of the environment."""
    return {
        "benchmark": benchmark,
        "started_at": environment.pop("started_at"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "valid": not invalid,
        "invalid_reasons": invalid,
        "environment": environment,
    }


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_invalid(result: Result) -> None:
    if not result["valid"]:
        out.print("[red]INVALID measurement:[/red]")
        for reason in result["invalid_reasons"]:
            out.print(f"  [red]{reason}[/red]")


def progress_bar(*, percent: bool = False) -> Progress:
    """On stderr: done/total of each task, or (`percent`) the share of one task done."""
    done = "{task.percentage:>3.0f}%" if percent else "{task.completed:>6.0f}/{task.total:<6.0f}"
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn(done),
        TimeElapsedColumn(),
        console=err,
        refresh_per_second=10 if percent else 4,
    )


def measured(
    benchmark: str,
    measure: Callable[[], Result],
    *,
    cleaned_up: str,
    any_error: bool = False,
) -> Result:
    """The result of `measure`, or the exit: 2 (BenchError: it could not run; with `any_error`,
    any other error too, e.g. a server restarted under the run) or 130 (Ctrl-C, SIGTERM), once
    `measure` cleaned up (`cleaned_up` says what was)."""
    try:
        return measure()
    except BenchError as exc:
        err.print(f"[red]bench {benchmark}: {exc}[/red]")
        raise typer.Exit(2) from exc
    except KeyboardInterrupt:
        err.print(f"[yellow]interrupted; {cleaned_up}[/yellow]")
        raise typer.Exit(130) from None
    except Exception as exc:
        if not any_error:
            raise
        err.print(
            f"[red]bench {benchmark}: the run failed: {type(exc).__name__}: {exc}[/red]\n"
            "(cleaned up; if a server was restarted meanwhile, run it again)"
        )
        raise typer.Exit(2) from exc


def default_output(benchmark: str, now: datetime) -> Path:
    return Path("bench/results") / f"{benchmark}-{now.strftime('%Y%m%dT%H%M%SZ')}.json"


def write_json(path: Path, result: Result) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def publish(
    result: Result,
    path: Path,
    render: Callable[[Result], None],
    plot: Callable[[Result, Path], None] | None = None,
) -> None:
    """Write the JSON, print the tables, draw the PNG next to the JSON (when matplotlib is
    there); exit 1 if the measurement is invalid."""
    from capstan_bench.plot import MissingMatplotlib

    write_json(path, result)
    render(result)
    out.print(f"results: {path}")
    if plot is not None:
        try:
            plot(result, path.with_suffix(".png"))
            out.print(f"chart: {path.with_suffix('.png')}")
        except MissingMatplotlib as exc:
            out.print(f"no chart: {exc}")
    if not result["valid"]:
        raise typer.Exit(1)
