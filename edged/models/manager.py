"""The model manager: the one face the rest of edged sees (``Inference`` for agents, the
routes in ``edged/models/http.py``, the daemon's health, status and reload).

It holds no policy of its own. ``Residency`` decides what is loaded (budget, room, LRU
eviction, idle timers, power profiles); ``Admission`` decides who gets a loaded model and
when (routing, the queue bound and Retry-After, deadlines); ``edged/models/jobs.py`` builds
what runs on a model's worker thread for each request. See docs/design-notes.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from edged.audit.sink import AuditSink
from edged.config import Config
from edged.models.admission import Admission
from edged.models.backend import Backend
from edged.models.catalog import Catalog
from edged.models.config import ModelsConfig, ModelSpec
from edged.models.contract import GenerateParams, Generation
from edged.models.jobs import Prompt, classify_job, embed_counted_job, embed_job, generate_job
from edged.models.metrics import ModelMetrics
from edged.models.power import PowerMonitor
from edged.models.residency import Residency
from edged.models.resident import audit_event
from edged.models.streams import TokenStream


class ModelManager:
    """Implements ``edged.models.contract.Inference``."""

    def __init__(self, cfg: ModelsConfig, *, catalog: Catalog, backends: Mapping[str, Backend],
                 registry: CollectorRegistry, budget_bytes: int,
                 audit: AuditSink | None = None, power: PowerMonitor | None = None) -> None:
        self._metrics = ModelMetrics(registry)
        self._audit = audit
        self._residency = Residency(cfg, catalog=catalog, backends=backends,
                                    metrics=self._metrics, budget_bytes=budget_bytes,
                                    audit=audit, power=power)
        self._admission = Admission(cfg.budget, residency=self._residency,
                                    metrics=self._metrics)

    # -- Inference -------------------------------------------------------------------

    def aliases(self) -> Sequence[str]:
        return self._residency.aliases()

    def spec(self, alias: str) -> ModelSpec:
        """The config of ``alias`` (404 naming the known aliases)."""
        return self._residency.spec(alias)

    def request_timeout(self) -> float:
        """``budget.request_timeout``: how long a request may wait, as configured now."""
        return self._admission.request_timeout()

    async def chat(self, alias: str, messages: Sequence[dict[str, Any]],
                   params: GenerateParams) -> Generation:
        return await self.generate(alias, list(messages), params)

    def stream_chat(self, alias: str, messages: Sequence[dict[str, Any]],
                    params: GenerateParams) -> TokenStream:
        return self.stream(alias, list(messages), params)

    async def complete(self, alias: str, prompt: str, params: GenerateParams) -> Generation:
        return await self.generate(alias, prompt, params)

    async def embed(self, alias: str, texts: Sequence[str]) -> list[list[float]]:
        items = list(texts)
        return await self._admission.call(alias, GenerateParams(),
                                          lambda cancel: embed_job(items, cancel))

    async def embed_counted(self, alias: str, texts: Sequence[str]
                            ) -> tuple[list[list[float]], int]:
        """Vectors and the number of input tokens they took (0 if the model cannot say)."""
        items = list(texts)
        return await self._admission.call(alias, GenerateParams(),
                                          lambda cancel: embed_counted_job(items, cancel))

    async def classify(self, alias: str, texts: Sequence[str]) -> list[list[float]]:
        return (await self.classify_labeled(alias, texts))[0]

    async def classify_labeled(self, alias: str, texts: Sequence[str]
                               ) -> tuple[list[list[float]], tuple[str, ...]]:
        """Class scores per text, and the class names when the model has them."""
        items = list(texts)
        return await self._admission.call(alias, GenerateParams(),
                                          lambda _cancel: classify_job(items))

    async def generate(self, alias: str, prompt: Prompt, params: GenerateParams) -> Generation:
        """A string prompt is raw completion; a list of messages gets the chat format."""
        return await self._admission.call(alias, params, lambda cancel: generate_job(
            self._metrics, alias, prompt, params, None, cancel))

    def stream(self, alias: str, prompt: Prompt, params: GenerateParams) -> TokenStream:
        return self._admission.stream(alias, params, lambda sink, cancel: generate_job(
            self._metrics, alias, prompt, params, sink, cancel))

    # -- admin -----------------------------------------------------------------------

    async def load(self, alias: str, *, pin: bool = False) -> dict[str, Any]:
        async with self._admission.use(alias, GenerateParams()) as (slot, _deadline):
            self._residency.keep(slot, pin=pin)
        await audit_event(self._audit, "model.pin" if pin else "model.load.request",
                          {"model": alias, "pinned": slot.pinned})
        return self._residency.describe(slot)

    async def unload(self, alias: str) -> dict[str, Any]:
        return await self._residency.unload(alias)

    async def reload(self, config: Config) -> None:
        """A pushed config (edged/remote) takes the [models] catalog and [budget] in place.
        A model whose spec is unchanged keeps its slot, loaded or not; a changed or removed
        one is unloaded first, and if it is serving requests the push is refused (and
        rolled back), so no request in flight loses its model."""
        await self._residency.reload(config.models)
        # No await between the two: requests see the old config or the new one, whole.
        self._admission.configure(config.models.budget)

    def ps(self) -> dict[str, Any]:
        return self._residency.ps()

    async def wait_change(self, generation: int) -> None:
        """Return once the loaded set moved past ``generation``."""
        await self._residency.wait_change(generation)

    async def catalog_view(self) -> list[dict[str, Any]]:
        return await self._residency.catalog_view()

    async def catalog_entry(self, alias: str) -> dict[str, Any]:
        return await self._residency.catalog_entry(alias)

    def health(self) -> dict[str, Any]:
        return {"loaded": sorted(self._residency.loaded()),
                "profile": self._residency.profile_name(), **self._residency.budget_view()}

    def status_line(self) -> str:
        return f"models: {', '.join(self._residency.loaded()) or 'none loaded'}"

    async def run(self) -> None:
        """Keep power-profile changes flowing into the idle timers; unload all at shutdown."""
        await self._residency.run()
