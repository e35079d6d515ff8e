"""Signed documents: the common envelope of every document type, and the registry of bodies.

A document is a COSE_Sign1 (:mod:`protocol.cose`) whose ``kid`` is the signer id
(:func:`protocol.keys.signer_id`, 16 bytes) and whose payload is the deterministic CBOR map
(docs/PROTOCOL.md §16)::

    1  version    uint, 1
    2  type       tstr, "request" | "consent" | "revocation" | a later registered type
    3  signer     bstr 32, the signer's Ed25519 public key (kid == signer_id(signer))
    4  issued_ms  uint, when the signer made it (its own clock; informational)
    5  body       map, the type's body (its own module validates it)

Carrying the public key makes a document verifiable by anyone without a key directory: the
signature is checked under ``signer``, and *who may sign what* (the owner pinned by a device,
a registered recipient) is a separate decision taken against the verified key. The
document's id is ``H(exact signed bytes)``; references between documents use it, and the
gateway logs those exact bytes as a Merkle leaf.

A body type plugs in by registering a decoder in :data:`BODY_TYPES` when its module is
imported (see :mod:`protocol.contract`); this module knows no concrete type, so the body
modules import it and not the other way round. Decode through :mod:`protocol.documents`,
which imports every body module this protocol defines, so the registry is complete before
anything is decoded. Verification fails closed: every check raises.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from protocol import cbor, cose
from protocol.errors import MalformedRecord, VerificationError
from protocol.keys import SIGNER_ID_BYTES, SigningKey, signer_id

DOCUMENT_VERSION = 1
MAX_DOCUMENT_BYTES = 8 * 1024
MAX_TYPE_CHARS = 32
# The deepest body (a request's streams map of field lists) puts a field name at depth 4.
MAX_DOCUMENT_DEPTH = 4
_PAYLOAD_LIMITS = cbor.Limits(max_bytes=MAX_DOCUMENT_BYTES, max_depth=MAX_DOCUMENT_DEPTH,
                              max_items=64, max_string=2048)
K_VERSION, K_TYPE, K_SIGNER, K_ISSUED, K_BODY = range(1, 6)
_ENVELOPE_KEYS = frozenset(range(1, 6))
_UINT64_MAX = (1 << 64) - 1


class Body(Protocol):
    """What a document type's body provides."""

    TYPE: str

    def to_cbor_value(self) -> cbor.Value: ...


BodyDecoder = Callable[[cbor.Value], Body]
BODY_TYPES: dict[str, BodyDecoder] = {}


def register_body(type_name: str, decoder: BodyDecoder) -> None:
    """Register the decoder of a document type (once per type, at import)."""
    if type_name in BODY_TYPES and BODY_TYPES[type_name] is not decoder:
        raise ValueError(f"document type {type_name!r} registered twice")
    BODY_TYPES[type_name] = decoder


def document_hash(signed_bytes: bytes) -> bytes:
    """A document's id: SHA-256 of its exact COSE_Sign1 bytes."""
    return hashlib.sha256(signed_bytes).digest()


@dataclass(frozen=True)
class Document:
    """A verified (or just decoded, see :func:`parse_document`) signed document."""

    type: str
    signer: bytes
    issued_ms: int
    body: Body
    raw: bytes

    @property
    def id(self) -> bytes:
        return document_hash(self.raw)

    @property
    def signer_id(self) -> bytes:
        return signer_id(self.signer)


def sign_document(body: Body, key: SigningKey, issued_ms: int) -> Document:
    """Sign ``body`` with ``key``; return the document with its exact signed bytes."""
    require_uint(issued_ms, "issued_ms")
    payload = cbor.encode({K_VERSION: DOCUMENT_VERSION, K_TYPE: body.TYPE,
                           K_SIGNER: key.public_key, K_ISSUED: issued_ms,
                           K_BODY: body.to_cbor_value()})
    if len(payload) + 128 > MAX_DOCUMENT_BYTES:
        raise MalformedRecord("too_large", f"document payload of {len(payload)} bytes")
    raw = cose.sign1(payload, signer_id(key.public_key), key)
    return Document(body.TYPE, key.public_key, issued_ms, body, raw)


