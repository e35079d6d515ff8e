"""Records: what a device says, as a deterministic CBOR map.

A record is the payload of a COSE_Sign1 (see :mod:`protocol.cose`); the signer's device
id travels as the COSE ``kid`` and is not repeated in the payload. The map (integer keys,
RFC 8949 §4.2.1 deterministic encoding) is::

    1  version        uint, 1
    2  boot           uint, the device's boot counter (increments on every agent start)
    3  seq            uint, per-device sequence number, never reused
    4  prev           bstr 32, SHA-256 of the previous record's signed bytes (zeros for seq 0)
    5  wall_ms        uint, wall-clock time in ms since the Unix epoch, clock synchronised
    6  wall_unsynced  uint, the same when the wall clock was NOT synchronised (NTP);
                      exactly one of 5 and 6 is present (``Record.clock_synced``)
    7  mono_ms        uint, monotonic clock in ms since boot
    8  stream         tstr, the stream name ("climate", "tv", "usage", ...)

and exactly one body key:

    9  values         array of [mantissa int, exponent int, unit tstr]  (plaintext)
    10 sealed         [key_delta uint, ciphertext bstr]   values encrypted (protocol.sealing)
    11 usage          [start_mono_ms, end_mono_ms, usage_ms, rate_micro_per_hour]
    12 gap            [first_seq, last_seq, reason tstr]   records the device dropped
    13 key_epoch      {1: ephemeral X25519 key, 2: {stream: [[recipient kid, wrapped key]]},
                       ? 3: {derived stream: consent hash}}  (the consents it applies)
    14 key_rotation   bstr 32, the device's next Ed25519 public key

A value is ``mantissa × 10^exponent`` in ``unit`` (SenML units: "Cel", "%RH", "s", ...):
exact, and smaller on the wire than a float.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from protocol import cbor
from protocol.errors import MalformedRecord

VERSION = 1
GENESIS_PREV = bytes(32)
MAX_RECORD_BYTES = 4096
MAX_STREAM_CHARS = 64
MAX_UNIT_CHARS = 16
MAX_VALUES = 16
MAX_RECIPIENTS = 32
MAX_REASON_CHARS = 64
_UINT64_MAX = (1 << 64) - 1
_INT64_MIN = -(1 << 63)
_CHECKED_UNITS: set[str] = set()  # units that passed _require_text (bounded)
_RECORD_LIMITS = cbor.Limits(
    max_bytes=MAX_RECORD_BYTES, max_depth=5, max_items=64, max_string=MAX_RECORD_BYTES
)

K_VERSION, K_BOOT, K_SEQ, K_PREV, K_WALL, K_WALL_UNSYNCED, K_MONO, K_STREAM = range(1, 9)
K_VALUES, K_SEALED, K_USAGE, K_GAP, K_KEY_EPOCH, K_KEY_ROTATION = range(9, 15)
HEADER_KEYS = frozenset(range(1, 9))  # all but one of K_WALL and K_WALL_UNSYNCED present
_REQUIRED_KEYS = HEADER_KEYS - {K_WALL, K_WALL_UNSYNCED}

# The streams of records that are not readings (PROTOCOL.md §3.1); no sensor may use them.
KEYS_STREAM = "keys"
GAP_STREAM = "gap"
USAGE_STREAM = "usage"
ROTATION_STREAM = "rotation"
RESERVED_STREAMS = frozenset({KEYS_STREAM, GAP_STREAM, USAGE_STREAM, ROTATION_STREAM})


@dataclass(frozen=True, init=False)
class Measurement:
    """One measured value: ``mantissa × 10**exponent`` in ``unit``. Validates when built."""

    mantissa: int
    exponent: int
    unit: str

    def __init__(self, mantissa: int, exponent: int, unit: str) -> None:
        # Every reading builds one per value: the instance dict is written directly, as in
        # Record.__init__, and the usual case (plain ints, a unit seen before) is checked
        # in one test; anything else gets the full checks, which name the culprit.
        fields = self.__dict__
        fields["mantissa"] = mantissa
        fields["exponent"] = exponent
        fields["unit"] = unit
        if not (type(mantissa) is int and type(exponent) is int and type(unit) is str
                and -30 <= exponent <= 30 and _INT64_MIN <= mantissa <= _UINT64_MAX
                and unit in _CHECKED_UNITS):
            self._validate()

    def _validate(self) -> None:
        _require_int(self.mantissa, "mantissa", signed=True)
        if not -30 <= self.exponent <= 30:
            raise MalformedRecord("bad_value", "exponent out of range")
        _require_text(self.unit, "unit", MAX_UNIT_CHARS)
        if type(self.unit) is str and len(_CHECKED_UNITS) < _TEXT_CACHE_MAX:
            _CHECKED_UNITS.add(self.unit)

    @property
    def value(self) -> Decimal:
        return Decimal(self.mantissa).scaleb(self.exponent)

    def to_cbor_value(self) -> cbor.Value:
        return [self.mantissa, self.exponent, self.unit]

    @classmethod
    def from_cbor_value(cls, item: cbor.Value) -> Measurement:
        if not (isinstance(item, list) and len(item) == 3):
            raise MalformedRecord("bad_value", "a value is [mantissa, exponent, unit]")
        mantissa, exponent, unit = item
        if not (_is_int(mantissa) and _is_int(exponent) and isinstance(unit, str)):
            raise MalformedRecord("bad_value", "a value is [int, int, text]")
        assert isinstance(mantissa, int)  # for mypy
        assert isinstance(exponent, int)
        return cls(mantissa, exponent, unit)


def encode_values(values: tuple[Measurement, ...]) -> bytes:
    """Return the deterministic CBOR of a value list (the plaintext that gets sealed)."""
    parts = [cbor.head(4, len(values))]
    for m in values:
        parts += (b"\x83", _int_cbor(m.mantissa), _int_cbor(m.exponent), _text_cbor(m.unit))
    return b"".join(parts)


def _text_cbor(text: str) -> bytes:
    # Units and stream names come from a handful of configured strings: encode each once.
    cached = _TEXT_CACHE.get(text)
    if cached is None:
        raw = text.encode("utf-8")
        cached = cbor.head(3, len(raw)) + raw
        if len(_TEXT_CACHE) < _TEXT_CACHE_MAX:
            _TEXT_CACHE[text] = cached
    return cached


_TEXT_CACHE: dict[str, bytes] = {}
_TEXT_CACHE_MAX = 1024


def _uint(value: int) -> bytes:
    # cbor.head(0, value) for the unsigned integers of a validated record header.
    if value < 24:
        return _SMALL_UINTS[value]
    if value <= 0xFF:
        return bytes((0x18, value))
    if value <= 0xFFFF:
        return b"\x19" + value.to_bytes(2, "big")
    if value <= 0xFFFFFFFF:
        return b"\x1a" + value.to_bytes(4, "big")
    return b"\x1b" + value.to_bytes(8, "big")


_SMALL_UINTS = [bytes((n,)) for n in range(24)]
uint_cbor = _uint  # public: the write path's fast encoder (protocol.sealing) frames with it
text_cbor = _text_cbor


def _int_cbor(value: int) -> bytes:
    # The head of a validated (64-bit) integer: major type 0 or 1, shortest argument.
    if 0 <= value < 24:
        return _SMALL_UINTS[value]
    if -24 <= value < 0:
        return _SMALL_NINTS[-1 - value]
    return _uint(value) if value >= 0 else cbor.head(1, -1 - value)


_SMALL_NINTS = [bytes((0x20 | n,)) for n in range(24)]


def decode_values(data: bytes) -> tuple[Measurement, ...]:
    """Decode a value list; raise MalformedRecord if it is not one."""
    return _values_from(cbor.decode(data, _RECORD_LIMITS))


def _values_from(item: cbor.Value) -> tuple[Measurement, ...]:
    if not isinstance(item, list) or not 1 <= len(item) <= MAX_VALUES:
        raise MalformedRecord("bad_value", f"values must be a list of 1..{MAX_VALUES}")
    return tuple(Measurement.from_cbor_value(v) for v in item)


@dataclass(frozen=True)
class Values:
    """Plaintext values (a stream with no recipients configured)."""

    values: tuple[Measurement, ...]


@dataclass(frozen=True)
class Sealed:
    """Values encrypted for the recipients of the key epoch at ``seq - key_delta``."""

    key_delta: int
    ciphertext: bytes


@dataclass(frozen=True)
class Usage:
    """Usage measured on the device's monotonic clock within one boot."""

    start_mono_ms: int
    end_mono_ms: int
    usage_ms: int
    rate_micro_per_hour: int

    @property
    def credit_micro(self) -> int:
        """The credit this record earns: floor(usage_ms × rate / 3,600,000) micro-credits."""
        return credit_micro(self.usage_ms, self.rate_micro_per_hour)


