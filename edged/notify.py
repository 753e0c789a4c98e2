"""sd_notify: READY, STATUS and a watchdog driven from the event loop.

The watchdog ping comes from a task on the loop, so a blocked loop misses its pings and
systemd restarts the daemon. Outside systemd (no NOTIFY_SOCKET) all of this is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable

import sdnotify

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, status: Callable[[], str]) -> None:
        self._enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._sd = sdnotify.SystemdNotifier() if self._enabled else None
        self._status = status
        self._last_status = ""

    def _send(self, message: str) -> None:
        if self._sd is not None:
            self._sd.notify(message)

    def ready(self) -> None:
        self._send(f"READY=1\nSTATUS={self._status()}")

    def stopping(self) -> None:
        self._send("STOPPING=1\nSTATUS=draining")

    def watchdog_interval(self) -> float | None:
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID")
        if not self._enabled or not usec.isdigit() or (pid and pid != str(os.getpid())):
            return None
        # Half the period, as sd_watchdog_enabled(3) advises; 0 would spin the loop.
        return int(usec) / 2_000_000 if int(usec) > 0 else None

    async def run(self, stop: asyncio.Event) -> None:
        """Ping the watchdog at half its period and refresh STATUS, until ``stop``."""
        interval = self.watchdog_interval()
        if interval is None:
            return
        log.info("systemd watchdog every %.1fs", interval)
        while not stop.is_set():
            status = self._status()
            message = "WATCHDOG=1"
            if status != self._last_status:
                message += f"\nSTATUS={status}"
                self._last_status = status
            self._send(message)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
