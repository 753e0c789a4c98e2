"""Requests to the real daemon from another process, optionally as another user."""

from __future__ import annotations

import json
import pwd
import subprocess
from typing import Any

from tests.edgedtest import RunningDaemon

# nobody's primary group is nogroup, a client group in tests/api's daemon; daemon (uid 1) is
# in no edged group: no role.
CLIENT_USER = "nobody"
NO_ROLE_USER = "daemon"


def curl(d: RunningDaemon, path: str, *, user: str | None = None, method: str = "GET",
         data: bytes | None = None, as_is: bool = False) -> tuple[int, Any]:
    """Status and body (JSON when it is an object) of one request made by curl."""
    args = ["curl", "-sS", "--unix-socket", str(d.socket), "-X", method,
            "-o", "-", "-w", "\n%{http_code}", f"http://edged{path}"]
    if as_is:
        args.insert(1, "--path-as-is")  # send ".." and "." segments as they are
    if data is not None:
        args += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
    # user= alone keeps root's gid; take the user's own primary group, and no others.
    who: dict[str, Any] = {}
    if user is not None:
        entry = pwd.getpwnam(user)
        who = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    out = subprocess.run(args, input=data, capture_output=True, check=True, timeout=60,
                         **who).stdout.decode()
    body, _, status = out.rpartition("\n")
    return int(status), json.loads(body) if body.startswith("{") else body
