"""Config of a remote model alias: ``[models.X] format = "openai"``.

A remote alias is an OpenAI-compatible server elsewhere (vLLM, llama-server, Ollama, a cloud
API). It is parsed apart from the local catalog (``ModelsConfig.remote``), so the model
manager, its budget and its slots never see it.
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from edged.errors import ConfigError
from edged.tomlreader import Table

REDACTIONS = ("phone", "email", "card")  # built-in patterns, all on by default


@dataclass(frozen=True)
class RemoteSpec:
    alias: str
    base_url: str  # ends in the API root, e.g. http://backroom.local:8000/v1
    model: str  # the name the server knows
    api_key_file: Path | None
    ca_file: Path | None
    timeout: float  # a whole answer, or a stream's first token and each gap after it
    max_concurrent: int
    fallback: str | None  # a local alias
    breaker_failures: int  # consecutive failures that open the breaker
    breaker_open: float  # seconds it stays open before one probe may close it
    redact: tuple[str, ...]  # built-in patterns applied to what is sent
    redact_patterns: tuple[str, ...]  # extra regular expressions, replaced by [redacted]


def is_remote(t: Table) -> bool:
    return bool(t.raw("format", None) == "openai")


def parse_remote_spec(alias: str, t: Table) -> RemoteSpec:
    t.choice("format", ("openai",))
    spec = RemoteSpec(
        alias=alias, base_url=_base_url(t), model=t.str("model"),
        api_key_file=_secret_file(t, "api_key_file"),
        ca_file=_readable(t, "ca_file"),
        timeout=t.duration("timeout", 30.0),
        max_concurrent=t.int("max_concurrent", 4, min=1, max=256),
        fallback=t.str("fallback", None),
        breaker_failures=t.int("breaker_failures", 3, min=1, max=1000),
        breaker_open=t.duration("breaker_open", 30.0),
        redact=_redactions(t),
        redact_patterns=_patterns(t),
    )
    t.done()
    if spec.timeout <= 0:
        raise ConfigError(f"{t.key('timeout')}: must be above 0")
    if not spec.model.strip():
        raise ConfigError(f"{t.key('model')}: must not be empty")
    return spec


def _base_url(t: Table) -> str:
    url: str = t.str("base_url")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{t.key('base_url')}: {url!r} is not an http:// or https:// URL")
    if parts.query or parts.fragment:
        raise ConfigError(f"{t.key('base_url')}: {url!r} must not have a query or fragment")
    return url.rstrip("/")


def _readable(t: Table, name: str) -> Path | None:
    path: Path | None = t.path(name, None)
    if path is not None and not path.is_file():
        raise ConfigError(f"{t.key(name)}: {path} is not a file")
    return path


def _secret_file(t: Table, name: str) -> Path | None:
    """A key file must be private: readable by the daemon's user alone (0600 or 0400)."""
    path = _readable(t, name)
    if path is None:
        return None
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(f"{t.key(name)}: {path} is readable by others (mode {mode:04o}); "
                          "chmod 600 it")
    return path


def _redactions(t: Table) -> tuple[str, ...]:
    names: tuple[str, ...] = t.str_list("redact", REDACTIONS)
    for name in names:
        if name not in REDACTIONS:
            raise ConfigError(f"{t.key('redact')}: unknown pattern {name!r} "
                              f"(expected some of {', '.join(REDACTIONS)})")
    return names


def _patterns(t: Table) -> tuple[str, ...]:
    patterns: tuple[str, ...] = t.str_list("redact_patterns", ())
    for i, pattern in enumerate(patterns):
        try:
            compiled = re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"{t.key('redact_patterns')}[{i}]: not a regular expression: "
                              f"{e}") from None
        if compiled.match(""):
            raise ConfigError(f"{t.key('redact_patterns')}[{i}]: {pattern!r} matches the "
                              "empty string")
    return patterns
