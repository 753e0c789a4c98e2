"""The kit interface: how a domain (a store, a clinic, a pharmacy) plugs into the runtime.

The runtime knows no domain. A kit brings the tools (typed ``@tool`` methods), the agent
options it owns (validated by the kit, errors naming the key), default routing examples and
the dialogue hooks of ``Toolset``. Kits are found through the entry-point group
``edged.kits``; the bundled retail and clinic kits use only what this module exports.
See docs/agents.md ("Writing a kit").
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from edged.agents.config import AgentSpec
from edged.agents.sessions import Sealer
from edged.agents.tickets import Tickets
from edged.agents.tools import JSON, Tool
from edged.errors import ConfigError
from edged.store import Store
from edged.tomlreader import Table

GROUP = "edged.kits"


class Toolset(Protocol):
    """What a kit builds for one agent: its tools and the dialogue hooks the runtime calls."""

    def tools(self) -> list[Tool]: ...

    def extract(self, tool_name: str, text: str, state: JSON) -> JSON:
        """Arguments for ``tool_name`` found in ``text`` (``state``: the session's slots)."""
        ...

    def check(self, tool_name: str, args: JSON) -> bool:
        """Do the arguments name real things (a product in the catalog, a provider)?"""
        ...

    def remember(self, tool_name: str, args: JSON, result: JSON, state: JSON) -> None:
        """Keep what a follow-up will refer to."""
        ...

    def mask(self, text: str) -> str:
        """Entities out before routing, so examples about one product teach every product."""
        ...

    def mentions(self, text: str) -> bool:
        """Does a short follow-up carry something to refine (a product, a colour, a day)?"""
        ...


@dataclass(frozen=True)
class Override:
    """A turn decided before routing (a red flag, a request no tool can do): the tool to
    run (None: no tool, the reply is ``always``), its arguments, and sentences the reply
    always carries."""

    tool: str | None
    args: JSON
    always: tuple[str, ...] = ()


@dataclass(frozen=True)
class Meaning:
    """How near each clause of a message (the whole message first, then its sentences)
    comes to each of a kit's exemplar groups: the mean of the five best encoder cosines.
    Empty when no encoder is available (then only a kit's lexical cues can decide)."""

    clauses: tuple[Mapping[str, float], ...]

    def near(self, group: str, threshold: float) -> bool:
        return any(c.get(group, -1.0) >= threshold for c in self.clauses)


@runtime_checkable
class Exemplary(Protocol):
    def exemplars(self) -> Mapping[str, Sequence[str]]:
        """Groups of example sentences whose meaning the kit wants measured every turn
        (a clinic's red flags, self-harm); see ``Meaning``."""
        ...


@runtime_checkable
class Overriding(Protocol):
    def override(self, text: str, meaning: Meaning) -> Override | None:
        """The turn this text forces, whatever routing or a pending question would pick."""
        ...


@runtime_checkable
class Chaining(Protocol):
    def follow_up(self, tool_name: str, args: JSON, result: JSON) -> tuple[str, JSON] | None:
        """The tool to run next after this result (out of stock -> alternatives), if any."""
        ...


@runtime_checkable
class Asking(Protocol):
    def question(self, tool_name: str, slot: str) -> str | None:
        """How to ask for a missing required slot ("May I have the patient's full name?")."""
        ...


@runtime_checkable
class Preparing(Protocol):
    def instead(self, tool_name: str, args: JSON, missing: list[str], text: str,
                state: JSON) -> tuple[str, JSON] | None:
        """A request misses ``missing``: a tool to run first that shows the choices (the
        free slots before asking for a time), or None to just ask."""
        ...


@runtime_checkable
class Continuing(Protocol):
    def continues(self, last_tool: str, text: str, state: JSON) -> str | None:
        """The tool a message continues with after ``last_tool`` ran (a time picked from
        listed slots is a booking), whatever its words route to; None if it does not."""
        ...


@runtime_checkable
class HandingOff(Protocol):
    handoff: str  # the tool that hands the conversation to a person (a ticket)


@dataclass(frozen=True)
class KitContext:
    """What the runtime gives a kit to build one agent's toolset with."""

    spec: AgentSpec
    options: Any  # what the kit's ``parse_options`` returned for this agent
    store: Store
    tickets: Tickets
    sealer: Sealer
    keys_dir: Path
    data_dir: Path | None
    clock: Callable[[], dt.datetime]

    def data_file(self, name: str) -> Path:
        if self.data_dir is None:
            raise ConfigError(f"agents.data_dir: agent {self.spec.name!r} uses tools that "
                              f"need seed data ({name})")
        return self.data_dir / name


class Kit(Protocol):
    name: str
    tool_names: frozenset[str]
    examples_file: Path | None  # default routing examples when the agent gives none

    def parse_options(self, t: Table) -> Any:
        """Read (and so claim) this kit's keys of an agent's table; raise ConfigError naming
        the key. Runs before any I/O."""
        ...

    async def build(self, ctx: KitContext) -> Toolset: ...


@functools.cache
def discover() -> dict[str, Kit]:
    """Every installed kit, by name. Read once per process: scanning every installed
    package's metadata costs about a hundred file opens, and every config parse (each push,
    each reload) asks; a kit installed later is found at the next start."""
    kits: dict[str, Kit] = {}
    for ep in entry_points(group=GROUP):
        try:
            kit = ep.load()
        except Exception as e:  # a broken third-party kit names itself
            raise ConfigError(f"kits: cannot load kit {ep.name!r} ({ep.value}): {e}") from None
        kits[kit.name] = kit
    return kits


def read_seed(path: Path) -> tuple[dict[str, Any], str]:
    """A kit's JSON seed file and its sha256 (seed again only when it changed)."""
    try:
        raw = path.read_bytes()
        data = json.loads(raw)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"agents.data_dir: cannot read {path}: {e}") from None
    return data, hashlib.sha256(raw).hexdigest()
