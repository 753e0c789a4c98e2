"""A sentence encoder shipped as weights (a Python package's ``model.zip`` holding a
sentence-transformers folder: ``model.safetensors``, ``config.json``, ``tokenizer.json``,
``1_Pooling/config.json``), turned into an ONNX graph and a vocabulary once.

The build reads the weights, checks their sha256 against the catalog's pin, builds the graph
(``edged/models/bert_graph.py``), and writes three files into ``models.cache_dir`` named by
that sha256: ``<package>-<sha256>.onnx``, ``.vocab.txt`` (the tokenizer's vocabulary, one
token per line, the sidecar the ONNX backend reads) and ``.build.json`` (what was built from
what, with the sha256 of the other two). Each is written to a temporary name, fsynced and
renamed, the manifest last, so a present manifest means a whole build. The package is never
imported (importing ``all_minilm_l6_v2`` prints to stdout); its folder is found by its spec.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import logging
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

from edged.durable import fsync_dir
from edged.errors import BadRequest, IntegrityError, Unavailable
from edged.models.bert_graph import build, shape_of
from edged.models.onnx_backend import WordPiece
from edged.models.safetensors_file import read_tensors

log = logging.getLogger(__name__)

GRAPH_VERSION = 2  # bump when bert_graph builds a different graph: caches then rebuild
ARCHIVE = "model.zip"
WEIGHTS = "model.safetensors"
_BLOCK = 4 * 1024 * 1024


@dataclass(frozen=True)
class Source:
    archive: Path  # the package's model.zip
    prefix: str  # the folder inside it that holds model.safetensors ("" at the top)

    def member(self, name: str) -> str:
        return self.prefix + name


def locate(package: str, alias: str) -> Source:
    """Blocking: the package's archive, found without importing the package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise Unavailable(f"models.{alias}.package: {package!r} is not installed; install it "
                          "with pip --no-deps (docs/models.md)", code="model_package_missing")
    archive = Path(next(iter(spec.submodule_search_locations))) / ARCHIVE
    try:
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
    except (OSError, zipfile.BadZipFile) as e:
        raise IntegrityError(f"models.{alias}.package: cannot read {archive}: {e}",
                             code="model_package_invalid") from None
    weights = [n for n in names if n == WEIGHTS or n.endswith("/" + WEIGHTS)]
    if not weights:
        raise IntegrityError(f"models.{alias}.package: {archive} holds no {WEIGHTS}",
                             code="model_package_invalid")
    return Source(archive, min(weights, key=len).removesuffix(WEIGHTS))


def weights_size(source: Source) -> int:
    """Blocking: bytes of the weights, from the archive's directory (nothing unpacked)."""
    with zipfile.ZipFile(source.archive) as zf:
        return zf.getinfo(source.member(WEIGHTS)).file_size


def cached_paths(graph: Path) -> tuple[Path, Path]:
    """The vocabulary and manifest that go with ``graph``."""
    return graph.with_name(f"{graph.stem}.vocab.txt"), graph.with_name(f"{graph.stem}.build.json")


# -- the cache ---------------------------------------------------------------------------------

def expected_graph_sha(graph: Path, weights_sha: str) -> str | None:
    """Blocking: the graph's sha256 as its manifest records it, when the cache holds a whole
    build of these weights by this version of the builder, with its vocabulary intact;
    ``None`` when it must be (re)built."""
    vocab, manifest = cached_paths(graph)
    try:
        record = json.loads(manifest.read_text(encoding="utf-8"))
        if (record.get("graph_version") != GRAPH_VERSION
                or record.get("weights_sha256") != weights_sha
                or sha256_file(vocab) != record.get("vocab_sha256")):
            return None
        value = record.get("graph_sha256")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and graph.exists() else None


def max_positions(graph: Path) -> int:
    """Blocking: the longest input the built graph has position embeddings for."""
    record = json.loads(cached_paths(graph)[1].read_text(encoding="utf-8"))
    return int(record["max_positions"])


def build_cached(source: Source, weights_sha: str, graph: Path) -> None:
    """Blocking: build the graph and vocabulary from ``source`` into the cache. Raises
    ``IntegrityError`` if the weights are not the pinned ones, ``BadRequest`` if the model is
    not one the graph and tokenizer implement."""
    weights, members = _read(source, weights_sha)
    vocab_text = _vocabulary(members["tokenizer.json"])
    _check_pooling(members.get("1_Pooling/config.json"))
    log.info("building the ONNX graph of %s (%d MiB of weights)", source.archive,
             len(weights) >> 20)
    config = members["config.json"]
    built = build(read_tensors(memoryview(weights)), shape_of(config))
    vocab, manifest = cached_paths(graph)
    graph.parent.mkdir(parents=True, exist_ok=True)
    manifest.unlink(missing_ok=True)  # a rebuild cut short must not look whole
    vocab_sha = _write(vocab, lambda out: out.write(vocab_text.encode("utf-8")))
    graph_sha = _write(graph, built.write)
    record = {"graph_version": GRAPH_VERSION, "weights_sha256": weights_sha,
              "source": str(source.archive), "graph_sha256": graph_sha,
              "vocab_sha256": vocab_sha,
              "max_positions": int(config.get("max_position_embeddings", 512))}
    _write(manifest, lambda out: out.write(json.dumps(record, indent=1).encode()))
    fsync_dir(graph.parent)
    log.info("built %s (%d MiB)", graph, graph.stat().st_size >> 20)


