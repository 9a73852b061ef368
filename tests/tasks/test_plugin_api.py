"""Task plugin API v1 (docs/tasks.md): a third-party handler, registered through the
`capstan.tasks` entry point, runs on a real stack with the narrow TaskContext; a plugin written
against the old context fails clearly, not silently."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from capstan.db.schema import TaskEffect
from capstan.tasks.context import PLUGIN_API_VERSION, TaskContext
from tests.conftest import Stack, stack_settings, start_stack, stop_stack

PLUGIN = """
from pydantic import BaseModel

from capstan.tasks.registry import TaskType


class Shout(BaseModel):
    text: str


async def shout(data, ctx):
    ctx.log.info("shouting")
    await ctx.progress(0.5, "half way")
    ctx.check_cancelled()
    ctx.effect_row("shouted", data.text.upper())
    return {
        "text": data.text.upper(),
        "api_version": ctx.api_version,
        "task_id": ctx.task_id,
        "task_type": ctx.task_type,
        "tenant_id": ctx.tenant_id,
        "attempt": ctx.attempt,
        "max_attempts": ctx.max_attempts,
        "cancelled": ctx.cancelled,
    }


async def old_style(data, ctx):
    return {"documents": str(ctx.container.documents)}


def register(registry):
    registry.register(TaskType("plugin.shout", Shout, shout, "Upper-case a text.", max_attempts=1))
    registry.register(TaskType("plugin.old", Shout, old_style, "Uses v0.", max_attempts=1))
"""


def install_plugin(root: Path) -> None:
    """A distribution on sys.path with a `capstan.tasks` entry point, as pip would leave it."""
    (root / "shout_plugin.py").write_text(PLUGIN)
    info = root / "shout_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: shout-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent(
            """\
            [capstan.tasks]
            shout = shout_plugin:register
            """
        )
    )


@pytest.fixture
async def plugin_stack(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Stack]:
    site = tmp_path / "site"
    site.mkdir()
    install_plugin(site)
    monkeypatch.syspath_prepend(str(site))
    stack = await start_stack(stack_settings("embedded", request, tmp_path))
    yield stack
    await stop_stack(stack)


async def _run(stack: Stack, task_type: str) -> dict[str, Any]:
    tenant = await stack.api.tenant()
    async with stack.api.client(tenant.key) as http:
        answer = await http.post("/v1/tasks", json={"type": task_type, "input": {"text": "hi"}})
        assert answer.status_code == 202, answer.text
        url = answer.json()["url"]
        result: dict[str, Any] = {}

        async def finished() -> bool:
            nonlocal result
            result = (await http.get(url)).json()
            return result["status"] in ("succeeded", "failed", "cancelled")

        await stack.until(finished, what=f"{task_type} to finish")
        return {**result, "tenant": tenant.id}


async def test_a_plugin_handler_runs_with_the_v1_context(plugin_stack: Stack) -> None:
    task = await _run(plugin_stack, "plugin.shout")
    assert task["status"] == "succeeded", task
    assert task["result"] == {
        "text": "HI",
        "api_version": PLUGIN_API_VERSION,
        "task_id": task["id"],
        "task_type": "plugin.shout",
        "tenant_id": task["tenant"],
        "attempt": 1,
        "max_attempts": 1,
        "cancelled": False,
    }
    # Its effect committed with the result.
    async with plugin_stack.container.db() as session:
        effects = (
            await session.scalars(select(TaskEffect.value).where(TaskEffect.task_id == task["id"]))
        ).all()
    assert effects == ["HI"]


async def test_a_plugin_written_for_the_old_context_fails_saying_why(plugin_stack: Stack) -> None:
    task = await _run(plugin_stack, "plugin.old")
    assert task["status"] == "failed"
    assert "TaskContext.container was removed in task plugin API v1" in task["error"]
    assert "docs/tasks.md" in task["error"]


def test_the_context_has_only_the_documented_surface() -> None:
    """What docs/tasks.md documents as plugin API v1, and nothing else (no container)."""

    async def report(_fraction: float, _message: str | None) -> None:
        pass

    ctx = TaskContext(
        task_id="t",
        task_type="x.y",
        tenant_id="n",
        attempt=2,
        max_attempts=3,
        request_id=None,
        report_progress=report,
        cancel_requested=lambda: False,
    )
    public = {name for name in dir(ctx) if not name.startswith("_")}
    assert public == {
        "api_version",
        "task_id",
        "task_type",
        "tenant_id",
        "attempt",
        "max_attempts",
        "request_id",
        "log",
        "cancelled",
        "progress",
        "check_cancelled",
        "add_effect",
        "effect_row",
    }
    for removed in ("container", "report_progress", "cancel_requested", "effects"):
        with pytest.raises(AttributeError, match=f"TaskContext.{removed} was removed"):
            getattr(ctx, removed)
    with pytest.raises(AttributeError):
        ctx.documents = object()  # type: ignore[attr-defined]  # nothing can be smuggled in
    assert ctx.log.extra == {"task": "t", "task_type": "x.y", "attempt": 2}


def test_a_check_with_the_old_signature_is_refused_at_registration() -> None:
    from pydantic import BaseModel

    from capstan.tasks.registry import TaskRegistry, TaskType

    class In(BaseModel):
        pass

    async def handler(data: In, ctx: TaskContext) -> None:
        pass

    async def old_check(data: In, container: Any, tenant_id: str) -> None:
        pass

    async def check(data: In, tenant_id: str) -> None:
        pass

    registry = TaskRegistry()
    with pytest.raises(ValueError, match=r"check\(input, tenant_id\) in task plugin API v1"):
        registry.register(TaskType("x.old", In, handler, "old", check=old_check))
    registry.register(TaskType("x.new", In, handler, "new", check=check))
    assert "x.new" in registry and "x.old" not in registry
