"""The composition root is the only place that wires (docs/architecture.md, issue 12).

Only the composition root (capstan.container, capstan.composition) and the entry points (CLI
commands, the API app factory and its dependency provider, the role runner) import the
container, the composition or the role runner at run time; the rest receives what it uses. A
type-only import (`if TYPE_CHECKING:`) is no wiring and is allowed, except in the modules the
issue named, which no longer mention the container at all.
"""

from __future__ import annotations

import ast
from pathlib import Path

import capstan

SRC = Path(capstan.__file__).parent
WIRING = {"capstan.container", "capstan.composition", "capstan.roles"}
# May import the wiring modules at run time: the root itself and the entry points.
ENTRY_POINTS = {
    "capstan.container",
    "capstan.composition",
    "capstan.roles",  # run_background: the process runner of `capstan worker|relay|...`
    "capstan.api.app",  # the API app factory
    "capstan.api.deps",  # FastAPI's dependency provider: the app state the factory set
}
# Named by issue 12: they receive their collaborators and never name the container.
NO_CONTAINER_AT_ALL = {
    "capstan.worker.worker",
    "capstan.worker.maintenance",
    "capstan.worker.middleware",
    "capstan.search.reconcile",
    "capstan.scheduler.jobs",
    "capstan.events.operations",
    "capstan.tasks.context",
    "capstan.tasks.registry",
    "capstan.tasks.progress",
    "capstan.tasks.handlers.documents",
    "capstan.tasks.handlers.text",
    "capstan.tasks.handlers.testing",
    "capstan.tasks.handlers.embeddings",
    "capstan.auth.lifecycle",
    "capstan.scheduler.retention",
    "capstan.search.reindex",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_entry_point(module: str) -> bool:
    parts = module.split(".")
    # CLI commands: capstan.cli.* and each domain's cli module; benchmarks are commands too.
    return (
        module in ENTRY_POINTS
        or parts[:2] in (["capstan", "cli"], ["capstan", "bench"])
        or parts[-1] == "cli"
    )


def type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(tree: ast.AST, *, runtime_only: bool) -> list[tuple[int, str]]:
    """(line, module) of every import, skipping `if TYPE_CHECKING:` blocks when asked."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if runtime_only and type_checking_block(node):
            assert isinstance(node, ast.If)
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module))
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def modules() -> list[tuple[str, ast.AST]]:
    return [
        (module_name(path), ast.parse(path.read_text(), str(path)))
        for path in sorted(SRC.rglob("*.py"))
    ]


def test_only_the_composition_root_and_entry_points_import_the_wiring() -> None:
    offenders = [
        f"{module}:{line} imports {name}"
        for module, tree in modules()
        if not is_entry_point(module)
        for line, name in imports(tree, runtime_only=True)
        if name in WIRING
    ]
    assert offenders == []


def test_the_modules_issue_12_named_do_not_name_the_container() -> None:
    offenders = [
        f"{module}:{line} imports {name}"
        for module, tree in modules()
        if module in NO_CONTAINER_AT_ALL
        for line, name in imports(tree, runtime_only=False)
        if name in WIRING or name.startswith(("capstan.container.", "capstan.roles."))
    ]
    assert offenders == []
    assert {module for module, _ in modules()} >= NO_CONTAINER_AT_ALL


def test_the_check_sees_a_runtime_import_and_ignores_a_type_only_one() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from capstan.container import Container\n"
        "def f():\n    from capstan.roles import Background\n"
    )
    assert [n for _, n in imports(tree, runtime_only=True) if n in WIRING] == ["capstan.roles"]
    assert {n for _, n in imports(tree, runtime_only=False) if n in WIRING} == WIRING - {
        "capstan.composition"
    }
