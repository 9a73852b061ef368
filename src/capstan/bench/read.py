"""`capstan bench read`: the read path against the production backends, measured with wrk.

One run starts a scratch PostgreSQL database (migrated, one tenant, one document) on the
PostgreSQL and Redis that `scripts/services up` runs, starts `capstan api` as its own process,
and drives three targets with wrk, interleaved over several rounds:

- trivial: GET /healthz (no auth work, no backend);
- hit:     GET /v1/documents/{id}, served from Redis (X-Cache: hit);
- db:      the same read with `Cache-Control: no-cache` (X-Cache: bypass), served by PostgreSQL.

It prints the median of the rounds and the ratios against the design targets, and writes JSON
under bench/results/. See bench/README.md.
"""

from __future__ import annotations

import asyncio
import json
import resource
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from capstan.bench.common import (
    BenchError,
    ScratchDatabase,
    check_backends,
    child_env,
    err,
    forget_keys,
    free_port,
    git_commit,
    out,
    remove_tree,
    resolve_backends,
    sigterm_as_interrupt,
)
from capstan.bench.cpu import cpu_seconds
from capstan.bench.embeddings import embeddings_command
from capstan.bench.events import events as events_command
from capstan.bench.processes import ChildProcess, Samples, capstan_command, stop_all
from capstan.bench.report import (
    default_output,
    event_loop,
    machine_environment,
    measured,
    print_invalid,
    progress_bar,
    publish,
    result_header,
)
from capstan.bench.retrieval import retrieval_command
from capstan.bench.soak import soak as soak_command
from capstan.bench.tasks import tasks as tasks_command
from capstan.bench.wrk import WrkOutputError, WrkResult, parse_wrk, wrk_command, wrk_path

app = typer.Typer(help="Benchmarks against the production backends on this machine.")
app.command("events")(events_command)  # `capstan bench events`: src/capstan/bench/events.py
app.command("tasks")(tasks_command)  # `capstan bench tasks`: src/capstan/bench/tasks.py
app.command("soak")(soak_command)  # `capstan bench soak`: src/capstan/bench/soak.py
app.command("embeddings")(embeddings_command)  # src/capstan/bench/embeddings.py
app.command("retrieval")(retrieval_command)  # src/capstan/bench/retrieval.py

# Design targets from the issue; informational: missing one does not fail the command.
TARGET_HIT_VS_TRIVIAL = 0.70
TARGET_HIT_VS_DB = 3.0

API_LOG_LEVEL = "WARNING"
RATE_LIMIT = 1_000_000_000  # one key is hammered: the limiter must never say no
CACHE_TTL_SECONDS = 3600  # longer than any run, so the hit target never expires mid-run
WRK_THREADS = 1
WRK_TIMEOUT_S = 5
# The counters /metrics has that `server_view` reads.
METRIC_FAMILIES = ("capstan_http_requests", "capstan_cache_requests")
# Unexpected cache results (e.g. a miss after someone flushed Redis) beyond this share of a
# target's requests make the measurement invalid.
MAX_UNEXPECTED_SHARE = 0.01


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    label: str
    path: str  # may contain {doc_id}
    headers: dict[str, str]
    route: str  # the route template the API reports in its metrics
    expect_cache: str | None  # X-Cache every response must carry


TARGETS = (
    Target("trivial", "GET /healthz", "/healthz", {}, "/healthz", None),
    Target(
        "hit",
        "GET /v1/documents/{id} (Redis hit)",
        "/v1/documents/{doc_id}",
        {},
        "/v1/documents/{doc_id}",
        "hit",
    ),
    Target(
        "db",
        "GET /v1/documents/{id} no-cache (PostgreSQL)",
        "/v1/documents/{doc_id}",
        {"Cache-Control": "no-cache"},
        "/v1/documents/{doc_id}",
        "bypass",
    ),
)

# The document read in the benchmark: a small, typical one (about 2 KB of JSON).
BENCH_DOCUMENT: dict[str, Any] = {
    "collection": "bench",
    "title": "Read-path benchmark document",
    "body": ("Capstan keeps documents in PostgreSQL and serves reads through Redis. " * 24).strip(),
    "tags": ["bench", "read-path", "cache"],
    "metadata": {"source": "capstan bench read", "lang": "en", "n": 1},
}


