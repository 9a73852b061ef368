"""The task system under failure: a worker killed with SIGKILL mid-run, RabbitMQ restarted,
PostgreSQL restarted. No task is lost, and each task's effect exists exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from capstan.db.schema import Task, TaskEffect
from capstan.settings import Settings
from tests.conftest import Stack, stack_settings, start_stack, stop_stack

SERVICES = Path(__file__).resolve().parents[2] / "scripts" / "services"

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.rabbitmq]


def _worker_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPSTAN_")}
    env.update(
        CAPSTAN_DATABASE_URL=settings.database_url,
        CAPSTAN_CACHE_URL=settings.cache_url,
        CAPSTAN_BROKER_URL=settings.broker_url,
        CAPSTAN_BROKER_NAMESPACE=settings.broker_namespace,
        CAPSTAN_TASKS_ENABLE_TEST_HANDLERS="true",
        CAPSTAN_WORKER_HEARTBEAT_SECONDS=str(settings.worker_heartbeat_seconds),
        CAPSTAN_WORKER_HEARTBEAT_TTL_SECONDS=str(settings.worker_heartbeat_ttl_seconds),
        CAPSTAN_TASK_POLL_SECONDS=str(settings.task_poll_seconds),
        CAPSTAN_METRICS_PORT="0",
        CAPSTAN_LOG_LEVEL="WARNING",
    )
    return env


async def _counts(stack: Stack, tenant_id: str) -> tuple[int, int]:
    async with stack.container.db() as session:
        succeeded = await session.scalar(
            select(func.count())
            .select_from(Task)
            .where(Task.tenant_id == tenant_id, Task.status == "succeeded")
        )
        effects = await session.scalar(
            select(func.count())
            .select_from(TaskEffect)
            .join(Task, Task.id == TaskEffect.task_id)
            .where(Task.tenant_id == tenant_id)
        )
    return int(succeeded or 0), int(effects or 0)


async def _states(stack: Stack, tenant_id: str) -> dict[str, int]:
    """Tasks by status, with attempts, for a failure message."""
    async with stack.container.db() as session:
        rows = await session.execute(
            select(Task.status, Task.attempts, func.count())
            .where(Task.tenant_id == tenant_id)
            .group_by(Task.status, Task.attempts)
        )
    return {f"{status}/attempt {attempts}": n for status, attempts, n in rows}


async def _submit(stack: Stack, key: str, count: int, clients: int, sleep: float) -> list[str]:
    """Submit from concurrent clients; retried through outages with the same idempotency key."""
    ids: list[str] = []

    async def client(n: int) -> None:
        async with stack.api.client(key) as http:
            for i in range(n, count, clients):
                body = {
                    "type": "test.record",
                    "input": {"value": i, "sleep": sleep},
                    "idempotency_key": f"k-{i}",
                }
                for _ in range(200):
                    try:
                        answer = await http.post("/v1/tasks", json=body)
                    except OSError:
                        answer = None
                    if answer is not None and answer.status_code == 202:
                        ids.append(answer.json()["id"])
                        break
                    await asyncio.sleep(0.1)  # 503 while the database restarts: retry
                else:
                    raise AssertionError(f"task {i} could not be submitted")

    await asyncio.gather(*(client(n) for n in range(clients)))
    return ids


async def _all_done_once(stack: Stack, tenant_id: str, ids: list[str], timeout: float) -> None:
    async def done() -> bool:
        succeeded, _ = await _counts(stack, tenant_id)
        return succeeded == len(ids)

    try:
        await stack.until(done, timeout=timeout, what=f"{len(ids)} tasks to succeed")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; tasks by state: {await _states(stack, tenant_id)}") from exc
    succeeded, effects = await _counts(stack, tenant_id)
    assert len(set(ids)) == len(ids)
    assert (succeeded, effects) == (len(ids), len(ids))  # each task's effect exactly once


async def _kill_mid_task(stack: Stack, proc: subprocess.Popen[bytes]) -> int:
    """SIGKILL the worker while it holds a running task, without a race against the task's
    end: the worker is stopped (SIGSTOP) first, so a task the database still shows as running
    under its id cannot finish before the kill. Returns how many were in flight."""
    owner = Task.worker_id.like(f"%-{proc.pid}-%")
    for _ in range(600):
        proc.send_signal(signal.SIGSTOP)
        await asyncio.sleep(0.2)  # a commit already sent lands before we look
        async with stack.container.db() as session:
            running = await session.scalar(
                select(func.count()).select_from(Task).where(Task.status == "running", owner)
            )
        if running:
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait)
            return int(running)
        proc.send_signal(signal.SIGCONT)
        await asyncio.sleep(0.05)
    raise AssertionError("the worker never held a running task")


async def test_kill_9_of_a_worker_while_1000_tasks_run_on_two(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    settings = stack_settings("production", request, tmp_path)
    stack = await start_stack(settings, worker=False)  # API, relay, subscribers in-process
    workers = [
        await asyncio.to_thread(
            subprocess.Popen,
            [sys.executable, "-m", "capstan.cli.main", "worker", "--concurrency", "8"],
            env=_worker_env(settings),
        )
        for _ in range(2)
    ]
    try:
        tenant = await stack.api.tenant()
        submitting = asyncio.create_task(_submit(stack, tenant.key, 1000, clients=8, sleep=0.05))

        async def some_done() -> bool:
            return (await _counts(stack, tenant.id))[0] >= 300

        await stack.until(some_done, timeout=120, what="300 tasks to succeed")
        succeeded, _ = await _counts(stack, tenant.id)
        assert succeeded < 1000, "the kill must land mid-run"
        in_flight = await _kill_mid_task(stack, workers[0])
        ids = await submitting
        await _all_done_once(stack, tenant.id, ids, timeout=240)
        async with stack.container.db() as session:
            attempts = await session.scalar(
                select(func.max(Task.attempts)).where(Task.tenant_id == tenant.id)
            )
            reruns = await session.scalar(
                select(func.count())
                .select_from(Task)
                .where(Task.tenant_id == tenant.id, Task.attempts > 1)
            )
        # The killed worker's in-flight tasks ran again (at-least-once), their effect once.
        assert reruns and attempts is not None and attempts >= 2, (
            f"the tasks in flight at the kill ({in_flight}) did not run again"
        )
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in workers:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        await stop_stack(stack)


@pytest.mark.services
@pytest.mark.parametrize("server", ["rabbitmq", "postgres"])
async def test_a_restarted_server_loses_no_task_and_workers_reconnect(
    server: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    settings = stack_settings("production", request, tmp_path)
    stack = await start_stack(settings)  # the worker runs in-process here
    try:
        tenant = await stack.api.tenant()
        restarted = asyncio.Event()

        async def restart_after(delay: float) -> None:
            await asyncio.sleep(delay)
            await asyncio.to_thread(subprocess.run, [str(SERVICES), "down", server], check=True)
            await asyncio.to_thread(subprocess.run, [str(SERVICES), "up", server], check=True)
            restarted.set()

        submitting = asyncio.create_task(_submit(stack, tenant.key, 300, clients=6, sleep=0.01))
        await restart_after(1.0)
        ids = await submitting
        await _all_done_once(stack, tenant.id, ids, timeout=240)
        assert restarted.is_set()
    finally:
        await asyncio.to_thread(subprocess.run, [str(SERVICES), "up", server], check=False)
        await stop_stack(stack)
