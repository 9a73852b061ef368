"""`capstan bench embeddings`: chunks/s of chunking and of embedding on this machine.

1. builds documents from the Python standard library's docstrings (one per module, as the
   relevance benchmark's corpus), deterministic for one Python version;
2. chunks them with the configured size/overlap (CAPSTAN_EMBEDDINGS_CHUNK_*, or the options);
3. embeds `--chunks` of those chunks (cycled if there are fewer) in batches of `--batch-size`
   with the offline model, `--rounds` times after one warm-up batch; the median round wins;
4. with CAPSTAN_EMBEDDINGS_URL set (or `--endpoint URL`), does the same through the
   OpenAI-compatible adapter: the endpoint's throughput as this machine sees it;
5. prints a table and writes bench/results/embeddings-<UTC>.json.

Throughput is wall-clock chunks/s of one caller; `chunks_per_cpu_s` divides by this process's
CPU time instead, the figure to compare when other work shares the cores (`cpu_per_wall` well
below 1 with the offline model means it waited for a core; above 1, the tokenizer used two).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from capstan_bench.common import BenchError, git_commit, out
from capstan_bench.latency import nearest_percentile
from capstan_bench.report import (
    Result,
    default_output,
    machine_environment,
    measured,
    publish,
    result_header,
)


def corpus_documents() -> list[str]:
    """One document per standard-library module: its documented members' docstrings."""
    from capstan_bench.relevance.corpus import build_corpus

    by_module: dict[str, list[str]] = {}
    for doc in build_corpus():
        by_module.setdefault(doc.tags[0], []).append(f"{doc.title}: {doc.body}")
    return ["\n\n".join(parts) for _, parts in sorted(by_module.items())]


