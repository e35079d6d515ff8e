"""Stateless verification: from one MQTT message to records whose signatures were checked.

This is the part of verification that needs no log state, so it runs on several threads
at once (PyNaCl releases the GIL while it verifies). :func:`prepare_batch` applies, in
order, per message:

1. the topic must name a device (``edgeproof/v1/devices/<32 hex>/records``);
2. the payload must fit ``max_batch_bytes`` (``too_large``) and decode as a
   :class:`protocol.batch.Batch` (``malformed``; ``too_large`` for an over-long record
   inside the batch's own cap);

and per record:

3. ``max_record_bytes`` (``too_large``);
4. decode as a COSE_Sign1 holding a record (``malformed``); integer fields at or above 2**63-1
   are ``malformed`` too (the store's integers are signed 64-bit);
5. the signature against the key the registry holds for that device and sequence number,
   read from a snapshot (:class:`KeyLookup`); not for an unknown or revoked signer, whose
   records the rules reject before the signature anyway. The sequencer re-checks the key inside its
   transaction (a rotation or registration may have landed in between) and verifies
   again only when the key differs.

Every other rule needs the log and lives in :mod:`gateway.rules`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.config import Limits
from gateway.store import MAX_STORED_INT, STATUS_REVOKED, Device
from protocol import reasons
from protocol.batch import Batch, device_id_from_topic
from protocol.cose import Sign1
from protocol.errors import MalformedRecord, VerificationError
from protocol.reasons import Reason
from protocol.record import Gap, KeyRotation, Record, Usage
from protocol.signed import parse_signed_record, record_hash

_TOO_LARGE_CODES = frozenset({"too_large", "cbor_string_too_long", "cbor_too_many_items"})

KeyLookup = Callable[[bytes], Device | None]


# The bodies a stateful rule reads (gateway.rules): usage credit and overlap, gaps, keys.
RuleBody = Usage | Gap | KeyRotation


@dataclass(slots=True)
class Header:
    """What the sequencer keeps of a record parsed in a worker process (gateway.verify_pool).

    The record's fields, and its body only when a stateful rule reads it (``RuleBody``);
    ``body`` is None for values, sealed values and key epochs, which the rules never
    open: they stay in the worker, which saves building them again in the sequencer's
    process (docs/GATEWAY.md "Performance"). The exact signed bytes stay in
    ``PreparedRecord.raw``; nothing is ever encoded from a Header.
    """

    boot: int
    seq: int
    prev: bytes
    wall_ms: int
    clock_synced: bool
    mono_ms: int
    stream: str
    body: RuleBody | None


ParsedRecord = Record | Header  # what the rules read of a record


@dataclass
class PreparedRecord:
    """One record after the stateless checks."""

    raw: bytes
    hash: bytes  # protocol.signed.record_hash(raw)
    sign1: Sign1 | None = None
    record: ParsedRecord | None = None  # a Header when parsed in a worker process
    reject: Reason | None = None  # a reason code if a stateless check already failed
    good_key: bytes | None = None  # the key the signature verified under
    bad_key: bytes | None = None  # a key the signature did NOT verify under
    signer: bytes = b""  # the COSE kid, once parsed

    @property
    def kid(self) -> bytes:
        assert self.record is not None
        return self.signer

    def signature_valid(self, public_key: bytes) -> bool:
        """Whether the signature verifies under ``public_key`` (cached per key).

        A record handed over by a worker process comes without its ``sign1`` (see
        :mod:`gateway.verify_pool`); it is decoded again only if a different key is asked.
        """
        if public_key == self.good_key:
            return True
        if public_key == self.bad_key:
            return False
        if self.sign1 is None:
            self.sign1, _ = parse_signed_record(self.raw)
        try:
            self.sign1.verify(public_key)
        except VerificationError:
            self.bad_key = public_key
            return False
        self.good_key = public_key
        return True


@dataclass
class PreparedBatch:
    """One MQTT message after the stateless checks."""

    topic: str
    topic_device: bytes | None  # None if the topic does not name a device
    arrived: float  # monotonic seconds when paho handed it over
    payload_hash: bytes
    batch_id: int | None = None
    reject: Reason | None = None  # the whole message is unreadable, with this reason
    records: list[PreparedRecord] = field(default_factory=list)


def prepare_batch(topic: str, payload: bytes, arrived: float, limits: Limits,
                  keys: KeyLookup) -> PreparedBatch:
    """Decode one message and check every record's signature against ``keys``.

    Never raises for bad input: a failure becomes a reason code on the batch or record.
    """
    prepared = PreparedBatch(topic, None, arrived, record_hash(payload))
    try:
        prepared.topic_device = device_id_from_topic(topic)
    except MalformedRecord:
        prepared.reject = reasons.WRONG_TOPIC
        return prepared
    if len(payload) > limits.max_batch_bytes:
        prepared.reject = reasons.TOO_LARGE
        return prepared
    try:
        batch = Batch.from_cbor(payload)
    except MalformedRecord as exc:
        prepared.reject = _reason_for(exc)
        return prepared
    prepared.batch_id = batch.batch_id
    devices: dict[bytes, Device | None] = {}
    for raw in batch.records:
        prepared.records.append(prepare_record(raw, limits, keys, devices))
    return prepared


def oversize_batch(topic: str, payload: bytes, arrived: float) -> PreparedBatch:
    """The batch for a payload already known to be over ``max_batch_bytes`` (``too_large``).

    Ingest decides this before queueing, so the queue keeps the hash, not the payload.
    """
    prepared = PreparedBatch(topic, device_id_from_topic(topic), arrived, record_hash(payload))
    prepared.reject = reasons.TOO_LARGE
    return prepared


def prepare_record(raw: bytes, limits: Limits, keys: KeyLookup,
                   devices: dict[bytes, Device | None]) -> PreparedRecord:
    """Steps 3 to 5 for one record of a batch (``devices`` caches ``keys`` per batch)."""
    item = PreparedRecord(raw, record_hash(raw))
    if len(raw) > limits.max_record_bytes:
        item.reject = reasons.TOO_LARGE
        return item
    try:
        item.sign1, item.record = parse_signed_record(raw)
        _require_signed64(item.record)
    except MalformedRecord as exc:
        item.reject = _reason_for(exc)
        return item
    kid = item.signer = item.sign1.kid
    if kid not in devices:
        devices[kid] = keys(kid)
    device = devices[kid]
    # Unknown and revoked signers are rejected before the signature rule: verify nothing.
    if device is not None and device.status is not STATUS_REVOKED:
        item.signature_valid(device.key_for_seq(item.record.seq))
    return item


def _reason_for(exc: MalformedRecord) -> Reason:
    return reasons.TOO_LARGE if exc.reason in _TOO_LARGE_CODES else reasons.MALFORMED


def _require_signed64(record: Record) -> None:
    values = [record.boot, record.seq, record.wall_ms, record.mono_ms]
    body = record.body
    if isinstance(body, Usage):
        values += [body.start_mono_ms, body.end_mono_ms, body.usage_ms, body.rate_micro_per_hour]
    elif isinstance(body, Gap):
        values += [body.first_seq, body.last_seq]
    # One below the store's maximum: the rules look at seq + 1 and start + 1, and a value
    # at the maximum overflowed there (a sequencer crash, again at every redelivery).
    if max(values) >= MAX_STORED_INT:
        raise MalformedRecord("out_of_range", "integer field at or above 2**63-1")
