"""POST /v1/classify through the real daemon on a small ONNX classifier graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edged.client import ApiError
from tests.models.test_onnx_backend import B_CLS, W_CLS, classifier_graph, contract_features


def test_classify_returns_scores_and_the_best_label(edged: Any, tmp_path: Path) -> None:
    path = classifier_graph(tmp_path / "intent.onnx", softmax=True)
    (tmp_path / "labels.txt").write_text("greeting\nstock\nprice\n")
    d = edged({"models": {"intent": {"format": "onnx", "kind": "classifier",
                                     "path": str(path)}}})
    texts = ["Hello there", "Do you have the red kettle in stock?"]
    body = d.client.post("/v1/classify", {"model": "intent", "input": texts})
    logits = np.stack([contract_features(t) for t in texts]) @ W_CLS + B_CLS
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    got = np.array([item["scores"] for item in body["data"]])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert body["labels"] == ["greeting", "stock", "price"]
    best = [body["labels"][i] for i in expected.argmax(axis=1)]
    assert [item["label"] for item in body["data"]] == best
    with pytest.raises(ApiError) as err:
        d.client.post("/v1/classify", {"model": "intent", "input": 42})
    assert err.value.status == 400 and err.value.message.startswith("input")