@dataclass
class Run:
    """One measured wrk run of one target, plus what the server said about it."""

    target: str
    round: int
    wrk: WrkResult
    raw: str
    api_cpu_s: float
    wrk_cpu_s: float
    server: dict[str, Any] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return self.wrk.errors == 0 and not self.server.get("problems")

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "round": self.round,
            "valid": self.valid,
            **self.wrk.to_dict(),
            "api_cpu_s": round(self.api_cpu_s, 3),
            "api_cpu_share": round(self.api_cpu_s / self.wrk.duration_s, 3),
            "api_cpu_us_per_request": _per_request_us(self.api_cpu_s, self.wrk.requests),
            "wrk_cpu_s": round(self.wrk_cpu_s, 3),
            "wrk_cpu_us_per_request": _per_request_us(self.wrk_cpu_s, self.wrk.requests),
            "server": self.server,
            "wrk_output": self.raw,
        }


def _per_request_us(cpu_s: float, requests: int) -> float:
    return round(cpu_s / requests * 1e6, 1) if requests else 0.0


# ---------------------------------------------------------------- the API process


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Api(ChildProcess):
    """`capstan api` in its own process (own session: Ctrl-C reaches us, we stop it); its
    /metrics are on its own port."""

    stop_grace_s = 15.0

    def __init__(self, env: dict[str, str], port: int, log_path: Path) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        command = capstan_command("api", "--port", str(port))
        super().__init__("api", command, env, log_path, metrics_port=port)

    def wait_ready(self, timeout_s: float = 60) -> dict[str, Any]:
        import httpx

        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"the API exited with code {self.proc.returncode} during startup:\n"
                    + self.log_tail()
                )
            try:
                r = httpx.get(self.base + "/readyz", timeout=2)
                if r.status_code == 200:
                    body: dict[str, Any] = r.json()
                    return body
                last = f"{r.status_code} {r.text[:300]}"
            except httpx.HTTPError as exc:
                last = str(exc) or type(exc).__name__
            time.sleep(0.2)
        raise BenchError(f"the API was not ready within {timeout_s:g}s (last: {last})")


# ---------------------------------------------------------------- server-side checks


def _scrape(api: Api) -> Samples:
    """The counters `server_view` reads."""
    return asyncio.run(api.scrape(METRIC_FAMILIES, suffix="_total"))


def server_view(target: Target, before: Samples, after: Samples) -> dict[str, Any]:
    """What the API counted between two scrapes: statuses on the route, cache results."""
    statuses: dict[str, int] = {}
    cache: dict[str, int] = {}
    for key, value in after.items():
        delta = int(value - before.get(key, 0.0))
        if delta <= 0:
            continue
        name, labels = key[0], dict(key[1])
        if name == "capstan_http_requests_total" and labels.get("route") == target.route:
            statuses[labels["status"]] = statuses.get(labels["status"], 0) + delta
        elif name == "capstan_cache_requests_total":
            cache[labels["result"]] = cache.get(labels["result"], 0) + delta
    problems = []
    answered = sum(statuses.values())
    bad = answered - statuses.get("200", 0)
    if bad:
        problems.append(f"{bad} non-200 responses on {target.route}: {statuses}")
    if target.expect_cache is not None:
        unexpected = sum(v for k, v in cache.items() if k != target.expect_cache)
        if unexpected > MAX_UNEXPECTED_SHARE * max(answered, 1):
            problems.append(f"expected X-Cache {target.expect_cache} but the API counted {cache}")
    elif cache:
        problems.append(f"cache lookups during {target.name}: {cache}")
    return {"statuses": statuses, "cache_results": cache, "problems": problems}


# ---------------------------------------------------------------- the run


@dataclass
class Options:
    duration: int
    connections: int
    warmup: int
    rounds: int
    started_at: datetime


def _environment(wrk: str, versions: dict[str, str], opts: Options) -> dict[str, Any]:
    import fastapi
    import uvicorn

    from capstan.bench.wrk import wrk_version

    return {
        **machine_environment(opts.started_at),
        "uvicorn": uvicorn.__version__,
        "fastapi": fastapi.__version__,
        "event_loop": event_loop(),
        "wrk": wrk_version(wrk),
        "backends": versions,
        "git": git_commit(),
        "wrk_params": {
            "threads": WRK_THREADS,
            "connections": opts.connections,
            "duration_s": opts.duration,
            "warmup_s": opts.warmup,
            "timeout_s": WRK_TIMEOUT_S,
            "rounds": opts.rounds,
            "order": [t.name for t in TARGETS],
            "headers": ["Authorization: Bearer <bench key>"],
        },
        "api": {
            "processes": 1,
            "log_level": API_LOG_LEVEL,
            "rate_limit_per_minute": RATE_LIMIT,
            "rate_limit_burst": RATE_LIMIT,
            "cache_ttl_seconds": CACHE_TTL_SECONDS,
            "broker": "memory://",
        },
    }


