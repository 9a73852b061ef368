"""The README's "Production on one host" block, pasted as written into a shell: every role
starts (each on its own metrics port), and a task submitted through the API runs and is
audited. Only the four server URLs are replaced by the test servers' (a fresh database) and
the API port and broker namespace are set in the environment, as a user's shell may."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from capstan.roles import ROLE_METRICS_PORTS
from tests.conftest import _admin_sql, delete_namespace, free_port, run_async, service_url

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.rabbitmq]

ROOT = Path(__file__).resolve().parents[2]
URLS = ("CAPSTAN_DATABASE_URL", "CAPSTAN_CACHE_URL", "CAPSTAN_BROKER_URL", "CAPSTAN_SEARCH_URL")


def readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Production on one host", 1)[1]
    match = re.search(r"```bash\n(.*?)```", section, flags=re.S)
    assert match, "the section has a bash block"
    return match.group(1)


def _busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait(url: str, what: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    for _ in range(1200):
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"{what} did not answer {url}:\n{log.read_text()[-3000:]}")


def test_the_readme_production_block_runs_as_pasted(tmp_path: Path) -> None:
    busy = [p for p in ROLE_METRICS_PORTS.values() if _busy(p)]
    if busy:
        pytest.skip(f"the roles' default metrics ports {busy} are taken on this machine")
    block = readme_block()
    assert [m for m in re.findall(r"^export (\w+)=", block, flags=re.M)] == list(URLS)

    base = service_url("postgres")
    database = f"capstan_readme_{uuid.uuid4().hex[:8]}"
    run_async(_admin_sql(base, f'CREATE DATABASE "{database}"'))
    namespace = f"t{uuid.uuid4().hex[:10]}"
    ours = {
        "CAPSTAN_DATABASE_URL": make_url(base)
        .set(database=database)
        .render_as_string(hide_password=False),
        "CAPSTAN_CACHE_URL": service_url("redis"),
        "CAPSTAN_BROKER_URL": service_url("rabbitmq"),
        "CAPSTAN_SEARCH_URL": os.environ.get("CAPSTAN_TEST_ELASTICSEARCH_URL", "sqlite"),
    }
    script = re.sub(
        r"^export (\w+)=.*$", lambda m: f"export {m[1]}={ours[m[1]]}", block, flags=re.M
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPSTAN_")} | {
        "CAPSTAN_PORT": str(port),
        "CAPSTAN_BROKER_NAMESPACE": namespace,
        "CAPSTAN_DATA_DIR": str(tmp_path / "data"),
        "CAPSTAN_SEARCH_INDEX": f"test-{uuid.uuid4().hex[:10]}",
    }
    (tmp_path / "paste.sh").write_text(script + "wait\n")
    log = tmp_path / "paste.log"
    with log.open("wb") as err, (tmp_path / "stdout").open("wb") as out:
        shell = subprocess.Popen(
            ["bash", str(tmp_path / "paste.sh")],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=err,
            start_new_session=True,  # its own process group: the test stops exactly what it ran
        )
    try:
        api = f"http://127.0.0.1:{port}"
        _wait(f"{api}/readyz", "the API", shell, log)
        for role, metrics in ROLE_METRICS_PORTS.items():
            _wait(f"http://127.0.0.1:{metrics}/healthz", role, shell, log)
        stdout = (tmp_path / "stdout").read_text()
        created = json.loads(next(line for line in stdout.splitlines() if "api_key" in line))
        headers = {"Authorization": f"Bearer {created['api_key']}"}
        task = httpx.post(
            f"{api}/v1/tasks",
            json={"type": "text.summarize", "input": {"text": "One. Two. Three. Four."}},
            headers=headers,
        ).json()
        wanted = "capstan.task.succeeded"
        for _ in range(600):
            feed = httpx.get(
                f"{api}/v1/events", params={"subject": f"tasks/{task['id']}"}, headers=headers
            ).json()
            if wanted in [i["event"]["type"] for i in feed["items"]]:
                break
            time.sleep(0.1)
        assert wanted in [i["event"]["type"] for i in feed["items"]], log.read_text()[-3000:]
        stderr = log.read_text()
        assert "applied" in stderr and "Traceback" not in stderr
    finally:
        os.killpg(shell.pid, signal.SIGTERM)
        shell.wait(timeout=60)
        run_async(delete_namespace(service_url("rabbitmq"), namespace))
        run_async(_admin_sql(base, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
