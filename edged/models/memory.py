"""Memory facts for the model budget: how much the box (or its cgroup) allows, what the
process really uses, and what a load really cost.

Shared, mmapped model weights make RSS lie: two loads of one file count its pages twice in
RSS but once in PSS (proportional set size), so the budget is kept in PSS. Every function
here reads /proc or sysfs or calls into libc: call them off the event loop
(``asyncio.to_thread`` or the model's worker thread).
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import psutil

from edged.models.config import BudgetConfig

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class MemoryFacts:
    total_ram: int
    available: int  # what the kernel could hand out now (psutil's "available")
    cgroup_limit: int | None  # tightest memory.max / memory.high above us; None: no limit

    @property
    def ceiling(self) -> int:
        """What this process may use at most: RAM, or the cgroup limit when lower."""
        if self.cgroup_limit is None:
            return self.total_ram
        return min(self.total_ram, self.cgroup_limit)


def _read_limit(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text.isdigit() or int(text) >= 1 << 62:  # "max"; cgroup v1 writes 2^63 - 4096
        return None
    return int(text)


def own_cgroup(proc_file: Path = Path("/proc/self/cgroup"), controller: str = "") -> str:
    """This process's cgroup path: the v2 line (``0::/...``), or the v1 line of
    ``controller`` (``4:memory:/...``); ``/`` when unknown."""
    try:
        lines = proc_file.read_text().splitlines()
    except OSError:
        return "/"
    for line in lines:
        hierarchy, controllers, path = [*line.split(":", 2), "", ""][:3]
        v2 = not controller and hierarchy == "0" and not controllers
        if v2 or (controller and controller in controllers.split(",")):
            return path or "/"
    return "/"


def _chain_limits(root: Path, cgroup: str, names: tuple[str, ...]) -> list[int]:
    parts = [p for p in PurePosixPath(cgroup).parts if p not in ("/", ".", "..")]
    folders = [root.joinpath(*parts[:i]) for i in range(len(parts) + 1)]
    return [limit for folder in folders for name in names
            if (limit := _read_limit(folder / name)) is not None]


def cgroup_limit(root: Path = CGROUP_ROOT, cgroup: str | None = None,
                 v1_cgroup: str | None = None) -> int | None:
    """The tightest memory limit from our cgroup up to ``root``, or None.

    cgroup v2: ``memory.max`` and ``memory.high`` (above it the kernel throttles hard, as bad
    as a limit for inference). A systemd unit's ``MemoryMax=`` sits on the service's own
    cgroup, not on the root, so the whole chain counts. Older boxes (cgroup v1 or hybrid)
    have ``<root>/memory/<path>/memory.limit_in_bytes`` instead; both are read.
    """
    v2 = _chain_limits(root, cgroup or own_cgroup(), ("memory.max", "memory.high"))
    v1 = _chain_limits(root / "memory", v1_cgroup or own_cgroup(controller="memory"),
                       ("memory.limit_in_bytes",))
    return min(v2 + v1, default=None)


def read_memory_facts(cgroup_root: Path = CGROUP_ROOT, cgroup: str | None = None) -> MemoryFacts:
    vm = psutil.virtual_memory()
    return MemoryFacts(total_ram=vm.total, available=vm.available,
                       cgroup_limit=cgroup_limit(cgroup_root, cgroup))


def budget_bytes(cfg: BudgetConfig, facts: MemoryFacts) -> int:
    """``budget.memory`` in bytes: a percentage applies to ``facts.ceiling``; an absolute size
    above the ceiling is cut to it, since the kernel would kill us before the budget did."""
    if cfg.memory_percent is not None:
        return int(facts.ceiling * cfg.memory_percent / 100)
    wanted = cfg.memory_bytes if cfg.memory_bytes is not None else facts.ceiling
    if wanted > facts.ceiling:
        log.warning("budget.memory (%d bytes) is above what this box allows (%d bytes); "
                    "using %d", wanted, facts.ceiling, facts.ceiling)
        return facts.ceiling
    return wanted


@dataclass(frozen=True)
class ProcessMemory:
    rss: int
    pss: int  # shared pages divided among the processes mapping them: the budget's unit
    uss: int  # pages only this process has


def process_memory() -> ProcessMemory:
    """This process's memory from /proc/self/smaps_rollup (a few ms for a big process)."""
    info = psutil.Process().memory_full_info()
    return ProcessMemory(rss=info.rss, pss=info.pss, uss=info.uss)


def trim_heap() -> bool:
    """Return freed C heap to the OS with glibc's ``malloc_trim(0)``.

    ``Llama.close()`` leaves 60-100 MiB in the heap until this runs, so an unload that does
    not trim does not free what the budget thinks it frees. False where libc has no
    malloc_trim (musl, macOS): nothing to do there.
    """
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return False
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int
    malloc_trim(0)
    return True


@dataclass(frozen=True)
class MemoryDelta:
    before: ProcessMemory
    after: ProcessMemory

    @property
    def pss(self) -> int:
        return self.after.pss - self.before.pss

    @property
    def rss(self) -> int:
        return self.after.rss - self.before.rss

    @property
    def uss(self) -> int:
        return self.after.uss - self.before.uss


class LoadMeter:
    """What one load (or unload) really changed, to correct the next estimate:

        meter = LoadMeter()          # trims the heap, then takes the baseline
        model = backend.load(...)
        cost = meter.stop().pss      # bytes the load added

    Only meaningful when nothing else allocates much meanwhile: run loads one at a time.
    mmapped weights count only once touched, so measure after a first warm-up call when the
    backend maps lazily.
    """

    def __init__(self) -> None:
        trim_heap()
        self.before = process_memory()

    def stop(self, *, trim: bool = False) -> MemoryDelta:
        """``trim=True`` after an unload, so freed heap is not counted as still in use."""
        if trim:
            trim_heap()
        return MemoryDelta(self.before, process_memory())
