"""Deterministic CBOR (RFC 8949 §4.2.1) for the subset edgeproof uses.

The subset: unsigned and negative integers (64-bit range), byte strings, text strings,
arrays, maps with integer or string keys, the simple values false/true/null, and tag 18
(COSE_Sign1) alone. No floats (values travel as scaled integers, which are exact and
smaller), no indefinite lengths.

Encoding follows the core deterministic encoding requirements of RFC 8949 §4.2.1:
arguments in their shortest form, definite lengths only, and map keys sorted by the
bytewise lexicographic order of their deterministic encodings. (cbor2's ``canonical=True``
sorts length-first, the RFC 7049 rule, which differs for multi-byte and mixed-type keys;
that is why the encoder is ours.)

Decoding is strict: it accepts only the deterministic encoding of a value in the subset,
so one value has exactly one byte string and a signature over the bytes is a signature
over the value. Every input limit is capped; any violation raises
:class:`~protocol.errors.MalformedRecord` with a reason code and nothing else escapes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Union

from protocol.errors import MalformedRecord

# A CBOR value in the subset, as Python sees it.
Value = Union[int, bytes, str, bool, None, list["Value"], dict["Value", "Value"], "Tag"]

_UINT64_MAX = (1 << 64) - 1
COSE_SIGN1_TAG = 18
"""The one tag in the subset (RFC 9052 §4.2, COSE_Sign1)."""


@dataclass(frozen=True)
class Tag:
    """A tagged value (RFC 8949 §3.4). Only tag 18 (COSE_Sign1) is in the subset: the
    encoder and the decoder refuse every other tag number."""

    number: int
    value: Value


@dataclass(frozen=True)
class Limits:
    """Caps applied while decoding untrusted bytes."""

    max_bytes: int = 64 * 1024
    max_depth: int = 8
    max_items: int = 4096  # array elements or map pairs, per container
    max_string: int = 64 * 1024  # bytes in one byte or text string


DEFAULT_LIMITS = Limits()


# --- encoding ---------------------------------------------------------------------------


# Heads of arguments below 24 are one byte; build them once.
_SMALL_HEADS = [[bytes([(major << 5) | arg]) for arg in range(24)] for major in range(8)]
# Encodings of map keys seen before (the record format uses a handful of small keys).
_KEY_CACHE: dict[tuple[type, Value], bytes] = {}
_KEY_CACHE_MAX = 4096


def _head(major: int, argument: int) -> bytes:
    """The initial byte(s) of a data item with its argument in the shortest form."""
    if argument < 24:
        return _SMALL_HEADS[major][argument]
    mt = major << 5
    if argument <= 0xFF:
        return bytes((mt | 24, argument))
    if argument <= 0xFFFF:
        return bytes((mt | 25,)) + argument.to_bytes(2, "big")
    if argument <= 0xFFFFFFFF:
        return bytes((mt | 26,)) + argument.to_bytes(4, "big")
    return bytes((mt | 27,)) + argument.to_bytes(8, "big")


def encode(value: Value) -> bytes:
    """Return the deterministic encoding of ``value``.

    Raises TypeError for a value outside the subset and ValueError for an integer outside
    the 64-bit CBOR range; both are programming errors, not input errors.
    """
    out = bytearray()
    _encode_into(out, value)
    return bytes(out)


def _encode_key(key: Value) -> bytes:
    cache_key = (type(key), key)
    cached = _KEY_CACHE.get(cache_key)
    if cached is None:
        # Keys are integers or strings (the decoder refuses any other key, see _KEY_TYPES):
        # a map with a boolean, null or tagged key is outside the subset.
        if type(key) not in _KEY_TYPES:
            raise TypeError(f"map key of type {type(key).__name__} in edgeproof CBOR")
        cached = encode(key)
        if len(_KEY_CACHE) < _KEY_CACHE_MAX:
            _KEY_CACHE[cache_key] = cached
    return cached


def _encode_into(out: bytearray, value: Value) -> None:
    kind = type(value)
    # Exact type checks first: bool is a subclass of int and must not encode as one.
    if kind is int:
        assert isinstance(value, int)
        if value >= 0:
            if value > _UINT64_MAX:
                raise ValueError("integer above 2**64-1")
            out += _head(0, value)
        else:
            if -1 - value > _UINT64_MAX:
                raise ValueError("integer below -2**64")
            out += _head(1, -1 - value)
    elif kind is bytes:
        assert isinstance(value, bytes)
        out += _head(2, len(value))
        out += value
    elif kind is str:
        assert isinstance(value, str)
        raw = value.encode("utf-8")
        out += _head(3, len(raw))
        out += raw
    elif kind is list:
        assert isinstance(value, list)
        out += _head(4, len(value))
        for item in value:
            _encode_into(out, item)
    elif kind is dict:
        assert isinstance(value, dict)
        # RFC 8949 §4.2.1: keys sorted bytewise by their deterministic encodings.
        pairs = sorted((_encode_key(k), v) for k, v in value.items())
        out += _head(5, len(pairs))
        for key_bytes, item in pairs:
            out += key_bytes
            _encode_into(out, item)
    elif value is False:
        out.append(0xF4)
    elif value is True:
        out.append(0xF5)
    elif value is None:
        out.append(0xF6)
    elif kind is Tag:
        assert isinstance(value, Tag)
        # Tag 18 (COSE_Sign1) is the only tag in the subset. Checked exactly: a bool or a
        # negative number would otherwise index the one-byte heads (-1 gave tag 23).
        if type(value.number) is not int or value.number != COSE_SIGN1_TAG:
            raise TypeError(f"tag {value.number!r} in edgeproof CBOR (only tag 18)")
        out += _head(6, value.number)
        _encode_into(out, value.value)
    else:
        raise TypeError(f"cannot encode {kind.__name__} in edgeproof CBOR")


def head(major: int, argument: int) -> bytes:
    """The head of a data item of major type ``major`` (for framing encodings by hand)."""
    if 0 <= argument < 24:
        return _SMALL_HEADS[major][argument]
    if not 0 <= argument <= _UINT64_MAX:
        raise ValueError("CBOR argument out of range")
    return _head(major, argument)


# --- decoding ---------------------------------------------------------------------------


class _Reader:
    __slots__ = ("data", "end", "limits", "pos")

    def __init__(self, data: bytes, limits: Limits) -> None:
        self.data = data
        self.end = len(data)
        self.pos = 0
        self.limits = limits

    def head(self) -> tuple[int, int]:
        """Read one head; return (major type, argument) after the shortest-form check."""
        data, pos = self.data, self.pos
        if pos >= self.end:
            raise MalformedRecord("cbor_truncated", f"need 1 byte at offset {pos}")
        initial = data[pos]
        major, info = initial >> 5, initial & 0x1F
        if info < 24:
            self.pos = pos + 1
            return major, info
        if info > 27:
            # 28-30 reserved, 31 indefinite length / break: not deterministic.
            raise MalformedRecord("cbor_not_deterministic", f"additional info {info}")
        if major == 7:
            raise MalformedRecord("cbor_unsupported", "floats and extended simple values")
        width = 1 << (info - 24)
        stop = pos + 1 + width
        if stop > self.end:
            raise MalformedRecord("cbor_truncated", f"need {width} bytes at offset {pos + 1}")
        argument = int.from_bytes(data[pos + 1 : stop], "big")
        # Shortest form (RFC 8949 §4.2.1): the argument must not fit a shorter head.
        if argument < (24 if width == 1 else 1 << (4 * width)):
            raise MalformedRecord("cbor_not_deterministic", "argument not in shortest form")
        self.pos = stop
        return major, argument

    def take(self, n: int) -> bytes:
        pos = self.pos
        stop = pos + n
        if stop > self.end:
            raise MalformedRecord("cbor_truncated", f"need {n} bytes at offset {pos}")
        self.pos = stop
        return self.data[pos:stop]


def read_head(data: bytes, pos: int) -> tuple[int, int, int]:
    """Read one head at ``pos``; return (major type, argument, position after the head).

    For hand-written fast paths over known layouts. Raises MalformedRecord exactly as
    :func:`decode` would for a truncated or non-shortest head.
    """
    end = len(data)
    if pos >= end:
        raise MalformedRecord("cbor_truncated", f"need 1 byte at offset {pos}")
    initial = data[pos]
    major, info = initial >> 5, initial & 0x1F
    if info < 24:
        return major, info, pos + 1  # the common one-byte head
    if info == 24 and major != 7 and pos + 2 <= end:  # the next most common: one byte more
        argument: int = data[pos + 1]
        if argument < 24:
            raise MalformedRecord("cbor_not_deterministic", "argument not in shortest form")
        return major, argument, pos + 2
    if info > 27:
        raise MalformedRecord("cbor_not_deterministic", f"additional info {info}")
    if major == 7:
        raise MalformedRecord("cbor_unsupported", "floats and extended simple values")
    stop = pos + (2, 3, 5, 9)[info - 24]
    if stop > end:
        raise MalformedRecord("cbor_truncated", f"need {stop - pos - 1} bytes at offset {pos + 1}")
    argument = _UNPACK[info - 24](data, pos + 1)[0]
    # Shortest form (RFC 8949 §4.2.1), as _Reader.head checks it: the least argument that
    # needs each width.
    if argument < (24, 1 << 8, 1 << 16, 1 << 32)[info - 24]:
        raise MalformedRecord("cbor_not_deterministic", "argument not in shortest form")
    return major, argument, stop


# Big-endian arguments of 1, 2, 4 and 8 bytes, read in place (no slice, no int.from_bytes).
_UNPACK = tuple(struct.Struct(f">{code}").unpack_from for code in "BHIQ")


def require_version(value: object, expected: int, what: str) -> None:
    """Raise MalformedRecord ``bad_version`` unless ``value`` is the unsigned integer
    ``expected``. A decoded ``true`` is not version 1, although Python's ``True == 1``:
    the deterministic encoding of a message has one version field, an integer."""
    if type(value) is not int or value != expected:
        raise MalformedRecord("bad_version", f"unsupported {what} version {value!r}")


def read_keyed(data: bytes, pos: int, key: int, major: int) -> tuple[int, int]:
    """Read a map entry's one-byte key ``key`` (0..23) at ``pos`` and the head of its value,
    which must be of major type ``major``; return (argument, position after the head).

    For hand-written fast paths over known layouts, which give up on any error: raises
    MalformedRecord("cbor_unexpected") if the key or the major type is another, and as
    :func:`read_head` does for a truncated or non-shortest head.
    """
    if pos >= len(data) or data[pos] != key:
        raise MalformedRecord("cbor_unexpected", f"key {key} expected at offset {pos}")
    found, argument, stop = read_head(data, pos + 1)
    if found != major:
        raise MalformedRecord("cbor_unexpected", f"major type {major} expected at {pos + 1}")
    return argument, stop


def decode(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Value:
    """Decode exactly one deterministic CBOR item that fills ``data``.

    Returns the value (maps as dict, arrays as list, tags as :class:`Tag`).
    Raises MalformedRecord with a reason code for anything else: truncation, trailing
    bytes, non-deterministic encoding, unsupported types, or a cap exceeded.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedRecord("cbor_type", "input is not bytes")
    data = bytes(data)
    if len(data) > limits.max_bytes:
        raise MalformedRecord("too_large", f"{len(data)} bytes > {limits.max_bytes}")
    reader = _Reader(data, limits)
    value = _decode_item(reader, 0)
    if reader.pos != len(data):
        raise MalformedRecord("cbor_trailing_bytes", f"{len(data) - reader.pos} bytes")
    return value


