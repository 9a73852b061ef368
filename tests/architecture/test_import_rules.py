"""The import rules of docs/architecture.md hold, and `lint-imports` (the CI check, contracts in
.importlinter) fails when someone adds an import they forbid: each case below adds one to a
copy of the source tree and expects the contract it breaks to be named."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint_imports(source_root: Path | None = None) -> subprocess.CompletedProcess[str]:
    """lint-imports with the repository's contracts, over the installed packages or a copy."""
    env = {**os.environ, "COLUMNS": "200"}
    if source_root is not None:  # PYTHONPATH comes before the editable installs' .pth entries
        env["PYTHONPATH"] = str(source_root)
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(ROOT / ".importlinter"), "--no-cache"],
        cwd=source_root or ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_rules_hold_on_the_code_as_it_is() -> None:
    result = _lint_imports()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "forbidden_import", "contract"),
    [
        (
            "capstan/search/service.py",
            "import capstan_bench.cli",
            "The product never imports the benchmarks",
        ),
        (
            "capstan/cache/port.py",
            "import capstan.cache.redis",
            "Ports import no adapter, service, entry point or composition root",
        ),
        (
            "capstan/broker/rabbitmq.py",
            "import capstan.api.app",
            "Adapters import their port, never their callers",
        ),
        (
            "capstan/documents/service.py",
            "import capstan.container",
            "Services are called by entry points and roles, never call them",
        ),
        (
            "capstan/relay/relay.py",
            "import capstan.events.router",
            "Roles run services, never entry points",
        ),
        (
            "capstan/container.py",
            "import capstan.cli.main",
            "Entry points on top, then the roles, then the composition root",
        ),
        (
            "capstan/webhooks/dispatcher.py",
            "import capstan.roles",
            "Domain code and roles get their collaborators passed in",
        ),
    ],
)
def test_a_forbidden_import_fails_the_check(
    tmp_path: Path, module: str, forbidden_import: str, contract: str
) -> None:
    shutil.copytree(ROOT / "src" / "capstan", tmp_path / "capstan")
    shutil.copytree(ROOT / "bench" / "src" / "capstan_bench", tmp_path / "capstan_bench")
    with (tmp_path / module).open("a") as f:
        f.write(f"\n{forbidden_import}  # added by the test\n")

    result = _lint_imports(tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    broken = [line for line in result.stdout.splitlines() if " BROKEN" in line]
    assert any(line.startswith(contract) for line in broken), result.stdout