def _run_wrk(cmd: list[str], duration_s: float, tick: Callable[[float], None]) -> tuple[str, float]:
    """Run wrk, calling tick(seconds elapsed) meanwhile; (stdout, wrk's CPU seconds)."""
    cpu_before = _children_cpu_seconds()
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
    )
    try:
        while proc.poll() is None:
            tick(min(time.monotonic() - started, duration_s))
            time.sleep(0.25)
        stdout, stderr = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    tick(duration_s)
    if proc.returncode != 0:
        raise BenchError(f"wrk exited with {proc.returncode}: {stderr.strip() or stdout.strip()}")
    return stdout, _children_cpu_seconds() - cpu_before


def _verify(base: str, target: Target, headers: dict[str, str]) -> None:
    import httpx

    r = httpx.get(base + target.path, headers=headers, timeout=10)
    cache = r.headers.get("x-cache")
    if r.status_code != 200 or cache != target.expect_cache:
        raise BenchError(
            f"{target.label}: expected 200 with X-Cache {target.expect_cache}, "
            f"got {r.status_code} with X-Cache {cache}: {r.text[:300]}"
        )


def measure(opts: Options) -> dict[str, Any]:
    """The whole benchmark; cleans up the API process and scratch database whatever happens."""
    import httpx

    wrk = wrk_path()
    if wrk is None:
        raise BenchError("wrk is not installed: `apt-get install wrk` (Debian package wrk)")
    backends = resolve_backends()
    versions = asyncio.run(check_backends(backends))
    environment = _environment(wrk, versions, opts)

    scratch = ScratchDatabase(backends.database_url)
    api: Api | None = None
    forget: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="capstan-bench-"))
    try:
        with sigterm_as_interrupt():
            tenant_id, key_id, key = scratch.create()
            forget = [f"capstan:{tenant_id}:*", f"capstan:ratelimit:{key_id}"]

            port = free_port()
            env = child_env(
                {
                    "CAPSTAN_DATABASE_URL": scratch.url,
                    "CAPSTAN_CACHE_URL": backends.cache_url,
                    "CAPSTAN_BROKER_URL": "memory://",
                    "CAPSTAN_DATA_DIR": str(workdir / "data"),
                    "CAPSTAN_LOG_LEVEL": API_LOG_LEVEL,
                    "CAPSTAN_RATE_LIMIT_PER_MINUTE": str(RATE_LIMIT),
                    "CAPSTAN_RATE_LIMIT_BURST": str(RATE_LIMIT),
                    "CAPSTAN_CACHE_TTL_SECONDS": str(CACHE_TTL_SECONDS),
                }
            )
            api = Api(env, port, workdir / "api.log")
            err.print(
                f"API: `capstan api --port {port}` (pid {api.proc.pid}, one process, "
                f"CAPSTAN_LOG_LEVEL={API_LOG_LEVEL} so request logging does not dominate)"
            )
            readiness = api.wait_ready()
            environment["api"]["readyz"] = {
                k: v.get("backend") for k, v in readiness.get("checks", {}).items()
            }

            auth = {"Authorization": f"Bearer {key}"}
            created = httpx.post(
                api.base + "/v1/documents", json=BENCH_DOCUMENT, headers=auth, timeout=10
            )
            if created.status_code != 201:
                raise BenchError(
                    f"creating the document failed: {created.status_code} {created.text}"
                )
            doc_id = created.json()["id"]
            environment["document"] = {"id": doc_id, "response_bytes": len(created.content)}
            first = httpx.get(f"{api.base}/v1/documents/{doc_id}", headers=auth, timeout=10)
            environment["document"]["first_read_x_cache"] = first.headers.get("x-cache")
            for target in TARGETS:
                if target.expect_cache is not None:
                    _verify(
                        api.base,
                        _resolved(target, doc_id),
                        {**auth, **target.headers},
                    )
            err.print(
                f"document {doc_id}: X-Cache hit and bypass verified; "
                f"{opts.rounds} rounds x {len(TARGETS)} targets x "
                f"({opts.warmup}s warmup + {opts.duration}s), wrk -t{WRK_THREADS} "
                f"-c{opts.connections}"
            )
            runs = _drive(wrk, api, opts, doc_id, auth)
    finally:
        stop_all([api] if api is not None else [])
        if forget:
            forget_keys(backends.cache_url, forget)
        scratch.drop()
        remove_tree(workdir)
    return summarize(environment, runs)


def _resolved(target: Target, doc_id: str) -> Target:
    return Target(
        target.name,
        target.label,
        target.path.format(doc_id=doc_id),
        target.headers,
        target.route,
        target.expect_cache,
    )


