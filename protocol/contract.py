"""The documents of data on a contract basis: requests, consents and revocations.

Bodies of :mod:`protocol.documents` (layout and reasoning in docs/PROTOCOL.md §16):

- :class:`DataRequest` (type ``"request"``), signed by a recipient's Ed25519 key: which
  devices or owners, which fields of which streams, at most one reading per
  ``min_interval_s``, for ``[not_before_ms, not_after_ms)``, why, and for what reward.
- :class:`Consent` (``"consent"``), signed by an owner: the request's id and the terms
  granted, never wider than the request; self-contained, so a device enforces it alone.
- :class:`Revocation` (``"revocation"``), signed by an owner: the consent's id and a counter
  that increases with every revocation of that owner.
- :class:`Lapse` (``"lapse"``), signed by the GATEWAY: a consent whose owner allowed it
  (``lapses_on_shortfall``) ends because its request's funding fell short (§19.4); it
  embeds the consent's signed bytes, so a device checks it against its pinned owner key.

The ``check_*`` functions are the rules both the gateway and a device apply; they raise
:class:`~protocol.errors.RejectedDocument` with a :class:`~protocol.reasons.DocumentReason`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from protocol import cbor
from protocol.document_envelope import (
    Document,
    document_hash,
    register_body,
    require_bytes,
    require_map,
    require_text,
    require_uint,
    verify_document,
)
from protocol.errors import MalformedRecord, RejectedDocument, VerificationError
from protocol.keys import DEVICE_ID_BYTES, SIGNER_ID_BYTES, signer_id
from protocol.reasons import DocumentReason
from protocol.record import MAX_STREAM_CHARS, RESERVED_STREAMS

REQUEST, CONSENT, REVOCATION, LAPSE = "request", "consent", "revocation", "lapse"
MAX_TARGETS = 64
MAX_STREAMS = 16
MAX_FIELDS = 16
MAX_FIELD_CHARS = 32
MAX_PURPOSE_CHARS = 512
MAX_REASON_CHARS = 128
MAX_INTERVAL_S = 366 * 86_400

_T = TypeVar("_T")
Streams = tuple[tuple[str, tuple[str, ...]], ...]  # sorted by stream; fields sorted, unique


def _ids(value: object, name: str, length: int, *, allow_empty: bool) -> tuple[bytes, ...]:
    if not isinstance(value, list) or len(value) > MAX_TARGETS:
        raise MalformedRecord("bad_document", f"{name} must be a list of at most {MAX_TARGETS}")
    ids = tuple(require_bytes(v, name, length) for v in value)
    if list(ids) != sorted(set(ids)) or (not ids and not allow_empty):
        raise MalformedRecord("bad_document", f"{name} must be sorted, unique, non-empty")
    return ids


def _streams(value: object) -> Streams:
    if not isinstance(value, dict) or not 1 <= len(value) <= MAX_STREAMS:
        raise MalformedRecord("bad_document", f"streams must map 1..{MAX_STREAMS} streams")
    out = []
    for stream, fields in value.items():
        name = require_text(stream, "stream", MAX_STREAM_CHARS)
        if name in RESERVED_STREAMS:
            raise MalformedRecord("bad_document", f"stream {name!r} is reserved")
        if not isinstance(fields, list) or not 1 <= len(fields) <= MAX_FIELDS:
            raise MalformedRecord("bad_document", f"fields must be a list of 1..{MAX_FIELDS}")
        names = tuple(require_text(f, "field", MAX_FIELD_CHARS) for f in fields)
        if list(names) != sorted(set(names)):
            raise MalformedRecord("bad_document", "fields must be sorted and unique")
        out.append((name, names))
    return tuple(sorted(out))


def _streams_value(streams: Streams) -> cbor.Value:
    return {s: list(fields) for s, fields in streams}


@dataclass(frozen=True)
class Terms:
    """What is asked for or granted: fields per stream, rate and period."""

    streams: Streams
    min_interval_s: int
    not_before_ms: int
    not_after_ms: int

    def __post_init__(self) -> None:
        _streams(_streams_value(self.streams))
        require_uint(self.min_interval_s, "min_interval_s")
        if self.min_interval_s > MAX_INTERVAL_S:
            raise MalformedRecord("bad_document", "min_interval_s above one year")
        require_uint(self.not_before_ms, "not_before_ms")
        require_uint(self.not_after_ms, "not_after_ms")
        if self.not_after_ms <= self.not_before_ms:
            raise MalformedRecord("bad_document", "not_after_ms must be after not_before_ms")

    def fields(self, stream: str) -> tuple[str, ...]:
        return dict(self.streams).get(stream, ())


@dataclass(frozen=True)
class DataRequest:
    """A recipient's signed request for data (type ``"request"``)."""

    TYPE = REQUEST
    recipient: bytes  # the X25519 key the data is to be sealed to
    devices: tuple[bytes, ...]
    owners: tuple[bytes, ...]  # signer ids of owners: any device of theirs
    terms: Terms
    purpose: str
    reward_micro_per_hour: int

    def __post_init__(self) -> None:
        require_bytes(self.recipient, "recipient", 32)
        _ids(list(self.devices), "devices", DEVICE_ID_BYTES, allow_empty=True)
        _ids(list(self.owners), "owners", SIGNER_ID_BYTES, allow_empty=True)
        if not self.devices and not self.owners:
            raise MalformedRecord("bad_document", "a request targets devices or owners")
        require_text(self.purpose, "purpose", MAX_PURPOSE_CHARS)
        require_uint(self.reward_micro_per_hour, "reward_micro_per_hour")

    def to_cbor_value(self) -> cbor.Value:
        t = self.terms
        return {1: self.recipient, 2: list(self.devices), 3: list(self.owners),
                4: _streams_value(t.streams), 5: t.min_interval_s, 6: t.not_before_ms,
                7: t.not_after_ms, 8: self.purpose, 9: self.reward_micro_per_hour}

    @classmethod
    def from_cbor_value(cls, value: cbor.Value) -> DataRequest:
        m = require_map(value, frozenset(range(1, 10)))
        terms = Terms(_streams(m[4]), _int(m[5]), _int(m[6]), _int(m[7]))
        return cls(require_bytes(m[1], "recipient", 32),
                   _ids(m[2], "devices", DEVICE_ID_BYTES, allow_empty=True),
                   _ids(m[3], "owners", SIGNER_ID_BYTES, allow_empty=True), terms,
                   require_text(m[8], "purpose", MAX_PURPOSE_CHARS), _int(m[9]))


