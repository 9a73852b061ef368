"""Command groups other distributions add to `capstan`: each entry point of the
`capstan.commands` group, `NAME = "module:app"`, is a Typer app mounted as `capstan NAME`.

The benchmarks are one (`capstan bench`, the capstan-bench distribution in bench/): they are
not in the capstan wheel nor the image, so without them `capstan bench` says how to get them.
A plugin that fails to import never takes the rest of the CLI down: its command reports why.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Annotated

import typer
from rich.console import Console

ENTRY_POINT_GROUP = "capstan.commands"

BENCH_MISSING = (
    "capstan bench: the benchmarks are not installed. They are the capstan-bench distribution "
    "in bench/ of a Capstan checkout, kept out of the capstan package and the image: "
    "`scripts/bootstrap dev` installs them, or `pip install -e ./bench` in the same environment."
)

err = Console(stderr=True, soft_wrap=True)


def add_plugins(app: typer.Typer) -> None:
    """Mount every installed `capstan.commands` plugin; `bench` explains itself when absent."""
    mounted: set[str] = set()
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            plugin = entry.load()
            if not isinstance(plugin, typer.Typer):
                raise TypeError(f"{entry.value} is a {type(plugin).__name__}, not a typer.Typer")
        except Exception as exc:
            _add_unavailable(
                app,
                entry.name,
                "failed to load",
                f"capstan {entry.name}: the plugin {entry.value} failed to load: "
                f"{type(exc).__name__}: {exc}",
            )
        else:
            app.add_typer(plugin, name=entry.name)
        mounted.add(entry.name)
    if "bench" not in mounted:
        _add_unavailable(app, "bench", "not installed: pip install -e ./bench", BENCH_MISSING)


def _add_unavailable(app: typer.Typer, name: str, state: str, message: str) -> None:
    """A command that takes any arguments (including --help) and explains, exit status 1."""

    @app.command(
        name,
        help=f"({state})",
        add_help_option=False,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def unavailable(args: Annotated[list[str] | None, typer.Argument(hidden=True)] = None) -> None:
        err.print(f"[red]error:[/red] {message}", highlight=False)
        raise typer.Exit(1)