def _decode_item(r: _Reader, depth: int) -> Value:
    if depth > r.limits.max_depth:
        raise MalformedRecord("cbor_depth", f"nesting deeper than {r.limits.max_depth}")
    major, arg = r.head()
    if major == 0:
        return arg
    if major == 2:
        if arg > r.limits.max_string:
            raise MalformedRecord("cbor_string_too_long", f"{arg} bytes")
        return r.take(arg)
    if major == 3:
        if arg > r.limits.max_string:
            raise MalformedRecord("cbor_string_too_long", f"{arg} bytes")
        start = r.pos
        try:
            return r.take(arg).decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedRecord("cbor_bad_utf8", f"at offset {start}") from None
    if major == 1:
        return -1 - arg
    if major == 4:
        _check_count(r, arg)
        return [_decode_item(r, depth + 1) for _ in range(arg)]
    if major == 5:
        return _decode_map(r, arg, depth)
    if major == 6:
        # Only tag 18 is in the subset. Any other tag is refused: bignums (tags 2 and 3) would
        # give the integer 1 a second encoding (c2 41 01, not the preferred 01, RFC 8949
        # §3.4.3), the self-describe tag 55799 a second encoding of every value, and other
        # tags content this decoder does not check (tag 0 around null).
        if arg != COSE_SIGN1_TAG:
            raise MalformedRecord("cbor_unsupported", f"tag {arg}")
        return Tag(arg, _decode_item(r, depth + 1))
    # major 7 with info < 24: simple values.
    if arg == 20:
        return False
    if arg == 21:
        return True
    if arg == 22:
        return None
    raise MalformedRecord("cbor_unsupported", f"simple value {arg}")


