"""What a load costs, on the bundled GGUF: the estimate and its shared parts, how many
sequences a budget allows, and the measured RSS delta of a real load."""

from __future__ import annotations

from pathlib import Path

import pytest

from edged.models.config import ModelSpec
from edged.models.contract import GenerateParams
from edged.models.llama_backend import LlamaBackend
from edged.models.load_cost import (
    DEFAULT_PARALLEL,
    close_model,
    estimate,
    mappings,
    measured_load,
    sized,
)
from tests.models.local import MiB, bundled_spec


def test_the_estimate_splits_own_bytes_from_shared_ones(bundled_model_path: Path) -> None:
    backend = LlamaBackend()
    spec = bundled_spec(bundled_model_path)
    own, shared = estimate(backend, spec, bundled_model_path, 1)
    assert own == backend.estimate(spec, bundled_model_path, 1)
    assert set(shared) == {f"file:{bundled_model_path}", "runtime:llama.cpp"}
    weights = shared[f"file:{bundled_model_path}"]
    assert 0.9 < weights / bundled_model_path.stat().st_size <= 1.0


def test_parallel_comes_from_the_config_or_a_quarter_of_the_budget(
        bundled_model_path: Path) -> None:
    backend = LlamaBackend()
    auto = bundled_spec(bundled_model_path, parallel=None)

    def kv_of(parallel: int) -> int:  # what ``parallel`` sequences add to one
        one = backend.estimate(bundled_spec(bundled_model_path, parallel=1),
                               bundled_model_path, 1)
        return backend.estimate(bundled_spec(bundled_model_path, parallel=parallel),
                                bundled_model_path, 1) - one

    def parallel(budget: int, spec: ModelSpec = auto) -> int | None:
        return sized(backend, spec, bundled_model_path, 1, budget).parallel

    assert parallel(64 << 30) == DEFAULT_PARALLEL
    assert parallel(4 * kv_of(4)) == 4
    assert parallel(MiB) == 1
    assert parallel(MiB, bundled_spec(bundled_model_path, parallel=3)) == 3  # configured
    onnx = bundled_spec(bundled_model_path, format="onnx", parallel=None)
    assert parallel(64 << 30, onnx) == 1  # only GGUF models batch


@pytest.mark.parametrize(("context", "parallel"), [(512, 1), (2048, 8)],
                         ids=["small", "default-shape"])
def test_a_measured_load_reports_its_rss_delta(bundled_model_path: Path, context: int,
                                               parallel: int) -> None:
    backend = LlamaBackend()
    spec = bundled_spec(bundled_model_path, context=context, parallel=parallel)
    model, delta = measured_load(backend, spec, bundled_model_path, 1)
    try:
        # Its file mapped afresh (the weights, read while loading) and its own buffers,
        # which the estimate does not understate (KV cache, compute, repacked weights).
        assert delta > 0
        _own, shared = estimate(backend, spec, bundled_model_path, 1)
        weights = shared[f"file:{bundled_model_path}"]
        own = backend.estimate(spec, bundled_model_path, 1)
        assert delta - weights <= own, f"measured {(delta - weights) / MiB:.1f} MiB, " \
            f"estimated {own / MiB:.1f} MiB"
        assert mappings(backend, spec) >= 1
        assert model.generate("Hi", GenerateParams(max_tokens=2), None).completion_tokens >= 1
    finally:
        close_model(model)