def _drive(wrk: str, api: Api, opts: Options, doc_id: str, auth: dict[str, str]) -> list[Run]:
    steps = opts.rounds * len(TARGETS)
    total_s = steps * (opts.warmup + opts.duration)
    runs: list[Run] = []
    with progress_bar(percent=True) as progress:
        task = progress.add_task("starting", total=total_s)
        done = 0.0
        for rnd in range(1, opts.rounds + 1):
            for target in TARGETS:
                t = _resolved(target, doc_id)
                headers = {**auth, **t.headers}

                def cmd(
                    seconds: int, t: Target = t, headers: dict[str, str] = headers
                ) -> list[str]:
                    return wrk_command(
                        wrk,
                        api.base + t.path,
                        threads=WRK_THREADS,
                        connections=opts.connections,
                        duration_s=seconds,
                        timeout_s=WRK_TIMEOUT_S,
                        headers=headers,
                    )

                def tick(elapsed: float, base: float = done) -> None:
                    progress.update(task, completed=base + elapsed)

                if opts.warmup > 0:
                    progress.update(task, description=f"round {rnd}/{opts.rounds} {t.name}: warmup")
                    _run_wrk(cmd(opts.warmup), opts.warmup, tick)
                    done += opts.warmup
                progress.update(task, description=f"round {rnd}/{opts.rounds} {t.name}: measure")
                before = _scrape(api)
                cpu_before = cpu_seconds(api.proc.pid)
                raw, wrk_cpu = _run_wrk(cmd(opts.duration), opts.duration, partial(tick, base=done))
                api_cpu = cpu_seconds(api.proc.pid) - cpu_before
                after = _scrape(api)
                done += opts.duration
                try:
                    result = parse_wrk(raw)
                except WrkOutputError as exc:
                    raise BenchError(str(exc)) from exc
                run = Run(t.name, rnd, result, raw, api_cpu, wrk_cpu, server_view(t, before, after))
                runs.append(run)
                mark = "" if run.valid else " [red]INVALID[/red]"
                progress.console.print(
                    f"  round {rnd} {t.name:<7} {result.rps:>9,.0f} req/s  "
                    f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  "
                    f"API CPU {api_cpu / result.duration_s:4.0%}{mark}"
                )
                if api.proc.poll() is not None:
                    raise BenchError(f"the API exited during the run:\n{api.log_tail()}")
        progress.update(task, description="done", completed=total_s)
    return runs


# ---------------------------------------------------------------- results


def summarize(environment: dict[str, Any], runs: list[Run]) -> dict[str, Any]:
    """Median of the rounds per target, and the ratios the design targets are about."""
    median: dict[str, dict[str, Any]] = {}
    for target in TARGETS:
        mine = [r for r in runs if r.target == target.name]
        median[target.name] = {
            "label": target.label,
            "rounds": len(mine),
            "rps": round(statistics.median(r.wrk.rps for r in mine), 1),
            "p50_ms": round(statistics.median(r.wrk.p50_ms for r in mine), 3),
            "p99_ms": round(statistics.median(r.wrk.p99_ms for r in mine), 3),
            "rps_per_round": [r.wrk.rps for r in mine],
            "api_cpu_us_per_request": statistics.median(
                _per_request_us(r.api_cpu_s, r.wrk.requests) for r in mine
            ),
            "api_cpu_share": round(
                statistics.median(r.api_cpu_s / r.wrk.duration_s for r in mine), 3
            ),
            "errors": sum(r.wrk.errors for r in mine),
        }
    trivial, hit, db = median["trivial"], median["hit"], median["db"]
    ratios = {
        "hit_rps_over_trivial_rps": {
            "value": round(hit["rps"] / trivial["rps"], 3),
            "target": f">= {TARGET_HIT_VS_TRIVIAL}",
            "met": hit["rps"] / trivial["rps"] >= TARGET_HIT_VS_TRIVIAL,
        },
        "db_p50_over_hit_p50": {
            "value": round(db["p50_ms"] / hit["p50_ms"], 3),
            "target": f">= {TARGET_HIT_VS_DB}",
            "met": db["p50_ms"] / hit["p50_ms"] >= TARGET_HIT_VS_DB,
        },
        "hit_rps_over_db_rps": {
            "value": round(hit["rps"] / db["rps"], 3),
            "target": f">= {TARGET_HIT_VS_DB}",
            "met": hit["rps"] / db["rps"] >= TARGET_HIT_VS_DB,
        },
    }
    invalid = [
        f"round {r.round} {r.target}: "
        + "; ".join(
            (
                [f"{r.wrk.errors} wrk errors {r.wrk.socket_errors} non-2xx {r.wrk.non_2xx}"]
                if r.wrk.errors
                else []
            )
            + list(r.server.get("problems", []))
        )
        for r in runs
        if not r.valid
    ]
    return {
        **result_header("read", environment, invalid),
        "median": median,
        "ratios": ratios,
        "runs": [r.to_dict() for r in runs],
    }


