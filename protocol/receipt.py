"""Receipts: the gateway's signed answer to one batch.

A receipt is a COSE_Sign1 made by the gateway's Ed25519 key (kid = the 4-byte C2SP key id
of the gateway's verifier key) over the deterministic CBOR map::

    1  version       uint, 1
    2  device_id     bstr 16
    3  batch_id      uint, echoed from the batch
    4  outcomes      array of [seq or null, record hash[:16], status, detail]
                       status 0 accepted   detail = leaf index (uint)
                       status 1 duplicate  detail = the original leaf index (uint)
                       status 2 rejected   detail = reason code (tstr)
    5  checkpoint    tstr, the latest signed checkpoint note
    6  issued_ms     uint, the gateway's wall clock
    7  settled_micro uint, the device's settled credit so far (micro-credits)

Only a receipt that verifies under the configured gateway key may remove records from a
device's outbox.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import IntEnum

from protocol import cbor, cose
from protocol.errors import MalformedRecord
from protocol.keys import SigningKey

RECEIPT_VERSION = 1
HASH_PREFIX_BYTES = 16
MAX_RECEIPT_BYTES = 96 * 1024
# The COSE_Sign1 around the payload: protected header, kid, 64-byte signature, framing.
MAX_SIGNED_RECEIPT_BYTES = MAX_RECEIPT_BYTES + 256
MAX_CHECKPOINT_CHARS = 8192  # also the cap on any one string of the payload, in bytes
MAX_OUTCOMES = 1000
_RECEIPT_LIMITS = cbor.Limits(max_bytes=MAX_RECEIPT_BYTES, max_depth=3, max_items=MAX_OUTCOMES,
                              max_string=MAX_CHECKPOINT_CHARS)


def hash_prefix(data: bytes | bytearray | memoryview) -> bytes:
    """The 16 bytes by which a receipt outcome names a record (or a batch refused whole).

    The first HASH_PREFIX_BYTES of SHA-256 of the exact signed (or payload) bytes.
    """
    return hashlib.sha256(data).digest()[:HASH_PREFIX_BYTES]


class Status(IntEnum):
    ACCEPTED = 0
    DUPLICATE = 1
    REJECTED = 2


@dataclass(frozen=True, init=False)
class Outcome:
    """What the gateway did with one record of the batch."""

    seq: int | None
    hash_prefix: bytes
    status: Status
    leaf_index: int | None = None
    reason: str | None = None

    def __init__(self, seq: int | None, hash_prefix: bytes, status: Status,
                 leaf_index: int | None = None, reason: str | None = None) -> None:
        if len(hash_prefix) != HASH_PREFIX_BYTES:
            raise MalformedRecord("bad_receipt", "record hash prefix must be 16 bytes")
        if status is Status.REJECTED:
            if not reason or leaf_index is not None:
                raise MalformedRecord("bad_receipt", "a rejection carries a reason only")
        elif leaf_index is None or leaf_index < 0 or reason is not None:
            raise MalformedRecord("bad_receipt", "an accepted record carries a leaf index only")
        # One per record of every receipt, on the sequencer's thread: the instance dict is
        # written directly, as in Record.__init__ (the frozen dataclass __init__ and
        # __post_init__ took 2.5 times as long).
        self.__dict__.update(seq=seq, hash_prefix=hash_prefix, status=status,
                             leaf_index=leaf_index, reason=reason)

    def to_cbor_value(self) -> cbor.Value:
        # str(): a reasons.Reason member goes on the wire as its plain text value
        detail: cbor.Value = (str(self.reason) if self.status is Status.REJECTED
                              else self.leaf_index)
        return [self.seq, self.hash_prefix, int(self.status), detail]

    @classmethod
    def from_cbor_value(cls, item: cbor.Value) -> Outcome:
        if not (isinstance(item, list) and len(item) == 4):
            raise MalformedRecord("bad_receipt", "outcome is [seq, hash, status, detail]")
        seq, prefix, status, detail = item
        if not ((seq is None or _is_uint(seq)) and isinstance(prefix, bytes) and _is_uint(status)):
            raise MalformedRecord("bad_receipt", "outcome fields have the wrong types")
        assert isinstance(status, int)
        if status not in (0, 1, 2):
            raise MalformedRecord("bad_receipt", f"unknown status {status}")
        code = Status(status)
        if code is Status.REJECTED:
            if not isinstance(detail, str):
                raise MalformedRecord("bad_receipt", "rejection reason must be text")
            return cls(_opt_int(seq), prefix, code, reason=detail)
        if not _is_uint(detail):
            raise MalformedRecord("bad_receipt", "leaf index must be an unsigned integer")
        assert isinstance(detail, int)
        return cls(_opt_int(seq), prefix, code, leaf_index=detail)


_RECEIPT_MAP_HEAD = cbor.head(5, 7)
_OUTCOME_HEAD = cbor.head(4, 4)
_PREFIX_HEAD = cbor.head(2, HASH_PREFIX_BYTES)
_NULL = cbor.encode(None)
_STATUS_CBOR = {status: cbor.encode(int(status)) for status in Status}


def _outcomes_cbor(outcomes: tuple[Outcome, ...]) -> bytes:
    """``cbor.encode([o.to_cbor_value() for o in outcomes])``, without the lists."""
    out = bytearray(cbor.head(4, len(outcomes)))
    head, encode, rejected = cbor.head, cbor.encode, Status.REJECTED
    for o in outcomes:
        seq, status = o.seq, o.status
        out += _OUTCOME_HEAD
        out += _NULL if seq is None else head(0, seq) if seq >= 0 else encode(seq)
        out += _PREFIX_HEAD  # Outcome checked the length
        out += o.hash_prefix
        out += _STATUS_CBOR[status]
        # str(): a reasons.Reason member goes on the wire as its plain text value
        out += encode(str(o.reason)) if status is rejected else head(0, o.leaf_index or 0)
    return bytes(out)


@dataclass(frozen=True)
class Receipt:
    """A gateway's signed answer to one batch."""

    device_id: bytes
    batch_id: int
    outcomes: tuple[Outcome, ...]
    checkpoint: str
    issued_ms: int
    settled_micro: int = 0

    def to_cbor(self) -> bytes:
        """Return the receipt payload's deterministic CBOR.

        Byte for byte ``cbor.encode`` of the map above (keys 1..7 encode as the single
        bytes 0x01..0x07, already in deterministic order); the outcomes array is framed by
        hand, since the gateway signs one receipt per batch and a batch holds up to
        hundreds of records.
        """
        encode = cbor.encode
        return b"".join((_RECEIPT_MAP_HEAD, b"\x01", encode(RECEIPT_VERSION),
                         b"\x02", encode(self.device_id), b"\x03", encode(self.batch_id),
                         b"\x04", _outcomes_cbor(self.outcomes),
                         b"\x05", encode(self.checkpoint), b"\x06", encode(self.issued_ms),
                         b"\x07", encode(self.settled_micro)))

    def sign(self, key: SigningKey, kid: bytes) -> bytes:
        """Return the receipt as COSE_Sign1 bytes signed by the gateway key."""
        return cose.sign1(self.to_cbor(), kid, key)

    @classmethod
    def from_cbor(cls, data: bytes) -> Receipt:
        """Decode a receipt payload; raise MalformedRecord on any error.

        The agent reads one per batch it sends. A payload framed as :meth:`to_cbor` frames
        it is read by :func:`_receipt_fast` into the object :meth:`from_cbor_strict` would
        build; anything else goes the strict way, which decides and names the error. A
        payload over MAX_RECEIPT_BYTES is refused unread.
        """
        fast = _receipt_fast(data)
        return fast if fast is not None else cls.from_cbor_strict(data)

    @classmethod
    def from_cbor_strict(cls, data: bytes) -> Receipt:
        """:meth:`from_cbor` through the generic decoder only (no shortcut); same result."""
        item = cbor.decode(data, _RECEIPT_LIMITS)
        if not isinstance(item, dict) or set(item.keys()) != set(range(1, 8)):
            raise MalformedRecord("bad_receipt", "receipt map keys must be 1..7")
        cbor.require_version(item[1], RECEIPT_VERSION, "receipt")
        device_id, batch_id, outcomes = item[2], item[3], item[4]
        checkpoint, issued, settled = item[5], item[6], item[7]
        if not (isinstance(device_id, bytes) and _is_uint(batch_id) and isinstance(outcomes, list)
                and isinstance(checkpoint, str) and _is_uint(issued) and _is_uint(settled)):
            raise MalformedRecord("bad_receipt", "receipt fields have the wrong types")
        assert isinstance(batch_id, int)
        assert isinstance(issued, int)
        assert isinstance(settled, int)
        return cls(device_id, batch_id, tuple(Outcome.from_cbor_value(o) for o in outcomes),
                   checkpoint, issued, settled)

    @classmethod
    def verify(cls, data: bytes, gateway_public_key: bytes, gateway_kid: bytes) -> Receipt:
        """Verify signed receipt bytes and return the receipt.

        Raises MalformedRecord for bytes that are not a receipt and VerificationError if it
        is not signed by the given gateway key.
        """
        if len(data) > MAX_SIGNED_RECEIPT_BYTES:
            raise MalformedRecord("too_large", f"receipt of {len(data)} bytes")
        message = cose.verify_sign1(data, gateway_public_key, expected_kid=gateway_kid)
        return cls.from_cbor(message.payload)


