"""Typed, key-naming access to a parsed TOML table.

Every getter names the full dotted key in its error, so a user reading
``budget.memory: "12XB" is not a size`` knows what to fix. Unknown keys are errors too:
a typo must not silently fall back to a default.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

from edged.errors import ConfigError

T = TypeVar("T")

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_MISSING = object()
# The getters below shadow these builtin names inside the class body.
_Str: TypeAlias = str
_Int: TypeAlias = int
_Float: TypeAlias = float
_Bool: TypeAlias = bool



SHOWN_CHARS = 80


def shown(value: object) -> str:
    """A value as an error quotes it: its repr, cut to ``SHOWN_CHARS`` (bad input can be a
    megabyte long, and the message goes into logs, audit records and events)."""
    text = repr(value)
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[:SHOWN_CHARS]}... ({len(text)} characters)"

def parse_size(value: object, key: str, error: type[Exception] = ConfigError) -> int:
    """``1048576``, ``"512MiB"``, ``"2GB"`` -> bytes."""
    if isinstance(value, bool):
        raise error(f'{key}: {shown(value)} is not a size (expected bytes or e.g. "512MiB")')
    if isinstance(value, int):
        if value < 0:
            raise error(f"{key}: {value} must not be negative")
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", value)
        if m and m.group(2).lower() in _SIZE_UNITS:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    raise error(f'{key}: {shown(value)} is not a size (expected bytes or e.g. "512MiB")')


def parse_duration(value: object, key: str, error: type[Exception] = ConfigError) -> float:
    """``30``, ``"30s"``, ``"5m"``, ``"250ms"`` -> seconds."""
    if isinstance(value, bool):
        raise error(f'{key}: {shown(value)} is not a duration (expected seconds or e.g. "5m")')
    if isinstance(value, int | float):
        if not math.isfinite(value):  # TOML has nan and inf; a sleep(nan) never returns
            raise error(f"{key}: {value} is not a duration (expected a finite number)")
        if value < 0:
            raise error(f"{key}: {value} must not be negative")
        return float(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m|h|d)?\s*", value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]
    raise error(f'{key}: {shown(value)} is not a duration (expected seconds or e.g. "5m")')


class Table:
    """A table with its dotted path. Call ``done()`` after reading to reject unknown keys.

    Also reads JSON request bodies: pass ``error=BadRequest`` and the messages name the field.
    """

    def __init__(
        self,
        data: dict[_Str, Any],
        path: _Str = "",
        base_dir: Path | None = None,
        error: type[Exception] = ConfigError,
    ) -> None:
        self._data = data
        self._error = error
        self._path = path
        self._seen: set[_Str] = set()
        self.base_dir = base_dir or Path.cwd()

    def key(self, name: _Str) -> _Str:
        return f"{self._path}.{name}" if self._path else name

    def __contains__(self, name: _Str) -> _Bool:
        return name in self._data

    def keys(self) -> Iterator[_Str]:
        return iter(self._data)

    def _get(self, name: _Str, default: object) -> object:
        self._seen.add(name)
        # JSON null means "not given" (OpenAI clients send explicit nulls); TOML has no null.
        if self._data.get(name) is not None:
            return self._data[name]
        if default is _MISSING:
            raise self._error(f"{self.key(name)}: required key is missing")
        return default

    def _typed(
        self, name: _Str, default: object, kind: type[T] | tuple[type, ...], what: _Str
    ) -> T:
        value = self._get(name, default)
        if value is default and default is not _MISSING:
            return value  # type: ignore[return-value]
        if isinstance(value, bool) and kind is not bool:
            raise self._error(f"{self.key(name)}: expected {what}, got {shown(value)}")
        if not isinstance(value, kind):
            raise self._error(f"{self.key(name)}: expected {what}, got {shown(value)}")
        return value  # type: ignore[return-value]

    def str(self, name: _Str, default: object = _MISSING) -> Any:
        return self._typed(name, default, str, "a string")

    def bool(self, name: _Str, default: object = _MISSING) -> Any:
        return self._typed(name, default, bool, "true or false")

    def int(
        self,
        name: _Str,
        default: object = _MISSING,
        *,
        min: _Int | None = None,
        max: _Int | None = None,
    ) -> Any:
        value = self._typed(name, default, int, "an integer")
        if isinstance(value, int):
            self._check_range(name, value, min, max)
        return value

    def float(
        self,
        name: _Str,
        default: object = _MISSING,
        *,
        min: _Float | None = None,
        max: _Float | None = None,
    ) -> Any:
        value: Any = self._typed(name, default, (int, float), "a number")
        if isinstance(value, int | _Float):
            if not math.isfinite(value):  # nan passes every min/max comparison
                raise self._error(f"{self.key(name)}: {value} is not a finite number")
            self._check_range(name, value, min, max)
            return float(value)
        return value

    def _check_range(self, name: _Str, value: _Float, lo: _Float | None, hi: _Float | None) -> None:
        if lo is not None and value < lo:
            raise self._error(f"{self.key(name)}: {value} is below the minimum {lo}")
        if hi is not None and value > hi:
            raise self._error(f"{self.key(name)}: {value} is above the maximum {hi}")

    def choice(self, name: _Str, options: tuple[_Str, ...], default: object = _MISSING) -> Any:
        value = self.str(name, default)
        if value not in options and value is not default:
            raise self._error(f"{self.key(name)}: {shown(value)} is not one of "
                              f"{', '.join(options)}")
        return value

    def str_list(self, name: _Str, default: object = _MISSING) -> Any:
        value = self._get(name, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._error(f"{self.key(name)}: expected a list of strings, got {shown(value)}")
        return tuple(value)

    def size(self, name: _Str, default: object = _MISSING) -> Any:
        value = self._get(name, default)
        return value if value is None else parse_size(value, self.key(name), self._error)

    def duration(self, name: _Str, default: object = _MISSING) -> Any:
        value = self._get(name, default)
        return value if value is None else parse_duration(value, self.key(name), self._error)

    def path(self, name: _Str, default: object = _MISSING) -> Any:
        """A path; relative paths are resolved against the config file's folder."""
        value = self.str(name, default)
        if value is None or isinstance(value, Path):
            return value
        p = Path(value).expanduser()
        # normpath, not resolve(): "../var" reads better in logs, and symlinks stay as given.
        return Path(os.path.normpath(p if p.is_absolute() else self.base_dir / p))

    def table(self, name: _Str, *, required: _Bool = False) -> Table:
        value = self._get(name, _MISSING if required else {})
        if not isinstance(value, dict):
            raise self._error(f"{self.key(name)}: expected a table, got {shown(value)}")
        return Table(value, self.key(name), self.base_dir, self._error)

    def tables(self, name: _Str) -> dict[_Str, Table]:
        """A table of tables, e.g. ``[models.gemma]``, ``[models.tiny]``."""
        outer = self.table(name)
        result: dict[_Str, Table] = {}
        for sub in list(outer.keys()):
            result[sub] = outer.table(sub)
        return result

    def raw(self, name: _Str, default: object = _MISSING) -> Any:
        return self._get(name, default)

    def done(self) -> None:
        unknown = sorted(set(self._data) - self._seen)
        if unknown:
            raise self._error(f"{self.key(shown(unknown[0])[1:-1])}: unknown key")
