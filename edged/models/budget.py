"""The memory ledger: what loaded models cost, with shared weights counted once.

Two aliases over one GGUF file map the same pages (DESIGN: RSS 704 MiB, PSS 470 MiB for two
loads), so a model's cost is split in two: its own bytes (KV cache, compute buffers, any
estimate correction) and its file's weights, charged once while any holder is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

MiB = 1024 * 1024


def mib(n: int) -> str:
    return f"{n / MiB:.0f} MiB"


@dataclass
class Ledger:
    total: int
    _own: dict[str, int] = field(default_factory=dict)
    _file_of: dict[str, Path] = field(default_factory=dict)
    _shared: dict[Path, int] = field(default_factory=dict)

    def used(self) -> int:
        files = set(self._file_of.values())
        return sum(self._own.values()) + sum(self._shared[p] for p in files)

    def free(self) -> int:
        return self.total - self.used()

    def need(self, path: Path, own: int, shared: int) -> int:
        """What loading one more model over ``path`` would add."""
        return own + (0 if path in self._file_of.values() else shared)

    def charge(self, alias: str, path: Path, own: int, shared: int) -> None:
        self._own[alias] = own
        self._file_of[alias] = path
        self._shared[path] = shared

    def release(self, alias: str) -> None:
        self._own.pop(alias, None)
        path = self._file_of.pop(alias, None)
        if path is not None and path not in self._file_of.values():
            self._shared.pop(path, None)

    def cost_of(self, alias: str) -> int:
        """The alias's own bytes plus its share of its file's weights."""
        path = self._file_of.get(alias)
        if path is None:
            return 0
        holders = sum(1 for p in self._file_of.values() if p == path)
        return self._own[alias] + self._shared[path] // holders

    def correct(self, alias: str, own: int) -> None:
        """Replace an estimate with what the load measurably added."""
        if alias in self._own:
            self._own[alias] = own
