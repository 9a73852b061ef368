"""Handlers for tests and drills, registered only with CAPSTAN_TASKS_ENABLE_TEST_HANDLERS."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, Field

from capstan.tasks.context import TaskContext
from capstan.tasks.registry import TaskRegistry, TaskType


class SleepInput(BaseModel):
    seconds: float = Field(..., ge=0, le=3600)


class FailInput(BaseModel):
    times: int = Field(..., ge=0, description="fail this many attempts, then succeed")


class RecordInput(BaseModel):
    value: Any = None
    sleep: float = Field(0, ge=0, le=60, description="seconds of work before recording")


class NoopInput(BaseModel):
    pass


async def _sleep(data: SleepInput, ctx: TaskContext) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    end = loop.time() + data.seconds
    while (left := end - loop.time()) > 0:
        await ctx.progress(1 - left / data.seconds if data.seconds else 1.0, "sleeping")
        await asyncio.sleep(min(left, 0.05))
    return {"slept": data.seconds}


async def _fail(data: FailInput, ctx: TaskContext) -> dict[str, Any]:
    if ctx.attempt <= data.times:
        raise RuntimeError(f"planned failure {ctx.attempt} of {data.times}")
    return {"succeeded_on_attempt": ctx.attempt}


async def _record(data: RecordInput, ctx: TaskContext) -> dict[str, Any]:
    if data.sleep:
        await asyncio.sleep(data.sleep)
    ctx.effect_row("record", data.value)  # a duplicate would violate task_effects' key
    return {"recorded": data.value}


async def _noop(data: NoopInput, ctx: TaskContext) -> None:
    return None


def register(registry: TaskRegistry) -> None:
    registry.register(TaskType("test.sleep", SleepInput, _sleep, "Sleep, reporting progress."))
    registry.register(TaskType("test.fail", FailInput, _fail, "Fail N attempts, then succeed."))
    registry.register(TaskType("test.record", RecordInput, _record, "Write one effect row."))
    registry.register(TaskType("test.noop", NoopInput, _noop, "Do nothing (benchmarks)."))
