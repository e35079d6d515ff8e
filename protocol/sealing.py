"""Encrypting values so that only a stream's recipients can read them.

Construction (details and security reasoning in docs/PROTOCOL.md, "Encryption"):

1. A *key epoch* starts with a key-epoch record at sequence number ``E``. The device makes
   a fresh ephemeral X25519 key pair and, for every stream with recipients, a fresh random
   32-byte stream key. For each recipient it performs ONE X25519 agreement
   ``shared = X25519(eph_secret, recipient_public)`` and, for each stream that recipient
   is granted, derives a single-use wrapping key::

       kek = BLAKE2b-256(key=shared, person="edgeproof-wrap1\\0",
                         data=eph_public || recipient_public || utf8(stream))

   and wraps the stream key with XChaCha20-Poly1305 (nonce: 24 zero bytes, which is safe
   because ``kek`` is used once) and associated data ``cbor([device_id, E, stream])``.
2. Each value record in that epoch (sequence number ``s > E``) encrypts its value list
   with the stream key: XChaCha20-Poly1305, nonce ``16 zero bytes || s as 8-byte big
   endian`` (sequence numbers are never reused, so a nonce never repeats under a key),
   associated data ``cbor([device_id, header, s - E])`` where ``header`` is the record's
   header map (keys 1..8). A ciphertext moved to another record, device, stream or epoch
   fails to open.

A recipient never shares key material with another: a recipient granted stream A learns
nothing about stream B's key. The gateway never needs or holds a recipient key.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import nacl.bindings
import nacl.encoding
import nacl.exceptions
import nacl.hash
import nacl.public

from protocol import cbor, cose
from protocol.errors import VerificationError
from protocol.keys import RecipientKey, Secret, SigningKey, recipient_kid
from protocol.record import (
    MAX_STREAM_CHARS,
    MAX_VALUES,
    Grant,
    KeyEpoch,
    Measurement,
    Record,
    Sealed,
    decode_values,
    encode_values,
    text_cbor,
    uint_cbor,
)
from protocol.sodium import ffi as _ffi
from protocol.sodium import lib as _lib

WRAP_PERSON = b"edgeproof-wrap1\x00"
_ZERO_NONCE = bytes(24)
_aead_encrypt = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt
_aead_decrypt = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt
_AEAD_TAG_BYTES = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_ABYTES



def _seal_fast(plaintext: bytes, aad: bytes, nonce: bytes, key: bytes) -> bytes:
    """XChaCha20-Poly1305 encryption: the same bytes as ``_aead_encrypt``, faster.

    PyNaCl's binding checks its arguments with seven ``ensure`` calls and formats three
    error messages on every call, failing or not: about 3 µs of Python around 1.4 µs of
    libsodium, once per sealed reading (profiled in bench/protocol_bench.py). Here every
    argument is ours: bytes, a 24-byte nonce, a 32-byte stream key (checked once when the
    key is made); so the hot path calls the same libsodium function through PyNaCl's own
    cffi module. A test holds it to the public binding's output.
    """
    if _lib is None or len(nonce) != 24 or len(key) != 32:
        return _aead_encrypt(plaintext, aad, nonce, key)
    length = len(plaintext) + _AEAD_TAG_BYTES
    out = _ffi.new("unsigned char[]", length)
    rc = _lib.crypto_aead_xchacha20poly1305_ietf_encrypt(
        out, _ffi.NULL, plaintext, len(plaintext), aad, len(aad), _ffi.NULL, nonce, key)
    if rc != 0:  # libsodium documents no failure for valid lengths; never return garbage
        return _aead_encrypt(plaintext, aad, nonce, key)
    return bytes(_ffi.buffer(out, length))

RandomBytes = Callable[[int], bytes]


@dataclass(frozen=True)
class EpochKeys:
    """The secret half of a key epoch, kept in memory by the device only."""

    key_seq: int
    stream_keys: Mapping[str, Secret] = field(repr=False)


def _shared_secret(secret: bytes, public: bytes) -> bytes:
    try:
        return nacl.bindings.crypto_scalarmult(secret, public)
    except (nacl.exceptions.RuntimeError, nacl.exceptions.ValueError,
            nacl.exceptions.TypeError) as exc:
        # libsodium refuses low-order points (an all-zero shared secret).
        raise VerificationError("X25519 key agreement failed (low-order point)") from exc


def _kek(shared: bytes, eph_public: bytes, recipient_public: bytes, stream: str) -> bytes:
    data = eph_public + recipient_public + stream.encode("utf-8")
    return nacl.hash.blake2b(data, digest_size=32, key=shared, person=WRAP_PERSON,
                             encoder=nacl.encoding.RawEncoder)


def _wrap_aad(device_id: bytes, key_seq: int, stream: str) -> bytes:
    return cbor.encode([device_id, key_seq, stream])


def new_key_epoch(
    device_id: bytes,
    key_seq: int,
    recipients: Mapping[str, Sequence[bytes]],
    random_bytes: RandomBytes = os.urandom,
    consents: Mapping[str, bytes] | None = None,
) -> tuple[KeyEpoch, EpochKeys]:
    """Start a key epoch at ``key_seq`` for ``recipients`` (stream -> X25519 public keys).

    ``consents`` names the consent (by hash) each derived stream applies
    (protocol.grants); it goes into the record as it is. Returns the record body to sign
    and send, and the stream keys to keep in memory. ``random_bytes`` is injectable so
    test vectors are reproducible.
    """
    eph_secret = random_bytes(32)
    eph_public = nacl.bindings.crypto_scalarmult_base(eph_secret)
    shared_by_recipient: dict[bytes, bytes] = {}
    grants: list[tuple[str, tuple[Grant, ...]]] = []
    stream_keys: dict[str, Secret] = {}
    for stream in sorted(recipients):
        stream_key = random_bytes(32)
        stream_keys[stream] = Secret(stream_key)
        stream_grants = []
        for public in sorted(set(recipients[stream])):
            if public not in shared_by_recipient:  # one agreement per recipient per epoch
                shared_by_recipient[public] = _shared_secret(eph_secret, public)
            kek = _kek(shared_by_recipient[public], eph_public, public, stream)
            wrapped = _aead_encrypt(stream_key, _wrap_aad(device_id, key_seq, stream),
                                    _ZERO_NONCE, kek)
            stream_grants.append(Grant(recipient_kid(public), wrapped))
        grants.append((stream, tuple(stream_grants)))
    named = tuple(sorted((consents or {}).items()))
    return KeyEpoch(eph_public, tuple(grants), named), EpochKeys(key_seq, stream_keys)


def value_nonce(seq: int) -> bytes:
    """The 24-byte nonce of the value record with sequence number ``seq``."""
    return bytes(16) + seq.to_bytes(8, "big")


def value_aad(device_id: bytes, record: Record, key_delta: int) -> bytes:
    """Associated data binding a ciphertext to its device, record header and epoch.

    The bytes of ``cbor([device_id, header map, key_delta])``.
    """
    return b"".join((b"\x83", cbor.head(2, len(device_id)), device_id, record.header_cbor(),
                     cbor.head(0, key_delta)))


def seal_values(
    device_id: bytes,
    header: Record,
    epoch: EpochKeys,
    values: Sequence[Measurement],
) -> Sealed:
    """Encrypt ``values`` for the record whose header fields are those of ``header``.

    ``header`` is a record with the final header fields (its body is ignored). Raises
    KeyError if the epoch has no key for the stream and ValueError if the epoch does not
    precede the record.
    """
    key_delta = header.seq - epoch.key_seq
    if key_delta < 1:
        raise ValueError("a key epoch must precede the records it encrypts")
    stream_key = epoch.stream_keys[header.stream].value
    aad = value_aad(device_id, header, key_delta)
    ciphertext = _seal_fast(encode_values(tuple(values)), aad, value_nonce(header.seq),
                            stream_key)
    return Sealed(key_delta, ciphertext)


_UINT64_MAX = (1 << 64) - 1
_NONCE_PREFIX = bytes(16)
_MAX_PLAINTEXT = 1024 - _AEAD_TAG_BYTES  # a Sealed ciphertext is at most 1024 bytes


class StreamSealer:
    """The value records of one stream in one key epoch, sealed and signed as one device
    in one boot: the bytes of ``signed_bytes(seal_record(...), device_id, key)``, built in
    one pass.

    The write path's shortcut (about 12 µs of Python per reading spread over Record,
    Values and Sealed objects, their checks and two encodings of the header). Everything
    constant for the stream is framed once here: the associated data's device id, the
    header's version and boot, the stream name, the key, the COSE prefixes. :meth:`sign`
    makes the same checks Record() and seal_values would and returns None where either
    would raise (or for a field outside the usual form): the caller then takes the generic
    path, which raises the precise error. Tests hold the two to the same bytes.
    """

    __slots__ = ("_aad_head", "_boot_fields", "_envelope", "_key_seq", "_stream_field",
                 "_stream_key", "_to_be_signed", "usable")

    def __init__(self, device_id: bytes, boot: int, epoch: EpochKeys, stream: str) -> None:
        """Raises KeyError if the epoch has no key for ``stream``, as seal_values."""
        self._stream_key = epoch.stream_keys[stream].value
        self._key_seq = epoch.key_seq
        self.usable = (type(boot) is int and 0 <= boot <= _UINT64_MAX
                       and type(epoch.key_seq) is int and epoch.key_seq >= 0
                       and type(stream) is str and 1 <= len(stream) <= MAX_STREAM_CHARS
                       and stream.isprintable() and len(self._stream_key) == 32
                       and type(device_id) is bytes and _lib is not None)
        if not self.usable:
            return
        # cbor([device_id, header map, key_delta]) up to the header map's entries.
        self._aad_head = b"".join((b"\x83", cbor.head(2, len(device_id)), device_id, b"\xa7"))
        self._boot_fields = b"\x01\x01\x02" + uint_cbor(boot) + b"\x03"  # version, boot, seq key
        self._stream_field = b"\x08" + text_cbor(stream)
        self._to_be_signed, self._envelope = cose.sign1_prefixes(device_id)

    def sign(self, key: SigningKey, seq: int, prev: bytes, wall_ms: int, clock_synced: bool,  # noqa: PLR0917 - the header's fields, on the hot path
             mono_ms: int, values: tuple[Measurement, ...]) -> bytes | None:
        """The signed bytes of the record ``seq`` sealing ``values``; None if a field is
        outside what Record() and seal_values accept (take the generic path)."""
        key_delta = seq - self._key_seq if type(seq) is int else 0
        if not (self.usable and key_delta >= 1 and seq <= _UINT64_MAX
                and type(wall_ms) is int and 0 <= wall_ms <= _UINT64_MAX
                and type(mono_ms) is int and 0 <= mono_ms <= _UINT64_MAX
                and type(prev) is bytes and len(prev) == 32 and type(clock_synced) is bool
                and 1 <= len(values) <= MAX_VALUES):
            return None
        plaintext = encode_values(values)
        if len(plaintext) > _MAX_PLAINTEXT:
            return None
        uint = uint_cbor
        # The header's entries (Record._encode_header_fields) and key_delta's head.
        header = b"".join((self._boot_fields, uint(seq), b"\x04\x58\x20", prev,
                           b"\x05" if clock_synced else b"\x06", uint(wall_ms), b"\x07",
                           uint(mono_ms), self._stream_field))
        delta = uint(key_delta)
        length = len(plaintext) + _AEAD_TAG_BYTES
        out = _ffi.new("unsigned char[]", length)
        aad = b"".join((self._aad_head, header, delta))
        if _lib.crypto_aead_xchacha20poly1305_ietf_encrypt(
                out, _ffi.NULL, plaintext, len(plaintext), aad, len(aad), _ffi.NULL,
                _NONCE_PREFIX + seq.to_bytes(8, "big"), self._stream_key) != 0:
            return None  # pragma: no cover - libsodium documents no failure here
        ciphertext = _ffi.buffer(out, length)[:]
        # The payload as Record.to_cbor frames a Sealed body, then the COSE_Sign1 (sign1).
        payload = b"".join((b"\xa8", header, b"\x0a\x82", delta, cbor.head(2, length),
                            ciphertext))
        payload_head = cbor.head(2, len(payload))
        signature = key.sign(b"".join((self._to_be_signed, payload_head, payload)))
        return b"".join((self._envelope, payload_head, payload, b"\x58\x40", signature))


def seal_record(device_id: bytes, header: Record, epoch: EpochKeys,
                values: Sequence[Measurement]) -> Record:
    """Return ``header`` with its body replaced by ``values`` sealed for the epoch's stream.

    The same as ``header.with_body(seal_values(...))``: the header is encoded once for the
    associated data and reused for the payload. Raises as :func:`seal_values`.
    """
    return header.with_body(seal_values(device_id, header, epoch, values))


def unwrap_stream_key(device_id: bytes, key_seq: int, epoch: KeyEpoch, stream: str,
                      recipient: RecipientKey) -> bytes:
    """Return the stream key wrapped for ``recipient`` in a key epoch.

    Raises VerificationError if the recipient has no grant for the stream or the wrapped
    key does not open (wrong key, tampered record).
    """
    kid = recipient.kid
    grant = next((g for g in epoch.grants_for(stream) if g.recipient_kid == kid), None)
    if grant is None:
        raise VerificationError(f"no key for this recipient on stream {stream!r}")
    public = recipient.public_key
    shared = _shared_secret(recipient.secret.value, epoch.ephemeral_public)
    kek = _kek(shared, epoch.ephemeral_public, public, stream)
    try:
        return bytes(_aead_decrypt(grant.wrapped_key, _wrap_aad(device_id, key_seq, stream),
                                   _ZERO_NONCE, kek))
    except nacl.exceptions.CryptoError as exc:
        raise VerificationError("wrapped stream key does not open") from exc


def open_values(device_id: bytes, record: Record, stream_key: bytes) -> tuple[Measurement, ...]:
    """Decrypt a sealed record's values with its stream key.

    Raises VerificationError if the record is not sealed or the ciphertext does not open
    (wrong key, or ciphertext moved from another record).
    """
    body = record.body
    if not isinstance(body, Sealed):
        raise VerificationError("record carries no sealed values")
    aad = value_aad(device_id, record, body.key_delta)
    try:
        plaintext = _aead_decrypt(body.ciphertext, aad, value_nonce(record.seq), stream_key)
    except nacl.exceptions.CryptoError as exc:
        raise VerificationError("sealed values do not open") from exc
    return decode_values(bytes(plaintext))