def credit_micro(usage_ms: int, rate_micro_per_hour: int) -> int:
    """The one credit rule, used by agent and gateway alike (integers only, floor)."""
    return (usage_ms * rate_micro_per_hour) // 3_600_000


@dataclass(frozen=True)
class Gap:
    """The device dropped records ``first_seq..last_seq`` (inclusive) for ``reason``."""

    first_seq: int
    last_seq: int
    reason: str


@dataclass(frozen=True)
class Grant:
    """One recipient's wrapped key for one stream."""

    recipient_kid: bytes
    wrapped_key: bytes


@dataclass(frozen=True)
class KeyEpoch:
    """A new ephemeral X25519 key and each stream's key wrapped for its recipients.

    ``consents`` names, for each stream derived from an owner's consent (PROTOCOL.md §5.5),
    the SHA-256 of the consent document it applies; sorted by stream name, and every
    stream it names has grants. Empty when the epoch applies no consent (then key 3 is
    absent on the wire, so epochs without consents encode as before).
    """

    ephemeral_public: bytes
    grants: tuple[tuple[str, tuple[Grant, ...]], ...]  # sorted by stream name
    consents: tuple[tuple[str, bytes], ...] = ()  # (derived stream, consent hash), sorted

    def grants_for(self, stream: str) -> tuple[Grant, ...]:
        for name, grants in self.grants:
            if name == stream:
                return grants
        return ()


