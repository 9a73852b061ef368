"""Logs as an operator sees them: JSON lines when stderr is a file or a pipe (no ANSI escapes
inside), readable coloured lines on a terminal; `CAPSTAN_LOG_JSON` overrides either way."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import free_port

CAPSTAN = [sys.executable, "-m", "capstan.cli.main"]
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
FIELDS = {"time", "level", "logger", "message", "request_id"}


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPSTAN_")}
    return env | {"CAPSTAN_DATA_DIR": str(tmp_path / "data"), **extra}


def _serve_once(argv: list[str], env: dict[str, str], port: int, **popen: object) -> None:
    """Start the API, answer one request and a 404, stop it with ^C."""
    api = subprocess.Popen(argv, env=env, **popen)  # type: ignore[call-overload]
    try:
        for _ in range(600):
            try:
                httpx.get(f"http://127.0.0.1:{port}/v1/nope", headers={"X-Request-ID": "rid-1"})
                break
            except httpx.TransportError:
                time.sleep(0.1)
    finally:
        api.send_signal(signal.SIGINT)
        api.wait(timeout=30)


def test_logs_are_json_lines_without_ansi_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "api.log"
    with log.open("w") as out:
        _serve_once(
            [*CAPSTAN, "api", "--port", str(port)],
            _env(tmp_path),
            port,
            stderr=out,
            stdout=subprocess.DEVNULL,
        )
    text = log.read_text()
    assert "\x1b[" not in text  # uvicorn's colour_message is dropped, not escaped into JSON
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines and all(set(line) >= FIELDS for line in lines)
    assert all(ISO_UTC.match(line["time"]) for line in lines)
    assert {line["level"] for line in lines} <= {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
    assert any(line["message"].startswith("listening on http://") for line in lines)
    assert any(line["request_id"] == "rid-1" for line in lines)


def test_logs_are_readable_and_coloured_on_a_terminal(tmp_path: Path) -> None:
    port = free_port()
    leader, follower = pty.openpty()
    env = _env(tmp_path) | {"TERM": "xterm-256color", "COLUMNS": "200"}
    env.pop("NO_COLOR", None)
    try:
        _serve_once(
            [*CAPSTAN, "api", "--port", str(port)],
            env,
            port,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=follower,
        )
        os.close(follower)
        chunks = []
        while select.select([leader], [], [], 1)[0]:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
    text = b"".join(chunks).decode()
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    assert "\x1b[" in text  # coloured
    assert f"capstan.api: listening on http://127.0.0.1:{port}" in plain
    assert not any(line.lstrip().startswith("{") for line in plain.splitlines())
    assert "request_id=rid-1" in plain


def test_capstan_log_json_overrides_the_terminal_guess(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "api.log"
    with log.open("w") as out:
        _serve_once(
            [*CAPSTAN, "api", "--port", str(port)],
            _env(tmp_path, CAPSTAN_LOG_JSON="false"),
            port,
            stderr=out,
            stdout=subprocess.DEVNULL,
        )
    text = log.read_text()
    assert "capstan.api: listening on http://" in " ".join(text.split())
    assert not text.lstrip().startswith("{")