def _rounds(
    embed: Callable[[list[str]], Awaitable[Any]],
    texts: list[str],
    batch_size: int,
    rounds: int,
    close: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Wall and CPU time of embedding `texts` `rounds` times; per-batch latencies."""

    async def run() -> dict[str, Any]:
        try:
            return await timed()
        finally:
            if close is not None:
                await close()

    async def timed() -> dict[str, Any]:
        await embed(texts[:batch_size])  # warm-up: caches, connections, lazy loads
        per_round: list[dict[str, float]] = []
        batch_ms: list[float] = []
        for _ in range(rounds):
            wall0, cpu0 = time.perf_counter(), time.process_time()
            for i in range(0, len(texts), batch_size):
                t0 = time.perf_counter()
                await embed(texts[i : i + batch_size])
                batch_ms.append((time.perf_counter() - t0) * 1000)
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            per_round.append(
                {
                    "seconds": round(wall, 3),
                    "chunks_per_s": round(len(texts) / wall, 1),
                    "chunks_per_cpu_s": round(len(texts) / max(cpu, 1e-9), 1),
                    "cpu_per_wall": round(cpu / wall, 2),
                }
            )
        median = statistics.median(r["chunks_per_s"] for r in per_round)
        return {
            "chunks_per_s": median,
            # This process's CPU only: for an endpoint, the server's work is not in it.
            "chunks_per_cpu_s": statistics.median(r["chunks_per_cpu_s"] for r in per_round),
            "chars_per_s": round(median * sum(map(len, texts)) / len(texts)),
            "rounds": per_round,
            "batch_ms": {
                "p50": round(nearest_percentile(batch_ms, 50), 2),
                "p99": round(nearest_percentile(batch_ms, 99), 2),
            },
        }

    return asyncio.run(run())


def measure(
    chunks: int, batch_size: int, rounds: int, size: int, overlap: int, endpoint: str
) -> Result:
    from capstan.embeddings.chunking import chunk_text
    from capstan.embeddings.openai_compat import OpenAICompatibleEmbedder
    from capstan.embeddings.static import StaticEmbedder
    from capstan.settings import Settings

    environment = machine_environment(datetime.now(UTC))
    documents = corpus_documents()
    if not documents:
        raise BenchError("no standard-library docstrings found to build the corpus from")
    t0 = time.perf_counter()
    pieces = [c.text for d in documents for c in chunk_text(d, size=size, overlap=overlap)]
    chunking_s = time.perf_counter() - t0
    texts = [pieces[i % len(pieces)] for i in range(chunks)]

    t0 = time.perf_counter()
    model = StaticEmbedder.load()
    load_s = time.perf_counter() - t0
    tokens = sum(model.count_tokens(t) for t in texts)

    async def offline(batch: list[str]) -> Any:
        return model.embed_sync(batch)

    runs: dict[str, Any] = {
        "offline": {
            "model": model.model,
            "version": model.version,
            "dimension": model.dimension,
            "package": f"wordllama {model.package_version}",
            "load_seconds": round(load_s, 3),
            **_rounds(offline, texts, batch_size, rounds),
        }
    }
    runs["offline"]["tokens_per_s"] = round(runs["offline"]["chunks_per_s"] * tokens / chunks)

    settings = Settings()
    url = endpoint or settings.embeddings_url
    skipped: dict[str, str] = {}
    if url:
        model_name = settings.embeddings_model
        adapter: OpenAICompatibleEmbedder | None = None

        async def remote(batch: list[str]) -> Any:
            nonlocal adapter
            if adapter is None:
                adapter = await OpenAICompatibleEmbedder.connect(
                    url,
                    model_name,
                    api_key=settings.embeddings_api_key.get_secret_value(),
                    timeout_seconds=settings.embeddings_timeout_seconds,
                    batch_size=batch_size,
                )
            return await adapter.embed(batch)

        async def close() -> None:
            if adapter is not None:
                await adapter.aclose()

        try:
            runs["endpoint"] = {"url": url, "model": model_name}
            runs["endpoint"].update(_rounds(remote, texts, batch_size, rounds, close))
        except Exception as exc:
            raise BenchError(f"the endpoint {url} failed: {exc}") from exc
    else:
        skipped["endpoint"] = "CAPSTAN_EMBEDDINGS_URL unset and no --endpoint"

    environment.update(
        {
            "numpy": importlib.metadata.version("numpy"),
            "tokenizers": importlib.metadata.version("tokenizers"),
            **git_commit(),
        }
    )
    result = result_header("embeddings", environment, [])
    result.update(
        {
            "parameters": {
                "chunks": chunks,
                "batch_size": batch_size,
                "rounds": rounds,
                "chunk_size_chars": size,
                "chunk_overlap_chars": overlap,
            },
            "corpus": {
                "documents": len(documents),
                "characters": sum(map(len, documents)),
                "distinct_chunks": len(pieces),
                "mean_chunk_chars": round(sum(map(len, pieces)) / len(pieces)),
                "mean_chunk_tokens": round(tokens / chunks),
            },
            "chunking": {
                "seconds": round(chunking_s, 3),
                "chunks_per_s": round(len(pieces) / chunking_s),
            },
            "embedding": runs,
            "skipped": skipped,
        }
    )
    return result


def render(result: Result) -> None:
    corpus = result["corpus"]
    table = Table(
        title=(
            f"embeddings: {result['parameters']['chunks']} chunks of ~{corpus['mean_chunk_chars']}"
            f" chars (~{corpus['mean_chunk_tokens']} tokens), batches of "
            f"{result['parameters']['batch_size']} (p50/p99: one batch)"
        )
    )
    columns = ("embedder", "chunks/s", "per CPU s", "tokens/s", "p50 ms", "p99 ms", "CPU/wall")
    for column in columns:
        table.add_column(column)
    for name, run in result["embedding"].items():
        table.add_row(
            f"{name} ({run['model']})",
            f"{run['chunks_per_s']:.0f}",
            f"{run['chunks_per_cpu_s']:.0f}",
            str(run.get("tokens_per_s", "-")),
            f"{run['batch_ms']['p50']:.1f}",
            f"{run['batch_ms']['p99']:.1f}",
            ", ".join(str(r["cpu_per_wall"]) for r in run["rounds"]),
        )
    out.print(table)
    out.print(f"chunking: {result['chunking']['chunks_per_s']} chunks/s")
    for name, why in result["skipped"].items():
        out.print(f"[yellow]skipped {name}: {why}[/yellow]")


def embeddings_command(
    chunks: Annotated[int, typer.Option(min=1, help="Chunks to embed per round.")] = 5000,
    batch_size: Annotated[int, typer.Option(min=1, help="Chunks per embed() call.")] = 64,
    rounds: Annotated[int, typer.Option(min=1, help="Measured rounds; the median wins.")] = 3,
    chunk_size: Annotated[
        int | None,
        typer.Option(min=16, help="Chunk size in characters (CAPSTAN_EMBEDDINGS_CHUNK_SIZE)."),
    ] = None,
    chunk_overlap: Annotated[
        int | None,
        typer.Option(min=0, help="Overlap in characters (CAPSTAN_EMBEDDINGS_CHUNK_OVERLAP)."),
    ] = None,
    endpoint: Annotated[
        str, typer.Option(help="An OpenAI-compatible base URL to measure too.")
    ] = "",
    output: Annotated[
        Path | None,
        typer.Option(help="JSON result file (default bench/results/embeddings-<UTC>.json)."),
    ] = None,
) -> None:
    """Chunks/s of the chunker and of the embedder(s) on this machine."""
    from capstan.settings import Settings

    settings = Settings()
    chunk_size = settings.embeddings_chunk_size if chunk_size is None else chunk_size
    chunk_overlap = settings.embeddings_chunk_overlap if chunk_overlap is None else chunk_overlap
    if chunk_overlap >= chunk_size:
        raise typer.BadParameter("--chunk-overlap must be smaller than --chunk-size")
    now = datetime.now(UTC)
    result = measured(
        "embeddings",
        lambda: measure(chunks, batch_size, rounds, chunk_size, chunk_overlap, endpoint),
        cleaned_up="nothing to clean up",
    )
    publish(result, output or default_output("embeddings", now), render)
