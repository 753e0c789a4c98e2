"""``edged audit verify|export`` and ``edged keys init|rotate``.

``verify`` and ``export`` read the state folder with the keys (no daemon needed);
``verify --daemon`` asks the running daemon instead (GET /admin/audit/verify).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from edged.audit.export import export
from edged.audit.keys import init_keys, kid_text, load_keys, rotate_audit_key
from edged.audit.verify import verify
from edged.cli_context import CliContext
from edged.keys import add_location_args, keys_dir_for
from edged.tomlreader import parse_duration

EX_DATAERR = 65  # verify found a bad record


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    audit = sub.add_parser("audit", parents=[common], help="verify and export the audit log")
    verbs = audit.add_subparsers(dest="audit_command", metavar="VERB")
    verbs.required = True

    check = verbs.add_parser("verify", parents=[common],
                             help="check every record, the chain and the checkpoints")
    add_location_args(check)
    check.add_argument("--daemon", action="store_true",
                       help="ask the running daemon (admin role) instead of reading the files")
    check.set_defaults(handler=_cmd_verify)

    dump = verbs.add_parser("export", parents=[common], help="decrypted records as JSON lines")
    add_location_args(dump)
    dump.add_argument("--since", type=_since, help='records from this time on: ISO 8601 '
                      '("2026-11-24T09:00:00Z", "2026-11-24") or an age ("2h", "30m")')
    dump.add_argument("--kind", action="append", default=[],
                      help="only this kind, e.g. api.request (repeatable)")
    dump.set_defaults(handler=_cmd_export)


def add_keys_init(verbs: Any, common: argparse.ArgumentParser) -> None:
    init = verbs.add_parser("init", parents=[common],
                            help="create the audit key and the device signing key (0600)")
    add_location_args(init)
    init.set_defaults(handler=_cmd_keys_init)


def add_keys_rotate(verbs: Any, common: argparse.ArgumentParser) -> None:
    rotate = verbs.add_parser("rotate", parents=[common],
                              help="new audit key; the old one is kept for old records")
    add_location_args(rotate)
    rotate.set_defaults(handler=_cmd_keys_rotate)


def _since(text: str) -> datetime:
    if re.fullmatch(r"\s*\d+(\.\d+)?\s*(ms|s|min|m|h|d)\s*", text):
        return datetime.now(UTC) - timedelta(seconds=parse_duration(text, "--since"))
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an ISO 8601 time nor an age like 2h") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _audit_dir(ctx: CliContext) -> Path:
    return ctx.config().daemon.state_dir / "audit"


def _render_report(report: dict[str, Any]) -> str:
    if report["ok"]:
        return (f"audit log ok: {report['records']} records, {report['checkpoints']} signed "
                f"checkpoints, head {report['head'] or '-'}")
    bad = report["first_bad"]
    return (f"audit log FAILED after {report['records']} good records: seq {bad['seq']} "
            f"({bad['segment']}): {bad['problem']}")


def _cmd_verify(args: argparse.Namespace, ctx: CliContext) -> int:
    if args.daemon:
        report: dict[str, Any] = ctx.client().get("/admin/audit/verify")
    else:
        keys = load_keys(keys_dir_for(args), need_device=False)
        report = verify(_audit_dir(ctx), keys).as_dict()
    if report["ok"]:
        ctx.emit(report, _render_report)
        return 0
    if args.json:
        ctx.emit(report, _render_report)
    else:
        print(f"edged: {_render_report(report)}", file=sys.stderr)
    return EX_DATAERR


def _cmd_export(args: argparse.Namespace, ctx: CliContext) -> int:
    keys = load_keys(keys_dir_for(args), need_device=False)
    out = sys.stdout
    for event in export(_audit_dir(ctx), keys, since=args.since, kinds=set(args.kind)):
        out.write(json.dumps(event, ensure_ascii=False, sort_keys=True) + "\n")
    return 0


def _cmd_keys_init(args: argparse.Namespace, ctx: CliContext) -> int:
    created = init_keys(keys_dir_for(args))
    ctx.emit({"created": [str(p) for p in created]},
         lambda d: "created " + ", ".join(d["created"]))
    return 0


def _cmd_keys_rotate(args: argparse.Namespace, ctx: CliContext) -> int:
    old, new = rotate_audit_key(keys_dir_for(args))
    ctx.emit({"retired": kid_text(old), "current": kid_text(new)},
         lambda d: f"audit key {d['retired']} retired (kept for old records); new key "
                   f"{d['current']}. A running daemon switches to it at its next start "
                   "and records audit.key_rotated.")
    return 0
