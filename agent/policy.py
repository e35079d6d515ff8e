"""The policy inbox: consents and revocations reaching the device, accepted only from its owner.

Documents arrive from the gateway on the device's ``policy`` topic (PROTOCOL.md §17) in
:class:`~protocol.delivery.PolicyDelivery` messages. The delivery is not trusted: each
document is verified (signature under its own key) and then accepted only if that key is
the owner key the device pinned (``[owner] public_key``, from its bundle). A document
signed by the gateway, the operator, a recipient or another owner verifies under its own
key and is still refused (``unsigned_policy``); every refusal is counted by reason code
(``DocumentReason``) in the grant book and shown by ``edgeproof-agent status``.

- A **consent** naming this device, for streams it has, whose period has not provably
  ended, becomes grants (one per stream) in the book; the record writer starts a key epoch
  that applies it at once (agent/records.py).
- A **revocation** with a counter above the last applied one removes the consent's grants
  and, in the same step under the book's lock, withdraws the records sealed to them that
  are still in the outbox (declared as gaps, reason ``revoked``). The uplink applies
  deliveries in its own thread, before it sends anything after a connect
  (agent/uplink/uplink.py, "syncing"), so an offline device applies a revocation before
  it sends anything sealed to the revoked recipient.

Thread-safe: the uplink thread delivers, the main thread writes records; the book's lock
orders them.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from agent.clock import Clock
from agent.grants import GrantBook
from agent.outbox import Outbox
from protocol import reasons
from protocol.contract import Consent, Revocation
from protocol.delivery import PolicyDelivery
from protocol.documents import Document, verify_document
from protocol.errors import MalformedRecord, VerificationError
from protocol.grants import AccessGrant
from protocol.reasons import DocumentReason

log = logging.getLogger(__name__)

# A revocation of a consent the device never applied is remembered this long (then a replay
# of that consent would be refused as expired anyway only if its period ended: consents
# run at most a year in practice; a longer one would need the revocation delivered again).
_TOMBSTONE_MS = 366 * 86_400_000


class Refused(Exception):
    """A document the device does not apply, with its reason code."""

    def __init__(self, reason: DocumentReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class PolicyInbox:
    """Verifies and applies the documents delivered to one device."""

    def __init__(self, book: GrantBook, outbox: Outbox, *, device_id: bytes,
                 owner: bytes | None, streams: Collection[str], clock: Clock) -> None:
        """``owner`` is the pinned owner's Ed25519 public key (None: the device applies no
        document); ``streams`` the streams the device has."""
        self.book = book
        self._outbox = outbox
        self._device_id = device_id
        self._owner = owner
        self._streams = frozenset(streams)
        self._clock = clock

    @property
    def must_sync(self) -> bool:
        """Whether sending must wait for a complete policy sync after a connect: only when
        some grant could need revoking (records sealed to it may be waiting)."""
        return bool(self.book.grants())

    def deliver(self, payload: bytes) -> bool:
        """Apply one delivery message; return whether it completes a sync.

        A malformed delivery changes nothing and is counted. Raises StorageError if the
        book or the outbox cannot be written (the delivery is then not complete, so the
        next sync brings it again).
        """
        try:
            delivery = PolicyDelivery.from_cbor(payload)
        except MalformedRecord as exc:
            self._refused(DocumentReason.MALFORMED, f"delivery: {exc}")
            return False
        for _index, raw in delivery.documents:
            self.apply(raw)
        if delivery.complete:
            self.book.synced_to(delivery.next_index)
        return delivery.complete

    def apply(self, raw: bytes) -> None:
        """Verify one document and apply it, or count why not. Raises StorageError."""
        try:
            self._apply(self._verified(raw))
        except Refused as refused:
            self._refused(refused.reason, str(refused))

    def _apply(self, doc: Document) -> None:
        if isinstance(doc.body, Consent):
            self._consent(doc, doc.body)
        elif isinstance(doc.body, Revocation):
            self._revocation(doc.body)
        else:
            raise Refused(DocumentReason.WRONG_TYPE, f"a {doc.type} is not for devices")

    def _verified(self, raw: bytes) -> Document:
        if self._owner is None:
            raise Refused(DocumentReason.NO_OWNER_KEY, "this device pins no owner key")
        try:
            doc = verify_document(raw)
        except MalformedRecord as exc:
            raise Refused(DocumentReason.MALFORMED, str(exc)) from None
        except VerificationError as exc:
            raise Refused(DocumentReason.BAD_SIGNATURE, str(exc)) from None
        if doc.signer != self._owner:
            raise Refused(DocumentReason.UNSIGNED_POLICY,
                          f"{doc.type} signed by {doc.signer.hex()[:16]}…, not the owner")
        return doc

    def _consent(self, doc: Document, consent: Consent) -> None:
        consent_id = doc.id
        if self._device_id not in consent.devices:
            raise Refused(DocumentReason.OTHER_DEVICE, "the consent does not name this device")
        missing = [s for s, _ in consent.terms.streams if s not in self._streams]
        if missing:
            raise Refused(DocumentReason.UNKNOWN_STREAM, f"no stream {missing[0]!r} here")
        if self.book.is_revoked(consent_id):
            raise Refused(DocumentReason.CONSENT_REVOKED, f"consent {consent_id.hex()[:16]}…")
        if self.book.knows(consent_id):
            self.book.duplicate()
            return
        terms = consent.terms
        if self._clock.wall_synced() and terms.not_after_ms <= self._clock.wall_ms():
            raise Refused(DocumentReason.CONSENT_EXPIRED, "its period has ended")
        try:
            grants = tuple(AccessGrant(consent_id, consent.recipient, stream, fields,
                                       terms.min_interval_s * 1000, terms.not_before_ms,
                                       terms.not_after_ms)
                           for stream, fields in terms.streams)
        except MalformedRecord as exc:
            raise Refused(DocumentReason.MALFORMED, str(exc)) from None
        if not self.book.room_for(len(grants)):
            raise Refused(DocumentReason.GRANTS_FULL, "the grant book is full")
        self.book.add(grants)
        log.info("consent %s… applied: %s for recipient %s…", consent_id.hex()[:16],
                 ", ".join(f"{g.stream}{list(g.fields)}" for g in grants),
                 consent.recipient.hex()[:16])

    def _revocation(self, revocation: Revocation) -> None:
        book = self.book
        if revocation.counter <= book.last_counter:
            if book.is_revoked(revocation.consent):
                book.duplicate()  # the same revocation delivered again
                return
            raise Refused(DocumentReason.STALE_COUNTER,
                          f"counter {revocation.counter} <= {book.last_counter}")
        with book.lock:  # the writer seals nothing to it between these two steps
            ended = book.revoke(revocation.consent,
                                self._clock.wall_ms() + _TOMBSTONE_MS, revocation.counter)
            gone = self._outbox.withdraw(ended, reasons.REVOKED)
        log.info("revocation of consent %s… applied (%s): ended %s, withdrew %d unsent "
                 "records", revocation.consent.hex()[:16], revocation.reason,
                 ", ".join(ended) or "no grant", len(gone))

    def _refused(self, reason: DocumentReason, detail: str) -> None:
        self.book.refuse(reason)
        log.warning("policy document refused (%s): %s", reason, detail)