def _receipt_fast(data: bytes) -> Receipt | None:
    """The payload exactly as :meth:`Receipt.to_cbor` frames it, without the generic decoder.

    A shortcut only, as strict as :meth:`Receipt.from_cbor_strict`: keys 1..7 in ascending
    order, each value in its one deterministic form (shortest heads, as cbor.read_head
    checks), the strings within the decoder's caps, every outcome as ``Outcome`` checks it,
    and nothing after the last value. Returns None for anything else, and the caller takes
    the generic path, which reports the precise error. Hypothesis tests hold the two paths
    to the same answers.
    """
    read_keyed = cbor.read_keyed
    try:
        if (type(data) is not bytes or len(data) > MAX_RECEIPT_BYTES
                or data[:3] != b"\xa7\x01\x01"):  # map of 7, 1: version 1
            return None
        length, pos = read_keyed(data, 3, 2, 2)
        if length > MAX_CHECKPOINT_CHARS:
            return None
        device_id = data[pos:pos + length]
        batch_id, pos = read_keyed(data, pos + length, 3, 0)
        count, pos = read_keyed(data, pos, 4, 4)
        parsed = _outcomes_fast(data, pos, count) if count <= MAX_OUTCOMES else None
        if parsed is None:
            return None
        outcomes, pos = parsed
        length, pos = read_keyed(data, pos, 5, 3)
        if length > MAX_CHECKPOINT_CHARS:
            return None
        checkpoint = data[pos:pos + length].decode("utf-8")
        issued, pos = read_keyed(data, pos + length, 6, 0)
        settled, pos = read_keyed(data, pos, 7, 0)
        if pos != len(data):
            return None
    except (MalformedRecord, IndexError, UnicodeDecodeError):
        return None
    return Receipt(device_id, batch_id, outcomes, checkpoint, issued, settled)


