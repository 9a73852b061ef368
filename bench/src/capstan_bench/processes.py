"""The processes a benchmark starts (`capstan relay`, `capstan api`, a Celery worker, ...): each
in a session of its own, its output in a log file, stopped with SIGTERM then SIGKILL, and its
Prometheus /metrics scraped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from capstan_bench.common import BenchError, err, free_port

# A sample of /metrics: (sample name, sorted labels) -> value.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def capstan_command(*args: str) -> list[str]:
    """`capstan ARGS`, run by this Python (the venv's, whatever PATH says)."""
    return [sys.executable, "-m", "capstan.cli.main", *args]


class ChildProcess:
    """A process of its own session (so its children, e.g. Celery's pool, are one group, and
    Ctrl-C reaches the bench, which stops it), its stdout and stderr in `log_path`."""

    stop_grace_s = 20.0  # SIGTERM -> SIGKILL

    def __init__(
        self,
        label: str,
        command: list[str],
        env: Mapping[str, str],
        log_path: Path,
        *,
        metrics_port: int | None = None,
    ) -> None:
        self.label = label
        self.command = command
        self.metrics_port = (
            int(env.get("CAPSTAN_METRICS_PORT", "0")) if metrics_port is None else metrics_port
        )
        self._log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            command,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def shown(self) -> str:
        """`capstan relay` for a `capstan` command, else the command without the interpreter."""
        args = self.command[3:] if self.command[1:3] == ["-m", "capstan.cli.main"] else None
        return "capstan " + " ".join(args) if args else " ".join(self.command[1:])

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_summary(self) -> dict[str, Any]:
        """How many lines the process logged (at the bench's log level), and the last few."""
        try:
            lines = self._log_path.read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        return {"lines": len(lines), "last": lines[-5:]}

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(
                f"`{self.shown}` exited with code {self.proc.returncode}:\n{self.log_tail()}"
            )

    async def wait_metrics(self, timeout_s: float = 60) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2) as client:
            while time.monotonic() < deadline:
                self.check_alive()
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(self.metrics_url)).status_code == 200:
                        return
                await asyncio.sleep(0.2)
        raise BenchError(f"{self.label}: /metrics did not answer within {timeout_s:g}s")

    async def scrape(self, families: Collection[str], suffix: str = "") -> Samples:
        """The samples of these metric families (whose names end with `suffix`) on /metrics."""
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        async with httpx.AsyncClient(timeout=10) as client:
            text = (await client.get(self.metrics_url)).text
        samples: Samples = {}
        for family in text_string_to_metric_families(text):
            if family.name in families:
                for s in family.samples:
                    if s.name.endswith(suffix):
                        samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return samples

    def stop(self) -> None:
        """SIGTERM (graceful), then SIGKILL to the whole session after `stop_grace_s`."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.stop_grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        # Anything of its session left behind (e.g. a pool child): gone too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()


def start_role(label: str, args: list[str], env: Mapping[str, str], workdir: Path) -> ChildProcess:
    """`capstan ARGS` with its /metrics on a free port, logging to `workdir/<label>.log`."""
    role_env = {**env, "CAPSTAN_METRICS_PORT": str(free_port())}
    return ChildProcess(label, capstan_command(*args), role_env, workdir / f"{label}.log")


def stop_all(processes: Iterable[ChildProcess]) -> None:
    for process in processes:
        try:
            process.stop()
        except Exception as exc:
            err.print(f"[red]could not stop {process.label} (pid {process.proc.pid}): {exc}[/red]")


async def scrape_all(processes: Iterable[ChildProcess], families: Collection[str]) -> Samples:
    """The samples of these families on every process's /metrics, summed (each counts its own);
    processes without a metrics port are left out."""
    total: Samples = {}
    for process in processes:
        if process.metrics_port:
            for key, value in (await process.scrape(families)).items():
                total[key] = total.get(key, 0.0) + value
    return total
