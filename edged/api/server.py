"""The Unix socket: claim it safely, serve, drain, release.

A socket file that answers belongs to a live daemon: refuse to start and leave it alone.
One that refuses connections is stale (a crash left it): replace it. Under systemd socket
activation (LISTEN_FDS) the socket is inherited and systemd owns the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
from pathlib import Path

from aiohttp import web

from edged.api.app import ApiState
from edged.api.connection import Limits, Runner
from edged.errors import EdgedError

log = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3
_CANCEL_AFTER_GRACE = 1.0
DEFAULT_LIMITS = Limits(read_timeout=30.0, idle_timeout=60.0, max_connections=256)


class SocketInUse(EdgedError):
    code = "socket_in_use"


def inherited_socket() -> socket.socket | None:
    """The first socket passed by systemd socket activation, if any."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    count = os.environ.get("LISTEN_FDS", "")
    if not count.isdigit() or int(count) < 1:
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        # Roles come from SO_PEERCRED, which only a Unix socket carries: never serve TCP.
        sock.close()
        raise SocketInUse("the socket systemd passed (LISTEN_FDS) is not a Unix stream socket; "
                          "edged.socket must use ListenStream=/path")
    sock.setblocking(False)
    return sock


def _claim_path(path: Path) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUse(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError as e:
        if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise SocketInUse(f"cannot tell whether {path} is in use: {e.strerror}") from None
        log.warning("replacing stale socket %s", path)
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise SocketInUse(f"another edged is already listening on {path}")


def bind_socket(path: Path, mode: int) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    _claim_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, mode)
    sock.listen(128)
    sock.setblocking(False)
    return sock


class ApiServer:
    def __init__(self, app: web.Application | None, state: ApiState, path: Path,
                 mode: int, limits: Limits = DEFAULT_LIMITS) -> None:
        self.app = app
        self._limits = limits
        self._state = state
        self._path = path
        self._mode = mode
        self._runner: Runner | None = None
        self._owns_file = False
        self._sock: socket.socket | None = None

    def claim(self) -> None:
        """Take the socket before anything else touches the state folder."""
        sock = inherited_socket()
        if sock is None:
            sock = bind_socket(self._path, self._mode)
            self._owns_file = True
        self._sock = sock

    async def start(self) -> None:
        """Start answering on the claimed socket."""
        sock = self._sock
        if sock is None:
            raise RuntimeError("claim() the socket first")
        if self.app is None:
            raise RuntimeError("no application to serve")
        # drain() already gave in-flight requests the grace period; what is left when the
        # runner closes gets cancelled at once rather than after aiohttp's own 60 s.
        # handler_cancellation: a request whose client left is cancelled (edged/api/
        # disconnect.py decides which routes stop and which run to their end).
        self._runner = Runner(self.app, self._limits, access_log=None, handle_signals=False,
                              shutdown_timeout=_CANCEL_AFTER_GRACE,
                              handler_cancellation=True)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        log.info("listening on %s", self._path if self._owns_file else "an inherited socket")

    async def drain(self, grace: float) -> None:
        """Refuse new requests, let in-flight ones finish within ``grace``, then close."""
        self._state.draining = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._state.idle.wait(), grace)
        if self._state.in_flight:
            log.warning("%d requests still running after the grace period; cancelling",
                        self._state.in_flight)
        await self.close()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.release()

    def release(self) -> None:
        """Close the socket and remove its file (if we made it); safe to call twice."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._owns_file:
            self._path.unlink(missing_ok=True)
            self._owns_file = False
