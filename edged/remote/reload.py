"""Reloading components in place.

A component that can take a new config while it runs implements ``Reloadable`` and is
listed, with the config sections it takes, in the ``ReloadTarget`` list the composition
root hands to the remote manager. ``reload`` raises to refuse (the whole push is then
rolled back); it must not drop requests in flight: swap references, let running work
finish with what it started with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from edged.config import Config


class Reloadable(Protocol):
    async def reload(self, config: Config) -> None: ...


@dataclass(frozen=True)
class ReloadTarget:
    name: str
    sections: tuple[str, ...]  # TOML sections whose changes it takes in place
    component: Reloadable


def _sections(cfg: Config) -> dict[str, object]:
    """The config by TOML section: [models], [budget] and [power] live in one dataclass."""
    parts: dict[str, object] = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
                                if f.name not in ("source", "models")}
    m = cfg.models
    parts["models"] = (m.catalog, m.remote, m.default, m.cache_dir)
    parts["budget"] = m.budget
    parts["power"] = m.power
    return parts


def changed_sections(old: Config, new: Config) -> list[str]:
    before, after = _sections(old), _sections(new)
    return sorted(name for name in after if before[name] != after[name])


def affected(targets: Sequence[ReloadTarget], changed: Sequence[str]) -> list[ReloadTarget]:
    return [t for t in targets if set(t.sections) & set(changed)]


def needs_restart(targets: Sequence[ReloadTarget], changed: Sequence[str],
                  own: tuple[str, ...]) -> list[str]:
    """Changed sections that no running component takes in place."""
    covered = {s for t in targets for s in t.sections} | set(own)
    return [s for s in changed if s not in covered]
