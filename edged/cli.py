"""argv -> command. The only place that prints for people and exits the process.

Each package that has verbs keeps them in its own ``cli`` module with a
``register(subparsers, common)`` function; this module puts them together.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from edged import __version__
from edged.cli_context import CliContext
from edged.client import ApiError, DaemonUnreachable
from edged.errors import ConfigError, EdgedError

EX_USAGE = 64
EX_UNAVAILABLE = 69
EX_CONFIG = 78
STATUS_TIMEOUT = 15.0

Handler = Callable[[argparse.Namespace, CliContext], int]


def _cmd_serve(args: argparse.Namespace, ctx: CliContext) -> int:
    from edged.daemon import Daemon
    from edged.logsetup import setup_logging

    config = ctx.config()
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


def _cmd_status(args: argparse.Namespace, ctx: CliContext) -> int:
    client = ctx.client()
    client.timeout = STATUS_TIMEOUT  # /health answers at once; a hung daemon should not hang us
    ctx.emit(client.get("/health"), _render_status)
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
        return handler(args, CliContext(args))
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
