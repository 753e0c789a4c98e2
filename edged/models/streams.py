"""Token pieces from a model's worker thread to the event loop, and to the caller."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable

from edged.models.contract import Generation


class TokenStream:
    """Text pieces as they are generated; ``result`` holds the ``Generation`` once the
    stream is exhausted. ``aclose()`` stops the generation and frees the worker."""

    def __init__(self, source: Callable[[TokenStream], AsyncGenerator[str, None]]) -> None:
        self.result: Generation | None = None
        self._agen = source(self)

    def __aiter__(self) -> TokenStream:
        return self

    async def __anext__(self) -> str:
        return await self._agen.__anext__()

    async def aclose(self) -> None:
        await self._agen.aclose()


class Handoff:
    """Token pieces from a worker thread to the loop. One wake-up of the loop carries every
    piece produced since the last one, so a busy loop costs the worker no extra wake-ups
    (each ``call_soon_threadsafe`` writes to the loop's self-pipe)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, deliver: Callable[[str], None]) -> None:
        self._loop = loop
        self._deliver = deliver
        self._lock = threading.Lock()
        self._buffer: list[str] = []

    def __call__(self, piece: str) -> bool:
        with self._lock:
            self._buffer.append(piece)
            if len(self._buffer) > 1:  # a flush is already scheduled and will take it
                return True
        self._loop.call_soon_threadsafe(self._flush)
        return True

    def _flush(self) -> None:
        with self._lock:
            batch, self._buffer = self._buffer, []
        for piece in batch:
            self._deliver(piece)
