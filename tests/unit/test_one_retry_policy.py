"""Every retry loop takes its delays from capstan.retry.Backoff (issue 12): no module doubles a
delay by hand. A hand-written `delay = min(delay * 2, cap)` is how the five copies this
replaced looked."""

from __future__ import annotations

import re
from pathlib import Path

import capstan

HAND_WRITTEN = re.compile(r"\b(\w*delay\w*)\s*(?:\*=\s*2\b|=\s*min\(\s*\1\s*\*\s*2)")


def test_no_module_doubles_a_delay_by_hand() -> None:
    root = Path(capstan.__file__).parent
    found = [
        f"{path.relative_to(root)}:{n}: {line.strip()}"
        for path in sorted(root.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if HAND_WRITTEN.search(line)
    ]
    assert not found, "use capstan.retry.Backoff:\n" + "\n".join(found)


def test_the_pattern_finds_the_copies_it_is_meant_for() -> None:
    assert HAND_WRITTEN.search("                delay = min(delay * 2, 5.0)")
    assert HAND_WRITTEN.search("retry_delay *= 2")
    assert not HAND_WRITTEN.search("delay = RETRY.delay(attempt)")
