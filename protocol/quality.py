"""Quality attestations: a validator's signed verdicts on one window of one site.

A body of :mod:`protocol.documents` (type ``"quality"``, docs/PROTOCOL.md §20), signed by
a registered validator's Ed25519 key: which site, which stream and field, which window,
the consensus value, and per sensor (a device) its state after the window, why the window
was bad, and the log indices of the records the verdict rests on.

:func:`check_attestation` holds the rules a gateway applies against its log (the
validator is registered, every leaf is a record of the named device and stream, or of a
derived stream of it under a consent to the validator in force, inside the window, the
validator could read it, one attestation per validator, site and window);
they raise :class:`~protocol.errors.RejectedDocument` with a
:class:`~protocol.reasons.DocumentReason`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from protocol import cbor
from protocol.contract import Consent
from protocol.document_envelope import (
    Document,
    register_body,
    require_bytes,
    require_map,
    require_text,
    require_uint,
)
from protocol.errors import MalformedRecord, RejectedDocument
from protocol.grants import derived_stream
from protocol.keys import DEVICE_ID_BYTES, recipient_kid
from protocol.reasons import DocumentReason
from protocol.record import MAX_STREAM_CHARS, Measurement

QUALITY = "quality"
STATES = ("healthy", "suspect", "faulty", "recovered")  # index = the wire code
REASONS = ("bias", "drift", "stuck", "noise", "spike", "dropout", "replay")  # bit i
MAX_SITE_CHARS = 64
MAX_FIELD_CHARS = 32
MIN_SENSORS, MAX_SENSORS = 3, 32
MAX_LEAVES_PER_SENSOR = 64
MAX_WINDOW_MS = 86_400_000
LEAF_BYTES = 8


@dataclass(frozen=True)
class SensorAttestation:
    """One sensor (a device's field) in one window."""

    device_id: bytes
    state: str
    reasons: tuple[str, ...]
    leaves: tuple[int, ...]  # log indices of the records judged, increasing

    def __post_init__(self) -> None:
        require_bytes(self.device_id, "device_id", DEVICE_ID_BYTES)
        if self.state not in STATES:
            raise MalformedRecord("bad_document", f"state must be one of {', '.join(STATES)}")
        if any(r not in REASONS for r in self.reasons) or \
                list(self.reasons) != sorted(set(self.reasons), key=REASONS.index):
            raise MalformedRecord("bad_document", "reasons must be known, unique, in order")
        if len(self.leaves) > MAX_LEAVES_PER_SENSOR:
            raise MalformedRecord("bad_document", f"at most {MAX_LEAVES_PER_SENSOR} leaves")
        for leaf in self.leaves:
            require_uint(leaf, "leaf")
        if any(b <= a for a, b in zip(self.leaves, self.leaves[1:], strict=False)):
            raise MalformedRecord("bad_document", "leaves must be strictly increasing")

    def to_cbor_value(self) -> cbor.Value:
        bits = sum(1 << REASONS.index(r) for r in self.reasons)
        packed = b"".join(leaf.to_bytes(LEAF_BYTES, "big") for leaf in self.leaves)
        return [self.device_id, STATES.index(self.state), bits, packed]

    @classmethod
    def from_cbor_value(cls, item: cbor.Value) -> SensorAttestation:
        if not (isinstance(item, list) and len(item) == 4):
            raise MalformedRecord("bad_document", "a verdict is [device, state, reasons, leaves]")
        device, state, bits, packed = item
        require_uint(state, "state")
        require_uint(bits, "reasons")
        assert isinstance(state, int)
        assert isinstance(bits, int)
        if state >= len(STATES) or bits >> len(REASONS):
            raise MalformedRecord("bad_document", "unknown state or reason bit")
        if not isinstance(packed, bytes) or len(packed) % LEAF_BYTES:
            raise MalformedRecord("bad_document", "leaves must be 8-byte big-endian indices")
        leaves = tuple(int.from_bytes(packed[i:i + LEAF_BYTES], "big")
                       for i in range(0, len(packed), LEAF_BYTES))
        reasons = tuple(r for i, r in enumerate(REASONS) if bits >> i & 1)
        return cls(require_bytes(device, "device_id", DEVICE_ID_BYTES), STATES[state],
                   reasons, leaves)


@dataclass(frozen=True)
class QualityAttestation:
    """A validator's verdicts on window ``[window_start_ms, +window_ms)`` of a site."""

    TYPE = QUALITY
    site: str
    stream: str
    field: str
    window_start_ms: int
    window_ms: int
    consensus: Measurement | None
    sensors: tuple[SensorAttestation, ...]

    def __post_init__(self) -> None:
        require_text(self.site, "site", MAX_SITE_CHARS)
        require_text(self.stream, "stream", MAX_STREAM_CHARS)
        require_text(self.field, "field", MAX_FIELD_CHARS)
        require_uint(self.window_start_ms, "window_start_ms")
        require_uint(self.window_ms, "window_ms")
        if not 0 < self.window_ms <= MAX_WINDOW_MS:
            raise MalformedRecord("bad_document", "window_ms must be within 1..86400000")
        if not MIN_SENSORS <= len(self.sensors) <= MAX_SENSORS:
            raise MalformedRecord("bad_document", f"{MIN_SENSORS}..{MAX_SENSORS} sensors")
        ids = [s.device_id for s in self.sensors]
        if ids != sorted(set(ids)):
            raise MalformedRecord("bad_document", "sensors must be sorted by device, unique")
        all_leaves = [leaf for s in self.sensors for leaf in s.leaves]
        if len(set(all_leaves)) != len(all_leaves):
            raise MalformedRecord("bad_document", "a leaf is attested for one sensor only")

    @property
    def window_end_ms(self) -> int:
        return self.window_start_ms + self.window_ms

    def of(self, device_id: bytes) -> SensorAttestation:
        """The verdict on ``device_id``; KeyError if the attestation has none."""
        for sensor in self.sensors:
            if sensor.device_id == device_id:
                return sensor
        raise KeyError(device_id.hex())

    def to_cbor_value(self) -> cbor.Value:
        consensus = None if self.consensus is None else self.consensus.to_cbor_value()
        return {1: self.site, 2: self.stream, 3: self.field, 4: self.window_start_ms,
                5: self.window_ms, 6: consensus, 7: [s.to_cbor_value() for s in self.sensors]}

    @classmethod
    def from_cbor_value(cls, value: cbor.Value) -> QualityAttestation:
        m = require_map(value, frozenset(range(1, 8)))
        sensors = m[7]
        if not isinstance(sensors, list):
            raise MalformedRecord("bad_document", "sensors must be a list")
        start, window = m[4], m[5]
        require_uint(start, "window_start_ms")
        require_uint(window, "window_ms")
        assert isinstance(start, int)
        assert isinstance(window, int)
        consensus = None if m[6] is None else Measurement.from_cbor_value(m[6])
        return cls(require_text(m[1], "site", MAX_SITE_CHARS),
                   require_text(m[2], "stream", MAX_STREAM_CHARS),
                   require_text(m[3], "field", MAX_FIELD_CHARS), start, window, consensus,
                   tuple(SensorAttestation.from_cbor_value(s) for s in sensors))


register_body(QUALITY, QualityAttestation.from_cbor_value)


@dataclass(frozen=True)
class LeafFacts:
    """What the gateway's log says of one leaf an attestation names."""

    device_id: bytes
    stream: str
    wall_ms: int
    sealed_to: frozenset[bytes] | None  # recipient kids of the record's key epoch; None: plain
    consent: bytes | None = None  # the consent id its key epoch names for a derived stream


def attestation_of(doc: Document) -> QualityAttestation:
    """The attestation body of a verified document; RejectedDocument if another type."""
    if not isinstance(doc.body, QualityAttestation):
        raise RejectedDocument(DocumentReason.WRONG_TYPE, f"a {doc.type}, not a quality")
    return doc.body


def slot_ref(site: str, window_start_ms: int) -> bytes:
    """The 32-byte key of one validator's one window of one site: at most one attestation
    per (signer, slot) is logged."""
    return hashlib.sha256(b"edgeproof/v1 quality-slot\x00" + site.encode() + b"\x00"
                          + window_start_ms.to_bytes(8, "big")).digest()


def check_attestation(doc: Document, validator_box_key: bytes | None,
                      leaf: Callable[[int], LeafFacts | None],
                      previous: bytes | None,
                      consent: Callable[[bytes], Consent | None] = lambda _: None
                      ) -> QualityAttestation:
    """The gateway's rules for a verified quality attestation; return its body.

    ``validator_box_key``: the X25519 key registered for the signer as a validator (None:
    not registered). ``leaf(index)``: facts of a logged record, None if no such record.
    ``previous``: the id of the attestation this signer already logged for the same
    :func:`slot_ref`, or None. ``consent(id)``: the body of a logged consent, None if
    there is none. Raises RejectedDocument (``unknown_signer``, ``unknown_leaf``,
    ``not_readable``, ``outside_window``, ``conflicting``, ``duplicate``).
    """
    body = attestation_of(doc)
    if validator_box_key is None:
        raise RejectedDocument(DocumentReason.UNKNOWN_SIGNER, "not a registered validator")
    if previous is not None:
        reason = DocumentReason.DUPLICATE if previous == doc.id else DocumentReason.CONFLICTING
        raise RejectedDocument(reason, f"{body.site} window {body.window_start_ms}")
    for sensor in body.sensors:
        for index in sensor.leaves:
            _check_leaf(leaf(index), index, sensor.device_id, body, validator_box_key,
                        consent=consent)
    return body


def _check_leaf(facts: LeafFacts | None, index: int, device_id: bytes,
                body: QualityAttestation, box_key: bytes, *,
                consent: Callable[[bytes], Consent | None]) -> None:
    derived = facts is not None and facts.consent is not None and \
        facts.stream == derived_stream(body.stream, facts.consent)
    if facts is None or facts.device_id != device_id or \
            not (facts.stream == body.stream or derived):
        raise RejectedDocument(DocumentReason.UNKNOWN_LEAF,
                               f"leaf {index} is no {body.stream} record of {device_id.hex()}")
    if (facts.sealed_to is not None and recipient_kid(box_key) not in facts.sealed_to) or \
            (derived and facts.sealed_to is None):
        raise RejectedDocument(DocumentReason.NOT_READABLE, f"leaf {index}")
    if derived:
        assert facts.consent is not None
        _check_consent(consent(facts.consent), index, facts, body.stream, box_key)
    if not body.window_start_ms <= facts.wall_ms < body.window_end_ms:
        raise RejectedDocument(DocumentReason.OUTSIDE_WINDOW, f"leaf {index}")


def _check_consent(granted: Consent | None, index: int, facts: LeafFacts, stream: str,
                   box_key: bytes) -> None:
    """A derived leaf is the validator's to attest only under a logged consent that names
    the validator's key as recipient, the leaf's device and the base stream, and whose
    period holds the reading (the key epoch naming it is the device's word that it was
    applied, i.e. in force and not revoked, when the reading was sealed)."""
    why = None
    if granted is None:
        why = "names no logged consent"
    elif granted.recipient != box_key:
        why = "is under a consent to another recipient"
    elif facts.device_id not in granted.devices or \
            stream not in {s for s, _ in granted.terms.streams}:
        why = f"is under a consent not covering this device's {stream}"
    elif not granted.terms.not_before_ms <= facts.wall_ms < granted.terms.not_after_ms:
        why = "was read outside its consent's period"
    if why is not None:
        raise RejectedDocument(DocumentReason.NOT_READABLE, f"leaf {index} {why}")
