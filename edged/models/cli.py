"""``edged models``, ``edged ps``, ``edged load ALIAS [--pin]``, ``edged unload ALIAS``."""

from __future__ import annotations

import argparse
from typing import Any

from edged.cli_context import CliContext
from edged.models.budget import mib


def _size(n: Any) -> str:
    return mib(int(n)) if isinstance(n, int) else "-"


def _render_models(data: dict[str, Any]) -> str:
    lines = [f"{'MODEL':<24} {'STATE':<9} {'FORMAT':<6} {'FILE':>9} {'ESTIMATE':>9}"]
    for m in data.get("data", []):
        lines.append(f"{m['id']:<24} {m['state']:<9} {m.get('format', ''):<6} "
                     f"{_size(m.get('size_bytes')):>9} {_size(m.get('estimated_bytes')):>9}")
    return "\n".join(lines)


def _render_ps(data: dict[str, Any]) -> str:
    lines = [f"budget {_size(data['budget_bytes'])}, used {_size(data['used_bytes'])}, "
             f"free {_size(data['free_bytes'])}, power profile {data.get('profile')}"]
    if not data["models"]:
        lines.append("no models loaded")
        return "\n".join(lines)
    lines.append(f"{'MODEL':<24} {'MEMORY':>9} {'IDLE':>7} {'IN FLIGHT':>9} {'RUNNING':>7} "
                 f"{'PINNED':<6}")
    for m in data["models"]:
        running = f"{m.get('running', 0)}/{m.get('parallel', 1)}"
        lines.append(f"{m['model']:<24} {_size(m['bytes']):>9} {m['idle_seconds']:>6.0f}s "
                     f"{m['in_flight']:>9} {running:>7} {'yes' if m['pinned'] else 'no':<6}")
    return "\n".join(lines)


def _render_one(data: dict[str, Any]) -> str:
    pinned = ", pinned" if data.get("pinned") else ""
    return f"{data['model']}: {data['state']} ({_size(data.get('bytes'))}{pinned})"


def _cmd_models(args: argparse.Namespace, ctx: CliContext) -> int:
    ctx.emit(ctx.client().get("/v1/models"), _render_models)
    return 0


def _cmd_ps(args: argparse.Namespace, ctx: CliContext) -> int:
    ctx.emit(ctx.client().get("/admin/ps"), _render_ps)
    return 0


def _cmd_load(args: argparse.Namespace, ctx: CliContext) -> int:
    body = {"pin": True} if args.pin else {}
    ctx.emit(ctx.client().post(f"/admin/models/{args.alias}/load", body), _render_one)
    return 0


def _cmd_unload(args: argparse.Namespace, ctx: CliContext) -> int:
    ctx.emit(ctx.client().post(f"/admin/models/{args.alias}/unload"), _render_one)
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("models", parents=[common], help="the model catalog and what is loaded")
    p.set_defaults(handler=_cmd_models)
    p = sub.add_parser("ps", parents=[common], help="loaded models: memory, idle time, queue")
    p.set_defaults(handler=_cmd_ps)
    p = sub.add_parser("load", parents=[common], help="load a model now (admin)")
    p.add_argument("alias")
    p.add_argument("--pin", action="store_true", help="keep it loaded until unloaded")
    p.set_defaults(handler=_cmd_load)
    p = sub.add_parser("unload", parents=[common], help="unload a model now (admin)")
    p.add_argument("alias")
    p.set_defaults(handler=_cmd_unload)
