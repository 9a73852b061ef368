"""`capstan bench`: the one Typer app every benchmark command is registered on.

Capstan mounts it as `capstan bench` through the `capstan.commands` entry point declared in
bench/pyproject.toml; a new benchmark is a module here plus one line below.
"""

from __future__ import annotations

import typer

from capstan_bench.embeddings import embeddings_command
from capstan_bench.events import events
from capstan_bench.read import plot, read
from capstan_bench.relevance.cli import relevance_command
from capstan_bench.relevance.latency import embedded_command
from capstan_bench.retrieval import retrieval_command
from capstan_bench.search import search_command
from capstan_bench.soak import soak
from capstan_bench.tasks import tasks
from capstan_bench.vectors import vectors_command

app = typer.Typer(
    help="Benchmarks against the production backends on this machine.", no_args_is_help=True
)
app.command("read")(read)  # read.py
app.command("plot")(plot)  # read.py: the PNG of a read or events result
app.command("events")(events)  # events.py
app.command("tasks")(tasks)  # tasks.py
app.command("soak")(soak)  # soak.py
app.command("search")(search_command)  # search.py
app.command("relevance")(relevance_command)  # relevance/
app.command("search-embedded")(embedded_command)  # relevance/latency.py
app.command("embeddings")(embeddings_command)  # embeddings.py
app.command("vectors")(vectors_command)  # vectors.py: latency and recall per vector store
app.command("retrieval")(retrieval_command)  # retrieval.py: semantic/hybrid recall, paraphrases.py