def _check_count(r: _Reader, count: int) -> None:
    if count > r.limits.max_items:
        raise MalformedRecord("cbor_too_many_items", f"{count} > {r.limits.max_items}")
    # Every item takes at least one byte: a count beyond what is left is a lie.
    if count > len(r.data) - r.pos:
        raise MalformedRecord("cbor_truncated", f"{count} items claimed")


def _decode_map(r: _Reader, count: int, depth: int) -> dict[Value, Value]:
    _check_count(r, count)
    result: dict[Value, Value] = {}
    previous_key: bytes | None = None
    for _ in range(count):
        key_start = r.pos
        key = _decode_item(r, depth + 1)
        key_bytes = r.data[key_start : r.pos]
        # Keys are integers or strings. Booleans are refused too: True == 1 in Python, so
        # they would collide with integer keys.
        if type(key) not in _KEY_TYPES:
            raise MalformedRecord("cbor_bad_key", "map keys must be integers or strings")
        if previous_key is not None and key_bytes <= previous_key:
            reason = "cbor_duplicate_key" if key_bytes == previous_key else "cbor_unsorted_keys"
            raise MalformedRecord(reason, f"at offset {key_start}")
        previous_key = key_bytes
        result[key] = _decode_item(r, depth + 1)
    return result


_KEY_TYPES = frozenset({int, str, bytes})