def _read(source: Source, weights_sha: str) -> tuple[bytearray, dict[str, Any]]:
    """The weights (sha256 checked while unpacking) and the small JSON members."""
    try:
        with zipfile.ZipFile(source.archive) as zf:
            weights = _unpack_checked(zf, source.member(WEIGHTS), weights_sha)
            members = {name: json.loads(zf.read(source.member(name)))
                       for name in ("config.json", "tokenizer.json", "1_Pooling/config.json")
                       if source.member(name) in zf.namelist()}
    except (OSError, zipfile.BadZipFile, ValueError) as e:
        raise IntegrityError(f"cannot read {source.archive}: {e}",
                             code="model_package_invalid") from None
    for needed in ("config.json", "tokenizer.json"):
        if needed not in members:
            raise IntegrityError(f"{source.archive} holds no {source.member(needed)}",
                                 code="model_package_invalid")
    return weights, members


def _unpack_checked(zf: zipfile.ZipFile, name: str, expected: str) -> bytearray:
    size = zf.getinfo(name).file_size
    out = bytearray(size)  # one buffer, filled in place: no second copy of the weights
    digest = hashlib.sha256()
    done = 0
    with zf.open(name) as src:
        while done < size and (block := src.read(_BLOCK)):
            out[done:done + len(block)] = block
            digest.update(block)
            done += len(block)
    if digest.hexdigest() != expected:
        raise IntegrityError(f"{zf.filename}: {name} has sha256 {digest.hexdigest()}, expected "
                             f"{expected}; refusing to build from it (reinstall the package or "
                             "fix the catalog's sha256)", code="sha256_mismatch")
    return out


def _vocabulary(tokenizer: dict[str, Any]) -> str:
    """``vocab.txt`` from a ``tokenizer.json``, after checking that edged's WordPiece
    tokenises as it does (BERT normaliser and pre-tokenizer, ``##`` WordPiece)."""
    model, norm = tokenizer.get("model") or {}, tokenizer.get("normalizer") or {}
    pre = tokenizer.get("pre_tokenizer") or {}
    wanted = [(model.get("type"), "WordPiece"), (model.get("continuing_subword_prefix"), "##"),
              (model.get("max_input_chars_per_word"), 100), (model.get("unk_token"), "[UNK]"),
              (norm.get("type"), "BertNormalizer"), (norm.get("clean_text"), True),
              (norm.get("handle_chinese_chars"), True), (pre.get("type"), "BertPreTokenizer")]
    if norm.get("strip_accents") not in (None, norm.get("lowercase")):
        wanted.append((norm.get("strip_accents"), norm.get("lowercase")))
    for got, want in wanted:
        if got != want:
            raise BadRequest(f"tokenizer.json: {got!r} where edged's WordPiece implements "
                             f"{want!r}", code="unsupported_model")
    vocab: dict[str, int] = model.get("vocab") or {}
    tokens = sorted(vocab, key=vocab.__getitem__)
    if [vocab[t] for t in tokens] != list(range(len(tokens))) or any(
            not t or "\n" in t or "\r" in t for t in tokens):
        raise BadRequest("tokenizer.json: the vocabulary is not ids 0..n-1 of one-line tokens",
                         code="unsupported_model")
    if WordPiece(vocab).lowercase != bool(norm.get("lowercase")):
        raise BadRequest("tokenizer.json: lowercase does not match the vocabulary's case",
                         code="unsupported_model")
    return "\n".join(tokens) + "\n"


def _check_pooling(pooling: dict[str, Any] | None) -> None:
    if pooling is None:
        return  # no pooling config: sentence-transformers' default, mean
    modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode_") and v)
    if modes != ["pooling_mode_mean_tokens"]:
        raise BadRequest(f"1_Pooling/config.json: {', '.join(modes) or 'no mode'}; the graph "
                         "implements mean pooling only", code="unsupported_model")


class _Hashing(io.RawIOBase):
    """A file that hashes what is written to it."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.digest = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.digest.update(data)
        return self._out.write(data)


def _write(target: Path, fill: Callable[[BinaryIO], object]) -> str:
    """Write ``target`` through ``fill`` under a temporary name, fsync, rename; its sha256."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    with tmp.open("wb") as out:
        hashing = _Hashing(out)
        fill(cast(BinaryIO, hashing))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, target)
    return hashing.digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()
