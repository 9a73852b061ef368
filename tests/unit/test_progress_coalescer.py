"""Progress rows: at most one write per task per interval, and the latest tick always written.
On a fake clock, so nothing here depends on how fast the machine is."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from capstan.tasks.progress import Coalescer


class FakeTime:
    """A clock and a sleep the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, wake))
        await wake

    async def advance(self, seconds: float) -> None:
        self.now += seconds
        for due, wake in list(self._sleepers):
            if due <= self.now:
                self._sleepers.remove((due, wake))
                wake.set_result(None)
        await settle()


async def settle() -> None:
    """Let woken trailing writes run to their end (they only append to a list)."""
    for _ in range(20):
        await asyncio.sleep(0)


class Rows:
    def __init__(self, time: FakeTime) -> None:
        self.time = time
        self.writes: list[tuple[float, str, float]] = []  # (when, key, progress)
        self.live = {"a", "b"}
        self.failing = False

    async def write(self, key: str, fraction: float, message: str | None) -> None:
        if self.failing:
            raise ConnectionError("database down")
        self.writes.append((self.time.now, key, fraction))


@pytest.fixture
def time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def rows(time: FakeTime) -> Rows:
    return Rows(time)


def coalescer(rows: Rows, time: FakeTime, interval: float = 1.0) -> Coalescer[str]:
    return Coalescer(
        rows.write, interval, live=rows.live.__contains__, clock=time.clock, sleep=time.sleep
    )


async def test_a_burst_costs_one_write_then_the_latest_tick_when_the_second_is_up(
    rows: Rows, time: FakeTime
) -> None:
    c = coalescer(rows, time)
    await c.report("a", 0.1, None)
    for p in (0.2, 0.3, 0.4):
        await time.advance(0.25)
        await c.report("a", p, None)
    assert rows.writes == [(0.0, "a", 0.1)]
    await time.advance(0.25)
    assert rows.writes == [(0.0, "a", 0.1), (1.0, "a", 0.4)]


async def test_a_tick_after_a_quiet_second_is_written_at_once(rows: Rows, time: FakeTime) -> None:
    c = coalescer(rows, time)
    await c.report("a", 0.1, None)
    await time.advance(5)
    await c.report("a", 0.5, None)
    assert rows.writes == [(0.0, "a", 0.1), (5.0, "a", 0.5)]


async def test_steady_ticks_are_written_at_most_once_a_second_ending_at_the_last(
    rows: Rows, time: FakeTime
) -> None:
    c = coalescer(rows, time)
    ticks = [i / 40 for i in range(41)]  # 4 a second for 10 seconds
    for p in ticks:
        await c.report("a", p, None)
        await time.advance(0.25)
    await time.advance(1)
    when = [w[0] for w in rows.writes]
    assert all(later - earlier >= 1.0 for earlier, later in itertools.pairwise(when))
    assert len(rows.writes) <= 12 < len(ticks)
    assert rows.writes[-1][2] == ticks[-1]


async def test_tasks_are_throttled_separately(rows: Rows, time: FakeTime) -> None:
    c = coalescer(rows, time)
    await c.report("a", 0.1, None)
    await c.report("b", 0.7, None)
    assert rows.writes == [(0.0, "a", 0.1), (0.0, "b", 0.7)]


async def test_no_trailing_write_for_a_task_that_finished_meanwhile(
    rows: Rows, time: FakeTime
) -> None:
    c = coalescer(rows, time)
    await c.report("a", 0.1, None)
    await c.report("a", 0.9, None)
    rows.live.discard("a")  # its outcome is recorded: the row must not go back to 0.9
    await time.advance(2)
    assert rows.writes == [(0.0, "a", 0.1)]


async def test_a_failing_write_is_swallowed_and_finished_tasks_leave_nothing_behind(
    rows: Rows, time: FakeTime
) -> None:
    c = coalescer(rows, time)
    rows.failing = True
    await c.report("a", 0.1, None)  # does not raise: progress never fails a task
    await c.report("a", 0.2, None)
    await time.advance(1)
    rows.failing = False
    await time.advance(1)
    await c.report("b", 0.5, None)
    assert rows.writes == [(2.0, "b", 0.5)] and len(c) == 1


async def test_interval_zero_writes_every_tick(rows: Rows, time: FakeTime) -> None:
    c = coalescer(rows, time, interval=0)
    for p in (0.1, 0.2, 0.3):
        await c.report("a", p, None)
    assert [w[2] for w in rows.writes] == [0.1, 0.2, 0.3]
