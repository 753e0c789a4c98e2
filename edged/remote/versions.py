"""The config history folder, ``<state_dir>/config``, and its ``current`` pointer.

Layout: ``v{N}.toml`` (the pushed document, byte for byte), ``v{N}.bundle`` (the signed
bundle it came in), and ``current`` (JSON: the active version with its provenance, the one
before it, and the highest version ever switched to). Each file is written to a temporary
name, fsynced, renamed into place, and the folder fsynced, so a SIGKILL at any point leaves
the pointer naming either the old or the new version, and the version it names is whole.
Version 0 means the local config file. Everything here blocks: call it off the loop.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edged.config import Config
from edged.durable import fsync_dir
from edged.errors import ConfigError, InsufficientStorage
from edged.remote.admission import build_config

log = logging.getLogger(__name__)

POINTER = "current"
LOCAL = 0


@dataclass(frozen=True)
class Entry:
    """One version and where it came from."""

    version: int
    state: str = "confirmed"  # trial (in its health window) | confirmed
    sha256: str | None = None
    source: str = "local"  # local | api | pull
    actor: str = "daemon"
    applied_at: str | None = None
    key_id: str | None = None
    issued_at: str | None = None


@dataclass(frozen=True)
class Pointer:
    active: Entry
    previous: Entry | None
    highest: int
    local_file: str | None = None  # the local config file, for a rollback to version 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Pointer:
        prev = data.get("previous")
        return cls(active=Entry(**data["active"]),
                   previous=Entry(**prev) if prev else None,
                   highest=int(data["highest"]), local_file=data.get("local_file"))


class VersionDir:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def toml_path(self, version: int) -> Path:
        return self.folder / f"v{version}.toml"

    def read_pointer(self) -> Pointer:
        try:
            data = json.loads((self.folder / POINTER).read_bytes())
        except FileNotFoundError:
            return Pointer(active=Entry(LOCAL), previous=None, highest=LOCAL)
        return Pointer.from_json(data)

    def stage(self, version: int, text: str, bundle: bytes) -> str:
        """Write v{N}.bundle and v{N}.toml durably; return the document's sha256."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_durably(self.folder / f"v{version}.bundle", bundle, sync_dir=False)
        _write_durably(self.toml_path(version), text.encode(), sync_dir=False)
        fsync_dir(self.folder)
        return hashlib.sha256(text.encode()).hexdigest()

    def switch(self, pointer: Pointer) -> None:
        """The atomic step: after the rename the new pointer is the truth."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        body = json.dumps(pointer.to_json(), indent=2, sort_keys=True).encode()
        _write_durably(self.folder / POINTER, body, sync_dir=True)

    def read_text(self, entry: Entry) -> str:
        raw = self.toml_path(entry.version).read_bytes()
        if hashlib.sha256(raw).hexdigest() != entry.sha256:
            raise ConfigError(f"{self.toml_path(entry.version)}: does not match the sha256 "
                              "recorded when it was applied")
        return raw.decode()


def _write_durably(path: Path, data: bytes, *, sync_dir: bool) -> None:
    try:
        _write_and_rename(path, data, sync_dir=sync_dir)
    except OSError as e:
        # Disk full or read-only: the old pointer is still whole; say so, without a 500.
        raise InsufficientStorage(f"{path}: cannot write: {e.strerror}",
                                  code="storage_error") from None


def _write_and_rename(path: Path, data: bytes, *, sync_dir: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if sync_dir:
        fsync_dir(path.parent)


def config_dir(cfg: Config) -> VersionDir:
    return VersionDir(cfg.daemon.state_dir / "config")


def load_active(local: Config) -> Config:
    """The config to run: the active pushed version when there is one, else the local file.

    A pushed version that cannot be read or no longer validates (say, after an upgrade of
    edged) must not keep the box from starting: fall back to the local file, loudly.
    """
    versions = config_dir(local)
    try:
        pointer = versions.read_pointer()
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.error("config pointer %s is unreadable (%s); running the local config file",
                  versions.folder / POINTER, e)
        return local
    entry = pointer.active
    if entry.version == LOCAL:
        return local
    try:
        text = versions.read_text(entry)
        return build_config(text, local, versions.toml_path(entry.version))
    except (OSError, UnicodeDecodeError, ConfigError) as e:
        log.error("pushed config v%d cannot be used (%s); running the local config file",
                  entry.version, getattr(e, "message", e))
        return local


def running_version(cfg: Config) -> int:
    """Which version a loaded config is: v{N}.toml's N, or 0 for the local file."""
    src = cfg.source
    folder = cfg.daemon.state_dir / "config"
    if src is not None and src.parent == folder and src.suffix == ".toml":
        digits = src.stem[1:]
        if src.stem.startswith("v") and digits.isdigit():
            return int(digits)
    return LOCAL

