#!/usr/bin/env python3
"""The bundled sentence encoder, two ways: edged's ONNX graph (built from the package's
safetensors, run by onnxruntime through edged's OnnxBackend) against a GGUF written here
with the ``gguf`` package and run by llama.cpp's BERT support (llama-cpp-python,
``embedding=True``, mean pooling).

    .venv/bin/python scripts/bench/encoder.py [--runs 3] [--threads 2] [--f16]

Each run loads each side in a fresh child process (so one library's memory never counts
for the other), alternating ONNX, GGUF, ONNX, ...: load seconds, RSS after load (and the
library's own share: RSS after importing it, before the load), vectors/s for single short
sentences (one request each) and for batches of 32, and the cosine between the two sides'
vectors of the same sentences (a conversion check). Medians over the runs; ratio GGUF/ONNX.
Also the one-off costs: building the ONNX graph, writing the GGUF. A throwaway, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

PACKAGE = "all_minilm_l6_v2"
SHA = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MiB = 1 << 20
SHORT = ["Is the blue kettle in stock?", "Book me in for Friday morning",
         "Where are the size 42 boots?", "I want to speak to a person",
         "Do you price match?", "Can I reschedule my appointment?",
         "What time do you close today?", "My prescription needs a refill",
         "Any cheaper laptops than this one?", "Cancel my booking please",
         "How much is the 55 inch TV?", "I have a rash on my arm"]
BATCH = 32
SINGLES = 240  # single-sentence requests per measurement
BATCHES = 8


# -- the two files ----------------------------------------------------------------------------

def build_onnx(cache: Path, threads: int) -> tuple[Path, float]:
    from edged.models.catalog import Catalog
    from edged.models.config import parse_models
    from edged.tomlreader import Table
    cfg = parse_models(Table({"models": {"cache_dir": str(cache), "minilm": {
        "format": "onnx", "kind": "embedding", "package": PACKAGE, "sha256": SHA,
        "context": 256, "threads": threads}}}), cache)
    started = time.perf_counter()
    path = asyncio.run(Catalog(cfg).resolve(cfg.catalog["minilm"]))
    return path, time.perf_counter() - started


def package_folder(out: Path) -> Path:
    import importlib.util
    spec = importlib.util.find_spec(PACKAGE)
    assert spec is not None and spec.submodule_search_locations
    with zipfile.ZipFile(Path(next(iter(spec.submodule_search_locations))) / "model.zip") as zf:
        zf.extractall(out)
    return out


def _phantom(token: str) -> str:
    """llama.cpp's WPM vocabulary: word starts carry U+2581, continuations lose "##"."""
    if token.startswith("[") and token.endswith("]"):
        return token
    return token[2:] if token.startswith("##") else "\u2581" + token