@dataclass(frozen=True)
class KeyRotation:
    """The device announces its next public key, signed by its current one."""

    new_public_key: bytes


Body = Values | Sealed | Usage | Gap | KeyEpoch | KeyRotation


@dataclass(frozen=True, init=False)
class Record:
    """One record as its device signed it. Validates when built."""

    boot: int
    seq: int
    prev: bytes
    wall_ms: int
    clock_synced: bool
    mono_ms: int
    stream: str
    body: Body

    def __init__(self, boot: int, seq: int, prev: bytes, wall_ms: int, clock_synced: bool,  # noqa: PLR0917 - the dataclass signature, used positionally
                 mono_ms: int, stream: str, body: Body) -> None:
        # The dataclass __init__ of a frozen class sets each field through
        # object.__setattr__; writing the instance dict directly does the same in half the
        # time, and every record on the sign and verify paths is built here. Raises
        # MalformedRecord if a field is invalid.
        fields = self.__dict__
        fields["boot"] = boot
        fields["seq"] = seq
        fields["prev"] = prev
        fields["wall_ms"] = wall_ms
        fields["clock_synced"] = clock_synced
        fields["mono_ms"] = mono_ms
        fields["stream"] = stream
        fields["body"] = body
        self._validate_header()
        _validate_body(body, seq)

    def _validate_header(self) -> None:
        boot, seq, wall, mono = self.boot, self.seq, self.wall_ms, self.mono_ms
        # One combined test on the hot path; the loop below only names the culprit.
        if not (type(boot) is int and type(seq) is int and type(wall) is int
                and type(mono) is int and 0 <= boot <= _UINT64_MAX and 0 <= seq <= _UINT64_MAX
                and 0 <= wall <= _UINT64_MAX and 0 <= mono <= _UINT64_MAX):
            for value, name in ((boot, "boot"), (seq, "seq"), (wall, "wall_ms"),
                                (mono, "mono_ms")):
                if type(value) is not int or not 0 <= value <= _UINT64_MAX:
                    raise MalformedRecord("bad_field",
                                          f"{name} must be an unsigned 64-bit integer")
        if not (type(self.prev) is bytes and len(self.prev) == 32):
            raise MalformedRecord("bad_field", "prev must be 32 bytes")
        if type(self.clock_synced) is not bool:
            raise MalformedRecord("bad_field", "clock_synced must be a bool")
        _require_text(self.stream, "stream", MAX_STREAM_CHARS)

    def header_map(self) -> dict[cbor.Value, cbor.Value]:
        """The header fields (keys 1..8, wall time under 5 or 6) as a CBOR map."""
        return {
            K_VERSION: VERSION,
            K_BOOT: self.boot,
            K_SEQ: self.seq,
            K_PREV: self.prev,
            K_WALL if self.clock_synced else K_WALL_UNSYNCED: self.wall_ms,
            K_MONO: self.mono_ms,
            K_STREAM: self.stream,
        }

    @property
    def _header_fields(self) -> bytes:
        # The key/value pairs 1..8 in their deterministic encoding, framed by hand because
        # every record is encoded at least twice (associated data and payload). Keys are
        # single-byte integers, so ascending order is RFC 8949 §4.2.1 order; the tests
        # check these bytes against cbor.encode(header_map()). Cached in the instance
        # dict by hand: functools.cached_property takes one lock for all instances on
        # Python 3.11, which the gateway's verify threads would contend for.
        cached = self.__dict__.get("_header_bytes")
        if cached is None:
            cached = self.__dict__["_header_bytes"] = self._encode_header_fields()
        return cached

    def _encode_header_fields(self) -> bytes:
        return b"".join((
            b"\x01\x01\x02", _uint(self.boot), b"\x03", _uint(self.seq), b"\x04\x58\x20",
            self.prev, b"\x05" if self.clock_synced else b"\x06", _uint(self.wall_ms),
            b"\x07", _uint(self.mono_ms), b"\x08", _text_cbor(self.stream),
        ))

    def with_body(self, body: Body) -> Record:
        """This record with another body; the header's encoding is reused, not redone.

        Only the new body is validated: the header fields are this record's, checked when
        it was built. Raises MalformedRecord if the body is not valid for this record.
        """
        _validate_body(body, self.seq)
        record = object.__new__(Record)
        fields = record.__dict__
        fields.update(self.__dict__)  # the header fields and their cached encoding, if any
        fields["body"] = body
        return record

    def header_cbor(self) -> bytes:
        """The deterministic CBOR of :meth:`header_map` (a map of seven entries)."""
        return b"\xa7" + self._header_fields

    def to_cbor(self) -> bytes:
        """Return the record's deterministic CBOR encoding (the COSE payload)."""
        # Body keys (9..14) are single bytes above every header key: they sort last.
        return b"".join((b"\xa8", self._header_fields, _body_cbor(self.body)))

    @classmethod
    def from_cbor(cls, data: bytes) -> Record:
        """Decode a record payload; raise MalformedRecord with a reason if it is not one."""
        if len(data) > MAX_RECORD_BYTES:
            raise MalformedRecord("too_large", f"record payload {len(data)} bytes")
        fast = _record_fast(data)
        return fast if fast is not None else cls.from_cbor_strict(data)

    @classmethod
    def from_cbor_strict(cls, data: bytes) -> Record:
        """:meth:`from_cbor` through the generic decoder only (no shortcut); same result."""
        if len(data) > MAX_RECORD_BYTES:
            raise MalformedRecord("too_large", f"record payload {len(data)} bytes")
        item = cbor.decode(data, _RECORD_LIMITS)
        if not isinstance(item, dict):
            raise MalformedRecord("bad_record", "record is not a map")
        cbor.require_version(item.get(K_VERSION), VERSION, "record")
        missing = _REQUIRED_KEYS - item.keys()
        if missing:
            raise MalformedRecord("bad_record", f"missing fields {sorted(missing)}")
        walls = [key for key in (K_WALL, K_WALL_UNSYNCED) if key in item]
        if len(walls) != 1:
            raise MalformedRecord("bad_record", "exactly one of wall_ms and wall_unsynced")
        body_keys = set(item.keys()) - HEADER_KEYS
        if len(body_keys) != 1:
            raise MalformedRecord("bad_record", "a record has exactly one body")
        (body_key,) = body_keys
        try:
            return cls(
                boot=_int(item[K_BOOT]),
                seq=_int(item[K_SEQ]),
                prev=_bytes(item[K_PREV]),
                wall_ms=_int(item[walls[0]]),
                clock_synced=walls[0] == K_WALL,
                mono_ms=_int(item[K_MONO]),
                stream=_text(item[K_STREAM]),
                body=_body_from_cbor(body_key, item[body_key]),
            )
        except (TypeError, ValueError) as exc:
            raise MalformedRecord("bad_field", str(exc)) from None


