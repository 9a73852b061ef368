"""The one retry-delay policy (capstan.retry) that every retry loop uses."""

from __future__ import annotations

import math

import pytest

from capstan.retry import Backoff


def test_the_ceiling_doubles_from_base_up_to_the_cap() -> None:
    b = Backoff(2.0, 20.0)
    assert [b.ceiling(n) for n in (0, 1, 2, 3, 4, 5)] == [2.0, 2.0, 4.0, 8.0, 16.0, 20.0]
    assert Backoff(1.0).ceiling(60) == 2.0**59 and Backoff(1.0).cap == math.inf


@pytest.mark.parametrize(
    ("jitter", "low", "high"), [("half", 4.0, 8.0), ("full", 0.0, 8.0), ("none", 8.0, 8.0)]
)
def test_jitter_spreads_over_its_share_of_the_ceiling(jitter: str, low: float, high: float) -> None:
    b = Backoff(2.0, jitter=jitter)  # type: ignore[arg-type]
    assert (b.delay(3, 0.0), b.delay(3, 1.0)) == (low, high)
    assert all(low <= b.delay(3) <= high for _ in range(200))


def test_every_retry_loop_uses_it() -> None:
    """Worker, subscribers, webhooks, relay and the embeddings endpoint: no loop of its own."""
    from pathlib import Path

    import capstan

    root = Path(capstan.__file__).parent
    users = {
        p.relative_to(root).as_posix()
        for p in root.rglob("*.py")
        if "from capstan.retry import Backoff" in p.read_text()
    }
    assert {
        "worker/worker.py",
        "subscribers/runtime.py",
        "webhooks/dispatcher.py",
        "relay/relay.py",
        "embeddings/openai_compat.py",
    } <= users
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert ("* 2 **" not in text and "2.0 **" not in text) or path.name == "retry.py", path
