"""``edged chat AGENT [MESSAGE]``, ``edged approvals``, ``edged approve ID`` and
``edged portal-token PATIENT_REF``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from edged.agents import portal
from edged.cli_context import CliContext
from edged.errors import BadRequest
from edged.tomlreader import parse_duration


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    chat = sub.add_parser("chat", parents=[common], help="talk to an agent (a prompt loop "
                                                         "without MESSAGE)")
    chat.add_argument("agent", help="an agent of the config ([agents.NAME], e.g. kiosk or "
                                    "clinic); an unknown name is answered with the list")
    chat.add_argument("message", nargs="?", help="one message, answered once (quote it); "
                                                 "without it, a prompt loop")
    chat.add_argument("--session", help="continue a session (its id is printed after a reply)")
    chat.add_argument("--token", help="patient portal token (clinic)")
    chat.set_defaults(handler=_cmd_chat, take_rest=_message_after_options)
    approvals = sub.add_parser("approvals", parents=[common],
                               help="tool calls waiting for staff approval")
    approvals.add_argument("--all", action="store_true", help="decided ones too")
    approvals.set_defaults(handler=_cmd_approvals)
    approve = sub.add_parser("approve", parents=[common],
                             help="approve (or --deny) a waiting tool call")
    approve.add_argument("id", help="the request's id (A-...), from `edged approvals`")
    approve.add_argument("--deny", action="store_true", help="decline it instead")
    approve.set_defaults(handler=_cmd_approve)
    tok = sub.add_parser("portal-token", parents=[common],
                         help="mint a patient portal token with the box's portal key")
    tok.add_argument("patient_ref", help="the patient's reference in the clinic's records")
    tok.add_argument("--ttl", default="15m", help="lifetime (default 15m)")
    tok.add_argument("--config")
    tok.add_argument("--state-dir", help="the daemon's state folder (its keys are there)")
    tok.add_argument("--key", help="key file (default: <keys>/portal.key)")
    tok.set_defaults(handler=_cmd_token)


def _message_after_options(args: argparse.Namespace, rest: list[str]) -> bool:
    """``edged chat kiosk --session S "hi"``: the message after the options; unquoted
    words are one message."""
    if any(word.startswith("-") for word in rest):
        return False
    args.message = " ".join([*([args.message] if args.message is not None else []), *rest])
    return True


def _render(data: dict[str, Any]) -> str:
    """The reply, after one short line per tool that ran (the reply already says what it
    found, so a tool's summary is not printed a second time)."""
    lines = [f"  [{a['tool']}({_args(a['arguments'])})]" for a in data["actions"]]
    return "\n".join([*lines, data["reply"]])


def _args(arguments: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in arguments.items())


def _turn(args: argparse.Namespace, ctx: CliContext, message: str, session: str | None
          ) -> dict[str, Any]:
    body: dict[str, Any] = {"message": message}
    if session:
        body["session_id"] = session
    if args.token:
        body["token"] = args.token
    result: dict[str, Any] = ctx.client().post(f"/v1/agents/{args.agent}/chat", body)
    return result


def _cmd_chat(args: argparse.Namespace, ctx: CliContext) -> int:
    if args.message is not None:
        if not args.message.strip():
            raise BadRequest("MESSAGE: must not be empty (leave it out for a prompt loop)")
        ctx.emit(_turn(args, ctx, args.message, args.session),
             lambda d: f"{_render(d)}\n(session {d['session_id']}: continue with "
                       f"--session {d['session_id']})")
        return 0
    session = args.session
    while True:
        try:
            line = input("you> " if sys.stdin.isatty() else "").strip()
        except EOFError:
            return 0
        if line in ("exit", "quit"):
            return 0
        if not line:
            continue
        data = _turn(args, ctx, line, session)
        session = data["session_id"]
        ctx.emit(data, lambda d: f"{args.agent}> {_render(d)}")
        sys.stdout.flush()


def _render_approvals(data: dict[str, Any]) -> str:
    rows = [f"{r['id']}  {r['state']:<8} {r['agent']}: {r['tool']}({_args(r['arguments'])})"
            for r in data["data"]]
    return "\n".join(rows) or "no tool call is waiting for approval"


def _cmd_approvals(args: argparse.Namespace, ctx: CliContext) -> int:
    path = "/admin/approvals" if args.all else "/admin/approvals?state=pending"
    ctx.emit(ctx.client().get(path), _render_approvals)
    return 0


def _cmd_approve(args: argparse.Namespace, ctx: CliContext) -> int:
    result = ctx.client().post(f"/admin/approvals/{args.id}", {"approve": not args.deny})
    ctx.emit(result, lambda r: f"{r['id']}: {r['state']} ({r['agent']}: {r['tool']})")
    return 0


def _cmd_token(args: argparse.Namespace, ctx: CliContext) -> int:
    from pathlib import Path

    ttl = parse_duration(args.ttl, "--ttl", BadRequest)
    if ttl <= 0:
        raise BadRequest("--ttl: a token must live longer than 0s")
    if not args.patient_ref.strip():
        raise BadRequest("PATIENT_REF: must not be empty")
    if args.key:
        key_path = Path(args.key)
    else:
        cfg = ctx.config()
        clinic = [a.portal_key for a in cfg.agents.agents.values() if a.portal_key]
        key_path = clinic[0] if clinic else cfg.daemon.keys_dir / "portal.key"
    token = portal.mint(portal.load_key(key_path), args.patient_ref, ttl)
    print(token)
    return 0