def _record_fast(data: bytes) -> Record | None:
    """Parse the header as :meth:`Record.to_cbor` frames it, without the generic decoder.

    A shortcut only, as strict as the generic path: the header is read in the one order
    and form the deterministic encoding allows (keys ascending, shortest heads), a values
    or sealed body by hand in its one form, any other body with the strict generic
    decoder; either must consume the rest exactly. Values and sealed records are built
    without Record's checks, which each field passed here already; other bodies go through
    Record(). Anything else returns None and goes the generic way, which reports the
    precise error. Hypothesis tests hold the two paths to the same answers.
    """
    read_head = cbor.read_head
    try:
        if (type(data) is not bytes or len(data) > MAX_RECORD_BYTES
                or data[:4] != b"\xa8\x01\x01\x02"):
            return None
        boot, pos = data[4], 5  # a boot counter below 24 has a one-byte head
        if boot >= 24:
            major, boot, pos = read_head(data, 4)
            if major:
                return None
        if data[pos] != K_SEQ:
            return None
        major, seq, pos = read_head(data, pos + 1)
        if major or data[pos:pos + 3] != b"\x04\x58\x20":
            return None
        prev = data[pos + 3:pos + 35]
        wall_key = data[pos + 35]
        if wall_key not in {K_WALL, K_WALL_UNSYNCED}:
            return None
        major, wall, pos = read_head(data, pos + 36)
        if major or data[pos] != K_MONO:
            return None
        major, mono, pos = read_head(data, pos + 1)
        if major or data[pos] != K_STREAM:
            return None
        initial = data[pos + 1]
        if 0x60 <= initial < 0x78:  # a text string shorter than 24 bytes: one-byte head
            length, pos = initial - 0x60, pos + 2
        else:
            major, length, pos = read_head(data, pos + 1)
            if major != 3:
                return None
        stop = pos + length
        if stop >= len(data):
            return None
        stream = _checked_text(data[pos:stop], MAX_STREAM_CHARS)
        body_key = data[stop]
        body: Body | None = None
        if body_key == K_VALUES:
            body = _values_fast(data, stop)
        elif body_key == K_SEALED:
            body = _sealed_fast(data, stop)
            if body is not None:
                _validate_body(body, seq)  # key_delta and ciphertext bounds
        if stream is None:
            return None
        if body is None:  # another body, or an unusual form: decoded and checked generically
            body = _body_from_cbor(body_key, cbor.decode(data[stop + 1:], _RECORD_LIMITS))
            return Record(boot, seq, prev, wall, wall_key == K_WALL, mono, stream, body)
    except (MalformedRecord, IndexError, UnicodeDecodeError, ValueError, TypeError):
        return None
    # Every field is checked already, as Record() would: the integers come from CBOR heads
    # of major type 0 (0..2**64-1), prev is 32 bytes (the byte after it was read), the
    # stream by _checked_text, the body by _values_fast or _validate_body.
    record = object.__new__(Record)
    fields = record.__dict__
    fields["boot"] = boot
    fields["seq"] = seq
    fields["prev"] = prev
    fields["wall_ms"] = wall
    fields["clock_synced"] = wall_key == K_WALL
    fields["mono_ms"] = mono
    fields["stream"] = stream
    fields["body"] = body
    return record


