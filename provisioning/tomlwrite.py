"""A small TOML writer for the configs provisioning generates.

The standard library reads TOML (``tomllib``) but does not write it. The files we write are
flat: tables of strings, integers, finite floats, booleans and lists of those, plus arrays
of tables, so a few lines suffice and no dependency is added. Strings are emitted as TOML
basic strings with every control character escaped (TOML 1.0, "String"), so no value can
break out of its line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

Scalar = str | int | bool | float
Value = Scalar | Sequence[Scalar]
Table = Mapping[str, Value]

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def quote(text: str) -> str:
    """Return ``text`` as a TOML basic string (quoted, control characters escaped)."""
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _scalar(value: Scalar) -> str:
    # bool before int: bool is a subclass of int in Python.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)  # shortest round-trip form, always with a '.' or an exponent
    if isinstance(value, str):
        return quote(value)
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _value(value: Value) -> str:
    if isinstance(value, str | int | bool | float):
        return _scalar(value)
    return "[" + ", ".join(_scalar(v) for v in value) + "]"


def _key(key: str) -> str:
    bare = key and all(c.isascii() and (c.isalnum() or c in "-_") for c in key)
    return key if bare else quote(key)


def table(name: str, values: Table, *, array: bool = False) -> str:
    """Return one ``[name]`` (or ``[[name]]`` when ``array``) section with its key/values."""
    header = f"[[{name}]]" if array else f"[{name}]"
    lines = [header] + [f"{_key(k)} = {_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def document(*sections: str, comment: str = "") -> str:
    """Join sections into a document, optionally headed by ``#`` comment lines."""
    head = "".join(f"# {line}\n" if line else "#\n" for line in comment.splitlines())
    return head + ("\n" if head else "") + "\n".join(sections)