@dataclass(frozen=True)
class Consent:
    """An owner's signed consent to (part of) a request (type ``"consent"``)."""

    TYPE = CONSENT
    request: bytes  # the request's document id
    recipient: bytes
    devices: tuple[bytes, ...]
    terms: Terms
    lapses_on_shortfall: bool = False  # key 8 (absent = false): the gateway may end it (§19.4)

    def __post_init__(self) -> None:
        require_bytes(self.request, "request", 32)
        require_bytes(self.recipient, "recipient", 32)
        _ids(list(self.devices), "devices", DEVICE_ID_BYTES, allow_empty=False)

    def to_cbor_value(self) -> cbor.Value:
        t = self.terms
        value: dict[cbor.Value, cbor.Value] = {
            1: self.request, 2: self.recipient, 3: list(self.devices),
            4: _streams_value(t.streams), 5: t.min_interval_s, 6: t.not_before_ms,
            7: t.not_after_ms}
        if self.lapses_on_shortfall:
            value[8] = True
        return value

    @classmethod
    def from_cbor_value(cls, value: cbor.Value) -> Consent:
        m = require_map(value, frozenset(range(1, 8)), frozenset({8}))
        if 8 in m and m[8] is not True:
            raise MalformedRecord("bad_document", "lapses_on_shortfall is true or absent")
        terms = Terms(_streams(m[4]), _int(m[5]), _int(m[6]), _int(m[7]))
        return cls(require_bytes(m[1], "request", 32), require_bytes(m[2], "recipient", 32),
                   _ids(m[3], "devices", DEVICE_ID_BYTES, allow_empty=False), terms, 8 in m)