def _checked_text(raw: bytes, max_chars: int) -> str | None:
    """``raw`` as text Record accepts in a field of ``max_chars`` (1..max_chars printable
    characters of valid UTF-8), else None.

    Remembered per byte string (bounded): devices send a handful of stream names and
    units, over and over.
    """
    text = _CHECKED_TEXT.get(raw)
    if text is None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if not text or not text.isprintable():
            return None
        if len(_CHECKED_TEXT) >= _TEXT_CACHE_MAX:
            _CHECKED_TEXT.clear()  # a flood of distinct strings only empties it
        _CHECKED_TEXT[raw] = text
    return text if len(text) <= max_chars else None


_CHECKED_TEXT: dict[bytes, str] = {}


def _values_fast(data: bytes, start: int) -> Values | None:
    """``9: [[mantissa, exponent, unit], ...]`` at ``start``, filling the rest of ``data``.

    The one deterministic form: 1..MAX_VALUES entries, each an array of three with integer
    heads of major type 0 or 1 (shortest form, as cbor.read_head checks) and a text unit
    with a one-byte head. Returns None for anything else (the generic decoder then gives
    the answer and the precise error). Bodies of a few bytes are remembered (bounded):
    sensors repeat their readings, and a Values is immutable.
    """
    end = len(data)
    small = end - start <= _SMALL_BODY_BYTES
    if small:
        cached = _VALUES_CACHE.get(data[start:])
        if cached is not None:
            return cached
    count = data[start + 1] - 0x80
    if not 1 <= count <= MAX_VALUES:
        return None
    read_head = cbor.read_head
    pos = start + 2
    values = []
    for _ in range(count):
        if data[pos] != 0x83:
            return None
        major, mantissa, pos = read_head(data, pos + 1)
        if major == 1 and mantissa < 1 << 63:
            mantissa = -1 - mantissa
        elif major:
            return None
        major, exponent, pos = read_head(data, pos)
        if major == 1:
            exponent = -1 - exponent
        elif major:
            return None
        if not -30 <= exponent <= 30:
            return None
        length = data[pos] - 0x60
        if not 0 < length < 24:  # text with a one-byte head
            return None
        pos += 1 + length
        if pos > end:
            return None
        unit = _checked_text(data[pos - length:pos], MAX_UNIT_CHARS)
        if unit is None:
            return None
        measurement = object.__new__(Measurement)  # checked above, as __post_init__ does
        fields = measurement.__dict__
        fields["mantissa"] = mantissa
        fields["exponent"] = exponent
        fields["unit"] = unit
        values.append(measurement)
    if pos != end:
        return None
    body = Values(tuple(values))
    if small:
        if len(_VALUES_CACHE) >= _VALUES_CACHE_MAX:
            _VALUES_CACHE.clear()
        _VALUES_CACHE[data[start:]] = body
    return body


