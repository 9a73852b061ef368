"""`capstan bench soak`: RSS of every production role over a long, steady mixed load.

One run, against the PostgreSQL, Redis and RabbitMQ that `scripts/services up` runs:

1. a scratch database (migrated, one tenant) and a broker namespace of its own;
2. `capstan api`, `capstan worker`, `capstan relay`, `capstan subscriber all` and the Node
   gateway (`gateway/dist/server.js`) as separate processes on loopback, logging warnings only;
3. a few WebSocket clients of the gateway subscribed to every event type;
4. for `--duration` seconds, a fixed rate of document creates, reads and updates, task
   submissions (`text.language`) and search queries through the API (open loop, bounded pool);
5. every `--interval` seconds, each role's RSS (VmRSS, summed over its session) and CPU from
   /proc; per role: RSS after the warm-up, at the end, max, growth over the window (first vs
   last, and a least-squares fit) and PASS/MISS against "flat within 10%";
6. JSON and a PNG of RSS per process under bench/results/; cleans up processes, broker names,
   Redis keys and the scratch database, also on Ctrl-C, SIGTERM or an error.

See bench/README.md ("capstan bench soak").
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from capstan_bench.common import (
    ROLE_LOG_LEVEL,
    BenchError,
    ScratchDatabase,
    child_env,
    err,
    forget_keys,
    free_port,
    git_commit,
    out,
    redact,
    remove_tree,
    role_overrides,
    run_async,
    settings_for,
    sigterm_as_interrupt,
)
from capstan_bench.events import broker_names
from capstan_bench.processes import ChildProcess, start_role, stop_all
from capstan_bench.rabbitmq import check_servers, remove_namespace
from capstan_bench.report import (
    default_output,
    event_loop,
    fmt,
    machine_environment,
    measured,
    print_invalid,
    progress_bar,
    publish,
    result_header,
)
from capstan_bench.soak_load import (
    MIX,
    TASK_TYPE,
    LoadStats,
    SocketStats,
    drive,
    listen,
    subscribe,
    wait_http,
)
from capstan_bench.soak_plot import plot_soak
from capstan_bench.soak_stats import FLAT_WITHIN_PCT, Series, growth, session_usage

GATEWAY_JS = Path(__file__).resolve().parents[3] / "gateway" / "dist" / "server.js"
GATEWAY_BUILD = "(cd gateway && npm ci && npm run build)"
# The load must never meet the rate limit: it measures memory, not the limiter.
UNLIMITED = {"CAPSTAN_RATE_LIMIT_PER_MINUTE": "100000000", "CAPSTAN_RATE_LIMIT_BURST": "1000000"}
MAX_ERROR_SHARE = 0.01  # more failed operations than this: the run is invalid
MIN_DONE_SHARE = 0.95  # fewer operations started than this share of the schedule: invalid


@dataclass
class Options:
    duration: int
    warmup: int
    rate: float
    concurrency: int
    clients: int
    interval: float
    gateway: Path
    started_at: datetime


def _environment(versions: dict[str, str], opts: Options) -> dict[str, Any]:
    return {
        **machine_environment(opts.started_at),
        "bench_event_loop": event_loop(),
        "backends": versions,
        "git": git_commit(),
        "params": {
            "duration_s": opts.duration,
            "warmup_s": opts.warmup,
            "rate_per_s": opts.rate,
            "concurrency": opts.concurrency,
            "websocket_clients": opts.clients,
            "sample_interval_s": opts.interval,
            "mix": list(MIX),
            "task_type": TASK_TYPE,
            "rss": "VmRSS from /proc/<pid>/status, summed over the role's session",
            "search": "the default search backend of the roles (CAPSTAN_SEARCH_URL unset)",
        },
    }


def _start(
    opts: Options, env: dict[str, str], workdir: Path, api_port: int, gateway_port: int
) -> list[ChildProcess]:
    """The five roles, in the order they are reported; the gateway last."""
    node = shutil.which("node")
    if node is None:
        raise BenchError("the soak runs the gateway: `node` is not on PATH")
    if not opts.gateway.is_file():
        raise BenchError(f"{opts.gateway} is missing: build the gateway first, {GATEWAY_BUILD}")
    roles = [
        start_role("api", ["api", "--port", str(api_port)], env, workdir),
        start_role("worker", ["worker"], env, workdir),
        start_role("relay", ["relay"], env, workdir),
        start_role("subscribers", ["subscriber", "all"], env, workdir),
    ]
    gateway_env = {
        **env,
        "CAPSTAN_GATEWAY_HOST": "127.0.0.1",
        "CAPSTAN_GATEWAY_PORT": str(gateway_port),
    }
    roles.append(
        ChildProcess("gateway", [node, str(opts.gateway)], gateway_env, workdir / "gateway.log")
    )
    return roles


def measure(opts: Options) -> dict[str, Any]:
    """The whole soak; cleans up processes, broker names, keys and the scratch database."""
    from capstan.composition import SUBSCRIBERS

    backends, amqp_url, versions = check_servers()
    environment = _environment(versions, opts)
    scratch = ScratchDatabase(backends.database_url)
    namespace = f"bench_{secrets.token_hex(4)}"
    workdir = Path(tempfile.mkdtemp(prefix="capstan-bench-soak-"))
    roles: list[ChildProcess] = []
    tenant_id: str | None = None
    overrides = role_overrides(
        scratch.url,
        backends.cache_url,
        amqp_url,
        namespace,
        workdir,
        CAPSTAN_HOST="127.0.0.1",
        **UNLIMITED,
    )
    env = child_env(overrides)
    settings = settings_for(overrides)
    names = broker_names(
        namespace,
        sorted(set(SUBSCRIBERS) | set(settings.subscribers)),
        list(settings.event_retry_delays_ms),
    )
    try:
        with sigterm_as_interrupt():
            tenant_id, _key_id, key = scratch.create()
            err.print(f"broker namespace [bold]{namespace}[/bold] on {redact(amqp_url)}")
            api_port, gateway_port = free_port(), free_port()
            roles = _start(opts, env, workdir, api_port, gateway_port)
            environment["roles"] = {
                "processes": {r.label: {"command": r.shown, "pid": r.proc.pid} for r in roles},
                "log_level": ROLE_LOG_LEVEL,
                "subscribers_enabled": list(settings.subscribers),
            }
            run = run_async(
                _drive(
                    opts,
                    roles,
                    f"http://127.0.0.1:{api_port}",
                    f"http://127.0.0.1:{gateway_port}",
                    key,
                )
            )
    finally:
        environment["role_logs"] = {r.label: r.log_summary() for r in roles}
        stop_all(roles)
        remove_namespace(amqp_url, namespace, names)
        if tenant_id is not None:
            forget_keys(backends.cache_url, [f"capstan:{tenant_id}:*"])
        scratch.drop()
        remove_tree(workdir)
    return summarize(environment, opts, *run)


async def _ready(roles: list[ChildProcess], api_url: str, gateway_url: str) -> None:
    by_label = {r.label: r for r in roles}
    await wait_http(f"{api_url}/healthz", by_label["api"].check_alive)
    for label in ("worker", "relay", "subscribers"):
        await by_label[label].wait_metrics()
    await wait_http(f"{gateway_url}/readyz", by_label["gateway"].check_alive)


async def _drive(
    opts: Options, roles: list[ChildProcess], api_url: str, gateway_url: str, key: str
) -> tuple[dict[str, Series], LoadStats, SocketStats, float]:
    """The WebSocket clients, then the load for `duration`, sampling every role all along."""
    await _ready(roles, api_url, gateway_url)
    err.print(
        "roles: " + ", ".join(f"`{r.shown}` (pid {r.proc.pid})" for r in roles)
        + f"; CAPSTAN_LOG_LEVEL={ROLE_LOG_LEVEL}"
    )  # fmt: skip
    sockets = SocketStats(clients=opts.clients)
    connections = [await subscribe(gateway_url, key, sockets) for _ in range(opts.clients)]
    listeners = [asyncio.create_task(listen(ws, sockets)) for ws in connections]
    sessions = {r.proc.pid: r.label for r in roles}  # each role leads a session of its own
    series = {r.label: Series() for r in roles}
    stats = LoadStats()
    try:
        with progress_bar(percent=True) as progress:
            bar = progress.add_task("soak: starting", total=opts.duration)
            t0 = time.monotonic()
            load = asyncio.create_task(
                drive(
                    api_url,
                    key,
                    rate=opts.rate,
                    duration_s=opts.duration,
                    concurrency=opts.concurrency,
                    stats=stats,
                )
            )
            while True:
                elapsed = time.monotonic() - t0
                for label, (rss, cpu, count) in session_usage(sessions).items():
                    if count:
                        series[label].add(elapsed, rss, cpu, count)
                for r in roles:
                    r.check_alive()
                phase = "warm-up" if elapsed < opts.warmup else "measuring"
                rss_now = ", ".join(
                    f"{label} {s.rss_kb[-1] / 1024:.0f}" for label, s in series.items() if s.rss_kb
                )
                progress.update(
                    bar,
                    completed=min(elapsed, opts.duration),
                    description=f"soak ({phase}): RSS MB {rss_now}; {stats.done} ops, "
                    f"{stats.errors} errors, {sockets.messages} ws events",
                )
                if load.done():
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(load), opts.interval)
            await load  # raises what the load raised
            wall = time.monotonic() - t0
    finally:
        for ws in connections:
            with contextlib.suppress(Exception):
                await ws.close()
        for task in listeners:
            task.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)
    return series, stats, sockets, wall


# ---------------------------------------------------------------- results


def summarize(
    environment: dict[str, Any],
    opts: Options,
    series: dict[str, Series],
    stats: LoadStats,
    sockets: SocketStats,
    wall: float,
) -> dict[str, Any]:
    processes = {label: growth(s, opts.warmup) for label, s in series.items()}
    invalid: list[str] = []
    for label, view in processes.items():
        if view["verdict"] == "NOT MEASURED":
            invalid.append(f"{label}: fewer than 2 samples after the warm-up")
    if stats.errors > MAX_ERROR_SHARE * max(stats.done, 1):
        invalid.append(f"{stats.errors} of {stats.done} operations failed")
    if stats.done < MIN_DONE_SHARE * stats.scheduled:
        invalid.append(f"only {stats.done} of {stats.scheduled} scheduled operations ran")
    if sockets.clients and sockets.messages == 0:
        invalid.append("the WebSocket clients received no event")
    if sockets.disconnects:
        invalid.append(f"{sockets.disconnects} WebSocket clients were disconnected")
    verdicts = {label: view["verdict"] for label, view in processes.items()}
    return {
        **result_header("soak", environment, invalid),
        "target": {
            "flat_within_pct": FLAT_WITHIN_PCT,
            "window": f"from {opts.warmup} s (after the warm-up) to the end of the load",
            "verdicts": verdicts,
            "met": all(v == "PASS" for v in verdicts.values()),
        },
        "processes": processes,
        "load": {
            **stats.to_dict(),
            "wall_s": round(wall, 1),
            "achieved_per_s": round(stats.done / wall, 2) if wall > 0 else None,
        },
        "websocket": sockets.to_dict(),
        "samples": {
            label: {"t_s": s.t_s, "rss_kb": s.rss_kb, "cpu_s": s.cpu_s, "processes": s.processes}
            for label, s in series.items()
        },
    }


def render(result: dict[str, Any]) -> None:
    table = Table(
        title=f"capstan bench soak — RSS per process, flat within {FLAT_WITHIN_PCT:g}%",
        title_justify="left",
    )
    # Short headers: the table fits 80 columns (a log, a pipe).
    for col in ("process", "warm MB", "end MB", "max MB", "Δ %", "fit %", "cores"):
        table.add_column(col, justify="left" if col == "process" else "right", no_wrap=True)
    table.add_column("flat", no_wrap=True)
    for label, p in result["processes"].items():
        verdict = p["verdict"]
        color = {"PASS": "green", "MISS": "yellow"}.get(verdict, "red")
        table.add_row(
            label,
            fmt(p.get("rss_after_warmup_mb"), ".1f"),
            fmt(p.get("rss_end_mb"), ".1f"),
            fmt(p.get("rss_max_mb"), ".1f"),
            fmt(p.get("growth_first_last_pct"), "+.1f"),
            fmt(p.get("growth_slope_pct"), "+.1f"),
            fmt(p.get("cpu_cores_in_window"), ".3f"),
            f"[{color}]{verdict}[/{color}]",
        )
    out.print(table)
    load = result["load"]
    kinds = ", ".join(f"{k} {v['ok']}" for k, v in load["by_kind"].items())
    ws = result["websocket"]
    out.print(
        f"load: {load['done']:,} operations in {load['wall_s']:.0f} s "
        f"({fmt(load['achieved_per_s'], '.1f')}/s: {kinds}), {load['errors']} errors; "
        f"{ws['connected']} WebSocket clients received {ws['event_messages']:,} events"
    )
    mark = "[green]PASS[/green]" if result["target"]["met"] else "[yellow]MISS[/yellow]"
    out.print(f"target: every process's RSS flat within {FLAT_WITHIN_PCT:g}%: {mark}")
    print_invalid(result)


def soak(
    duration: Annotated[
        int, typer.Option(min=10, help="Seconds of steady load (the issue asks for 20 minutes).")
    ] = 1200,
    warmup: Annotated[
        int | None,
        typer.Option(min=0, help="Seconds before the measured window (default: 10% of it)."),
    ] = None,
    rate: Annotated[
        float, typer.Option(min=0.1, max=1000, help="Operations per second, all kinds.")
    ] = 20.0,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Concurrent callers.")] = 8,
    clients: Annotated[
        int, typer.Option(min=0, max=100, help="WebSocket clients of the gateway.")
    ] = 5,
    interval: Annotated[
        float, typer.Option(min=0.2, max=60, help="Seconds between RSS/CPU samples.")
    ] = 5.0,
    gateway: Annotated[
        Path, typer.Option(help="The built gateway (gateway/dist/server.js).")
    ] = GATEWAY_JS,
    output: Annotated[
        Path | None,
        typer.Option(help="JSON result file (default bench/results/soak-<UTC timestamp>.json)."),
    ] = None,
) -> None:
    """RSS of api, worker, relay, subscribers and gateway over a steady mixed load."""
    now = datetime.now(UTC)
    warm = duration // 10 if warmup is None else warmup
    if warm >= duration:
        raise typer.BadParameter("must be shorter than --duration", param_hint="--warmup")
    opts = Options(duration, warm, rate, concurrency, clients, interval, gateway, now)
    result = measured(
        "soak",
        lambda: measure(opts),
        cleaned_up="the roles, broker namespace and scratch database were cleaned up",
        any_error=True,
    )
    publish(result, output or default_output("soak", now), render, plot_soak)
