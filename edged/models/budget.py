"""The memory ledger: what loaded models cost, with shared weights counted once.

Two aliases over one GGUF file map the same pages (DESIGN: RSS 704 MiB, PSS 470 MiB for two
loads), so a model's cost is split in two: its own bytes (KV cache, compute buffers, any
estimate correction) and its file's weights, charged once while any holder is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MiB = 1024 * 1024


def mib(n: int) -> str:
    return f"{n / MiB:.0f} MiB"


Shared = dict[str, int]  # what a load needs that other loads may share, by key


@dataclass
class Ledger:
    """Keys of shared costs: ``file:<path>`` for a file's mmapped weights, and one per
    inference runtime for its process-wide heap (llama.cpp keeps ~100 MiB of sampling
    buffers for a 262k vocabulary once models have served requests, whichever model)."""

    total: int
    _own: dict[str, int] = field(default_factory=dict)
    _keys_of: dict[str, frozenset[str]] = field(default_factory=dict)
    _shared: dict[str, int] = field(default_factory=dict)

    def _held(self) -> set[str]:
        return {k for keys in self._keys_of.values() for k in keys}

    def used(self) -> int:
        return sum(self._own.values()) + sum(self._shared[k] for k in self._held())

    def free(self) -> int:
        return self.total - self.used()

    def need(self, own: int, shared: Shared) -> int:
        """What loading one more model would add: its own bytes and the shared costs no
        loaded model pays yet."""
        held = self._held()
        return own + sum(v for k, v in shared.items() if k not in held)

    def charge(self, alias: str, own: int, shared: Shared) -> None:
        self._own[alias] = own
        self._keys_of[alias] = frozenset(shared)
        for key, value in shared.items():
            self._shared[key] = max(value, self._shared.get(key, 0))

    def release(self, alias: str) -> None:
        self._own.pop(alias, None)
        self._keys_of.pop(alias, None)
        held = self._held()
        for key in [k for k in self._shared if k not in held]:
            del self._shared[key]

    def cost_of(self, alias: str) -> int:
        """The alias's own bytes plus its share of each shared cost."""
        keys = self._keys_of.get(alias)
        if keys is None:
            return 0
        share = 0
        for key in keys:
            holders = sum(1 for ks in self._keys_of.values() if key in ks)
            share += self._shared[key] // holders
        return self._own[alias] + share

    def correct(self, alias: str, own: int) -> None:
        """Replace an estimate with what the load measurably added."""
        if alias in self._own:
            self._own[alias] = own
