"""The gateway logs the same JSON lines as the Python roles: the same field names, level names
and time format, with the request id on request logs; and `npm ci` needs no newer Node than
package.json allows."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from capstan.observability.logging import configure_logging
from tests.conftest import stack_settings, start_stack, stop_stack
from tests.gateway.conftest import GATEWAY, start_gateway, stop_gateway

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def python_line(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    """One line as a Python role writes it (JSON mode)."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("INFO", json=True)
        logging.getLogger("capstan.test").info("hello", extra={"answer": 42})
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    return dict(json.loads(capsys.readouterr().err.strip().splitlines()[-1]))


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.rabbitmq
async def test_gateway_log_lines_have_the_python_fields_and_format(
    request: pytest.FixtureRequest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    py = python_line(capsys)
    stack = await start_stack(stack_settings("production", request, tmp_path))
    log = tmp_path / "gateway.log"
    try:
        gateway = await start_gateway(stack, log, CAPSTAN_LOG_LEVEL="INFO")
        try:
            async with httpx.AsyncClient() as http:
                await http.get(f"{gateway.url}/v1/nope", headers={"X-Request-ID": "rid-7"})
        finally:
            await stop_gateway(gateway)
    finally:
        await stop_stack(stack)

    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert lines
    base = {"time", "level", "logger", "message"}
    assert base <= set(py)
    for line in lines:
        assert base <= set(line), line
        assert ISO_UTC.match(line["time"]) and ISO_UTC.match(str(py["time"]))
        assert line["level"] in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
        assert line["logger"] == "capstan.gateway"
        assert not {"msg", "pid", "hostname"} & set(line)  # pino's own names are gone
    request_lines = [line for line in lines if line.get("request_id") == "rid-7"]
    assert request_lines and request_lines[0]["message"] == "request completed"
    assert any(line["message"] == "gateway ready" for line in lines)


def test_no_dependency_needs_a_newer_node_than_package_json_allows() -> None:
    node = shutil.which("node")
    if node is None or not (GATEWAY / "node_modules" / "semver").exists():
        pytest.skip("needs node and the gateway's node_modules: (cd gateway && npm ci)")
    script = """
const semver = require('semver');
const allowed = require('./package.json').engines.node;
const lock = require('./package-lock.json');
const bad = Object.entries(lock.packages)
  .filter(([, p]) => p.engines && p.engines.node && !semver.subset(allowed, p.engines.node))
  .map(([name, p]) => `${name} needs node ${p.engines.node}`);
console.log(JSON.stringify(bad));
"""
    done = subprocess.run(
        [node, "-e", script], cwd=GATEWAY, capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout) == []
