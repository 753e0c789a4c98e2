"""The ONNX backend on real onnxruntime, with small graphs built here by the ``onnx`` package
and checked numerically against numpy."""

from __future__ import annotations

import re
import subprocess
import sys
import unicodedata
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edged.client import ApiError
from edged.errors import BadRequest, IntegrityError
from edged.models.config import ModelSpec, parse_models
from edged.models.contract import GenerateParams
from edged.models.onnx_backend import (
    BASE_ALLOWANCE,
    OnnxBackend,
    WordPiece,
    initializer_bytes,
)
from edged.tomlreader import Table

DIM = 64
RNG = np.random.default_rng(7)
W_EMB = RNG.standard_normal((DIM, 8)).astype(np.float32)
W_CLS = RNG.standard_normal((DIM, 3)).astype(np.float32)
B_CLS = RNG.standard_normal(3).astype(np.float32)
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world", "un", "##aff", "##able", ",", "!"]
TABLE = RNG.standard_normal((len(VOCAB), 4)).astype(np.float32)


def spec(path: Path, kind: str, **extra: Any) -> ModelSpec:
    table = {"format": "onnx", "path": str(path), "kind": kind, **extra}
    return parse_models(Table({"models": {"m": table}}), path.parent).catalog["m"]


def save(path: Path, nodes: list[Any], inputs: list[Any], output: Any,
         weights: dict[str, np.ndarray[Any, Any]], **save_kw: Any) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, [output],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path), **save_kw)
    return path


def features_input() -> Any:
    return helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", DIM])


def embedding_graph(path: Path, **save_kw: Any) -> Path:
    """features -> MatMul -> L2 normalisation."""
    nodes = [helper.make_node("MatMul", ["features", "W"], ["h"]),
             helper.make_node("LpNormalization", ["h"], ["embedding"], axis=1, p=2)]
    out = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 8])
    return save(path, nodes, [features_input()], out, {"W": W_EMB}, **save_kw)


def classifier_graph(path: Path, softmax: bool) -> Path:
    """features -> MatMul + bias -> Softmax (or raw logits)."""
    nodes = [helper.make_node("MatMul", ["features", "W"], ["xw"]),
             helper.make_node("Add", ["xw", "B"], ["logits"])]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1))
    name = "probabilities" if softmax else "logits"
    out = helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 3])
    return save(path, nodes, [features_input()], out, {"W": W_CLS, "B": B_CLS})


