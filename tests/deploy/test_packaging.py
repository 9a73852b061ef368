"""The capstan wheel is the product only: the benchmarks are the capstan-bench distribution
(bench/), which carries them and plugs `capstan bench` into the CLI. Built offline
(hatchling is a dev dependency), the way `pip install .` in deploy/Dockerfile builds it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.deploy.conftest import ROOT


def _wheel(project: Path, out: Path) -> zipfile.ZipFile:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(project)],
        check=True, timeout=300,
    )  # fmt: skip
    (wheel,) = out.glob("*.whl")
    return zipfile.ZipFile(wheel)


def _entry_points(wheel: zipfile.ZipFile) -> str:
    (name,) = (n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))
    return wheel.read(name).decode()


def test_the_capstan_wheel_holds_no_benchmark(tmp_path: Path) -> None:
    with _wheel(ROOT, tmp_path) as wheel:
        names = wheel.namelist()
        entry_points = _entry_points(wheel)
    assert "capstan/cli/plugins.py" in names and "capstan/container.py" in names
    benchmarks = [n for n in names if n.startswith(("capstan_bench/", "capstan/bench/", "bench/"))]
    assert benchmarks == []
    assert not any(n.startswith("capstan/search/relevance/") for n in names)
    assert "capstan.commands" not in entry_points


def test_the_bench_wheel_carries_the_benchmarks_and_the_bench_command(tmp_path: Path) -> None:
    with _wheel(ROOT / "bench", tmp_path) as wheel:
        names = wheel.namelist()
        entry_points = _entry_points(wheel)
        (metadata,) = (n for n in names if n.endswith(".dist-info/METADATA"))
        requires = wheel.read(metadata).decode()
    assert {
        "capstan_bench/cli.py",
        "capstan_bench/read.py",
        "capstan_bench/relevance/run.py",
    } <= set(names)
    assert not any(n.startswith(("capstan/", "results/")) for n in names)
    assert "[capstan.commands]\nbench = capstan_bench.cli:app" in entry_points
    assert "Requires-Dist: capstan\n" in requires
