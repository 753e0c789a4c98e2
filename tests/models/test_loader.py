"""Loading one model on the bundled GGUF: the charge, the worker, the measured cost, the
threads a power profile allows, clear errors, the estimate the catalog view shows."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from edged.errors import BadRequest
from edged.models.backend import Backend
from edged.models.budget import Ledger
from edged.models.catalog import Catalog
from edged.models.config import ModelsConfig, ProfileConfig, physical_cores
from edged.models.contract import GenerateParams
from edged.models.eviction import Eviction
from edged.models.llama_backend import LlamaBackend
from edged.models.load_cost import estimate
from edged.models.loader import Loader
from edged.models.metrics import ModelMetrics
from edged.models.resident import Resident
from tests.edgedtest import bundled_alias
from tests.models.local import MiB, bundled_spec, models_config, whole_cost

AC = ProfileConfig(threads=None, idle_unload=None, max_loaded=None, prefer_smaller=False)


async def nothing_to_evict(slot: Resident, reason: str) -> None:
    raise AssertionError(f"{slot.spec.alias} evicted ({reason}) with room to spare")


def loader(cfg: ModelsConfig, ledger: Ledger, residents: list[Resident], *,
           profile: ProfileConfig = AC, backends: Mapping[str, Backend] | None = None
           ) -> tuple[Loader, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = ModelMetrics(registry)
    eviction = Eviction(ledger, residents=lambda: residents, unload=nothing_to_evict,
                        settings=lambda: profile, metrics=metrics)
    return Loader(ledger, backends={"gguf": LlamaBackend()} if backends is None else backends,
                  eviction=eviction, metrics=metrics, settings=lambda: profile,
                  profile_name=lambda: "ac"), registry


async def test_a_load_charges_the_ledger_and_starts_the_worker(
        tmp_path: Path, bundled_model_path: Path) -> None:
    cfg = models_config(tmp_path, {"g": bundled_alias(parallel=2)})
    ledger = Ledger(2 << 30)
    slot = Resident(cfg.catalog["g"], state="loading")
    load, registry = loader(cfg, ledger, [slot])
    await load.load(slot, Catalog(cfg), deadline=float("inf"))
    try:
        assert slot.state == "loaded" and slot.worker is not None
        assert slot.threads == 1 and slot.parallel == 2 == slot.worker.parallel
        assert slot.estimated == whole_cost(bundled_model_path, parallel=2)
        # The charge: the weights and the runtime heap once, and its own bytes as measured
        # (the estimate when the RSS delta said nothing).
        own_est, shared = estimate(LlamaBackend(), bundled_spec(bundled_model_path, parallel=2),
                                   bundled_model_path, 1)
        own = slot.measured if slot.measured is not None else own_est
        assert ledger.cost_of("g") == own + sum(shared.values()) == ledger.used()
        assert registry.get_sample_value("edged_budget_used_bytes") == ledger.used()
        job = slot.worker.submit(
            lambda m: m.generate("Hi", GenerateParams(max_tokens=2), None), 5, None)
        assert (await job.future).completion_tokens >= 1
    finally:
        if slot.worker is not None:
            await slot.worker.stop()


def test_threads_are_the_physical_cores_capped_by_the_profile(tmp_path: Path,
                                                              bundled_model_path: Path) -> None:
    cfg = models_config(tmp_path, {"own": bundled_alias(threads=2),
                                   "auto": bundled_alias(threads=None)})
    cool, _ = loader(cfg, Ledger(1 << 30), [])
    hot, _ = loader(cfg, Ledger(1 << 30), [], profile=dataclasses.replace(AC, threads=1))
    assert cool.threads(cfg.catalog["auto"]) == physical_cores()
    assert cool.threads(cfg.catalog["own"]) == 2
    assert hot.threads(cfg.catalog["own"]) == hot.threads(cfg.catalog["auto"]) == 1


async def test_a_format_without_a_backend_is_a_clear_error(tmp_path: Path,
                                                           bundled_model_path: Path) -> None:
    cfg = models_config(tmp_path, {"g": bundled_alias()})
    slot = Resident(cfg.catalog["g"], state="loading")
    ledger = Ledger(1 << 30)
    load, _ = loader(cfg, ledger, [slot], backends={})
    with pytest.raises(BadRequest) as e:
        await load.load(slot, Catalog(cfg), deadline=float("inf"))
    assert e.value.code == "no_backend" and "models.g.format: no gguf backend" in e.value.message
    assert slot.worker is None and ledger.used() == 0


def test_the_catalog_estimate_is_the_whole_cost_or_none(tmp_path: Path,
                                                        bundled_model_path: Path) -> None:
    missing = tmp_path / "missing.gguf"
    cfg = models_config(tmp_path, {"g": bundled_alias(parallel=1),
                                   "gone": {"path": str(missing), "context": 512}})
    load, _ = loader(cfg, Ledger(1 << 30), [])
    catalog = Catalog(cfg)
    assert load.whole_estimate(cfg.catalog["g"], catalog) == whole_cost(bundled_model_path)
    assert load.whole_estimate(cfg.catalog["gone"], catalog) is None
    assert whole_cost(bundled_model_path) > 300 * MiB