def render(result: dict[str, Any]) -> None:
    median = result["median"]
    table = Table(title="capstan bench read — median of rounds", title_justify="left")
    table.add_column("target", no_wrap=True)
    table.add_column("req/s", justify="right")
    table.add_column("p50 ms", justify="right")
    table.add_column("p99 ms", justify="right")
    table.add_column("req/s per round", justify="right", no_wrap=True)
    table.add_column("API CPU µs/req", justify="right")
    table.add_column("errors", justify="right")
    short = {"trivial": "trivial /healthz", "hit": "hit (Redis)", "db": "db (PostgreSQL)"}
    for name in ("trivial", "hit", "db"):
        m = median[name]
        table.add_row(
            short[name],
            f"{m['rps']:,.0f}",
            f"{m['p50_ms']:.2f}",
            f"{m['p99_ms']:.2f}",
            " ".join(f"{x:.0f}" for x in m["rps_per_round"]),
            f"{m['api_cpu_us_per_request']:,.0f}",
            str(m["errors"]) if m["errors"] == 0 else f"[red]{m['errors']}[/red]",
        )
    out.print(table)
    ratios = Table(title="design targets (informational)", title_justify="left")
    ratios.add_column("ratio")
    ratios.add_column("measured", justify="right")
    ratios.add_column("target", justify="right")
    ratios.add_column("")
    names = {
        "hit_rps_over_trivial_rps": "hit req/s ÷ trivial req/s",
        "db_p50_over_hit_p50": "db p50 ÷ hit p50",
        "hit_rps_over_db_rps": "hit req/s ÷ db req/s",
    }
    for key, label in names.items():
        r = result["ratios"][key]
        mark = "[green]PASS[/green]" if r["met"] else "[yellow]MISS[/yellow]"
        ratios.add_row(label, f"{r['value']:.2f}", r["target"], mark)
    out.print(ratios)
    api = result["environment"]["api"]
    params = result["environment"]["wrk_params"]
    out.print(
        f"wrk -t{params['threads']} -c{params['connections']} -d{params['duration_s']}s "
        f"(+{params['warmup_s']}s warmup) x {params['rounds']} interleaved rounds; "
        f"API: 1 uvicorn process, CAPSTAN_LOG_LEVEL={api['log_level']} (request logs off), "
        f"rate limit raised to {api['rate_limit_per_minute']:,}/min; "
        f"{result['environment']['cpu_count']} CPUs shared by wrk, the API, PostgreSQL and Redis."
    )
    print_invalid(result)


@app.command("read")
def read(
    duration: Annotated[int, typer.Option(min=1, help="Seconds each measured wrk run lasts.")] = 10,
    connections: Annotated[int, typer.Option(min=1, help="wrk connections (-c).")] = 32,
    warmup: Annotated[int, typer.Option(min=0, help="Seconds of unmeasured load first.")] = 3,
    rounds: Annotated[
        int, typer.Option(min=1, help="Interleaved rounds of the three targets; medians win.")
    ] = 3,
    output: Annotated[
        Path | None,
        typer.Option(help="JSON result file (default bench/results/read-<UTC timestamp>.json)."),
    ] = None,
) -> None:
    """Requests/s, p50 and p99 of /healthz, a cached document read and the PostgreSQL read."""
    now = datetime.now(UTC)
    opts = Options(duration, connections, warmup, rounds, now)
    result = measured(
        "read",
        lambda: measure(opts),
        cleaned_up="the API and the scratch database were cleaned up",
    )
    publish(result, output or default_output("read", now), render)


@app.command("plot")
def plot(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="A read-*.json or events-*.json.")
    ],
    output: Annotated[Path | None, typer.Option(help="PNG path (default: FILE with .png).")] = None,
) -> None:
    """A bar chart of a `bench read` or `bench events` result; needs matplotlib."""
    from capstan.bench.plot import MissingMatplotlib, plot_events, plot_read

    target = output or file.with_suffix(".png")
    result = json.loads(file.read_text())
    try:
        if result.get("benchmark") == "events":
            plot_events(result, target)
        else:
            plot_read(result, target)
    except MissingMatplotlib as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    out.print(f"chart: {target}")
