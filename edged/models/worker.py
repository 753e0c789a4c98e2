"""A thread per loaded model, fed by a priority queue.

Inference must never run on the event loop, so each loaded model lives on its own thread
from load to close. Jobs carry a priority (lower first, FIFO within a priority) and a
deadline by which they must have started; results go back to the loop with
``call_soon_threadsafe``. A model that batches (a GGUF model with ``parallel`` sequences,
whose ``generate`` is thread-safe) runs up to ``parallel`` jobs at once on runner threads;
the next job is taken from the queue only when one ends, so priorities still decide who
gets a free sequence. A model with ``parallel = 1`` (ONNX) runs its jobs on the worker
thread itself, one at a time.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from edged.errors import Unavailable
from edged.models.backend import LoadedModel

log = logging.getLogger(__name__)

T = TypeVar("T")
_STOP_PRIORITY = sys.maxsize  # after every queued job


@dataclass
class Job(Generic[T]):
    fn: Callable[[LoadedModel], T]
    future: asyncio.Future[T]
    deadline: float | None  # time.monotonic() (== loop.time()) by which it must start
    enqueued: float = field(default_factory=time.monotonic)
    cancel: threading.Event = field(default_factory=threading.Event)
    started: float | None = None


@dataclass(order=True)
class _Item:
    priority: int
    seq: int
    job: Job[Any] | None = field(compare=False)


class Worker:
    def __init__(self, name: str, loop: asyncio.AbstractEventLoop,
                 on_start: Callable[[Job[Any]], None] | None = None, parallel: int = 1
                 ) -> None:
        self._name = name
        self._loop = loop
        self._queue: queue.PriorityQueue[_Item] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._model: LoadedModel | None = None
        self._on_start = on_start
        self.parallel = parallel
        self._free = threading.Semaphore(parallel)
        self._lock = threading.Lock()
        self.running = 0  # jobs started and not yet finished

    def depth(self) -> int:
        return self._queue.qsize()

    def sequences(self) -> int:
        """Sequences the model is decoding right now (its jobs running, if it cannot say)."""
        count = getattr(self._model, "running", None)
        return int(count()) if count is not None else self.running

    def cached_prefixes(self) -> int:
        """Prefixes the model keeps for prompts that begin the same way (0 if it keeps none)."""
        count = getattr(self._model, "cached", None)
        return int(count()) if count is not None else 0

    async def start(self, load: Callable[[], T], close: Callable[[LoadedModel], None]
                    ) -> T:
        """Start the thread; it runs ``load`` (which returns the model, or a tuple whose
        first item is the model), then serves jobs until ``stop``; ``close`` runs last."""
        ready: asyncio.Future[T] = self._loop.create_future()
        thread = threading.Thread(target=self._main, args=(load, close, ready),
                                  name=f"model-{self._name}", daemon=True)
        thread.start()
        return await ready

    def submit(self, fn: Callable[[LoadedModel], T], priority: int,
               deadline: float | None, cancel: threading.Event | None = None) -> Job[T]:
        """Queue ``fn``; set ``cancel`` to drop it before it starts (and to let a running
        generation stop at its next token)."""
        job = Job(fn, self._loop.create_future(), deadline, cancel=cancel or threading.Event())
        self._queue.put(_Item(priority, next(self._seq), job))
        return job

    async def stop(self) -> None:
        """Close the model after the jobs already queued; returns once it is closed."""
        done: asyncio.Future[None] = self._loop.create_future()
        job = Job[None](lambda _m: None, done, None)
        self._queue.put(_Item(_STOP_PRIORITY, next(self._seq), job))
        await done

    def _main(self, load: Callable[[], Any], close: Callable[[LoadedModel], None],
              ready: asyncio.Future[Any]) -> None:
        try:
            loaded = load()
        except BaseException as e:
            self._resolve(ready, None, e)
            return
        self._model = loaded[0] if isinstance(loaded, tuple) else loaded
        self._resolve(ready, loaded, None)
        stop_job = self._serve()
        try:
            close(self._model)
        finally:
            self._model = None
            self._resolve(stop_job.future, None, None)

    def _serve(self) -> Job[Any]:
        """Run jobs until the stop job; return it once every running job has ended."""
        runners = (ThreadPoolExecutor(self.parallel, thread_name_prefix=f"model-{self._name}")
                   if self.parallel > 1 else None)
        try:
            while True:
                self._free.acquire()  # a free sequence first, then the best job waiting
                item = self._queue.get()
                assert item.job is not None
                if item.priority == _STOP_PRIORITY:
                    for _ in range(self.parallel - 1):
                        self._free.acquire()
                    return item.job
                if runners is None:
                    self._run_and_free(item.job)
                else:
                    runners.submit(self._run_and_free, item.job)
        finally:
            if runners is not None:
                runners.shutdown(wait=True)

    def _run_and_free(self, job: Job[Any]) -> None:
        try:
            self._run(job)
        finally:
            self._free.release()

    def _run(self, job: Job[Any]) -> None:
        now = time.monotonic()
        if job.cancel.is_set():
            self._resolve(job.future, None, asyncio.CancelledError())
            return
        if job.deadline is not None and now > job.deadline:
            self._resolve(job.future, None, Unavailable(
                f"model {self._name!r}: the request waited {now - job.enqueued:.1f}s in the "
                "queue and passed its deadline", code="deadline_exceeded"))
            return
        job.started = now
        if self._on_start is not None:
            self._on_start(job)
        with self._lock:
            self.running += 1
        try:
            assert self._model is not None
            result = job.fn(self._model)
        except BaseException as e:  # handed to the awaiting request, logged at the API
            self._resolve(job.future, None, e)
        else:
            self._resolve(job.future, result, None)
        finally:
            with self._lock:
                self.running -= 1

    def _resolve(self, fut: asyncio.Future[Any], result: Any, error: BaseException | None
                 ) -> None:
        def settle() -> None:
            if fut.done():
                return
            if isinstance(error, asyncio.CancelledError):
                fut.cancel()
            elif error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(result)
        try:
            self._loop.call_soon_threadsafe(settle)
        except RuntimeError:  # loop closed during shutdown: nobody is waiting any more
            log.debug("model %s: result dropped, loop closed", self._name)
