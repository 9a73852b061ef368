"""Where the CPU goes during a measurement (Linux /proc): the machine, the bench process, the
processes it started, and the servers (PostgreSQL, RabbitMQ, Redis) by process name."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from capstan_bench.processes import ChildProcess

SERVER_COMMS = ("postgres", "beam.smp", "redis-server")  # servers whose CPU we attribute


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def session_cpu(sessions: Mapping[int, str]) -> dict[str, float]:
    """CPU seconds so far of every process of the given sessions (by label), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    totals = dict.fromkeys(sessions.values(), 0.0)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        label = sessions.get(int(fields[3]))
        if label is not None:
            totals[label] += (int(fields[11]) + int(fields[12])) / tick
    return totals


def system_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


def server_cpu() -> dict[tuple[str, int], float]:
    """CPU seconds so far of every PostgreSQL, RabbitMQ and Redis process, by (name, pid)."""
    totals: dict[tuple[str, int], float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        comm = raw[raw.find("(") + 1 : raw.rfind(")")]
        if comm in SERVER_COMMS:
            fields = raw.rsplit(")", 1)[1].split()
            totals[(comm, int(entry.name))] = (int(fields[11]) + int(fields[12])) / tick
    return totals


@dataclass
class CpuSnapshot:
    at: float
    system: tuple[float, float]
    processes: dict[str, float]  # by label
    servers: dict[tuple[str, int], float]
    bench: float

    @classmethod
    def take(cls, processes: Sequence[ChildProcess], *, sessions: bool = False) -> CpuSnapshot:
        """CPU seconds so far; `sessions`: of each process's whole session (e.g. a worker and
        its pool), else of the process alone."""
        if sessions:
            by_label = session_cpu({p.proc.pid: p.label for p in processes})
        else:
            by_label = {}
            for p in processes:
                with contextlib.suppress(OSError):
                    by_label[p.label] = cpu_seconds(p.proc.pid)
        return cls(time.monotonic(), system_cpu(), by_label, server_cpu(), time.process_time())

    def cores_since(
        self,
        before: CpuSnapshot,
        *,
        bench: str,
        servers: Mapping[str, str],
        digits: int,
        other: bool = False,
    ) -> dict[str, float]:
        """Cores used per process group between two snapshots (1.0 = one core busy): the
        machine, this process (as `bench`), each started process, each server (name -> process
        name in `servers`) and, with `other`, what is left of the machine's."""
        wall = max(self.at - before.at, 1e-9)
        busy = self.system[0] - before.system[0]
        total = max(self.system[1] - before.system[1], 1e-9)
        machine = busy / total * (os.cpu_count() or 1)
        shares = {"machine": round(machine, digits)}
        shares[bench] = round((self.bench - before.bench) / wall, digits)
        for label, value in self.processes.items():
            shares[label] = round((value - before.processes.get(label, value)) / wall, digits)
        # Per process: one born during the interval counts whole; one that exited is lost.
        for name, comm in servers.items():
            used = sum(
                value - before.servers.get(key, 0.0)
                for key, value in self.servers.items()
                if key[0] == comm
            )
            shares[name] = round(used / wall, digits)
        if other:
            shares["other"] = round(
                max(machine - sum(v for k, v in shares.items() if k != "machine"), 0.0), digits
            )
        return shares
