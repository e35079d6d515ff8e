"""A typed reader over one TOML table that names the key in every error.

Each getter marks its key as known; :meth:`Table.finish` then rejects whatever is left, so
a misspelt key is an error instead of a silently ignored setting.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path

from protocol.errors import ConfigError


class Table:
    """One TOML table at dotted position ``where``; relative paths resolve under ``base``."""

    def __init__(self, data: Mapping[str, object], where: str, base: Path) -> None:
        self._data = data
        self._where = where
        self._base = base
        self._seen: set[str] = set()

    def _name(self, key: str) -> str:
        return f"{self._where}.{key}" if self._where else key

    def _get(self, key: str) -> object:
        self._seen.add(key)
        return self._data.get(key)

    def keys(self) -> list[str]:
        return list(self._data)

    def table(self, key: str) -> Table:
        """The sub-table ``key`` (an empty one if absent)."""
        return self.optional_table(key) or Table({}, self._name(key), self._base)

    def optional_table(self, key: str) -> Table | None:
        """The sub-table ``key``, or None if absent."""
        value = self._get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise ConfigError(f"{self._name(key)}: must be a table")
        return Table(value, self._name(key), self._base)

    def string(self, key: str, default: str | None) -> str | None:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self._name(key)}: must be a non-empty string")
        return value

    def path(self, key: str, default: Path | None) -> Path | None:
        text = self.string(key, None)
        if text is None:
            return default
        path = Path(text).expanduser()
        return path if path.is_absolute() else (self._base / path)

    def choice(self, key: str, options: Iterable[str], default: str) -> str:
        options = tuple(options)
        value = self.string(key, default)
        if value not in options:
            raise ConfigError(f"{self._name(key)}: must be one of {', '.join(options)} "
                              f"(got {value!r})")
        assert value is not None
        return value

    def integer(self, key: str, default: int, *, low: int | None = None,
                high: int | None = None) -> int:
        value = self.optional_integer(key, low=low, high=high)
        return default if value is None else value

    def optional_integer(self, key: str, *, low: int | None = None,
                         high: int | None = None) -> int | None:
        value = self._get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self._name(key)}: must be an integer")
        self._range(key, value, low, high)
        return value

    def number(self, key: str, default: float, *, low: float | None = None,
               high: float | None = None) -> float:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value):
            raise ConfigError(f"{self._name(key)}: must be a number")
        self._range(key, value, low, high)
        return float(value)

    def millis(self, key: str, default_s: float, *, low: float | None = None,
               high: float | None = None) -> int:
        """A duration given in seconds (``*_s`` keys), returned in whole milliseconds."""
        return round(self.number(key, default_s, low=low, high=high) * 1000)

    def _range(self, key: str, value: float, low: float | None, high: float | None) -> None:
        if low is not None and value < low:
            raise ConfigError(f"{self._name(key)}: must be >= {low} (got {value})")
        if high is not None and value > high:
            raise ConfigError(f"{self._name(key)}: must be <= {high} (got {value})")

    def finish(self, allowed: Iterable[str] = ()) -> None:
        """Raise ConfigError for the first key no getter asked for."""
        for key in self._data:
            if key not in self._seen and key not in allowed:
                raise ConfigError(f"{self._name(key)}: unknown key")
