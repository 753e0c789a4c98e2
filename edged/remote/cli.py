"""``edged config show|sign|apply|pull`` and ``edged keys fleet-init``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edged.cli_context import CliContext
from edged.config import parse_config
from edged.errors import BadRequest, ConfigError, EdgedError
from edged.remote.admission import check_signable, refuse_locked_keys, removal_allowed
from edged.remote.bundle import ALL_DEVICES, encode_bundle, key_id, load_private_key, sign_bundle


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    config = sub.add_parser("config", parents=[common], help="signed config bundles")
    verbs = config.add_subparsers(dest="config_command", metavar="VERB")
    verbs.required = True

    show = verbs.add_parser("show", parents=[common], help="active version, provenance, history")
    show.set_defaults(handler=_cmd_show)

    sign = verbs.add_parser("sign", parents=[common], help="sign a config file into a bundle")
    sign.add_argument("--key", required=True, help="fleet private key (PEM)")
    sign.add_argument("--version", required=True, type=int, help="bundle version (>= 1)")
    sign.add_argument("--device", action="append", default=[], help="a device id (repeatable)")
    sign.add_argument("--tag", action="append", default=[], help="a device tag (repeatable)")
    sign.add_argument("--all-devices", action="store_true", help="every device of the fleet")
    sign.add_argument("-o", "--output", help="write the bundle here (default: stdout)")
    sign.add_argument("file", help="the config document (TOML)")
    sign.set_defaults(handler=_cmd_sign)

    apply = verbs.add_parser("apply", parents=[common], help="apply a signed bundle")
    apply.add_argument("bundle", help="bundle file ('-' reads stdin)")
    apply.add_argument("--wait", action="store_true", help="wait for the health window")
    apply.set_defaults(handler=_cmd_apply)

    pull = verbs.add_parser("pull", parents=[common], help="pull from the cloud now")
    pull.add_argument("--wait", action="store_true", help="wait for the health window")
    pull.set_defaults(handler=_cmd_pull)


def add_fleet_init(verbs: Any, common: argparse.ArgumentParser) -> None:
    init = verbs.add_parser("fleet-init", parents=[common],
                            help="make a fleet signing key pair (operator side)")
    init.add_argument("--out", default="fleet-keys", help="folder for the pair (default: "
                                                          "./fleet-keys)")
    init.set_defaults(handler=_cmd_fleet_init)


def _render_entry(e: dict[str, Any] | None) -> str:
    if not e:
        return "none"
    if e["version"] == 0:
        return "v0 (the local config file)"
    return (f"v{e['version']} ({e['state']}) from {e['source']} by {e['actor']} at "
            f"{e['applied_at']}, key {e['key_id']}, issued {e['issued_at']}")


def _render_show(data: dict[str, Any]) -> str:
    lines = [f"device {data['device_id']}  tags {', '.join(data['device_tags']) or '-'}",
             f"active:   {_render_entry(data['active'])}",
             f"previous: {_render_entry(data['previous'])}",
             f"running v{data['running_version']}; highest applied v{data['highest']}"]
    if data["restart_required"]:
        lines.append(f"restart required for: {', '.join(data['restart_required'])}")
    lines.append("history (newest first):")
    for h in data["history"]:
        reason = f": {h['reason']}" if h["reason"] else ""
        lines.append(f"  {h['at']}  {h['outcome']:<11} v{h['version'] or '?'}  "
                     f"{h['source']}/{h['actor']}{reason}")
    return "\n".join(lines)


def _cmd_show(args: argparse.Namespace, ctx: CliContext) -> int:
    ctx.emit(ctx.client().get("/admin/config"), _render_show)
    return 0


def _cmd_sign(args: argparse.Namespace, ctx: CliContext) -> int:
    devices = (*args.device, *((ALL_DEVICES,) if args.all_devices else ()))
    if not devices and not args.tag:
        raise BadRequest("name the target: --device ID, --tag TAG or --all-devices")
    if args.version < 1:
        raise BadRequest(f"--version: {args.version} must be 1 or more")
    path = Path(args.file)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise EdgedError(f"{path}: cannot read: {e}") from None
    # Fail here, not on thousands of boxes.
    data = parse_toml(text, path)
    refuse_locked_keys(data)
    allow_removal = removal_allowed(data)
    parse_config(data, source=path.resolve())
    if not allow_removal:
        check_signable(data, path)
    bundle = sign_bundle(load_private_key(Path(args.key)), version=args.version, config=text,
                         devices=devices, tags=tuple(args.tag))
    out = encode_bundle(bundle)
    if args.output:
        Path(args.output).write_bytes(out)
    else:
        sys.stdout.buffer.write(out)
    return 0


def parse_toml(text: str, path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def _cmd_apply(args: argparse.Namespace, ctx: CliContext) -> int:
    try:
        raw = sys.stdin.buffer.read() if args.bundle == "-" else Path(args.bundle).read_bytes()
        bundle = json.loads(raw)
    except OSError as e:
        raise EdgedError(f"{args.bundle}: cannot read: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"{args.bundle}: not a bundle (not JSON: {e})") from None
    # The signature covers the canonical encoding, not these bytes: re-encoding is harmless.
    path = "/admin/config?wait=true" if args.wait else "/admin/config"
    result = ctx.client().post(path, bundle)
    ctx.emit(result, lambda r: f"config v{r['version']} applied ({r['state']}); changed: "
         f"{', '.join(r['changed']) or 'nothing'}"
         + (f"; restart required for {', '.join(r['restart_required'])}"
            if r["restart_required"] else ""))
    return 0


def _cmd_pull(args: argparse.Namespace, ctx: CliContext) -> int:
    path = "/admin/config/pull?wait=true" if args.wait else "/admin/config/pull"
    ctx.emit(ctx.client().post(path), lambda r: f"pull: {r['status']}"
         + (f" v{r['version']} ({r['state']})" if "version" in r else ""))
    return 0


def _cmd_fleet_init(args: argparse.Namespace, ctx: CliContext) -> int:
    out = Path(args.out)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    kid = key_id(key.public_key())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    key_path, pub_path = out / f"fleet-{kid}.key", out / f"fleet-{kid}.pub"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    pub_path.write_bytes(public)
    data = {"key_id": kid, "private_key": str(key_path), "public_key": str(pub_path)}
    ctx.emit(data, lambda d: (
        f"fleet key {d['key_id']}\n  private: {d['private_key']} (keep it off the devices)\n"
        f"  public:  {d['public_key']} (copy to <keys_dir>/fleet/ on each device)"))
    return 0