_SMALL_BODY_BYTES = 48
_VALUES_CACHE: dict[bytes, Values] = {}
_VALUES_CACHE_MAX = 4096


def _sealed_fast(data: bytes, pos: int) -> Sealed | None:
    """``10: [key_delta, ciphertext]`` at ``pos``, filling the rest of ``data``; else None."""
    if data[pos + 1] != 0x82:
        return None
    major, key_delta, pos = cbor.read_head(data, pos + 2)
    if major:
        return None
    major, length, pos = cbor.read_head(data, pos)
    if major != 2 or pos + length != len(data):
        return None
    return Sealed(key_delta, data[pos:])


# --- body codecs -------------------------------------------------------------------------


def _body_cbor(body: Body) -> bytes:
    """The body's key and value in their deterministic encoding."""
    if type(body) is Sealed:
        # Hand-framed on the hot path: 0x0a, array of two, key_delta, the ciphertext.
        ciphertext = body.ciphertext
        return b"".join((b"\x0a\x82", _uint(body.key_delta), cbor.head(2, len(ciphertext)),
                         ciphertext))
    if type(body) is Values:
        return b"\x09" + encode_values(body.values)
    key, value = _body_to_cbor(body)
    return cbor.head(0, key) + cbor.encode(value)


def _body_to_cbor(body: Body) -> tuple[int, cbor.Value]:
    if isinstance(body, Values):
        return K_VALUES, [m.to_cbor_value() for m in body.values]
    if isinstance(body, Sealed):
        return K_SEALED, [body.key_delta, body.ciphertext]
    if isinstance(body, Usage):
        return K_USAGE, [body.start_mono_ms, body.end_mono_ms, body.usage_ms,
                         body.rate_micro_per_hour]
    if isinstance(body, Gap):
        return K_GAP, [body.first_seq, body.last_seq, str(body.reason)]  # a StrEnum: plain text
    if isinstance(body, KeyEpoch):
        grants: dict[cbor.Value, cbor.Value] = {
            stream: [[g.recipient_kid, g.wrapped_key] for g in gs] for stream, gs in body.grants
        }
        epoch: dict[cbor.Value, cbor.Value] = {1: body.ephemeral_public, 2: grants}
        if body.consents:
            epoch[3] = dict(body.consents)
        return K_KEY_EPOCH, epoch
    return K_KEY_ROTATION, body.new_public_key