def token_graph(path: Path) -> Path:
    """A BERT-shaped encoder: token vectors from a table, zeroed where the mask is 0."""
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", "S"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["N", "S"])
    nodes = [helper.make_node("Gather", ["E", "input_ids"], ["vectors"]),
             helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["maskf", "axis"], ["mask3"]),
             helper.make_node("Mul", ["vectors", "mask3"], ["last_hidden_state"])]
    out = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["N", "S", 4])
    path = save(path, nodes, [ids, mask], out, {"E": TABLE, "axis": np.array([2], np.int64)})
    path.with_name("vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return path


def contract_features(text: str) -> np.ndarray[Any, Any]:
    """The hashed-features contract, written again from docs/models.md."""
    vec = np.zeros(DIM, dtype=np.float64)
    for word in re.findall(r"\w+", unicodedata.normalize("NFKC", text).lower()):
        feats = ["w:" + word] + ["c:" + f" {word} "[i:i + 3] for i in range(len(word))]
        for feat in feats:
            vec[zlib.crc32(feat.encode("utf-8")) % DIM] += 1
    return vec / np.linalg.norm(vec)


def unit(rows: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("onnx")
    embedding_graph(folder / "emb.onnx")
    embedding_graph(folder / "emb-ext.onnx", save_as_external_data=True, location="w.bin",
                    size_threshold=0)
    classifier_graph(folder / "cls.onnx", softmax=True)
    classifier_graph(folder / "logits.onnx", softmax=False)
    (folder / "cls.labels.txt").write_text("greeting\ncomplaint\nquestion\n")
    tokens = folder / "bert"
    tokens.mkdir()
    token_graph(tokens / "model.onnx")
    return folder


@pytest.mark.parametrize("file", ["emb.onnx", "emb-ext.onnx"])
def test_hashed_embedding_matches_numpy(models: Path, file: str) -> None:
    texts = ["Hello world", "hello, WORLD!", "Where are the size 42 boots?"]
    model = OnnxBackend().load(spec(models / file, "embedding"), models / file, 2)
    got = np.array(model.embed(texts))
    expected = unit(np.stack([contract_features(t) for t in texts]) @ W_EMB)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert got[0] == pytest.approx(got[1])  # case and punctuation do not matter
    assert np.linalg.norm(got, axis=1) == pytest.approx([1, 1, 1])


@pytest.mark.parametrize("file", ["cls.onnx", "logits.onnx"])
def test_classifier_gives_probabilities(models: Path, file: str) -> None:
    texts = ["hello there", "my order never arrived", "do you open on sunday?"]
    model = OnnxBackend().load(spec(models / file, "classifier"), models / file, 1)
    got = np.array(model.classify(texts))
    logits = np.stack([contract_features(t) for t in texts]) @ W_CLS + B_CLS
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert model.labels == (("greeting", "complaint", "question") if file == "cls.onnx" else ())


def test_wordpiece_follows_bert() -> None:
    wp = WordPiece({t: i for i, t in enumerate(VOCAB)})
    assert wp.lowercase
    assert wp.basic("Héllo,\tunaffable  WORLD!") == ["hello", ",", "unaffable", "world", "!"]
    assert wp.encode("Héllo, unaffable zebra!", 128) == [2, 4, 9, 6, 7, 8, 1, 10, 3]
    assert wp.encode("hello " * 200, 8) == [2, 4, 4, 4, 4, 4, 4, 3]
    with_mask = WordPiece({t: i for i, t in enumerate([*VOCAB, "[MASK]", "[unused0]"])})
    assert with_mask.lowercase
    cased = WordPiece({t: i for i, t in enumerate([*VOCAB, "Hello"])})
    assert not cased.lowercase
    assert cased.encode("Hello hello HELLO", 128) == [2, 11, 4, 1, 3]
    with pytest.raises(BadRequest, match=r"lacks \[CLS\]"):
        WordPiece({"<s>": 0, "</s>": 1, "[UNK]": 2, "[PAD]": 3})


def test_token_model_mean_pools_over_the_mask(models: Path) -> None:
    path = models / "bert/model.onnx"
    model = OnnxBackend().load(spec(path, "embedding", context=128), path, 1)
    short, long = "hello", "hello, unaffable world!"
    got = np.array(model.embed([short, long]))
    ids = {short: [2, 4, 3], long: [2, 4, 9, 6, 7, 8, 5, 10, 3]}
    expected = unit(np.stack([TABLE[ids[t]].mean(axis=0) for t in (short, long)]))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # padding in a batch changes nothing: alone, the short text embeds the same
    np.testing.assert_allclose(model.embed([short])[0], got[0], rtol=1e-6)


def test_low_memory_session_with_profile_threads(models: Path) -> None:
    model = OnnxBackend().load(spec(models / "emb.onnx", "embedding"), models / "emb.onnx", 3)
    opts = model.session_options
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (3, 1)
    assert not opts.enable_cpu_mem_arena and not opts.enable_mem_pattern
    model.close()
    assert model.session_options is None
    with pytest.raises(BadRequest, match="unloaded"):
        model.embed(["hello"])


def test_estimate_counts_initializers(tmp_path: Path) -> None:
    weights = {"f32": RNG.standard_normal((300, 200)).astype(np.float32),
               "f16": np.ones((128, 64), np.float16), "i8": np.ones((1000,), np.int8),
               "i64": np.arange(10, dtype=np.int64)}
    nodes = [helper.make_node("Identity", ["x"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    inline = save(tmp_path / "inline.onnx", nodes, [x], y, weights)
    external = save(tmp_path / "ext.onnx", nodes, [x], y, weights, save_as_external_data=True,
                    all_tensors_to_one_file=True, location="ext.onnx.data", size_threshold=0)
    total = sum(v.nbytes for v in weights.values())
    assert initializer_bytes(inline) == initializer_bytes(external) == total
    assert external.stat().st_size < 1000  # the weights really live outside the graph file
    backend = OnnxBackend()
    assert backend.estimate(spec(inline, "embedding"), inline, 1) >= total + BASE_ALLOWANCE


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_file_is_a_clear_error(models: Path, tmp_path: Path, damage: str) -> None:
    good = (models / "emb.onnx").read_bytes()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes({"truncate": good[:len(good) // 2], "garbage": b"GGUF\x03\x00" * 999,
                     "empty": b""}[damage])
    backend = OnnxBackend()
    with pytest.raises(IntegrityError, match=r"bad\.onnx is not a whole ONNX model"):
        backend.estimate(spec(bad, "embedding"), bad, 1)
    with pytest.raises(IntegrityError, match=r"bad\.onnx is not a whole ONNX model"):
        backend.load(spec(bad, "embedding"), bad, 1)


def test_wrong_use_is_a_bad_request(models: Path) -> None:
    backend = OnnxBackend()
    emb = backend.load(spec(models / "emb.onnx", "embedding"), models / "emb.onnx", 1)
    with pytest.raises(BadRequest, match="not chat or completions") as err:
        emb.generate("hi", GenerateParams(), None)
    assert err.value.status == 400
    with pytest.raises(BadRequest, match="is not a classifier"):
        emb.classify(["hi"])
    cls = backend.load(spec(models / "cls.onnx", "classifier"), models / "cls.onnx", 1)
    with pytest.raises(BadRequest, match="is a classifier: use classify"):
        cls.embed(["hi"])
    with pytest.raises(BadRequest, match=r"models\.m\.kind: an ONNX model is"):
        backend.load(spec(models / "emb.onnx", "chat"), models / "emb.onnx", 1)


def test_graph_without_a_text_contract_is_refused(tmp_path: Path) -> None:
    image = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 3, 8, 8])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 8, 8])
    path = save(tmp_path / "img.onnx", [helper.make_node("Relu", ["pixels"], ["y"])], [image],
                out, {})
    with pytest.raises(BadRequest, match=r"inputs \(pixels: tensor\(float\)"):
        OnnxBackend().load(spec(path, "embedding"), path, 1)
    (tmp_path / "tok").mkdir()
    lonely = token_graph(tmp_path / "tok" / "model.onnx")
    (tmp_path / "tok" / "vocab.txt").unlink()
    with pytest.raises(BadRequest, match=r"has no vocabulary: put model\.vocab\.txt"):
        OnnxBackend().load(spec(lonely, "embedding"), lonely, 1)


def test_empty_batch(models: Path) -> None:
    model = OnnxBackend().load(spec(models / "emb.onnx", "embedding"), models / "emb.onnx", 1)
    assert model.embed([]) == []


def test_onnxruntime_is_imported_only_by_a_load() -> None:
    code = ("import sys, edged.models.onnx_backend as b; b.OnnxBackend(); "
            "print('onnxruntime' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_daemon_serves_onnx_embeddings(edged: Any, tmp_path: Path) -> None:
    """End to end: /v1/embeddings on the real daemon runs the ONNX graph."""
    path = embedding_graph(tmp_path / "emb.onnx")
    d = edged({"models": {"emb": {"format": "onnx", "kind": "embedding", "path": str(path)}}})
    texts = ["Hello world", "Where are the size 42 boots?"]
    body = d.client.post("/v1/embeddings", {"model": "emb", "input": texts})
    got = np.array([item["embedding"] for item in body["data"]])
    expected = unit(np.stack([contract_features(t) for t in texts]) @ W_EMB)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ApiError) as err:
        d.client.post("/v1/chat/completions",
                      {"model": "emb", "messages": [{"role": "user", "content": "hi"}]})
    assert err.value.status == 400


def test_the_daemon_does_not_import_numpy_at_start() -> None:
    # numpy costs an idle daemon ~10 MiB of RSS; it is imported when an ONNX model runs.
    code = "import sys, edged.daemon; print(sorted(m for m in sys.modules if 'numpy' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
