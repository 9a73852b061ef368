"""Routers hold no SQL and services leave the transaction to their caller (docs/architecture.md;
../shared/style.md, habits 2 and 3)."""

from __future__ import annotations

import ast
from pathlib import Path

import capstan

ROOT = Path(capstan.__file__).parent
SERVICES = [
    "documents/service.py",
    "tasks/service.py",
    "webhooks/service.py",
    "auth/lifecycle.py",
    "tenants/service.py",
]
# The units of work a service may still open itself, each documented where it is defined:
# the hot paths that are ONE statement on PostgreSQL (issue 11) and what follows their commit.
OWN_UNITS = {
    "documents/service.py": {"create_one"},
    "tasks/service.py": {"submit", "_dispatch_now"},
}


def _functions_opening_transactions(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for call in ast.walk(node):
                if not isinstance(call, ast.Call):
                    continue
                f = call.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                if name in {"begin", "unit_of_work", "commit"}:
                    found.add(node.name)
    return found


def test_services_work_in_the_callers_transaction() -> None:
    for relative in SERVICES:
        opening = _functions_opening_transactions(ROOT / relative)
        assert opening <= OWN_UNITS.get(relative, set()), relative


def test_routers_hold_no_sql() -> None:
    routers = sorted(p for p in ROOT.rglob("*router.py") if "bench" not in p.parts)
    assert routers, "no routers found"
    for path in routers:
        tree = ast.parse(path.read_text())
        imported = {
            node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
        } | {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
        sql = {m for m in imported if m.startswith("sqlalchemy") or m == "capstan.db.schema"}
        assert not sql, (
            f"{path.relative_to(ROOT)} imports {sorted(sql)}: move the SQL into a repository"
        )
