"""Signed records: a :class:`~protocol.record.Record` inside a COSE_Sign1.

The exact signed bytes are what the device stores, what travels, what the gateway logs as
a Merkle leaf, and what the next record's ``prev`` field hashes. They are never re-encoded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from protocol import cose
from protocol.errors import MalformedRecord, VerificationError
from protocol.keys import DEVICE_ID_BYTES, SigningKey
from protocol.record import MAX_RECORD_BYTES, Record

# The envelope adds at most about 120 bytes to the payload.
MAX_SIGNED_RECORD_BYTES = MAX_RECORD_BYTES + 256


def record_hash(signed_bytes: bytes) -> bytes:
    """The chain hash of a signed record: SHA-256 of its exact COSE_Sign1 bytes."""
    return hashlib.sha256(signed_bytes).digest()


@dataclass(frozen=True, init=False)
class SignedRecord:
    """A record with its signer and its exact signed bytes."""

    device_id: bytes
    record: Record
    raw: bytes

    def __init__(self, device_id: bytes, record: Record, raw: bytes) -> None:
        # One per record signed or verified: the instance dict is written directly, as in
        # Record.__init__ (the frozen dataclass __init__ takes twice as long).
        fields = self.__dict__
        fields["device_id"] = device_id
        fields["record"] = record
        fields["raw"] = raw

    @property
    def hash(self) -> bytes:
        return record_hash(self.raw)


def sign_record(record: Record, device_id: bytes, key: SigningKey) -> SignedRecord:
    """Sign ``record`` as ``device_id`` with ``key``; return the signed record."""
    return SignedRecord(device_id, record, signed_bytes(record, device_id, key))


def signed_bytes(record: Record, device_id: bytes, key: SigningKey) -> bytes:
    """The exact signed bytes :func:`sign_record` returns in ``raw``, without the wrapper
    object (the device's write path keeps only the bytes)."""
    return cose.sign1(record.to_cbor(), device_id, key)


def parse_signed_record(data: bytes) -> tuple[cose.Sign1, Record]:
    """Decode signed-record bytes WITHOUT verifying the signature.

    Use it to find the signer (``sign1.kid``) before looking up its key; then call
    :func:`verify_signed_record`. Raises MalformedRecord with a reason.
    """
    message = cose.decode_sign1(data, MAX_SIGNED_RECORD_BYTES)
    if len(message.kid) != DEVICE_ID_BYTES:
        raise MalformedRecord("bad_cose", f"record kid must be a {DEVICE_ID_BYTES}-byte device id")
    return message, Record.from_cbor(message.payload)


def verify_signed_record(data: bytes, public_key: bytes,
                         expected_device_id: bytes | None = None) -> SignedRecord:
    """Decode and verify a signed record; return it.

    Raises MalformedRecord for bytes that are not a signed record and VerificationError if
    the signer is not ``expected_device_id`` or the signature does not verify under
    ``public_key``.
    """
    message, record = parse_signed_record(data)
    if expected_device_id is not None and message.kid != expected_device_id:
        raise VerificationError("record is signed under another device id")
    message.verify(public_key)
    return SignedRecord(message.kid, record, bytes(data))