def _body_from_cbor(key: cbor.Value, item: cbor.Value) -> Body:
    if key == K_VALUES:
        return Values(_values_from(item))
    if key == K_SEALED:
        delta, ciphertext = _fixed_list(item, 2)
        return Sealed(_int(delta), _bytes(ciphertext))
    if key == K_USAGE:
        start, end, used, rate = (_int(x) for x in _fixed_list(item, 4))
        return Usage(start, end, used, rate)
    if key == K_GAP:
        first, last, reason = _fixed_list(item, 3)
        return Gap(_int(first), _int(last), _text(reason))
    if key == K_KEY_EPOCH:
        return _key_epoch_from(item)
    if key == K_KEY_ROTATION:
        return KeyRotation(_bytes(item))
    raise MalformedRecord("bad_record", f"unknown body key {key!r}")


def _key_epoch_from(item: cbor.Value) -> KeyEpoch:
    if not isinstance(item, dict) or set(item.keys()) not in ({1, 2}, {1, 2, 3}):
        raise MalformedRecord("bad_key_epoch", "key epoch is {1: key, 2: grants, ? 3: consents}")
    grants_map = item[2]
    if not isinstance(grants_map, dict):
        raise MalformedRecord("bad_key_epoch", "grants must be a map")
    grants = []
    for stream, entries in grants_map.items():
        if not isinstance(entries, list):
            raise MalformedRecord("bad_key_epoch", "grant list expected")
        pairs = tuple(Grant(*(_bytes(x) for x in _fixed_list(e, 2))) for e in entries)
        grants.append((_text(stream), pairs))
    consents_map = item.get(3, {})
    if not isinstance(consents_map, dict) or (3 in item and not consents_map):
        raise MalformedRecord("bad_key_epoch", "consents must be a non-empty map")
    consents = tuple(sorted((_text(k), _bytes(v)) for k, v in consents_map.items()))
    return KeyEpoch(_bytes(item[1]), tuple(sorted(grants)), consents)


