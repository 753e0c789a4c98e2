"""TOML -> typed, validated, frozen config.

Everything is validated before any I/O happens. Each package owns the dataclass and the
parser of its own section (``edged/<pkg>/config.py``); this module owns the daemon and
logging sections and puts the whole document together. A reload builds a whole new
``Config`` and swaps it, or changes nothing.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edged.agents.config import AgentsConfig, AgentSpec, parse_agents
from edged.agents.kit import discover as discover_kits
from edged.audit.config import AuditConfig, parse_audit
from edged.errors import ConfigError
from edged.models.config import ModelsConfig, parse_models
from edged.remote.config import RemoteConfig, parse_remote
from edged.sync.config import SyncConfig, parse_sync
from edged.tomlreader import Table
from edged.tools.config import ToolsConfig, parse_tools

MAX_CONFIG_BYTES = 1024 * 1024


@dataclass(frozen=True)
class DaemonConfig:
    state_dir: Path
    socket: Path
    socket_mode: int
    keys_dir: Path
    admin_groups: tuple[str, ...]
    client_groups: tuple[str, ...]
    owner_is_admin: bool  # the daemon's own uid gets admin (a dev box), not just client
    max_body_bytes: int
    read_timeout: float  # a request's headers, and its body, must arrive within this
    idle_timeout: float  # a connection with no request in progress is closed after this
    max_connections: int  # open at once; past it the oldest idle one is closed
    grace_period: float
    device_id: str
    device_tags: tuple[str, ...]


@dataclass(frozen=True)
class LoggingConfig:
    level: str
    format: str  # auto | text | journal | json


@dataclass(frozen=True)
class Config:
    source: Path | None
    daemon: DaemonConfig
    logging: LoggingConfig
    models: ModelsConfig
    agents: AgentsConfig
    audit: AuditConfig
    sync: SyncConfig
    remote: RemoteConfig
    # [mcp.*] servers and [tools.*] HTTP tools
    tools: ToolsConfig = field(default_factory=lambda: ToolsConfig({}, {}))


@dataclass(frozen=True)
class Overrides:
    """Command-line overrides: ``edged serve --state-dir D --socket S``."""

    state_dir: Path | None = None
    socket: Path | None = None


def _parse_daemon(t: Table, overrides: Overrides) -> DaemonConfig:
    # Read every key even when overridden, so a typo or a bad value is still reported.
    state_dir = Path(overrides.state_dir or t.path("state_dir", Path("/var/lib/edged")))
    socket = Path(overrides.socket or t.path("socket", state_dir / "edged.sock"))
    cfg = DaemonConfig(
        state_dir=state_dir,
        socket=socket,
        socket_mode=_octal_mode(t, "socket_mode", "0660"),
        # An explicit keys_dir (say /etc/edged/keys) wins; otherwise keys live in the state
        # folder, the one --state-dir names.
        keys_dir=Path(t.path("keys_dir", None) or state_dir / "keys"),
        admin_groups=t.str_list("admin_groups", ("edged-admin",)),
        client_groups=t.str_list("client_groups", ("edged",)),
        owner_is_admin=t.bool("owner_is_admin", False),
        max_body_bytes=t.size("max_body", 1024 * 1024),
        read_timeout=t.duration("read_timeout", 30.0),
        idle_timeout=t.duration("idle_timeout", 60.0),
        max_connections=t.int("max_connections", 256, min=4, max=65536),
        grace_period=t.duration("grace_period", 20.0),
        device_id=t.str("device_id", os.uname().nodename),
        device_tags=t.str_list("device_tags", ()),
    )
    t.path("state_dir", None)
    t.path("socket", None)
    t.done()
    _check_daemon(t, cfg)
    return cfg


def _octal_mode(t: Table, name: str, default: str) -> int:
    text = t.str(name, default)
    try:
        mode = int(text, 8)
    except ValueError:
        raise ConfigError(f"{t.key(name)}: {text!r} is not an octal mode") from None
    if not 0 <= mode <= 0o777:
        raise ConfigError(f"{t.key(name)}: {text!r} is not a permission mode (0000-0777)")
    return mode


def _check_daemon(t: Table, cfg: DaemonConfig) -> None:
    # sun_path holds 108 bytes with the terminating NUL.
    if len(os.fsencode(cfg.socket)) > 107:
        raise ConfigError(f"{t.key('socket')}: {str(cfg.socket)!r} is longer than the 107 bytes "
                          "a Unix socket path may have")
    if cfg.max_body_bytes < 1024:
        raise ConfigError(f"{t.key('max_body')}: {cfg.max_body_bytes} bytes is too small "
                          "(at least 1KiB)")
    for name in ("read_timeout", "idle_timeout"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{t.key(name)}: must be more than 0 seconds")
    if not cfg.device_id.strip():
        raise ConfigError(f"{t.key('device_id')}: must not be empty")


def _parse_logging(t: Table) -> LoggingConfig:
    cfg = LoggingConfig(
        level=t.choice("level", ("debug", "info", "warning", "error"), "info"),
        format=t.choice("format", ("auto", "text", "journal", "json"), "auto"),
    )
    t.done()
    return cfg


def parse_config(data: dict[str, Any], *, source: Path | None = None,
                 overrides: Overrides | None = None) -> Config:
    base_dir = source.parent if source else Path.cwd()
    root = Table(data, "", base_dir)
    daemon = _parse_daemon(root.table("daemon"), overrides or Overrides())
    tools = parse_tools(root.table("mcp"), root.table("tools"))
    cfg = Config(
        source=source,
        daemon=daemon,
        logging=_parse_logging(root.table("logging")),
        models=parse_models(root, daemon.state_dir),
        agents=parse_agents(root.table("agents"), discover_kits(), tools.knows),
        audit=parse_audit(root.table("audit")),
        sync=parse_sync(root.table("sync")),
        remote=parse_remote(root.table("remote")),
        tools=tools,
    )
    root.done()
    _check_cross_references(cfg)
    return cfg


def _check_cross_references(cfg: Config) -> None:
    encoder = cfg.agents.encoder
    remote = cfg.models.remote
    if encoder in remote:
        raise ConfigError(f"agents.encoder: {encoder!r} is a remote model; the encoder reads "
                          "every turn (a phi agent's too) and must be local")
    if encoder is not None and encoder not in cfg.models.catalog:
        raise ConfigError(f"agents.encoder: {encoder!r} is not a model alias "
                          f"(known: {', '.join(sorted(cfg.models.catalog)) or 'none'})")
    for name, agent in cfg.agents.agents.items():
        if agent.kind == "front" and not agent.model:
            continue  # a front desk only routes: its members' models answer
        if agent.model in remote:
            raise ConfigError(f"agents.{name}.model: {agent.model!r} is a remote model; an "
                              "agent's own model is local (a bigger one goes in "
                              "escalation_model)")
        if agent.model not in cfg.models.catalog:
            raise ConfigError(f"agents.{name}.model: {agent.model!r} is not a model alias "
                              f"(known: {', '.join(sorted(cfg.models.catalog)) or 'none'})")
        _check_escalation(cfg, name, agent)


def _check_escalation(cfg: Config, name: str, agent: AgentSpec) -> None:
    """An agent with phi = true never uses a non-local model."""
    target = agent.escalation_model
    if target is None:
        return
    known = set(cfg.models.catalog) | set(cfg.models.remote)
    if target not in known:
        raise ConfigError(f"agents.{name}.escalation_model: {target!r} is not a model alias "
                          f"(known: {', '.join(sorted(known)) or 'none'})")
    if agent.phi and target in cfg.models.remote:
        raise ConfigError(f"agents.{name}.escalation_model: {target!r} is a remote model, and "
                          f"agent {name!r} has phi = true: protected health information never "
                          "leaves the box")


def parse_toml_text(text: str, *, source: Path | None = None,
                    overrides: Overrides | None = None) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        where = source or "config"
        raise ConfigError(f"{where}: not valid TOML: {e}") from None
    return parse_config(data, source=source, overrides=overrides)


def load_config(path: Path, overrides: Overrides | None = None) -> Config:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: config is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: config is not UTF-8 text") from None
    return parse_toml_text(text, source=path.resolve(), overrides=overrides)
