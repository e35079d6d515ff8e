"""The gateway's desk for signed documents: check, log, hand over for delivery.

:meth:`DocumentDesk.submit` takes the exact bytes someone POSTed and either logs them as a
leaf (returning where) or refuses them with a :class:`DocumentRefused` carrying a
:class:`~protocol.reasons.DocumentReason`, counted in ``/metrics``; a refusal changes
nothing. The order: size cap, decoding (depth and item caps), signature under the embedded
signer key, then in ONE store transaction (so two submissions cannot both pass a check
that only one may pass, e.g. a revocation counter) the rules of docs/PROTOCOL.md §16.3:

- request: signed by a registered recipient, sealing to that recipient's registered key,
  not yet expired, every named device registered and with every stream asked for;
- consent: the request is logged and unexpired, the consent is no wider, every device is
  targeted, registered, pinned to the signer as owner, and has every granted stream;
- revocation: the consent is logged, signed by the same owner, with a higher counter;
- quality (a validator's attestation, :mod:`gateway.quality`): signed by a registered
  recipient, naming only records it could read, inside the window, one per window slot.

The gateway holds no owner key, so it cannot make a consent pass; neither can the operator.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from gateway.metrics import GatewayMetrics
from gateway.quality import check_quality
from gateway.store import (
    MAX_STORED_INT,
    STATUS_ACTIVE,
    Device,
    LogStore,
    LogTransaction,
    NewDocument,
    StoredDocument,
)
from protocol.contract import (
    CONSENT,
    REQUEST,
    REVOCATION,
    Consent,
    DataRequest,
    Revocation,
    body_of,
    check_consent,
    check_owner,
    check_revocation,
)
from protocol.documents import MAX_DOCUMENT_BYTES, Document, parse_document, verify_document
from protocol.errors import MalformedRecord, RejectedDocument, VerificationError
from protocol.quality import QUALITY
from protocol.reasons import DocumentReason

log = logging.getLogger(__name__)


class DocumentRefused(Exception):
    """A submitted document was refused; ``reason`` is a DocumentReason code."""

    def __init__(self, reason: DocumentReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Logged:
    """Where a submitted document sits in the log (``duplicate``: it already did)."""

    document: StoredDocument
    duplicate: bool
    devices: tuple[bytes, ...]


class DocumentDesk:
    """Checks and logs documents; calls ``on_logged`` after each commit (for delivery)."""

    def __init__(self, store: LogStore, metrics: GatewayMetrics, wall_ms: Callable[[], int],
                 on_logged: Callable[[Logged], None] = lambda logged: None) -> None:
        self._store, self._metrics, self._wall_ms = store, metrics, wall_ms
        self.on_logged = on_logged

    def submit(self, raw: bytes) -> Logged:
        """Check and log ``raw``; return where it sits. Raises DocumentRefused (counted)."""
        try:
            logged = self._submit(raw)
        except DocumentRefused as exc:
            self._metrics.documents_rejected.labels(reason=exc.reason.value).inc()
            log.info("document refused: %s", exc)
            raise
        if not logged.duplicate:
            self._metrics.documents_accepted.labels(type=logged.document.type).inc()
            self.on_logged(logged)
        return logged

    def _submit(self, raw: bytes) -> Logged:
        doc = _verified(raw)
        now = self._wall_ms()
        logged = self._store.document(doc.id)
        if logged is not None:
            return Logged(logged, True, ())
        try:
            self._precheck(doc)
        except RejectedDocument as exc:
            raise DocumentRefused(DocumentReason(exc.reason), exc.detail) from None
        with self._store.transaction() as tx:
            existing = tx.document(doc.id)
            if existing is not None:
                return Logged(existing, True, ())
            try:
                new = self._check(tx, doc, now)
            except RejectedDocument as exc:
                raise DocumentRefused(DocumentReason(exc.reason), exc.detail) from None
            index = tx.append_document(new)
        stored = StoredDocument(index, new.doc_id, new.type, new.signer, new.raw, new.ref,
                                new.counter, new.received_ms)
        return Logged(stored, False, new.devices)

    def _precheck(self, doc: Document) -> None:
        """Who may sign this, from committed state and before the log's write lock: a
        document from anyone but a registered recipient or a device's owner, or of a type
        not submitted here, never takes the lock the sequencer needs (the full checks
        follow inside the transaction)."""
        if doc.type == REQUEST:
            request = body_of(doc, DataRequest)
            registered = {r.signing_key: r for r in self._store.recipients()}
            recipient = registered.get(doc.signer)
            if recipient is None:
                raise RejectedDocument(DocumentReason.UNKNOWN_SIGNER,
                                       "not a registered recipient")
            if recipient.sealing_key != request.recipient:
                raise RejectedDocument(DocumentReason.UNKNOWN_SIGNER, "seals to another key "
                                       f"than recipient {recipient.name!r}'s")
        elif doc.type == CONSENT:
            devices = body_of(doc, Consent).devices
            check_owner(doc, devices, _owner_keys(self._store.device, devices))
        elif doc.type == REVOCATION:
            revocation = body_of(doc, Revocation)
            if revocation.counter > MAX_STORED_INT:  # a uint64 the log's columns cannot hold
                raise RejectedDocument(DocumentReason.MALFORMED,
                                       f"revocation counter above {MAX_STORED_INT}")
            consent = self._store.document(revocation.consent)
            if consent is None or consent.type != CONSENT:
                raise RejectedDocument(DocumentReason.UNKNOWN_CONSENT, "no such logged consent")
            if consent.signer != doc.signer:
                raise RejectedDocument(DocumentReason.NOT_OWNER,
                                       "signed by another key than the consent")
        elif doc.type == QUALITY:
            if all(r.signing_key != doc.signer for r in self._store.recipients()):
                raise RejectedDocument(DocumentReason.UNKNOWN_SIGNER,
                                       "not a registered recipient")
        else:  # a lapse notice, a payout notice, a wallet, an epoch: not submitted here
            raise RejectedDocument(DocumentReason.WRONG_TYPE, f"{doc.type} is not logged here")

    def _check(self, tx: LogTransaction, doc: Document, now: int) -> NewDocument:
        if doc.type == REQUEST:
            return _check_request(tx, doc, now)
        if doc.type == CONSENT:
            return _check_consent(tx, doc, now)
        if doc.type == REVOCATION:
            return _check_revocation(tx, doc, now)
        if doc.type == QUALITY:
            return check_quality(self._store, tx, doc, now)
        raise RejectedDocument(DocumentReason.WRONG_TYPE, f"{doc.type} is not logged here")



def _check_request(tx: LogTransaction, doc: Document, now: int) -> NewDocument:
    request = body_of(doc, DataRequest)  # its signer was checked by DocumentDesk._precheck
    if request.terms.not_after_ms <= now:
        raise RejectedDocument(DocumentReason.REQUEST_EXPIRED, "its period is over")
    for device_id in request.devices:
        device = tx.device(device_id)
        if device is None or device.status is not STATUS_ACTIVE:
            raise RejectedDocument(DocumentReason.UNKNOWN_DEVICE, device_id.hex())
    _require_streams(tx, request.devices, request.terms.streams)
    return _new(doc, now, None, 0, ())


def _verified(raw: bytes) -> Document:
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise DocumentRefused(DocumentReason.TOO_LARGE, f"{len(raw)} bytes > "
                                                        f"{MAX_DOCUMENT_BYTES}")
    try:
        parse_document(raw)
    except MalformedRecord as exc:
        reason = DocumentReason.TOO_LARGE if exc.reason == "too_large" else \
            DocumentReason.MALFORMED
        raise DocumentRefused(reason, str(exc)) from None
    try:
        return verify_document(raw)
    except VerificationError as exc:
        raise DocumentRefused(DocumentReason.BAD_SIGNATURE, str(exc)) from None


def _logged_body(tx: LogTransaction, doc_id: bytes, doc_type: str,
                 missing: DocumentReason) -> Document:
    stored = tx.document(doc_id)
    if stored is None or stored.type != doc_type:
        raise RejectedDocument(missing, f"no logged {doc_type} {doc_id.hex()[:16]}")
    return parse_document(stored.raw)


def _check_consent(tx: LogTransaction, doc: Document, now: int) -> NewDocument:
    consent = body_of(doc, Consent)
    request = _logged_body(tx, consent.request, REQUEST, DocumentReason.UNKNOWN_REQUEST)
    check_consent(doc, request, now)
    check_owner(doc, consent.devices, _owner_keys(tx.device, consent.devices))
    _require_streams(tx, consent.devices, consent.terms.streams)
    return _new(doc, now, consent.request, 0, consent.devices)


def _owner_keys(lookup: Callable[[bytes], Device | None],
                devices: tuple[bytes, ...]) -> dict[bytes, bytes]:
    """Device id -> pinned owner key, for the active devices; RejectedDocument(not_owner)
    for a device enrolled without an owner key (nobody can consent for it)."""
    owners: dict[bytes, bytes] = {}
    for device_id in devices:
        device = lookup(device_id)
        if device is None or device.status is not STATUS_ACTIVE:
            continue  # check_owner: unknown_device
        if device.owner_key is None:
            raise RejectedDocument(DocumentReason.NOT_OWNER,
                                   f"device {device_id.hex()} pins no owner key")
        owners[device_id] = device.owner_key
    return owners


def _require_streams(tx: LogTransaction, devices: tuple[bytes, ...],
                     streams: tuple[tuple[str, tuple[str, ...]], ...]) -> None:
    """Every device must have logged records of every stream (unknown_stream)."""
    for device_id in devices:
        has = tx.device_streams(device_id)
        for stream, _ in streams:
            if stream not in has:
                raise RejectedDocument(DocumentReason.UNKNOWN_STREAM,
                                       f"device {device_id.hex()} has no stream {stream!r}")


def _check_revocation(tx: LogTransaction, doc: Document, now: int) -> NewDocument:
    named = body_of(doc, Revocation).consent
    consent_doc = _logged_body(tx, named, CONSENT, DocumentReason.UNKNOWN_CONSENT)
    revocation = check_revocation(doc, consent_doc, tx.last_counter(doc.signer))
    consent = body_of(consent_doc, Consent)
    return _new(doc, now, revocation.consent, revocation.counter, consent.devices)


def _new(doc: Document, now: int, ref: bytes | None, counter: int,
         devices: tuple[bytes, ...]) -> NewDocument:
    return NewDocument(doc.id, doc.type, doc.signer, doc.raw, ref, counter, devices, now)