def _validate_body(body: Body, seq: int) -> None:
    if isinstance(body, Values):
        if not 1 <= len(body.values) <= MAX_VALUES:
            raise MalformedRecord("bad_value", f"1..{MAX_VALUES} values per record")
    elif isinstance(body, Sealed):
        _require_int(body.key_delta, "key_delta")
        if body.key_delta < 1 or body.key_delta > seq:
            raise MalformedRecord("bad_sealed", "key_delta must point to an earlier record")
        if not 16 <= len(body.ciphertext) <= 1024:
            raise MalformedRecord("bad_sealed", "ciphertext length out of range")
    elif isinstance(body, Usage):
        for name in ("start_mono_ms", "end_mono_ms", "usage_ms", "rate_micro_per_hour"):
            _require_int(getattr(body, name), name)
        if body.end_mono_ms < body.start_mono_ms:
            raise MalformedRecord("bad_usage", "interval ends before it starts")
    elif isinstance(body, Gap):
        _require_int(body.first_seq, "first_seq")
        _require_int(body.last_seq, "last_seq")
        if not body.first_seq <= body.last_seq < seq:
            raise MalformedRecord("bad_gap", "gap must be a range of earlier sequence numbers")
        _require_text(body.reason, "reason", MAX_REASON_CHARS)
    elif isinstance(body, KeyEpoch):
        _validate_key_epoch(body)
    elif isinstance(body, KeyRotation):
        if len(body.new_public_key) != 32:
            raise MalformedRecord("bad_rotation", "new public key must be 32 bytes")
    else:
        raise MalformedRecord("bad_record", f"unknown body {type(body).__name__}")


def _validate_key_epoch(body: KeyEpoch) -> None:
    if len(body.ephemeral_public) != 32:
        raise MalformedRecord("bad_key_epoch", "ephemeral key must be 32 bytes")
    names = [name for name, _ in body.grants]
    if names != sorted(set(names)):
        raise MalformedRecord("bad_key_epoch", "streams must be unique and sorted")
    for name, grants in body.grants:
        _require_text(name, "stream", MAX_STREAM_CHARS)
        if not 1 <= len(grants) <= MAX_RECIPIENTS:
            raise MalformedRecord("bad_key_epoch", f"1..{MAX_RECIPIENTS} recipients per stream")
        for grant in grants:
            if len(grant.recipient_kid) != 8 or len(grant.wrapped_key) != 48:
                raise MalformedRecord("bad_key_epoch", "grant is [8-byte kid, 48-byte key]")
    derived = [name for name, _ in body.consents]
    if derived != sorted(set(derived)) or not set(derived) <= set(names):
        raise MalformedRecord("bad_key_epoch", "consents name distinct streams with grants")
    for _, consent_hash in body.consents:
        if type(consent_hash) is not bytes or len(consent_hash) != 32:
            raise MalformedRecord("bad_key_epoch", "a consent hash is 32 bytes")


# --- small typed accessors ---------------------------------------------------------------


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _require_int(x: object, name: str, *, signed: bool = False) -> None:
    if not _is_int(x):
        raise MalformedRecord("bad_field", f"{name} must be an integer")
    assert isinstance(x, int)
    low = -(1 << 63) if signed else 0
    if not low <= x <= _UINT64_MAX:
        raise MalformedRecord("bad_field", f"{name} out of range")


def _require_text(x: object, name: str, max_chars: int) -> None:
    if not isinstance(x, str) or not 1 <= len(x) <= max_chars:
        raise MalformedRecord("bad_field", f"{name} must be text of 1..{max_chars} characters")
    if not x.isprintable():
        raise MalformedRecord("bad_field", f"{name} has control characters")


def _int(x: cbor.Value) -> int:
    if not _is_int(x):
        raise MalformedRecord("bad_field", "integer expected")
    assert isinstance(x, int)
    return x


def _bytes(x: cbor.Value) -> bytes:
    if not isinstance(x, bytes):
        raise MalformedRecord("bad_field", "byte string expected")
    return x


def _text(x: cbor.Value) -> str:
    if not isinstance(x, str):
        raise MalformedRecord("bad_field", "text expected")
    return x


def _fixed_list(x: cbor.Value, n: int) -> list[cbor.Value]:
    if not isinstance(x, list) or len(x) != n:
        raise MalformedRecord("bad_field", f"array of {n} expected")
    return x
