"""Roles from the peer's uid and groups (SO_PEERCRED), checked on the real daemon with
clients running as other users."""

from __future__ import annotations

import os

import pytest

from edged.api.peer import RoleResolver
from edged.roles import Role
from tests.api.curl import CLIENT_USER, NO_ROLE_USER, curl
from tests.edgedtest import RunningDaemon


def test_a_peer_role_follows_its_groups() -> None:
    # uid 65534 (nobody) with gid 65534 (nogroup) on this Debian box: client through the group.
    client = RoleResolver(("edged-admin",), ("nogroup",)).resolve(1, 65534, 65534)
    assert (client.role, "nogroup" in client.groups) == (Role.CLIENT, True)
    assert RoleResolver(("nogroup",), ()).resolve(1, 65534, 65534).role is Role.ADMIN
    assert RoleResolver(("edged-admin",), ("edged",)).resolve(1, 65534, 65534).role is Role.NONE
    assert RoleResolver((), ()).resolve(1, 0, 0).role is Role.ADMIN
    assert RoleResolver((), ()).resolve(1, os.getuid(), 12345).role >= Role.CLIENT


@pytest.mark.parametrize(("user", "path", "expected"), [
    (NO_ROLE_USER, "/health", 200),
    (NO_ROLE_USER, "/metrics", 200),
    (NO_ROLE_USER, "/v1/models", 403),
    (NO_ROLE_USER, "/admin/ps", 403),
    (CLIENT_USER, "/health", 200),
    (CLIENT_USER, "/v1/models", 200),
    (CLIENT_USER, "/admin/ps", 403),
])
def test_roles_come_from_the_peer_uid(daemon: RunningDaemon, user: str, path: str,
                                      expected: int) -> None:
    status, body = curl(daemon, path, user=user)
    assert status == expected, body
    if expected == 403:
        assert body["error"]["code"] == "forbidden"
        assert f"{path} needs the" in body["error"]["message"]


@pytest.mark.parametrize("path", ["//admin/ps", "/v1/../admin/ps", "/%61dmin/ps", "/./admin/ps",
                                  "/health/../admin/ps", "/admin%2Fps", "/v1/%2e%2e/admin/ps"])
def test_spelling_a_path_differently_does_not_skip_the_role_check(
        daemon: RunningDaemon, path: str) -> None:
    status, _ = curl(daemon, path, user=NO_ROLE_USER, as_is=True)
    assert status in (403, 404)


def test_health_names_the_callers_role(daemon: RunningDaemon) -> None:
    assert curl(daemon, "/health", user=CLIENT_USER)[1]["peer"]["role"] == "client"
    assert curl(daemon, "/health", user=NO_ROLE_USER)[1]["peer"]["role"] == "none"
    assert curl(daemon, "/health")[1]["peer"]["role"] == "admin"  # root




def _role_of_own_uid_as_nobody(owner_is_admin: bool) -> str:
    """Fork, become nobody, and ask a resolver about the (now) own uid."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        try:
            os.setgid(65534)
            os.setuid(65534)
            r = RoleResolver((), (), owner_is_admin=owner_is_admin)
            os.write(write_end, r.resolve(1, os.getuid(), os.getgid()).role.name.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end) as f:
        return f.read()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to become another user")
@pytest.mark.parametrize(("flag", "role"), [(False, "CLIENT"), (True, "ADMIN")])
def test_the_owner_is_an_admin_only_when_configured(flag: bool, role: str) -> None:
    assert _role_of_own_uid_as_nobody(flag) == role
