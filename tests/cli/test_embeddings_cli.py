"""`capstan embeddings status|reconcile` as a user runs them, embedded mode (real processes)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from capstan.db.schema import Task
from tests.cli.test_cli import CAPSTAN, _env
from tests.conftest import embedded_settings, start_api


def run(env: dict[str, str], *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [*CAPSTAN, "embeddings", *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


async def test_status_and_reconcile_report_and_repair_missing_vectors(tmp_path: Path) -> None:
    # Given three documents written while nothing embedded them
    settings = embedded_settings(tmp_path)
    api = await start_api(settings)
    try:
        tenant = await api.tenant()
        async with api.client(tenant.key) as client:
            for i in range(3):
                r = await client.post("/v1/documents", json={"title": f"Doc {i}", "body": "text"})
                assert r.status_code == 201, r.text
    finally:
        await api.container.close()
    env = _env(settings.data_dir)

    # When the operator asks for the status, every document is missing its vectors
    status = run(env, "status", "--tenant", tenant.id)
    assert (status["documents"], status["current"], status["missing"]) == (3, 0, 3)
    assert [s["state"] for s in status["spaces"]] == ["live"]
    assert status["space"]["dimension"] == 256 and status["stores"] == ["sqlite-vectors"]
    # ... and the live space is the configured one: there is nothing to rebuild
    assert "already live" in run(env, "rebuild")["skipped"]

    # Documents younger than the grace period are the pipeline's lag, not drift
    young = run(env, "reconcile", "--tenant", tenant.id, "--dry-run")
    assert (young["documents"], young["missing"], young["drift"]) == (3, 0, 0)

    # A dry run repairs nothing; a reconcile submits one embedding task per document
    env["CAPSTAN_EMBEDDINGS_RECONCILE_GRACE_SECONDS"] = "0"
    dry = run(env, "reconcile", "--tenant", tenant.id, "--dry-run")
    assert (dry["missing"], dry["submitted"]) == (3, 0)
    repaired = run(env, "reconcile", "--tenant", tenant.id)
    assert (repaired["missing"], repaired["submitted"]) == (3, 3)
    again = run(env, "reconcile", "--tenant", tenant.id)
    assert again["submitted"] == 0  # one repair task per document version

    api = await start_api(settings)
    try:
        async with api.container.db() as session:
            tasks = await session.scalar(
                select(func.count())
                .select_from(Task)
                .where(Task.tenant_id == tenant.id, Task.type == "embeddings.document")
            )
        assert tasks == 3
    finally:
        await api.container.close()
