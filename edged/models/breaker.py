"""A circuit breaker for one remote server.

Closed: every request goes out. ``failures`` failures in a row open it: for ``open_for``
seconds no request goes out (each is served by the fallback at once, instead of paying
the timeout). Then it is half-open: exactly one request goes out as the probe; its success
closes the breaker, its failure opens it again. A probe whose caller went away proves
nothing and lets the next request probe instead.
"""

from __future__ import annotations

from collections.abc import Callable

STATES = ("closed", "half_open", "open")


class Breaker:
    def __init__(self, failures: int, open_for: float, clock: Callable[[], float]) -> None:
        self._threshold = failures
        self._open_for = open_for
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self.opened = 0  # times it opened, for metrics

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if self._probing or self._clock() >= self._opened_at + self._open_for:
            return "half_open"
        return "open"

    @property
    def failures(self) -> int:
        return self._failures

    def retry_in(self) -> float:
        """Seconds until a probe may go out (0 when one may now)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self._open_for - self._clock())

    def allow(self) -> bool:
        """May a request go out now? In half-open, True makes the caller the probe: it must
        then report ``success``, ``failure`` or ``abandoned``."""
        state = self.state
        if state == "closed":
            return True
        if state == "open" or self._probing:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def failure(self) -> None:
        self._failures += 1
        if self._probing or (self._opened_at is None and self._failures >= self._threshold):
            self._opened_at = self._clock()
            self.opened += 1
        self._probing = False

    def abandoned(self) -> None:
        self._probing = False
