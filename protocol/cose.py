"""COSE_Sign1 with EdDSA (RFC 9052 §4.2, §4.4; RFC 9053 §2.2).

A signed object is the tagged array ``18([protected, unprotected, payload, signature])``:

- ``protected`` is a byte string holding the deterministic CBOR map
  ``{1: -8, 4: kid}`` (alg = EdDSA, kid = the signer's id);
- ``unprotected`` is the empty map;
- ``payload`` is the byte string of the signed object's own CBOR;
- ``signature`` is the 64-byte Ed25519 signature over the ``Sig_structure``
  ``["Signature1", protected, h'', payload]`` (RFC 9052 §4.4), encoded deterministically.

Any conforming COSE library verifies these with the signer's Ed25519 public key.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from protocol import cbor
from protocol.errors import MalformedRecord, VerificationError
from protocol.keys import SigningKey, verify_ed25519

COSE_SIGN1_TAG = 18
HEADER_ALG = 1
HEADER_KID = 4
ALG_EDDSA = -8
MAX_KID_BYTES = 32
_ENVELOPE_LIMITS = cbor.Limits(max_bytes=64 * 1024, max_depth=3, max_items=8,
                               max_string=64 * 1024)


@dataclass(frozen=True, init=False)
class Sign1:
    """A decoded but not yet verified COSE_Sign1."""

    protected: bytes
    kid: bytes
    payload: bytes
    signature: bytes

    def __init__(self, protected: bytes, kid: bytes, payload: bytes, signature: bytes) -> None:
        # One per record verified: the instance dict is written directly, as in
        # protocol.record.Record.__init__ (the frozen dataclass __init__ takes twice as long).
        fields = self.__dict__
        fields["protected"] = protected
        fields["kid"] = kid
        fields["payload"] = payload
        fields["signature"] = signature

    def to_be_signed(self) -> bytes:
        """The Sig_structure bytes the signature covers (RFC 9052 §4.4)."""
        return sig_structure(self.protected, self.payload)

    def verify(self, public_key: bytes) -> bytes:
        """Return the payload if the signature verifies under ``public_key``.

        Raises VerificationError otherwise.
        """
        verify_ed25519(public_key, self.to_be_signed(), self.signature)
        return self.payload


_SIG_STRUCTURE_PREFIX = bytes.fromhex("84") + cbor.encode("Signature1")


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    """Return ``["Signature1", protected, h'', payload]`` as deterministic CBOR.

    Framed by hand (same bytes as ``cbor.encode`` of that array) because it sits on the
    hot path of every signature and verification.
    """
    return b"".join((_SIG_STRUCTURE_PREFIX, cbor.head(2, len(protected)), protected,
                     b"\x40", cbor.head(2, len(payload)), payload))


@functools.lru_cache(maxsize=256)
def protected_header(kid: bytes) -> bytes:
    """Return the protected header bytes ``{1: -8, 4: kid}``."""
    return cbor.encode({HEADER_ALG: ALG_EDDSA, HEADER_KID: kid})


@functools.lru_cache(maxsize=256)
def _framed_protected(kid: bytes) -> bytes:
    # The protected header as the byte string it travels as: its head, then its bytes.
    protected = protected_header(kid)
    return cbor.head(2, len(protected)) + protected


@functools.lru_cache(maxsize=256)
def sign1_prefixes(kid: bytes) -> tuple[bytes, bytes]:
    """The bytes before the payload's head of the Sig_structure and of the COSE_Sign1 that
    :func:`sign1` makes under ``kid``: both constant for a signer.

    Same bytes as the start of ``sig_structure(protected, payload)`` and of
    ``cbor.encode(Tag(18, [protected, {}, payload, signature]))``: tag 18 (0xd2), array
    of 4 (0x84), the framed protected header, the empty map (0xa0).
    """
    protected = _framed_protected(kid)
    return _SIG_STRUCTURE_PREFIX + protected + b"\x40", b"\xd2\x84" + protected + b"\xa0"


def sign1(payload: bytes, kid: bytes, key: SigningKey) -> bytes:
    """Return the tagged COSE_Sign1 bytes of ``payload`` signed by ``key`` under ``kid``."""
    # The Sig_structure (see sig_structure) and the envelope share the framed protected
    # header and the payload's head, so each is made once; framed by hand on the hot path.
    to_be_signed, envelope = sign1_prefixes(kid)
    payload_head = cbor.head(2, len(payload))
    signature = key.sign(b"".join((to_be_signed, payload_head, payload)))
    return b"".join((envelope, payload_head, payload, b"\x58\x40", signature))


def decode_sign1(data: bytes, max_bytes: int = 64 * 1024) -> Sign1:
    """Parse tagged COSE_Sign1 bytes without verifying them.

    Only the form this module produces is accepted: tag 18, alg EdDSA in the protected
    header, a kid, an empty unprotected map, an attached payload, a 64-byte signature.
    Raises MalformedRecord with a reason for anything else.
    """
    if len(data) > max_bytes:
        raise MalformedRecord("too_large", f"{len(data)} bytes > {max_bytes}")
    fast = _decode_sign1_fast(data)
    if fast is not None:
        return fast
    item = cbor.decode(data, _ENVELOPE_LIMITS)
    if not (isinstance(item, cbor.Tag) and item.number == COSE_SIGN1_TAG):
        raise MalformedRecord("bad_cose", "not a tagged COSE_Sign1")
    body = item.value
    if not (isinstance(body, list) and len(body) == 4):
        raise MalformedRecord("bad_cose", "COSE_Sign1 is an array of four")
    protected, unprotected, payload, signature = body
    if not (isinstance(protected, bytes) and isinstance(payload, bytes)
            and isinstance(signature, bytes)):
        raise MalformedRecord("bad_cose", "protected, payload and signature are bytes")
    if unprotected != {}:
        raise MalformedRecord("bad_cose", "unprotected header must be empty")
    if len(signature) != 64:
        raise MalformedRecord("bad_cose", "EdDSA signature must be 64 bytes")
    return Sign1(protected, _kid_from(protected), payload, signature)


def _decode_sign1_fast(data: bytes) -> Sign1 | None:
    """The envelope exactly as :func:`sign1` frames it, parsed without the generic decoder.

    Returns None for anything else, and the caller takes the generic path, which accepts
    the same inputs and reports the precise error: this is only a shortcut.
    """
    if data[:2] != b"\xd2\x84":
        return None
    try:
        major, length, pos = cbor.read_head(data, 2)
        if major != 2:
            return None
        protected = data[pos:pos + length]
        pos += length
        if data[pos:pos + 1] != b"\xa0":
            return None
        major, length, pos = cbor.read_head(data, pos + 1)
        if major != 2:
            return None
        payload = data[pos:pos + length]
        pos += length
        if data[pos:pos + 2] != b"\x58\x40" or len(data) != pos + 66:
            return None
        if len(protected) + len(payload) + 66 > len(data):
            return None
        return Sign1(protected, _kid_from(protected), payload, data[pos + 2:])
    except MalformedRecord:
        return None


@functools.lru_cache(maxsize=1024)
def _kid_from(protected: bytes) -> bytes:
    # Cached: every record of a device carries the same protected header. Only successful
    # parses are cached (an exception is not).
    header = cbor.decode(protected, cbor.Limits(max_bytes=64, max_depth=1, max_items=4))
    if not isinstance(header, dict) or set(header.keys()) != {HEADER_ALG, HEADER_KID}:
        raise MalformedRecord("bad_cose", "protected header must be {alg, kid}")
    if header[HEADER_ALG] != ALG_EDDSA:
        raise MalformedRecord("bad_cose", "alg must be EdDSA (-8)")
    kid = header[HEADER_KID]
    if not isinstance(kid, bytes) or not 1 <= len(kid) <= MAX_KID_BYTES:
        raise MalformedRecord("bad_cose", "kid must be 1..32 bytes")
    return kid


def verify_sign1(data: bytes, public_key: bytes, expected_kid: bytes | None = None) -> Sign1:
    """Decode and verify COSE_Sign1 bytes; return the verified :class:`Sign1`.

    Raises MalformedRecord for bytes that are not a COSE_Sign1, VerificationError if the
    kid differs from ``expected_kid`` or the signature does not verify.
    """
    message = decode_sign1(data)
    if expected_kid is not None and message.kid != expected_kid:
        raise VerificationError("kid does not match the expected signer")
    message.verify(public_key)
    return message
