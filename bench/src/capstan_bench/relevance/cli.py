"""`capstan bench relevance`: prints a table, writes bench/results/relevance-<UTC>.json."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

out = Console()


def relevance_command(
    queries: Annotated[int, typer.Option(help="Queries per query set.")] = 200,
    output: Annotated[
        Path | None, typer.Option(help="Result file (default bench/results/relevance-<UTC>.json).")
    ] = None,
) -> None:
    """Recall@1/5/10 and MRR of every engine on the standard library's docstrings, with four
    query sets (sentences, keywords, inflected keywords, keywords plus an absent word), and the
    engines' top-5 agreement. Uses PostgreSQL and Elasticsearch when their URLs are set."""
    from capstan_bench.relevance.run import Backends, run

    result = asyncio.run(run(Backends.from_env(), per_set=queries))
    show(result)
    path = output or Path("bench/results") / (
        f"relevance-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    out.print(f"written to {path}")


def show(result: dict[str, Any]) -> None:
    table = Table(title=f"relevance on {result['corpus']['documents']} documents")
    for column in ("engine", "query set", "recall@1", "recall@5", "recall@10", "MRR", "zero"):
        table.add_column(column)
    for engine, per_set in result["scores"].items():
        for name, s in per_set.items():
            table.add_row(
                engine,
                name,
                *(f"{s[m]:.3f}" for m in ("recall@1", "recall@5", "recall@10", "mrr", "zero_hits")),
            )
    out.print(table)
    for pair, per_set in result["agreement_top5"].items():
        out.print(
            f"top-5 agreement {pair}: " + ", ".join(f"{k} {v:.3f}" for k, v in per_set.items())
        )
    for t in result["targets"]:
        out.print(("PASS " if t["met"] else "MISS ") + t["target"])
    for name, why in result["skipped"].items():
        out.print(f"[yellow]skipped {name}: {why}[/yellow]")
