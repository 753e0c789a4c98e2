"""Roles from the peer's credentials (SO_PEERCRED), never from the request body. The
``Peer`` and ``Role`` types live in edged/roles.py, where engine layers can use them."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import socket
import struct
import time

from edged.roles import Peer, Role

# A user added to a group gets the role within this long, without a restart.
GROUP_CACHE_SECONDS = 10.0
GROUP_CACHE_SIZE = 1024


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def group_names(uid: int, gid: int) -> frozenset[str]:
    """Names of the peer's primary group and every group listing the peer's user."""
    names: set[str] = set()
    with contextlib.suppress(KeyError):
        names.add(grp.getgrgid(gid).gr_name)
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        return frozenset(names)
    names.update(g.gr_name for g in grp.getgrall() if user in g.gr_mem)
    return frozenset(names)


class RoleResolver:
    """admin: root or a member of an admin group; client: a member of a client group or the
    daemon's own uid; anyone else: no role (DESIGN.md, "Local API"). With ``owner_is_admin``
    (the dev config) the daemon's own uid is an admin: on a developer's box the person who
    started the daemon owns its keys and state anyway."""

    def __init__(self, admin_groups: tuple[str, ...], client_groups: tuple[str, ...],
                 cache_seconds: float = GROUP_CACHE_SECONDS, *,
                 owner_is_admin: bool = False) -> None:
        self._owner_is_admin = owner_is_admin
        self._admin = frozenset(admin_groups)
        self._client = frozenset(client_groups)
        self._own_uid = os.getuid()
        self._cache_seconds = cache_seconds
        self._groups: dict[tuple[int, int], tuple[float, frozenset[str]]] = {}

    def _group_names(self, uid: int, gid: int) -> frozenset[str]:
        """group_names, remembered briefly: it reads the whole group database (NSS) on the
        event loop, and one client sends many requests."""
        now = time.monotonic()
        cached = self._groups.get((uid, gid))
        if cached is not None and cached[0] > now:
            return cached[1]
        if len(self._groups) > GROUP_CACHE_SIZE:
            self._groups.clear()
        names = group_names(uid, gid)
        self._groups[(uid, gid)] = (now + self._cache_seconds, names)
        return names

    def resolve(self, pid: int, uid: int, gid: int) -> Peer:
        groups = self._group_names(uid, gid)
        if uid == 0 or groups & self._admin or (self._owner_is_admin and uid == self._own_uid):
            role = Role.ADMIN
        elif uid == self._own_uid or groups & self._client:
            role = Role.CLIENT
        else:
            role = Role.NONE
        return Peer(pid=pid, uid=uid, gid=gid, groups=groups, role=role)