def write_gguf(folder: Path, out: Path, f16: bool) -> float:
    """What llama.cpp's convert_hf_to_gguf.py writes for a BertModel, with the gguf package."""
    import gguf
    import numpy as np

    from edged.models.safetensors_file import read_tensors
    started = time.perf_counter()
    cfg = json.loads((folder / "config.json").read_text())
    tok = json.loads((folder / "tokenizer.json").read_text())
    w = gguf.GGUFWriter(str(out), "bert")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_layer_norm_eps(cfg["layer_norm_eps"])
    w.add_causal_attention(False)
    w.add_pooling_type(gguf.PoolingType.MEAN)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
    w.add_token_type_count(cfg["type_vocab_size"])
    vocab = tok["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.__getitem__)
    special = {t["content"] for t in tok["added_tokens"] if t["special"]}
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("default")
    w.add_token_list([_phantom(t) for t in tokens])
    w.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL
                       for t in tokens])
    for add, name in ((w.add_bos_token_id, "[CLS]"), (w.add_sep_token_id, "[SEP]"),
                      (w.add_unk_token_id, "[UNK]"), (w.add_pad_token_id, "[PAD]"),
                      (w.add_mask_token_id, "[MASK]")):
        add(vocab[name])
    w.add_add_bos_token(True)
    w.add_add_sep_token(True)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, cfg["num_hidden_layers"])
    weights = read_tensors((folder / "model.safetensors").read_bytes())
    for name, value in weights.items():
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None or name.endswith("position_ids"):
            continue  # the pooler, the position ids: llama.cpp uses neither
        matrix = value.ndim == 2 and new != "token_types.weight"
        w.add_tensor(new, np.asarray(value, dtype=np.float16 if f16 and matrix else np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return time.perf_counter() - started


# -- one side, in a child process -------------------------------------------------------------

def _rss() -> int:
    import psutil
    return int(psutil.Process().memory_info().rss)


def _onnx_embedder(path: Path, threads: int) -> Any:
    import onnxruntime  # noqa: F401  (the library's own share, before the load)

    from edged.models.config import parse_models
    from edged.models.onnx_backend import OnnxBackend
    from edged.tomlreader import Table
    spec = parse_models(Table({"models": {"m": {
        "format": "onnx", "kind": "embedding", "path": str(path), "context": 256}}}),
        path.parent).catalog["m"]
    return lambda: OnnxBackend().load(spec, path, threads).embed


def _gguf_embedder(path: Path, threads: int) -> Any:
    import llama_cpp

    def load() -> Any:
        llm = llama_cpp.Llama(str(path), embedding=True, n_ctx=4096, n_batch=4096,
                              n_ubatch=4096, n_threads=threads, n_threads_batch=threads,
                              pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN, verbose=False)
        return lambda texts: llm.embed(texts, normalize=True)
    return load


def child(kind: str, path: Path, threads: int) -> dict[str, Any]:
    import numpy as np
    base = _rss()
    make = (_onnx_embedder if kind == "onnx" else _gguf_embedder)(path, threads)
    library = _rss()
    started = time.perf_counter()
    embed = make()
    load_s = time.perf_counter() - started
    loaded = _rss()
    started = time.perf_counter()
    embed([SHORT[0]])
    first_ms = (time.perf_counter() - started) * 1000
    vectors = np.asarray(embed(SHORT), dtype=np.float64)  # the check vectors
    for text in SHORT:  # warm: llama.cpp stalls ~0.8 s on the first singles after a batch
        embed([text])
    started = time.perf_counter()
    for i in range(SINGLES):
        embed([SHORT[i % len(SHORT)]])
    singles = SINGLES / (time.perf_counter() - started)
    batch = [SHORT[i % len(SHORT)] + f" ({i})" for i in range(BATCH)]
    started = time.perf_counter()
    for _ in range(BATCHES):
        embed(batch)
    batched = BATCH * BATCHES / (time.perf_counter() - started)
    return {"library_mib": (library - base) / MiB, "load_mib": (loaded - library) / MiB,
            "rss_mib": loaded / MiB, "rss_after_mib": _rss() / MiB, "load_s": load_s,
            "first_ms": first_ms,
            "single_per_s": singles, "batch_per_s": batched, "vectors": vectors.tolist()}


def run_child(kind: str, path: Path, threads: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(path),
                          "--threads", str(threads)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# -- the report --------------------------------------------------------------------------------

ROWS = [("load_s", "load (s)", "{:.2f}"),
        ("first_ms", "first request after load (ms)", "{:.1f}"),
        ("library_mib", "library import (MiB RSS)", "{:.0f}"),
        ("load_mib", "load (MiB RSS)", "{:.0f}"),
        ("rss_mib", "process RSS after load (MiB)", "{:.0f}"),
        ("rss_after_mib", "process RSS after the runs (MiB)", "{:.0f}"),
        ("single_per_s", "single sentences (vectors/s)", "{:.1f}"),
        ("batch_per_s", f"batches of {BATCH} (vectors/s)", "{:.1f}")]


def report(results: dict[str, list[dict[str, Any]]], setup: dict[str, str]) -> None:
    import numpy as np
    for key, value in setup.items():
        print(f"{key:<36} {value}")
    print(f"\n{'median of ' + str(len(results['onnx'])) + ' runs':<36} {'ONNX':>10} "
          f"{'GGUF':>10} {'GGUF/ONNX':>10}")
    for key, label, fmt in ROWS:
        a = statistics.median(r[key] for r in results["onnx"])
        b = statistics.median(r[key] for r in results["gguf"])
        print(f"{label:<36} {fmt.format(a):>10} {fmt.format(b):>10} {b / a:>10.2f}")
    a, b = (np.asarray(results[k][0]["vectors"]) for k in ("onnx", "gguf"))
    cosines = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    print(f"{'cosine ONNX vs GGUF (min, mean)':<36} {cosines.min():.5f}, {cosines.mean():.5f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", 2)))
    p.add_argument("--f16", action="store_true", help="GGUF matrices in f16 (default f32, "
                   "as the ONNX graph)")
    p.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), args.threads)))
        return
    with tempfile.TemporaryDirectory(prefix="edged-enc-") as tmp:
        graph, build_s = build_onnx(Path(tmp) / "cache", args.threads)
        gguf_path = Path(tmp) / f"minilm-{'f16' if args.f16 else 'f32'}.gguf"
        convert_s = write_gguf(package_folder(Path(tmp) / "src"), gguf_path, args.f16)
        results: dict[str, list[dict[str, Any]]] = {"onnx": [], "gguf": []}
        for _ in range(args.runs):
            results["onnx"].append(run_child("onnx", graph, args.threads))
            results["gguf"].append(run_child("gguf", gguf_path, args.threads))
        report(results, {
            "threads": str(args.threads),
            "ONNX graph build (once)": f"{build_s:.1f} s, {graph.stat().st_size / MiB:.0f} MiB",
            "GGUF write (once)": f"{convert_s:.1f} s, {gguf_path.stat().st_size / MiB:.0f} MiB"
                                 f" ({'f16' if args.f16 else 'f32'})"})


if __name__ == "__main__":
    main()
