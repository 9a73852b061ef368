"""The `embeddings.document` task: chunk and embed one document into every vector store.

The embedder subscriber submits one per document event (subscribers/embedder.py); the drift
check (embeddings/reconcile.py) submits more for documents whose vectors are missing or
stale. The handler gets the pipeline from its registration, not from the task context.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field

from capstan.embeddings.pipeline import EmbeddingPipeline
from capstan.tasks.context import TaskContext
from capstan.tasks.registry import Handler, TaskRegistry, TaskType

TYPE = "embeddings.document"


class EmbedDocumentInput(BaseModel):
    document_id: str = Field(..., min_length=1, max_length=36)
    version: int = Field(..., ge=0, description="the version the event named")
    force: bool = Field(False, description="embed the current row even if it is newer")


def embed_document_handler(pipeline: Callable[[], EmbeddingPipeline]) -> Handler:
    """The handler, bound to the pipeline (called at each run: it may be built lazily)."""

    async def handle(data: EmbedDocumentInput, ctx: TaskContext) -> dict[str, Any]:
        await ctx.progress(0.0, "reading the document")
        outcome = await pipeline().embed_document(
            ctx.tenant_id, data.document_id, data.version, ctx.progress, force=data.force
        )
        return outcome.as_dict()

    return handle


def register(registry: TaskRegistry, pipeline: Callable[[], EmbeddingPipeline]) -> None:
    registry.register(
        TaskType(
            TYPE,
            EmbedDocumentInput,
            embed_document_handler(pipeline),
            "Chunk and embed a document into the vector stores (submitted after each write).",
            queue="default",
            max_attempts=10,  # an endpoint or store outage of minutes is ridden out
            time_limit_seconds=600,
        )
    )