@dataclass(frozen=True)
class Revocation:
    """An owner's signed revocation of a consent (type ``"revocation"``)."""

    TYPE = REVOCATION
    consent: bytes  # the consent's document id
    counter: int  # strictly increasing over all revocations of this owner
    reason: str

    def __post_init__(self) -> None:
        require_bytes(self.consent, "consent", 32)
        require_uint(self.counter, "counter")
        if self.counter == 0:
            raise MalformedRecord("bad_document", "counter starts at 1")
        require_text(self.reason, "reason", MAX_REASON_CHARS)

    def to_cbor_value(self) -> cbor.Value:
        return {1: self.consent, 2: self.counter, 3: self.reason}

    @classmethod
    def from_cbor_value(cls, value: cbor.Value) -> Revocation:
        m = require_map(value, frozenset({1, 2, 3}))
        return cls(require_bytes(m[1], "consent", 32), _int(m[2]),
                   require_text(m[3], "reason", MAX_REASON_CHARS))


@dataclass(frozen=True)
class Lapse:
    """The gateway's signed notice that a consent lapses on a funding shortfall (``"lapse"``).

    Anyone checks it against the log and the chain: at ``funding_block`` the request's
    ``Funded`` total does not cover what its consents earned up to leaf ``short_at``."""

    TYPE = LAPSE
    consent: bytes  # the consent's exact signed bytes (its id is their SHA-256)
    request: bytes
    short_at: int
    funding_block: int
    chain_id: int
    distributor: bytes  # 20-byte contract address

    def __post_init__(self) -> None:
        if not isinstance(self.consent, bytes) or not self.consent:
            raise MalformedRecord("bad_document", "consent must be its signed bytes")
        require_bytes(self.request, "request", 32)
        for name in ("short_at", "funding_block", "chain_id"):
            require_uint(getattr(self, name), name)
        require_bytes(self.distributor, "distributor", 20)

    @property
    def consent_id(self) -> bytes:
        return document_hash(self.consent)

    def to_cbor_value(self) -> cbor.Value:
        return {1: self.consent, 2: self.request, 3: self.short_at, 4: self.funding_block,
                5: self.chain_id, 6: self.distributor}

    @classmethod
    def from_cbor_value(cls, value: cbor.Value) -> Lapse:
        m = require_map(value, frozenset(range(1, 7)))
        if not isinstance(m[1], bytes):
            raise MalformedRecord("bad_document", "consent must be its signed bytes")
        return cls(m[1], require_bytes(m[2], "request", 32), _int(m[3]), _int(m[4]),
                   _int(m[5]), require_bytes(m[6], "distributor", 20))


def _int(value: cbor.Value) -> int:
    require_uint(value, "integer field")
    assert isinstance(value, int)
    return value


register_body(REQUEST, DataRequest.from_cbor_value)
register_body(CONSENT, Consent.from_cbor_value)
register_body(REVOCATION, Revocation.from_cbor_value)
register_body(LAPSE, Lapse.from_cbor_value)


# --- the rules ----------------------------------------------------------------------------


def body_of(doc: Document, kind: type[_T]) -> _T:
    """The body of ``doc`` as ``kind``; RejectedDocument(wrong_type) if it is another type."""
    if not isinstance(doc.body, kind):
        raise RejectedDocument(DocumentReason.WRONG_TYPE, f"expected {kind.__name__}")
    return doc.body


def check_consent(consent_doc: Document, request_doc: Document, now_ms: int) -> Consent:
    """Check a consent against the request it names; return its body.

    Raises RejectedDocument: ``unknown_request`` (ids differ), ``request_expired``,
    ``wider_than_request`` (recipient, streams, fields, rate or period beyond the request),
    ``not_targeted`` (a device the request did not name, of an owner it did not name).
    Whether each device is the signer's is the registry's question (:func:`check_owner`).
    """
    consent = body_of(consent_doc, Consent)
    request = body_of(request_doc, DataRequest)
    if consent.request != request_doc.id:
        raise RejectedDocument(DocumentReason.UNKNOWN_REQUEST, "consent names another request")
    if request.terms.not_after_ms <= now_ms:
        raise RejectedDocument(DocumentReason.REQUEST_EXPIRED, "the request's period is over")
    if consent.recipient != request.recipient:
        raise RejectedDocument(DocumentReason.WIDER_THAN_REQUEST, "another recipient key")
    _check_narrower(consent.terms, request.terms)
    if consent_doc.signer_id not in request.owners:
        outside = [d.hex() for d in consent.devices if d not in request.devices]
        if outside:
            raise RejectedDocument(DocumentReason.NOT_TARGETED, f"device {outside[0]}")
    return consent


