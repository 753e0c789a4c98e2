"""The remote aliases as one component: built from ``ModelsConfig.remote``, shown in
/health, ``edged status`` and /v1/models, reloaded in place by a pushed config."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from prometheus_client import CollectorRegistry

from edged.audit.sink import AuditSink
from edged.config import Config
from edged.models.remote import RemoteModel
from edged.models.remote_config import RemoteSpec
from edged.models.remote_metrics import RemoteMetrics

log = logging.getLogger(__name__)


class RemoteModels:
    def __init__(self, specs: dict[str, RemoteSpec], *, registry: CollectorRegistry,
                 audit: AuditSink | None = None, log_prompts: bool = False) -> None:
        self.metrics = RemoteMetrics(registry)
        self._audit = audit
        self._log_prompts = log_prompts
        self._models = {alias: self._build(spec) for alias, spec in specs.items()}
        self._retired: set[RemoteModel] = set()

    def _build(self, spec: RemoteSpec) -> RemoteModel:
        return RemoteModel(spec, metrics=self.metrics, audit=self._audit,
                           log_prompts=self._log_prompts)

    def get(self, alias: object) -> RemoteModel | None:
        return self._models.get(alias) if isinstance(alias, str) else None

    def catalog_view(self) -> list[dict[str, Any]]:
        return [self.entry(m) for m in self._models.values()]

    def entry(self, m: RemoteModel) -> dict[str, Any]:
        """A /v1/models item: nothing is loaded here and nothing charged to the budget."""
        spec = m.spec
        return {"id": spec.alias, "object": "model", "created": 0, "owned_by": "edged",
                "state": "remote", "format": "openai", "size_bytes": None,
                "estimated_bytes": 0, "remote_model": spec.model, "fallback": spec.fallback,
                "breaker": m.breaker.state, "reachable": m.reachable, "pinned": False}

    def health(self) -> dict[str, Any]:
        """Per alias; degraded while a breaker is open (requests are on their fallback)."""
        parts: dict[str, Any] = {a: m.health() for a, m in self._models.items()}
        if any(m.breaker.state == "open" for m in self._models.values()):
            parts["degraded"] = True
        return parts

    def status_line(self) -> str:
        shown = [f"{a} {m.breaker.state}" for a, m in self._models.items()]
        return f"remote: {', '.join(shown)}" if shown else "remote: none"

    async def reload(self, config: Config) -> None:
        """Unchanged aliases keep their breaker and connections; a changed one starts
        afresh; calls in flight finish on the client they started with."""
        specs = config.models.remote
        old = self._models
        self._models = {a: m if (m := old.get(a)) is not None and m.spec == spec
                        else self._build(spec) for a, spec in specs.items()}
        kept = set(self._models.values())
        for m in old.values():
            if m not in kept:
                self._retired.add(m)
        for m in [m for m in self._retired if not m.in_flight]:
            self._retired.discard(m)
            await m.aclose()
        log.info("remote aliases: %s", ", ".join(self._models) or "none")

    async def run(self) -> None:
        try:
            await asyncio.Future()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        # A retired alias still serving a call is closed here, at the latest.
        for m in [*self._models.values(), *self._retired]:
            await m.aclose()
