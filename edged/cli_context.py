"""What every verb gets besides its arguments: the daemon client, the config and the way to
print, all resolved from the common options (--socket, --config, --state-dir, --json). The
verbs of each package take a ``CliContext`` instead of importing back from edged/cli.py."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edged.client import Client
from edged.config import Config, Overrides, load_config, parse_toml_text
from edged.errors import ConfigError
from edged.remote.versions import load_active

DEV_CONFIG = Path("config/edged.toml")
SYSTEM_CONFIG = Path("/etc/edged/edged.toml")
DEV_SOCKET = Path("var/edged.sock")
SYSTEM_SOCKET = Path("/run/edged/edged.sock")


class CliContext:
    def __init__(self, args: argparse.Namespace) -> None:
        self._args = args

    def client(self) -> Client:
        return client_for(self._args)

    def config(self) -> Config:
        return config_for(self._args)

    def emit(self, data: Any, human: Callable[[Any], str]) -> None:
        emit(self._args, data, human)


def default_config_path() -> Path:
    env = os.environ.get("EDGED_CONFIG")
    if env:
        return Path(env)
    return SYSTEM_CONFIG if SYSTEM_CONFIG.exists() else DEV_CONFIG


def default_socket() -> Path:
    env = os.environ.get("EDGED_SOCKET")
    if env:
        return Path(env)
    return DEV_SOCKET if DEV_SOCKET.exists() else SYSTEM_SOCKET


def client_for(args: argparse.Namespace) -> Client:
    return Client(Path(args.socket) if args.socket else default_socket())


def config_for(args: argparse.Namespace) -> Config:
    """The config named by --config (or the default), with --state-dir/--socket applied.
    With --state-dir and no config file to be found, the built-in defaults on that folder
    (an offline verb needs only the daemon's keys and audit log)."""
    overrides = Overrides(
        # Absolute: relative to where the command runs, never to a config file's folder.
        state_dir=Path(args.state_dir).absolute() if getattr(args, "state_dir", None) else None,
        socket=Path(args.socket).absolute() if getattr(args, "socket", None) else None,
    )
    named = getattr(args, "config", None)
    path = Path(named) if named else default_config_path()
    if not named and not path.exists():
        if overrides.state_dir is None:
            looked = ", ".join(str(p) for p in _config_candidates())
            raise ConfigError(f"no config file (looked for {looked}); pass --config FILE, or "
                              "--state-dir DIR with the daemon's state folder",
                              code="no_config")
        return load_active(parse_toml_text("", source=Path.cwd() / "edged.toml",
                                           overrides=overrides))
    # A pushed config (edged/remote), when one is active, replaces the local file's.
    return load_active(load_config(path, overrides))


def _config_candidates() -> list[str]:
    env = os.environ.get("EDGED_CONFIG")
    return [f"$EDGED_CONFIG={env}"] if env else [str(SYSTEM_CONFIG), f"./{DEV_CONFIG}"]


def emit(args: argparse.Namespace, data: Any, human: Callable[[Any], str]) -> None:
    """--json prints the data as JSON; otherwise the human rendering."""
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        text = human(data)
        if text:
            print(text)
