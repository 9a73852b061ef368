"""`capstan bench` and other command groups come from installed distributions (the
`capstan.commands` entry points): present, absent, or broken, the rest of the CLI works."""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CAPSTAN = ["-m", "capstan.cli.main"]
BENCH_COMMANDS = {
    "read", "plot", "events", "tasks", "soak", "search", "relevance", "search-embedded",
    "embeddings",
}  # fmt: skip


def _capstan(
    *args: str, python: list[str] | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CAPSTAN_")}
    return subprocess.run(
        [*(python or [sys.executable]), *CAPSTAN, *args],
        env=clean | {"COLUMNS": "200"} | env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _environment_without_bench(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """This interpreter's packages minus capstan-bench: the production image, in miniature."""
    packages = Path(site.getsitepackages()[0])
    mirror = tmp_path / "site-packages"
    mirror.mkdir()
    for entry in packages.iterdir():
        if "capstan_bench" not in entry.name:
            (mirror / entry.name).symlink_to(entry)
    # -S: no site module, so only PYTHONPATH: the mirror, and capstan's source (its editable
    # install is a .pth file, which only the site module reads).
    return [sys.executable, "-S"], {"PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{mirror}"}


def test_an_installed_bench_adds_every_benchmark_command() -> None:
    result = _capstan("bench", "--help")
    assert result.returncode == 0, result.stderr
    listed = {line.split()[1] for line in result.stdout.splitlines() if line.startswith("│ ")}
    assert listed >= BENCH_COMMANDS, listed


def test_without_the_benchmarks_bench_says_how_to_install_them(tmp_path: Path) -> None:
    python, env = _environment_without_bench(tmp_path)
    probe = _capstan("--help", python=python, **env)
    assert probe.returncode == 0, probe.stderr
    assert "not installed: pip install -e ./bench" in probe.stdout

    for args in (["bench", "read", "--duration", "2"], ["bench", "--help"]):
        result = _capstan(*args, python=python, **env)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert "the benchmarks are not installed" in result.stderr
        assert "pip install -e ./bench" in result.stderr
        assert "Traceback" not in result.stderr


def test_a_plugin_that_fails_to_import_reports_itself_and_leaves_the_rest(tmp_path: Path) -> None:
    dist = tmp_path / "capstan_broken-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: capstan-broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[capstan.commands]\nbroken = capstan_no_such_module:app\n"
    )
    env = {"PYTHONPATH": str(tmp_path)}

    result = _capstan("broken", "anything", **env)
    assert result.returncode == 1, result.stdout
    assert "the plugin capstan_no_such_module:app failed to load" in result.stderr
    assert "ModuleNotFoundError" in result.stderr

    bench = _capstan("bench", "--help", **env)
    assert bench.returncode == 0, bench.stderr
