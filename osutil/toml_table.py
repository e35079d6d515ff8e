"""Configuration files: read a TOML file, then a typed reader over each table.

The agent's, the gateway's and the fleet's config files are read by the same code, so a
bad value gets the same kind of one-line :class:`~protocol.errors.ConfigError` everywhere,
naming the key (``section.key: must be ...``). Each getter marks its key as known;
:meth:`Table.finish` then rejects whatever is left, so a misspelt key is an error instead
of a silently ignored setting.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TypeVar

from protocol.errors import ConfigError

_Choice = TypeVar("_Choice", bound=str)


def read_toml(path: Path, *, missing: str | None = None) -> dict[str, object]:
    """Parse the TOML file ``path``; return its top-level table.

    Raises ConfigError naming the file if it cannot be read, is not UTF-8 text or is not
    valid TOML; if it does not exist and ``missing`` is given, ConfigError with that
    message instead.
    """
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        if missing is not None:
            raise ConfigError(missing) from None
        raise ConfigError(f"{path}: cannot read config (no such file)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


class Table:
    """One TOML table at dotted position ``where``; relative paths resolve under ``base``."""

    def __init__(self, data: Mapping[str, object], where: str, base: Path) -> None:
        self._data = data
        self._where = where
        self._base = base
        self._seen: set[str] = set()

    def _name(self, key: str) -> str:
        return f"{self._where}.{key}" if self._where else key

    def name(self, key: str) -> str:
        """The dotted name of ``key`` as error messages print it."""
        return self._name(key)

    def _get(self, key: str) -> object:
        self._seen.add(key)
        return self._data.get(key)

    def keys(self) -> list[str]:
        """The keys present in the table (whether read or not)."""
        return list(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._data))

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

    def missing(self, key: str) -> ConfigError:
        """The error for a required ``key`` that is absent."""
        return ConfigError(f"{self._name(key)}: missing required key")

    def string(self, key: str, default: str | None, *, allow_empty: bool = False
               ) -> str | None:
        """The string at ``key``, or ``default`` if absent; empty only if ``allow_empty``."""
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str) or not (value or allow_empty):
            raise ConfigError(f"{self._name(key)}: must be a "
                              f"{'string' if allow_empty else 'non-empty string'}")
        return value

    def string_list(self, key: str) -> tuple[str, ...] | None:
        """The list of strings at ``key``, or None if absent."""
        value = self._get(key)
        if value is None:
            return None
        if not (isinstance(value, list) and all(isinstance(x, str) for x in value)):
            raise ConfigError(f"{self._name(key)}: must be a list of strings")
        return tuple(value)

    def required_string(self, key: str) -> str:
        """The non-empty string at ``key``; ConfigError if it is absent."""
        value = self.string(key, None)
        if value is None:
            raise self.missing(key)
        return value

    def path(self, key: str, default: Path | None) -> Path | None:
        """The path at ``key`` (``~`` expanded, relative to the base), or ``default``."""
        text = self.string(key, None)
        if text is None:
            return default
        path = Path(text).expanduser()
        return path if path.is_absolute() else (self._base / path)

    def required_path(self, key: str) -> Path:
        """The path at ``key``; ConfigError if it is absent."""
        value = self.path(key, None)
        if value is None:
            raise self.missing(key)
        return value

    def choice(self, key: str, options: Iterable[_Choice], default: _Choice) -> _Choice:
        """The string at ``key`` (or ``default``), which must be one of ``options``.

        Returns the matching option itself, so a ``Literal`` set of options types the result.
        """
        allowed = tuple(options)
        value = self.string(key, default)
        if value is None or value not in allowed:
            raise ConfigError(f"{self._name(key)}: must be one of {', '.join(allowed)} "
                              f"(got {value!r})")
        return allowed[allowed.index(value)]

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConfigError(f"{self._name(key)}: must be true or false")
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
