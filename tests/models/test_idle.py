"""Idle timers on the event loop: fire once at their time, cancel, follow a new timeout."""

from __future__ import annotations

import asyncio

from edged.models.idle import IdleTimers


class Expired:
    def __init__(self) -> None:
        self.keys: list[str] = []
        self.event = asyncio.Event()

    def __call__(self, key: str) -> None:
        self.keys.append(key)
        self.event.set()

    async def next(self) -> None:
        async with asyncio.timeout(30):
            await self.event.wait()
        self.event.clear()


async def test_a_timer_fires_once_and_a_cancelled_one_never() -> None:
    expired = Expired()
    timers = IdleTimers(expired)
    now = asyncio.get_running_loop().time()
    timers.arm("gone", now, 0.0)
    timers.cancel("gone")
    timers.arm("a", now, 0.0)
    timers.arm("b", now, 0.02)  # after "a" and "gone" would have fired
    assert "a" in timers and "gone" not in timers
    await expired.next()
    assert expired.keys == ["a"] and "a" not in timers
    await expired.next()
    assert expired.keys == ["a", "b"]


async def test_rearming_replaces_the_timer() -> None:
    expired = Expired()
    timers = IdleTimers(expired)
    now = asyncio.get_running_loop().time()
    timers.arm("a", now, 0.0)
    timers.arm("a", now, 3600.0)  # used again and idle again: the old timer is gone
    timers.arm("b", now, 0.01)
    await expired.next()
    assert expired.keys == ["b"] and "a" in timers
    timers.cancel("a")


async def test_retime_counts_the_new_timeout_from_when_each_went_idle() -> None:
    expired = Expired()
    timers = IdleTimers(expired)
    now = asyncio.get_running_loop().time()
    timers.arm("early", now - 10, 3600.0)
    timers.arm("late", now + 3600, 3600.0)
    timers.retime(5.0)  # "early" has been idle 10 s already: due at once
    await expired.next()
    assert expired.keys == ["early"] and "late" in timers
    timers.cancel("late")
