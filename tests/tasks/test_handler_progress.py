"""Every built-in handler reports progress inside its long steps and stops at the next
cancellation point once cancelled, on a real stack in both modes.

The handlers run with a context that records each progress call and reports "cancelled" once a
chosen call was made, so where a handler stops is decided by its own steps, never by timing.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from capstan.tasks.context import TaskCancelled, TaskContext
from capstan.tasks.handlers.text import rank_sentences, split_sentences, summarize, text_pieces
from tests.conftest import Stack

WORDS = [
    "capstan",
    "stores",
    "documents",
    "in",
    "postgresql",
    "caches",
    "them",
    "in",
    "redis",
    "workers",
    "consume",
    "rabbitmq",
    "queues",
    "search",
    "merges",
    "elasticsearch",
    "relevance",
    "with",
    "structured",
    "predicates",
    "events",
    "fan",
    "out",
]


def long_text(chars: int = 120_000, seed: int = 7) -> str:
    """About `chars` characters of English-like sentences (the issue's 120 KB summary)."""
    rng = random.Random(seed)
    sentences: list[str] = []
    size = 0
    while size < chars:
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 18)))
        sentences.append(sentence.capitalize() + ".")
        size += len(sentences[-1]) + 1
        if rng.random() < 0.1:
            sentences[-1] += "\n"
    return " ".join(sentences)


class Recording(TaskContext):
    """A TaskContext that records every progress call (before the throttle) and reports the
    task cancelled once `cancel_at(calls)` says so."""

    def __init__(
        self,
        tenant_id: str,
        cancel_at: Callable[[list[tuple[float, str | None]]], bool] = lambda _calls: False,
    ) -> None:
        self.calls: list[tuple[float, str | None]] = []
        self.cancel_at = cancel_at

        async def report(_fraction: float, _message: str | None) -> None:
            pass

        super().__init__(
            task_id="00000000-0000-0000-0000-000000000000",
            task_type="test",
            tenant_id=tenant_id,
            attempt=1,
            max_attempts=1,
            request_id=None,
            report_progress=report,
            cancel_requested=lambda: self.cancel_at(self.calls),
        )

    async def progress(self, fraction: float, message: str | None = None) -> None:
        self.calls.append((fraction, message))
        await super().progress(fraction, message)


def recording(stack: Stack, tenant_id: str, **kwargs: Any) -> Recording:
    return Recording(tenant_id, **kwargs)


def handler(stack: Stack, name: str) -> Callable[[Any, TaskContext], Awaitable[Any]]:
    return stack.container.task_registry.get(name).handler


def model(stack: Stack, name: str, **data: Any) -> Any:
    return stack.container.task_registry.get(name).input_model.model_validate(data)


def splitting(calls: list[tuple[float, str | None]]) -> list[str]:
    return [m for _f, m in calls if m and m.startswith("splitting sentences")]


def test_pieces_split_into_the_same_sentences_as_the_whole_text() -> None:
    text = long_text(40_000)
    pieces = text_pieces(text)
    assert "".join(pieces) == text and len(pieces) > 4
    by_piece = [s for piece in pieces for s in split_sentences(piece)]
    assert rank_sentences(by_piece, 3) == summarize(text, 3)


async def test_a_long_summary_reports_each_piece_and_stops_when_cancelled(stack: Stack) -> None:
    tenant = await stack.api.tenant()
    text = long_text()
    run = handler(stack, "text.summarize")
    data = model(stack, "text.summarize", text=text, sentences=3)

    whole = recording(stack, tenant.id)
    result = await run(data, whole)
    pieces = len(text_pieces(text))
    assert splitting(whole.calls) == [f"splitting sentences ({i}/{pieces})" for i in range(pieces)]
    fractions = [f for f, _m in whole.calls]
    assert fractions == sorted(fractions) and fractions[-1] < 1.0
    assert result == summarize(text, 3)

    # Cancelled while splitting the third piece: the handler stops at the next piece.
    cancelled = recording(stack, tenant.id, cancel_at=lambda calls: len(splitting(calls)) >= 3)
    with pytest.raises(TaskCancelled):
        await run(data, cancelled)
    assert len(splitting(cancelled.calls)) == 3


@pytest.mark.parametrize("name", ["text.keywords", "text.language"])
async def test_short_text_handlers_report_and_honour_a_cancel(stack: Stack, name: str) -> None:
    tenant = await stack.api.tenant()
    data = model(stack, name, text=long_text(20_000))
    done = recording(stack, tenant.id)
    assert await handler(stack, name)(data, done)
    assert done.calls and done.calls[0][1]

    stopped = recording(stack, tenant.id, cancel_at=lambda calls: len(calls) >= 1)
    with pytest.raises(TaskCancelled):
        await handler(stack, name)(data, stopped)


async def test_enrich_reports_its_steps_and_a_cancel_leaves_the_document_alone(
    stack: Stack,
) -> None:
    tenant = await stack.api.tenant()
    async with stack.api.client(tenant.key) as http:
        doc = (await http.post("/v1/documents", json={"body": long_text(30_000)})).json()
    run = handler(stack, "documents.enrich")
    data = model(stack, "documents.enrich", document_id=doc["id"])

    stopped = recording(stack, tenant.id, cancel_at=lambda calls: len(splitting(calls)) >= 2)
    with pytest.raises(TaskCancelled):
        await run(data, stopped)
    async with stack.api.client(tenant.key) as http:
        assert (await http.get(f"/v1/documents/{doc['id']}")).json()["version"] == 1

    done = recording(stack, tenant.id)
    result = await run(data, done)
    steps = [m for _f, m in done.calls]
    assert steps[:2] == ["reading the document", "detecting the language"]
    assert len(splitting(done.calls)) == len(text_pieces(long_text(30_000)))
    assert steps[-3:] == ["summarizing", "extracting keywords", "saving"]
    assert result["version"] == 2


async def test_enrich_of_a_missing_document_is_refused_at_submit(stack: Stack) -> None:
    tenant = await stack.api.tenant()
    missing = "01900000-0000-7000-8000-000000000000"
    async with stack.api.client(tenant.key) as http:
        answer = await http.post(
            "/v1/tasks", json={"type": "documents.enrich", "input": {"document_id": missing}}
        )
        listed = (await http.get("/v1/tasks")).json()
    assert answer.status_code == 422
    assert answer.headers["content-type"] == "application/problem+json"
    assert f"document {missing} does not exist" in answer.json()["detail"]
    assert listed["items"] == []  # no task, so no attempts to retry


async def test_enrich_of_a_document_deleted_after_submit_ends_at_once(stack: Stack) -> None:
    """The worker runs it once: a `skipped` result, not an error to retry."""
    tenant = await stack.api.tenant()
    async with stack.api.client(tenant.key) as http:
        doc = (await http.post("/v1/documents", json={"body": "soon gone"})).json()
        await http.delete(f"/v1/documents/{doc['id']}")
    ctx = recording(stack, tenant.id)
    result = await handler(stack, "documents.enrich")(
        model(stack, "documents.enrich", document_id=doc["id"]), ctx
    )
    assert result == {"document_id": doc["id"], "skipped": f"document {doc['id']} does not exist"}
