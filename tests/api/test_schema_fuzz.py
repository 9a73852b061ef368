"""Schema-driven fuzzing (schemathesis) of a real `capstan api` server in each mode: no
operation answers a 5xx, and every status it answers is declared in the OpenAPI document.

Examples are derandomized (the same cases on every run) and bounded per operation, so the
test is repeatable; CI runs it in both modes like every other API test.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.conftest import free_port

CAPSTAN = [sys.executable, "-m", "capstan.cli.main"]
EXAMPLES = 12  # per operation and generation mode


@pytest.fixture(
    params=["embedded", pytest.param("production", marks=[pytest.mark.postgres, pytest.mark.redis])]
)
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A `capstan api` process and a tenant's key: (base URL, key)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPSTAN_")}
    env |= {
        "CAPSTAN_DATA_DIR": str(tmp_path / "data"),
        "CAPSTAN_LOG_LEVEL": "ERROR",
        "CAPSTAN_RATE_LIMIT_PER_MINUTE": "1000000",
        "CAPSTAN_RATE_LIMIT_BURST": "100000",
        "CAPSTAN_AUTH_FAILURES_PER_MINUTE": "1000000",
        "CAPSTAN_AUTH_FAILURES_BURST": "100000",
    }
    if request.param == "production":
        env["CAPSTAN_DATABASE_URL"] = request.getfixturevalue("postgres_url")
        env["CAPSTAN_CACHE_URL"] = request.getfixturevalue("redis_url")
    (tmp_path / "data").mkdir()
    subprocess.run([*CAPSTAN, "migrate"], env=env, check=True, capture_output=True)
    made = subprocess.run(
        [*CAPSTAN, "tenants", "create", f"fuzz-{free_port()}", "--json"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    key = json.loads(made.stdout)["api_key"]
    port = free_port()
    api = subprocess.Popen(
        [*CAPSTAN, "api", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise AssertionError("capstan api did not start")
        yield base, key
    finally:
        api.terminate()
        _out, err = api.communicate(timeout=30)
        # The server's own record of unhandled errors, for the failure message.
        request.node.stash[STDERR] = err


STDERR = pytest.StashKey[str]()


def fuzz(
    operation: schemathesis.APIOperation,
    mode: GenerationMode,
    base: str,
    headers: dict[str, str],
    failures: list[str],
    calls: list[int],
) -> None:
    """Call `operation` with EXAMPLES generated cases; record each 5xx or undeclared status."""
    declared = set(operation.definition.raw["responses"])

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        status = case.call(base_url=base, headers=headers, timeout=30).status_code
        calls.append(status)
        if status >= 500 or str(status) not in declared:
            failures.append(
                f"{operation.method.upper()} {operation.path} ({mode.value}): {status} "
                f"for {case.path_parameters} {case.query} {str(case.body)[:200]}"
            )

    # Unsatisfiable: no invalid input exists (an operation without parameters or body).
    with contextlib.suppress(Unsatisfiable):
        run()


def test_no_operation_answers_5xx_or_an_undeclared_status(server: tuple[str, str]) -> None:
    base, key = server
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    failures: list[str] = []
    calls: list[int] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(operation, mode, base, {"Authorization": f"Bearer {key}"}, failures, calls)
    assert not failures, "\n".join(failures[:30])
    # It did fuzz: every operation was called, and invalid input was refused.
    assert len(operations) >= 30 and len(calls) >= 4 * len(operations)
    assert {200, 201, 422} <= set(calls)
