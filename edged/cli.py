"""argv -> command. The only place that prints for people and exits the process.

Each package that has verbs keeps them in its own ``cli`` module with a
``register(subparsers, common)`` function; this module puts them together.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edged import __version__
from edged.client import ApiError, Client, DaemonUnreachable
from edged.config import Config, Overrides, load_config, parse_toml_text
from edged.errors import ConfigError, EdgedError
from edged.remote.versions import load_active

EX_USAGE = 64
EX_UNAVAILABLE = 69
EX_CONFIG = 78
STATUS_TIMEOUT = 15.0

DEV_CONFIG = Path("config/edged.toml")
SYSTEM_CONFIG = Path("/etc/edged/edged.toml")
DEV_SOCKET = Path("var/edged.sock")
SYSTEM_SOCKET = Path("/run/edged/edged.sock")

Handler = Callable[[argparse.Namespace], int]


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


def _cmd_serve(args: argparse.Namespace) -> int:
    from edged.daemon import Daemon
    from edged.logsetup import setup_logging

    config = config_for(args)
    setup_logging(args.log_level or config.logging.level, args.log_format or config.logging.format)
    try:
        asyncio.run(Daemon(config).serve())
    except EdgedError as e:
        # Through the log, not print: under systemd it gets the journal's error priority.
        logging.getLogger("edged").error("cannot serve: %s", e.message)
        # A config or key-file problem will not go away on a restart: EX_CONFIG stops systemd.
        return EX_CONFIG if isinstance(e, ConfigError) else 1
    except OSError as e:
        # A folder or file it cannot use (permissions, a file where a folder should be):
        # the path and the reason say it all, a traceback adds nothing.
        logging.getLogger("edged").error("cannot serve: %s", e)
        return 1
    return 0


def _render_status(data: dict[str, Any]) -> str:
    peer = data.get("peer", {})
    lines = [
        f"edged {data.get('version')}  status: {data.get('status')}  "
        f"uptime: {data.get('uptime_s')}s  your role: {peer.get('role')} (uid {peer.get('uid')})",
    ]
    for name, part in data.items():
        if isinstance(part, dict) and name != "peer":
            lines.append(f"  {name}: {_summary(part)}")
    return "\n".join(lines)


def _summary(part: dict[str, Any]) -> str:
    """``k=v, ...`` leaving out unset values; a nested table in braces, one level deep."""
    shown = []
    for key, value in part.items():
        if value is None or value == {} or value == []:
            continue
        if isinstance(value, dict):
            inner = ", ".join(f"{k}={v}" for k, v in value.items()
                              if v is not None and not isinstance(v, dict | list))
            value = f"{{{inner}}}"
        elif isinstance(value, list):
            value = ",".join(str(v) for v in value)
        shown.append(f"{key}={value}")
    return ", ".join(shown) or "-"


def _cmd_status(args: argparse.Namespace) -> int:
    client = client_for(args)
    client.timeout = STATUS_TIMEOUT  # /health answers at once; a hung daemon should not hang us
    emit(args, client.get("/health"), _render_status)
    return 0


def _common_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", default=argparse.SUPPRESS,
                        help="daemon socket (default: $EDGED_SOCKET, ./var/edged.sock, "
                             "/run/edged/edged.sock)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common_parser()
    parser = argparse.ArgumentParser(prog="edged", parents=[common],
                                     description="Small language models and agents on edge boxes.")
    parser.add_argument("--version", action="version", version=f"edged {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    serve = sub.add_parser("serve", parents=[common], help="run the daemon")
    serve.add_argument("--config", help="config file (default: $EDGED_CONFIG, "
                                        "/etc/edged/edged.toml, config/edged.toml)")
    serve.add_argument("--state-dir", help="state folder (db, audit, models)")
    serve.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    serve.add_argument("--log-format", choices=("auto", "text", "journal", "json"))
    serve.set_defaults(handler=_cmd_serve)

    status = sub.add_parser("status", parents=[common], help="version, uptime, role, components")
    status.set_defaults(handler=_cmd_status)

    for register in _registrars():
        register(sub, common)
    return parser


def _registrars() -> list[Callable[[Any, argparse.ArgumentParser], None]]:
    from edged import keys
    from edged.agents import cli as agents_cli
    from edged.audit import cli as audit_cli
    from edged.models import cli as models_cli
    from edged.remote import cli as remote_cli
    from edged.sync import cli as sync_cli

    # `keys` is one group; its verbs (init, rotate, fleet-init) are listed in edged/keys.py
    return [remote_cli.register, keys.register, audit_cli.register, sync_cli.register,
            models_cli.register, agents_cli.register]


def _fail(args: argparse.Namespace, err: EdgedError, line: str, code: int) -> int:
    """One clear line on stderr; with --json also the error envelope on stdout."""
    if getattr(args, "json", False):
        print(json.dumps(err.envelope()))
    print(f"edged: {line}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    # A verb's optional trailing positional (chat's MESSAGE) may come after its options.
    take_rest: Callable[[argparse.Namespace, list[str]], bool] | None = getattr(
        args, "take_rest", None)
    if rest and (take_rest is None or not take_rest(args, rest)):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.socket = getattr(args, "socket", None)
    args.json = getattr(args, "json", False)
    try:
        handler: Handler = args.handler
        return handler(args)
    except ConfigError as e:
        line = e.message if e.code in ("no_config", "no_keys") else f"invalid config: {e.message}"
        return _fail(args, e, line, EX_CONFIG)
    except DaemonUnreachable as e:
        return _fail(args, e, e.message, EX_UNAVAILABLE)
    except ApiError as e:
        return _fail(args, e, f"{e.message} ({e.code}, HTTP {e.status})", 1)
    except EdgedError as e:
        return _fail(args, e, e.message, 1)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception:
        logging.getLogger("edged").exception("edged: unexpected error")
        return 1
