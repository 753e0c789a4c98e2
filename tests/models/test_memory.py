"""Memory facts: cgroup limits from fixture trees, PSS accounting and heap trimming for real."""

from __future__ import annotations

import ctypes
import mmap
from pathlib import Path
from typing import Any

import psutil
import pytest

from edged.models.config import BudgetConfig, parse_models
from edged.models.memory import (
    LoadMeter,
    MemoryFacts,
    budget_bytes,
    cgroup_limit,
    own_cgroup,
    process_memory,
    read_memory_facts,
    trim_heap,
)
from edged.tomlreader import Table

FIXTURES = Path(__file__).parent / "fixtures"
MiB = 1 << 20
GiB = 1 << 30


def budget(memory: Any) -> BudgetConfig:
    return parse_models(Table({"budget": {"memory": memory}}), Path("/tmp")).budget


@pytest.mark.parametrize(("tree", "cgroup", "limit"), [
    ("cgroup_unlimited", "/", None),  # "max" everywhere
    ("cgroup_service", "/system.slice/edged.service", 768 * MiB),  # memory.high under MemoryMax
    ("cgroup_service", "/user.slice/shell.scope", None),  # a path the tree lacks: no limit
    ("cgroup_container", "/docker/0123abcd", 512 * MiB),  # our path is outside the namespace
    ("no-such-tree", "/", None),  # no cgroup mounted at all
    ("cgroup_v1", "/kiosk", 256 * MiB),  # cgroup v1 (hybrid): memory/<path>/limit_in_bytes
    ("cgroup_v1", "/", None),  # v1's "no limit" is 2^63 - 4096
])
def test_cgroup_limit_is_the_tightest_on_our_chain(tree: str, cgroup: str, limit: int | None
                                                   ) -> None:
    assert cgroup_limit(FIXTURES / tree, cgroup, cgroup) == limit


def test_own_cgroup_takes_the_v2_line(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("12:memory:/legacy\n3:cpu,cpuacct:/x\n1:name=systemd:/y\n"
                    "0::/system.slice/edged.service\n")
    assert own_cgroup(proc) == "/system.slice/edged.service"
    assert own_cgroup(proc, "memory") == "/legacy"
    assert own_cgroup(proc, "cpuacct") == "/x"
    assert own_cgroup(tmp_path / "absent") == "/"


def test_facts_come_from_the_kernel() -> None:
    meminfo = Path("/proc/meminfo").read_text().split("\n")
    total_kib = int(next(line for line in meminfo if line.startswith("MemTotal:")).split()[1])
    facts = read_memory_facts(FIXTURES / "cgroup_container", "/")
    assert facts.total_ram == total_kib * 1024
    assert facts.cgroup_limit == 512 * MiB
    assert facts.ceiling == min(512 * MiB, facts.total_ram)
    assert 0 < facts.available <= facts.total_ram


@pytest.mark.parametrize(("memory", "facts", "expected"), [
    ("50%", MemoryFacts(8 * GiB, 4 * GiB, None), 4 * GiB),
    ("50%", MemoryFacts(8 * GiB, 4 * GiB, 1 * GiB), 512 * MiB),  # percent of the cgroup limit
    ("1GiB", MemoryFacts(8 * GiB, 4 * GiB, None), 1 * GiB),
    ("3GiB", MemoryFacts(8 * GiB, 4 * GiB, 2 * GiB), 2 * GiB),  # cut to what the cgroup allows
])
def test_budget_bytes(memory: str, facts: MemoryFacts, expected: int) -> None:
    assert budget_bytes(budget(memory), facts) == expected


def test_meter_sees_an_allocation() -> None:
    meter = LoadMeter()
    block = bytearray(64 * MiB)  # zero pages: touch them so they are resident
    for i in range(0, len(block), 4096):
        block[i] = 1
    delta = meter.stop()
    assert 60 * MiB <= delta.pss <= 80 * MiB
    assert 60 * MiB <= delta.uss <= 80 * MiB
    del block


def test_shared_mapping_counts_once_in_pss(tmp_path: Path) -> None:
    """Two maps of one file, like two aliases of one GGUF: RSS counts it twice, PSS once."""
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"\x01" * (32 * MiB))
    meter = LoadMeter()
    with weights.open("rb") as f:
        maps = [mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) for _ in range(2)]
        touched = sum(m[i] for m in maps for i in range(0, len(m), 4096))
        delta = meter.stop()
        for m in maps:
            m.close()
    assert touched == 2 * 32 * MiB // 4096
    assert 60 * MiB <= delta.rss <= 72 * MiB
    assert 28 * MiB <= delta.pss <= 40 * MiB


def test_trim_heap_returns_freed_heap_to_the_os() -> None:
    """Small freed blocks stay in glibc's heap (as after Llama.close()) until malloc_trim."""
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    blocks = [libc.malloc(1024) for _ in range(100_000)]  # ~100 MiB below the mmap threshold
    for b in blocks:
        libc.memset(b, 1, 1024)
    for b in blocks[:-1]:  # the last block pins the top, so free() alone cannot shrink the heap
        libc.free(b)
    before = psutil.Process().memory_info().rss
    assert trim_heap() is True
    freed = before - psutil.Process().memory_info().rss
    libc.free(blocks[-1])
    assert freed >= 64 * MiB


def test_process_memory_is_consistent() -> None:
    mem = process_memory()
    assert 0 < mem.uss <= mem.pss <= mem.rss
