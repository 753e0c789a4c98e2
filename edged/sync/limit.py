"""A per-cause limit on events for the cloud: a flood of one cause (forged bundles, say)
sends a few events and a count, not one event each."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

EVENTS_PER_WINDOW = 5
WINDOW_SECONDS = 600.0
MAX_CAUSES = 256  # the least recently seen cause is forgotten past this
_EXCERPT = 200


def excerpt(text: str | None, limit: int = _EXCERPT) -> str | None:
    """At most ``limit`` characters of ``text``, saying how long it was when cut."""
    if text is None or len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


@dataclass
class _Window:
    start: float
    sent: int = 0
    suppressed: int = 0


class CauseLimit:
    """``admit(cause)``: None when this event is over its cause's limit (it is counted),
    else how many of the cause were held back before it (to report with it)."""

    def __init__(self, per_window: int = EVENTS_PER_WINDOW, window: float = WINDOW_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._per_window = per_window
        self._window = window
        self._clock = clock
        self._causes: OrderedDict[str, _Window] = OrderedDict()

    def admit(self, cause: str) -> int | None:
        now = self._clock()
        w = self._causes.pop(cause, None)
        if w is None or now - w.start >= self._window:
            w = _Window(now, suppressed=w.suppressed if w else 0)
        self._causes[cause] = w
        while len(self._causes) > MAX_CAUSES:
            self._causes.popitem(last=False)
        if w.sent >= self._per_window:
            w.suppressed += 1
            return None
        w.sent += 1
        held, w.suppressed = w.suppressed, 0
        return held