def _check_narrower(granted: Terms, asked: Terms) -> None:
    wider = DocumentReason.WIDER_THAN_REQUEST
    for stream, fields in granted.streams:
        extra = set(fields) - set(asked.fields(stream))
        if extra:
            raise RejectedDocument(wider, f"{stream}: {sorted(extra)[0]} was not requested")
    if granted.min_interval_s < asked.min_interval_s:
        raise RejectedDocument(wider, "a higher rate than requested")
    if granted.not_before_ms < asked.not_before_ms or granted.not_after_ms > asked.not_after_ms:
        raise RejectedDocument(wider, "a longer period than requested")


def check_owner(doc: Document, devices: Iterable[bytes], owner_of: dict[bytes, bytes]) -> None:
    """Require the signer of ``doc`` to be the pinned owner of every device.

    ``owner_of`` maps device id to the owner's Ed25519 public key. Raises RejectedDocument
    (``unknown_device``, ``not_owner``).
    """
    for device in devices:
        owner = owner_of.get(device)
        if owner is None:
            raise RejectedDocument(DocumentReason.UNKNOWN_DEVICE, device.hex())
        if owner != doc.signer:
            raise RejectedDocument(DocumentReason.NOT_OWNER, f"device {device.hex()}")


def check_revocation(revocation_doc: Document, consent_doc: Document,
                     last_counter: int) -> Revocation:
    """Check a revocation against its consent and its owner's last counter; return the body.

    Raises RejectedDocument: ``unknown_consent`` (ids differ), ``not_owner`` (signed by
    another key than the consent), ``stale_counter`` (counter not above ``last_counter``: a
    replayed or reordered revocation).
    """
    revocation = body_of(revocation_doc, Revocation)
    body_of(consent_doc, Consent)
    if revocation.consent != consent_doc.id:
        raise RejectedDocument(DocumentReason.UNKNOWN_CONSENT, "revocation names another consent")
    if revocation_doc.signer != consent_doc.signer:
        raise RejectedDocument(DocumentReason.NOT_OWNER, "signed by another key than the consent")
    if revocation.counter <= last_counter:
        raise RejectedDocument(DocumentReason.STALE_COUNTER,
                               f"counter {revocation.counter} <= last {last_counter}")
    return revocation


def check_lapse(lapse_doc: Document, gateway: bytes, owner: bytes) -> tuple[Lapse, Document]:
    """Check a lapse notice as a device does (§19.4); return its body and embedded consent.

    Raises RejectedDocument: ``unsigned_policy`` (not signed by ``gateway``, the gateway key
    the device pinned), ``bad_signature``/``malformed``/``not_owner`` (the embedded consent
    does not verify under ``owner``), ``unknown_request`` (the notice names another request
    than the consent), ``no_lapse_term`` (the owner did not allow it to lapse).
    """
    lapse = body_of(lapse_doc, Lapse)
    if lapse_doc.signer != gateway:
        raise RejectedDocument(DocumentReason.UNSIGNED_POLICY, "a lapse not signed by the gateway")
    try:
        consent_doc = verify_document(lapse.consent, expected_type=CONSENT)
    except MalformedRecord as exc:
        raise RejectedDocument(DocumentReason.MALFORMED, f"embedded consent: {exc}") from None
    except VerificationError as exc:
        raise RejectedDocument(DocumentReason.BAD_SIGNATURE, f"embedded consent: {exc}") from None
    if consent_doc.signer != owner:
        raise RejectedDocument(DocumentReason.NOT_OWNER, "the consent is not the owner's")
    consent = body_of(consent_doc, Consent)
    if consent.request != lapse.request:
        raise RejectedDocument(DocumentReason.UNKNOWN_REQUEST, "notice names another request")
    if not consent.lapses_on_shortfall:
        raise RejectedDocument(DocumentReason.NO_LAPSE_TERM, "the owner did not allow a lapse")
    return lapse, consent_doc


def owner_id(public_key: bytes) -> bytes:
    """An owner's id (its signer id): what requests name in ``owners``."""
    return signer_id(public_key)
