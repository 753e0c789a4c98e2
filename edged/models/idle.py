"""Idle unloads on timers: one loop timer per idle model, never a polling loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class IdleTimers(Generic[K]):
    """``arm(key, since, timeout)`` calls ``expire(key)`` on the loop at ``since + timeout``
    (loop time) unless cancelled first; ``retime`` moves every armed timer to a new timeout
    counted from the same ``since`` (a power profile with a shorter idle unload applies to
    models idle right now, too)."""

    def __init__(self, expire: Callable[[K], None]) -> None:
        self._expire = expire
        self._armed: dict[K, tuple[float, asyncio.TimerHandle]] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._armed

    def arm(self, key: K, since: float, timeout: float) -> None:
        self.cancel(key)
        handle = asyncio.get_running_loop().call_at(since + timeout, self._fire, key)
        self._armed[key] = (since, handle)

    def cancel(self, key: K) -> None:
        armed = self._armed.pop(key, None)
        if armed is not None:
            armed[1].cancel()

    def retime(self, timeout: float) -> None:
        for key, (since, _handle) in list(self._armed.items()):
            self.arm(key, since, timeout)

    def _fire(self, key: K) -> None:
        self._armed.pop(key, None)
        self._expire(key)
