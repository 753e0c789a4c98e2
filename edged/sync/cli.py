"""``edged sync status`` and ``edged sync now``."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from edged.cli_context import CliContext

CLASSES = ("ticket", "checkpoint", "event", "metrics")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    sync = sub.add_parser("sync", parents=[common], help="store-and-forward to the cloud")
    verbs = sync.add_subparsers(dest="sync_command", metavar="VERB")
    verbs.required = True
    status = verbs.add_parser("status", parents=[common],
                              help="queued rows per class, last success and error, next attempt")
    status.set_defaults(handler=_cmd_status)
    now = verbs.add_parser("now", parents=[common], help="send what is queued now (admin)")
    now.set_defaults(handler=_cmd_now)


def _cmd_status(args: argparse.Namespace, ctx: CliContext) -> int:
    # /health carries the sync state for any role; no admin needed to look.
    ctx.emit(ctx.client().get("/health").get("sync", {}), render_status)
    return 0


def _cmd_now(args: argparse.Namespace, ctx: CliContext) -> int:
    result = ctx.client().post("/admin/sync")
    ctx.emit(result, render_now)
    if result.get("error") is None:
        return 0
    if not args.json:
        print(f"edged: sync stopped: {result['error']}", file=sys.stderr)
    return 1


def _when(t: float | None, now: float) -> str:
    if t is None:
        return "never"
    delta = t - now
    return f"in {delta:.0f}s" if delta >= 0 else f"{-delta:.0f}s ago"


def render_status(s: dict[str, Any]) -> str:
    now = time.time()
    queued = s.get("queued", {})
    ages = s.get("oldest_age_s", {})
    lines = [f"endpoint:     {s.get('endpoint') or 'not set (queueing only)'}",
             f"queued:       {s.get('queued_bytes', 0)} of {s.get('max_bytes', 0)} bytes"]
    for kind in CLASSES:
        age = f"  (oldest {ages[kind]:.0f}s)" if kind in ages else ""
        lines.append(f"  {kind + ':':<12}{queued.get(kind, 0)}{age}")
    lines += [f"last success: {_when(s.get('last_success'), now)}",
              f"last error:   {s.get('last_error') or 'none'}"
              + (f" ({_when(s.get('last_error_at'), now)})" if s.get("last_error") else ""),
              f"next attempt: {_next(s, now)}"]
    if s.get("degraded"):
        lines.append(f"DEGRADED: {s.get('message', '')}")
    return "\n".join(lines)


def _next(s: dict[str, Any], now: float) -> str:
    if not s.get("endpoint"):
        return "none (no endpoint)"
    if s.get("next_attempt") is None:
        return "when a row is queued"
    return f"{_when(s['next_attempt'], now)} (after {s.get('failures', 0)} failures)"


def render_now(r: dict[str, Any]) -> str:
    left = sum(r.get("queued", {}).values())
    if r.get("status") == "no_endpoint":
        return f"no sync endpoint (sync.endpoint is not set); {left} queued offline"
    sent = ", ".join(f"{n} {k}" for k, n in r.get("sent", {}).items()) or "nothing"
    return f"sent {sent}; {left} still queued"