def _outcomes_fast(data: bytes, pos: int, count: int) -> tuple[tuple[Outcome, ...], int] | None:
    """``count`` outcomes ``[seq or null, h'16 bytes', status, detail]`` from ``pos``, and
    the position after them; None if any is not in its one form or not a valid outcome.

    May raise MalformedRecord, IndexError or UnicodeDecodeError (from reading past the
    end or a bad head), which :func:`_receipt_fast` turns into None. Each Outcome is built
    without its __post_init__, whose checks every field passed here already: the prefix is
    16 bytes (the status byte after it was read), a leaf index a uint from a major type 0
    head, a reason 1..MAX_CHECKPOINT_CHARS bytes of valid UTF-8.
    """
    read_head, new, statuses = cbor.read_head, object.__new__, _STATUSES
    outcomes = []
    for _ in range(count):
        if data[pos] != 0x84:
            return None
        seq: int | None
        if data[pos + 1] == 0xF6:
            seq, pos = None, pos + 2
        else:
            major, seq, pos = read_head(data, pos + 1)
            if major:
                return None
        if data[pos] != 0x50:  # a byte string of 16
            return None
        prefix = data[pos + 1:pos + 17]
        status = data[pos + 17]
        if status > 2:
            return None
        major, detail, pos = read_head(data, pos + 18)
        outcome = new(Outcome)
        fields = outcome.__dict__
        fields["seq"] = seq
        fields["hash_prefix"] = prefix
        fields["status"] = statuses[status]
        if status == 2:
            stop = pos + detail
            if major != 3 or not 0 < detail <= MAX_CHECKPOINT_CHARS or stop > len(data):
                return None
            fields["leaf_index"] = None
            fields["reason"] = data[pos:stop].decode("utf-8")
            pos = stop
        else:
            if major:
                return None
            fields["leaf_index"] = detail
            fields["reason"] = None
        outcomes.append(outcome)
    return tuple(outcomes), pos


_STATUSES = (Status.ACCEPTED, Status.DUPLICATE, Status.REJECTED)


def _is_uint(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _opt_int(x: cbor.Value) -> int | None:
    return x if isinstance(x, int) and not isinstance(x, bool) else None
