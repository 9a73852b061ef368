"""The command line as a user runs it: real processes, embedded mode."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import free_port

CAPSTAN = [sys.executable, "-m", "capstan.cli.main"]


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPSTAN_")}
    env["CAPSTAN_DATA_DIR"] = str(data_dir)
    env["XDG_STATE_HOME"] = str(data_dir.parent / "state")  # `capstan dev` records its data dir
    return env


def test_tenants_create_prints_json_once_and_refuses_a_duplicate(tmp_path: Path) -> None:
    env = _env(tmp_path / "data")
    first = subprocess.run(
        [*CAPSTAN, "tenants", "create", "demo", "--json"], env=env, capture_output=True, text=True
    )
    assert first.returncode == 0, first.stderr
    created = json.loads(first.stdout)
    assert set(created) == {"tenant_id", "api_key"}
    assert created["api_key"].startswith("cst_")
    again = subprocess.run(
        [*CAPSTAN, "tenants", "create", "demo", "--json"], env=env, capture_output=True, text=True
    )
    assert again.returncode == 1 and "already exists" in again.stderr


def test_dev_serves_embedded_and_shares_its_data_dir_with_other_commands(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    env = _env(data_dir) | {"CAPSTAN_LOG_LEVEL": "WARNING"}
    dev = subprocess.Popen(
        [*CAPSTAN, "dev", "--port", str(port), "--data-dir", str(data_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise AssertionError("capstan dev did not become ready")
        dev_key = (data_dir / "dev-api-key").read_text().strip()

        made = subprocess.run(
            [*CAPSTAN, "tenants", "create", "demo", "--json"],
            env=env,
            capture_output=True,
            text=True,
        )
        assert made.returncode == 0, made.stderr
        demo_key = json.loads(made.stdout)["api_key"]

        for key in (dev_key, demo_key):
            headers = {"Authorization": f"Bearer {key}"}
            doc = httpx.post(f"{base}/v1/documents", json={"body": "hi"}, headers=headers).json()
            first = httpx.get(f"{base}/v1/documents/{doc['id']}", headers=headers)
            second = httpx.get(f"{base}/v1/documents/{doc['id']}", headers=headers)
            assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
            # The relay and subscribers run inside `capstan dev`: the change is audited.
            for _ in range(100):
                feed = httpx.get(f"{base}/v1/events", headers=headers).json()
                if feed["items"]:
                    break
                time.sleep(0.05)
            # First the write; then, with embeddings on (the default), the events of the
            # `embeddings.document` task the embedder subscriber submitted for it.
            subjects = [i["event"]["subject"] for i in feed["items"]]
            assert subjects[0] == f"documents/{doc['id']}", subjects
            assert all(s.startswith("tasks/") for s in subjects[1:]), subjects

        # The dev key is the operator's too.
        admin_only = httpx.get(f"{base}/v1/workers", headers={"Authorization": f"Bearer {dev_key}"})
        assert admin_only.status_code == 200

        # A revocation from another process reaches the server's key cache and its in-memory
        # sessions through the revocation watcher.
        headers = {"Authorization": f"Bearer {dev_key}"}
        session = httpx.post(f"{base}/v1/sessions", headers=headers).json()["token"]
        as_session = {"Authorization": f"Bearer {session}"}
        assert httpx.get(f"{base}/v1/documents", headers=as_session).status_code == 200
        revoke = subprocess.run(
            [*CAPSTAN, "keys", "revoke", dev_key.split("_")[1]],
            env=env,
            capture_output=True,
            text=True,
        )
        assert revoke.returncode == 0, revoke.stderr
        for _ in range(300):
            codes = {
                httpx.get(f"{base}/v1/documents", headers=h).status_code
                for h in (headers, as_session)
            }
            if codes == {401}:
                break
            time.sleep(0.1)
        assert codes == {401}
    finally:
        dev.send_signal(signal.SIGINT)
        _out, err = dev.communicate(timeout=30)
    assert dev_key in err  # the banner shows the dev key and the docs URL
    assert f"{base}/docs" in err
    # Dev mode turns the webhook address guard off, and says so.
    assert "private and loopback targets ALLOWED" in " ".join(err.split())
    assert dev.returncode == 0


def test_tasks_submit_wait_prints_a_real_summary_in_embedded_mode(tmp_path: Path) -> None:
    env = _env(tmp_path / "data")
    made = subprocess.run(
        [*CAPSTAN, "tenants", "create", "dev", "--json"], env=env, capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    text = (
        "Capstan stores documents in PostgreSQL. It caches them in Redis. Workers consume "
        "RabbitMQ queues. The weather was pleasant."
    )
    done = subprocess.run(
        [
            *CAPSTAN,
            "tasks",
            "submit",
            "text.summarize",
            "--input",
            json.dumps({"text": text, "sentences": 2}),
            "--wait",
            "--timeout",
            "60",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    task = json.loads(done.stdout)
    assert task["status"] == "succeeded"
    assert task["result"]["summary"].count(".") == 2


def test_module_entry_point_has_every_command(tmp_path: Path) -> None:
    """`python -m capstan.cli.main` (how tests and scripts start roles) registers the same
    commands as `capstan`: none defined below the `__main__` guard."""
    listed = subprocess.run(
        [*CAPSTAN, "broker", "--help"], env=_env(tmp_path), capture_output=True, text=True
    )
    assert listed.returncode == 0, listed.stderr
    assert "remove-namespace" in listed.stdout


def test_keys_and_tenants_lifecycle_from_the_command_line(tmp_path: Path) -> None:
    env = _env(tmp_path / "data")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*CAPSTAN, *args], env=env, capture_output=True, text=True)
        assert done.returncode == 0, (args, done.stderr)
        return done

    first = json.loads(run("tenants", "create", "acme", "--json").stdout)
    admin = json.loads(run("keys", "create", "--tenant", "acme", "--admin", "--json").stdout)
    assert admin["admin"] is True and admin["api_key"].startswith("cst_")
    first_id = first["api_key"].split("_")[1]
    rotated = json.loads(run("keys", "rotate", first_id, "--overlap-seconds", "0", "--json").stdout)
    assert rotated["old"]["id"] == first_id and rotated["old"]["status"] == "expired"
    run("keys", "revoke", admin["id"])
    listed = {k["id"]: k["status"] for k in json.loads(run("keys", "list", "--json").stdout)}
    assert listed == {first_id: "expired", admin["id"]: "revoked", rotated["new"]["id"]: "active"}

    run("tenants", "disable", "acme")
    assert json.loads(run("tenants", "list", "--json").stdout)[0]["status"] == "disabled"
    run("tenants", "enable", "acme")
    run("tenants", "delete", "acme", "--yes")
    assert json.loads(run("tenants", "list", "--json").stdout) == []
    missing = subprocess.run(
        [*CAPSTAN, "keys", "revoke", "0123456789abcdef"], env=env, capture_output=True, text=True
    )
    assert missing.returncode == 1 and "no API key" in missing.stderr
