"""``edged keys VERB``: one group; each package adds its verbs through ``_verbs()``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edged.cli_context import config_for

AddVerb = Callable[[Any, argparse.ArgumentParser], None]


def add_location_args(parser: argparse.ArgumentParser) -> None:
    """Where the keys folder is: --keys-dir, or daemon.keys_dir of the config."""
    parser.add_argument("--config", help="config file (default: $EDGED_CONFIG, "
                                         "/etc/edged/edged.toml, config/edged.toml)")
    parser.add_argument("--state-dir", help="state folder (its keys/ holds the keys)")
    parser.add_argument("--keys-dir", help="keys folder (overrides the config)")


def keys_dir_for(args: argparse.Namespace) -> Path:
    if getattr(args, "keys_dir", None):
        return Path(args.keys_dir)
    return config_for(args).daemon.keys_dir


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    keys = sub.add_parser("keys", parents=[common], help="device keys: audit, signing, fleet")
    verbs = keys.add_subparsers(dest="keys_command", metavar="VERB")
    verbs.required = True
    for add in _verbs():
        add(verbs, common)


def _verbs() -> list[AddVerb]:
    from edged.audit import cli as audit_cli
    from edged.remote import cli as remote_cli

    return [audit_cli.add_keys_init, audit_cli.add_keys_rotate, remote_cli.add_fleet_init]
