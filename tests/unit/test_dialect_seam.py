"""Only capstan.db.dialect (and the migrations) may branch on which database this is."""

from __future__ import annotations

import re
from pathlib import Path

import capstan

ROOT = Path(capstan.__file__).parent
ALLOWED = {
    "db/dialect.py",  # the one place
    # Alembic runs each migration on one connection; its DDL differs per dialect by nature.
    "db/migrations/",
    # The benchmarks are leaving the package (issue 12); they start databases of each kind.
    "bench/",
}
BRANCHES = [
    # SQLAlchemy's name of a bind's dialect: engine.dialect.name == "postgresql", ...
    re.compile(r"\b(engine|bind|conn|connection|session\.get_bind\(\))\.dialect\.name\b"),
    re.compile(r"dialect\.name\s*(==|!=|in\b)"),
    re.compile(r"get_backend_name\(\)"),
    # The URL's scheme: database_url.startswith("sqlite"), url.startswith(("postgresql", ...
    re.compile(r"""startswith\(\(?\s*["'](sqlite|postgres)"""),
    # The in-process broker: Settings.broker_in_process (the one definition) says so.
    re.compile(r"""broker_url\.startswith\(\s*["']memory"""),
]
DEFINITIONS = {"settings.py:    def broker_in_process"}


def offending_lines() -> list[str]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if any(relative.startswith(a) for a in ALLOWED):
            continue
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines, 1):
            if any(pattern.search(line) for pattern in BRANCHES) and not _defines(
                relative, lines, number
            ):
                found.append(f"{relative}:{number}: {line.strip()}")
    return found


def _defines(relative: str, lines: list[str], number: int) -> bool:
    """The line is the body of the one property that answers the question for everyone."""
    before = "\n".join(lines[max(0, number - 5) : number])
    return any(relative == d.split(":")[0] and d.split(":", 1)[1] in before for d in DEFINITIONS)


def test_no_module_outside_the_dialect_branches_on_the_database() -> None:
    """Ask the Dialect (capstan.db.dialect) for the operation or property instead."""
    assert offending_lines() == []


def test_the_check_finds_a_branch() -> None:
    line = 'if engine.dialect.name == "postgresql":'
    assert any(p.search(line) for p in BRANCHES)
    assert any(p.search('if settings.database_url.startswith("sqlite"):') for p in BRANCHES)
    assert not any(p.search("if dialect.is_file:") for p in BRANCHES)
