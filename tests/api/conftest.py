from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.api.inprocess import Served, serve
from tests.edgedtest import RunningDaemon, base_config, deep_merge, running, short_tmpdir


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    """The middleware stack in-process, with the test routes of tests/api/inprocess.py."""
    async with serve() as s:
        yield s


@pytest.fixture(scope="package")
def daemon() -> Iterator[RunningDaemon]:
    """One real daemon for tests/api. Its socket is 0666 in a world-readable folder so that
    clients running as other users (the tests run as root) reach it and are judged by uid:
    nobody (group nogroup) is a client, daemon (uid 1) has no role."""
    folder = short_tmpdir()
    os.chmod(folder, 0o755)
    config = deep_merge(base_config(folder / "st"), {"daemon": {
        "socket": str(folder / "s.sock"), "socket_mode": "0666", "max_body": "1KiB",
        "client_groups": ["nogroup"], "admin_groups": ["edged-admin-test"]}})
    try:
        with running(config, folder / "st") as d:
            yield d
    finally:
        shutil.rmtree(folder, ignore_errors=True)
