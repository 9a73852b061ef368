"""Running `wrk` and reading its report (`wrk --latency` text output)."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from typing import Any

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}

_RPS = re.compile(r"^Requests/sec:\s+([0-9.]+)\s*$", re.M)
_TOTAL = re.compile(r"^\s*(\d+) requests in ([0-9.]+\w+),", re.M)
_PERCENTILE = re.compile(r"^\s+(50|75|90|99)(?:\.0+)?%\s+([0-9.]+)(us|ms|s|m|h)\s*$", re.M)
_LATENCY = re.compile(r"^\s+Latency\s+([0-9.]+)(us|ms|s|m|h)\s+([0-9.]+)(us|ms|s|m|h)\s+", re.M)
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.M)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)", re.M)


class WrkOutputError(ValueError):
    """wrk's output did not contain the figures a run must report."""


@dataclass(frozen=True, slots=True)
class WrkResult:
    """What one wrk run measured. Latencies are in milliseconds."""

    requests: int
    duration_s: float
    rps: float
    latency_avg_ms: float
    latency_stdev_ms: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx: int  # wrk counts status >= 400 here ("Non-2xx or 3xx responses")
    socket_errors: dict[str, int]

    @property
    def errors(self) -> int:
        """Responses or connections that failed: any makes the run invalid."""
        return self.non_2xx + sum(self.socket_errors.values())

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["errors"] = self.errors
        return data


def to_ms(value: str, unit: str) -> float:
    """`4.98`, `ms` -> 4.98; wrk prints us, ms, s, m and h."""
    return float(value) * _UNITS_MS[unit]


def parse_wrk(text: str) -> WrkResult:
    """The figures of one `wrk --latency` report; WrkOutputError if any is missing."""
    rps = _RPS.search(text)
    total = _TOTAL.search(text)
    latency = _LATENCY.search(text)
    percentiles = {m.group(1): to_ms(m.group(2), m.group(3)) for m in _PERCENTILE.finditer(text)}
    missing = [
        name
        for name, found in (
            ("Requests/sec", rps),
            ("requests in", total),
            ("Latency", latency),
            ("Latency Distribution (--latency)", len(percentiles) == 4),
        )
        if not found
    ]
    if missing or rps is None or total is None or latency is None:
        raise WrkOutputError(f"wrk output lacks {', '.join(missing)}:\n{text}")
    duration = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", total.group(2))
    if duration is None:
        raise WrkOutputError(f"cannot read the duration {total.group(2)!r}")
    socket = _SOCKET.search(text)
    non_2xx = _NON_2XX.search(text)
    return WrkResult(
        requests=int(total.group(1)),
        duration_s=to_ms(duration.group(1), duration.group(2)) / 1000,
        rps=float(rps.group(1)),
        latency_avg_ms=to_ms(latency.group(1), latency.group(2)),
        latency_stdev_ms=to_ms(latency.group(3), latency.group(4)),
        p50_ms=percentiles["50"],
        p75_ms=percentiles["75"],
        p90_ms=percentiles["90"],
        p99_ms=percentiles["99"],
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=dict(
            zip(
                ("connect", "read", "write", "timeout"),
                (int(g) for g in socket.groups()) if socket else (0, 0, 0, 0),
                strict=True,
            )
        ),
    )


def wrk_path() -> str | None:
    return shutil.which("wrk")


def wrk_version(wrk: str) -> str:
    """E.g. `wrk 4.1.0 [epoll]` (wrk -v exits 1 after printing it)."""
    proc = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    first = (proc.stdout or proc.stderr).strip().splitlines()
    return first[0].split(" Copyright")[0].strip() if first else "unknown"


def wrk_command(
    wrk: str,
    url: str,
    *,
    threads: int,
    connections: int,
    duration_s: float,
    timeout_s: float,
    headers: dict[str, str],
) -> list[str]:
    cmd = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration_s:g}s",
        f"--timeout={timeout_s:g}s",
        "--latency",
    ]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    return [*cmd, url]
