"""Taking a pushed ``[agents]`` config in place (see edged/remote/reload.py).

The new agents are built completely (tools, seed data, routing examples) before one
assignment swaps them in; a chat already running finishes with the agent it started with.
Sessions keep their store: a change of ``session_key`` or ``session_ttl`` is refused in
place (it needs a restart), so the push is rolled back rather than half applied.
"""

from __future__ import annotations

from pathlib import Path

from edged.agents.assemble import ExtraTools, build_agents, load_sealer
from edged.agents.config import AgentsConfig
from edged.agents.runtime import AgentRuntime
from edged.config import Config
from edged.errors import ConfigError
from edged.store import Store
from edged.sync.queue import OutboxQueue


class AgentsReloader:
    def __init__(self, runtime: AgentRuntime, cfg: AgentsConfig, *, keys_dir: Path,
                 store: Store, outbox: OutboxQueue, extra: ExtraTools | None = None) -> None:
        self._runtime = runtime
        self._cfg = cfg
        self._keys_dir = keys_dir
        self._store = store
        self._outbox = outbox
        self._extra = extra

    async def reload(self, config: Config) -> None:
        cfg = config.agents
        for key in ("session_key", "session_ttl", "encoder"):
            if getattr(cfg, key) != getattr(self._cfg, key):
                raise ConfigError(f"agents.{key}: cannot change while edged runs; "
                                  "it needs a restart", code="restart_required")
        agents = await build_agents(cfg, keys_dir=self._keys_dir, store=self._store,
                                    outbox=self._outbox,
                                    sealer=await load_sealer(cfg, self._keys_dir),
                                    extra=self._extra)
        self._runtime.agents = agents
        self._cfg = cfg
        await self._runtime.warm()
