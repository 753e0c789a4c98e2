"""One daemon per state folder: an flock on <state>/edged.lock, held for the process life."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from edged.errors import EdgedError


class StateDirInUse(EdgedError):
    code = "state_dir_in_use"


class StateLock:
    def __init__(self, state_dir: Path) -> None:
        self._path = state_dir / "edged.lock"
        self._fd: int | None = None

    def __enter__(self) -> StateLock:
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StateDirInUse(f"{self._path.parent} is in use by edged pid {holder}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