def parse_document(data: bytes) -> Document:
    """Decode document bytes WITHOUT verifying the signature; raise MalformedRecord.

    Checks the envelope, that the kid is the signer id of the embedded key, and the body
    of the document's type.
    """
    if not isinstance(data, bytes):
        raise MalformedRecord("cbor_type", "document is not bytes")
    if len(data) > MAX_DOCUMENT_BYTES:
        raise MalformedRecord("too_large", f"{len(data)} bytes > {MAX_DOCUMENT_BYTES}")
    message = cose.decode_sign1(data, MAX_DOCUMENT_BYTES)
    item = cbor.decode(message.payload, _PAYLOAD_LIMITS)
    if not isinstance(item, dict) or set(item.keys()) != _ENVELOPE_KEYS:
        raise MalformedRecord("bad_document", "document payload is {1: version .. 5: body}")
    cbor.require_version(item[K_VERSION], DOCUMENT_VERSION, "document")
    type_name, signer, issued = item[K_TYPE], item[K_SIGNER], item[K_ISSUED]
    if not isinstance(type_name, str) or type_name not in BODY_TYPES:
        raise MalformedRecord("unknown_document_type", repr(type_name)[:MAX_TYPE_CHARS + 2])
    if not isinstance(signer, bytes) or len(signer) != 32:
        raise MalformedRecord("bad_document", "signer must be a 32-byte Ed25519 key")
    if len(message.kid) != SIGNER_ID_BYTES or message.kid != signer_id(signer):
        raise MalformedRecord("bad_document", "kid must be the signer id of the signer key")
    require_uint(issued, "issued_ms")
    assert isinstance(issued, int)
    body = BODY_TYPES[type_name](item[K_BODY])
    return Document(type_name, signer, issued, body, bytes(data))


def verify_document(data: bytes, expected_signer: bytes | None = None,
                    expected_type: str | None = None) -> Document:
    """Decode and verify a document; return it.

    Raises MalformedRecord for bytes that are not a document, and VerificationError if the
    signature does not verify, the signer is not ``expected_signer`` (an Ed25519 public
    key, e.g. the owner key a device pinned) or the type is not ``expected_type``.
    """
    doc = parse_document(data)
    if expected_type is not None and doc.type != expected_type:
        raise VerificationError(f"expected a {expected_type}, got a {doc.type}")
    if expected_signer is not None and doc.signer != expected_signer:
        raise VerificationError(f"{doc.type} is signed by another key than the expected signer")
    cose.decode_sign1(data, MAX_DOCUMENT_BYTES).verify(doc.signer)
    return doc


# --- field checks shared by the body types ------------------------------------------------


def require_uint(value: object, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _UINT64_MAX:
        raise MalformedRecord("bad_document", f"{name} must be an unsigned integer")


def require_text(value: object, name: str, max_chars: int) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= max_chars:
        raise MalformedRecord("bad_document", f"{name} must be text of 1..{max_chars} chars")
    if any(ord(c) < 0x20 for c in value):
        raise MalformedRecord("bad_document", f"{name} contains a control character")
    return value


def require_bytes(value: object, name: str, length: int) -> bytes:
    if not isinstance(value, bytes) or len(value) != length:
        raise MalformedRecord("bad_document", f"{name} must be {length} bytes")
    return value


def require_map(value: object, keys: frozenset[int], optional: frozenset[int] = frozenset(),
                what: str = "body") -> dict[cbor.Value, cbor.Value]:
    if not isinstance(value, dict) or not keys <= set(value.keys()) <= keys | optional:
        raise MalformedRecord("bad_document", f"{what} must have keys {sorted(keys)}")
    return value
