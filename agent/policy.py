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
- A **lapse notice** (PROTOCOL.md §19.4) is the one document not signed by the owner: it is
  signed by the gateway key the device pinned for receipts (``gateway``) and embeds a
  consent that must verify under the pinned owner key, name this device and carry the
  owner's ``lapses_on_shortfall`` term. It is then applied like a revocation (grants
  ended, unsent records withdrawn) without touching the owner's revocation counter.

Thread-safe: the uplink thread delivers, the main thread writes records; the book's lock
orders them.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from agent.clock import Clock
from agent.grants import TOMBSTONE_MS, UNTIL_SYNCED, GrantBook
from agent.outbox import Outbox
from agent.quality import QualityNotes
from protocol import reasons
from protocol.contract import Consent, Lapse, Revocation, check_lapse
from protocol.delivery import PolicyDelivery
from protocol.documents import Document, verify_document
from protocol.errors import MalformedRecord, RejectedDocument, VerificationError
from protocol.grants import AccessGrant
from protocol.quality import QUALITY, QualityAttestation
from protocol.reasons import DocumentReason

log = logging.getLogger(__name__)

# A revocation of a consent the device never applied is remembered TOMBSTONE_MS (then a
# replay of that consent would be refused as expired anyway only if its period ended:
# consents run at most a year in practice; a longer one would need the revocation delivered
# again), from a synced wall clock: applied before the clock synced, from the first synced
# housekeeping after (agent/grants.py, UNTIL_SYNCED).

REFUSAL_LOG_MS = 60_000  # a warning per refusal reason at most this often


class Refused(Exception):
    """A document the device does not apply, with its reason code."""

    def __init__(self, reason: DocumentReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class PolicyInbox:
    """Verifies and applies the documents delivered to one device."""

    def __init__(self, book: GrantBook, outbox: Outbox, *, device_id: bytes,
                 owner: bytes | None, streams: Collection[str], clock: Clock,
                 quality: QualityNotes | None = None, gateway: bytes | None = None) -> None:
        """``owner`` is the pinned owner's Ed25519 public key (None: the device applies no
        document); ``streams`` the streams the device has; ``quality`` keeps the quality
        verdicts on this device that arrive (None: they are refused as ``wrong_type``);
        ``gateway`` the gateway's pinned receipt key (None: lapse notices are refused)."""
        self.book = book
        self.quality = quality
        self._outbox = outbox
        self._device_id = device_id
        self._owner = owner
        self._streams = frozenset(streams)
        self._clock = clock
        self._gateway = gateway
        self._defer_save = False  # inside deliver(): refusals are written once at its end
        self._warned_ms: dict[DocumentReason, int] = {}  # reason -> last warning (mono ms)

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
        refused_before = sum(self.book.refused.values())
        self._defer_save = True  # up to 64 documents: one write of the book, not 64 fsyncs
        try:
            for _index, raw in delivery.documents:
                self.apply(raw)
        finally:
            self._defer_save = False
            if sum(self.book.refused.values()) != refused_before:
                self.book.save_refusals()
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
        elif isinstance(doc.body, Lapse):
            self._lapse(doc)
        elif isinstance(doc.body, QualityAttestation) and self.quality is not None:
            self._quality(doc, doc.body)
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
        if doc.type == QUALITY:
            return doc  # a validator's statement, informational: any signer (agent/quality.py)
        if isinstance(doc.body, Lapse):
            return doc  # the gateway's: checked against both pinned keys in _lapse
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
            ended = book.revoke(revocation.consent, self._tombstone_until(),
                                revocation.counter)
            gone = self._outbox.withdraw(ended, reasons.REVOKED)
        log.info("revocation of consent %s… applied (%s): ended %s, withdrew %d unsent "
                 "records", revocation.consent.hex()[:16], revocation.reason,
                 ", ".join(ended) or "no grant", len(gone))

    def _tombstone_until(self) -> int:
        """Until when to remember a revoked consent the device never applied."""
        if not self._clock.wall_synced():
            return UNTIL_SYNCED  # this clock's "now" may be long past: stamped once synced
        return self._clock.wall_ms() + TOMBSTONE_MS

    def _lapse(self, doc: Document) -> None:
        assert self._owner is not None
        if self._gateway is None:
            raise Refused(DocumentReason.UNSIGNED_POLICY, "this device pins no gateway key")
        try:
            lapse, consent_doc = check_lapse(doc, self._gateway, self._owner)
        except RejectedDocument as exc:
            raise Refused(DocumentReason(exc.reason), exc.detail) from None
        consent = consent_doc.body
        assert isinstance(consent, Consent)
        if self._device_id not in consent.devices:
            raise Refused(DocumentReason.OTHER_DEVICE, "the consent does not name this device")
        book = self.book
        if book.is_revoked(consent_doc.id):
            book.duplicate()  # already revoked or lapsed
            return
        with book.lock:  # as a revocation, but the owner's counter stays where it is
            ended = book.revoke(consent_doc.id, self._tombstone_until(), what="lapses")
            gone = self._outbox.withdraw(ended, reasons.REVOKED)
        log.warning("consent %s… lapsed (request %s… short at leaf %d, funding block %d): "
                    "ended %s, withdrew %d unsent records", consent_doc.id.hex()[:16],
                    lapse.request.hex()[:16], lapse.short_at, lapse.funding_block,
                    ", ".join(ended) or "no grant", len(gone))

    def _quality(self, doc: Document, body: QualityAttestation) -> None:
        assert self.quality is not None
        try:
            kept = self.quality.note(doc.signer_id, body, self._device_id)
        except KeyError:
            raise Refused(DocumentReason.OTHER_DEVICE, "the attestation does not name this "
                          "device") from None
        if kept:
            state = body.of(self._device_id)
            log.log(logging.WARNING if state.state in {"suspect", "faulty"} else logging.INFO,
                    "quality: %s says this sensor is %s %s (site %s)",
                    doc.signer_id.hex()[:16], state.state, ",".join(state.reasons), body.site)

    def _refused(self, reason: DocumentReason, detail: str) -> None:
        self.book.refuse(reason, save=not self._defer_save)
        # Each refusal is counted; a warning per reason at most every REFUSAL_LOG_MS (the
        # rest at DEBUG): junk on the policy topic must not flood the journal.
        now = self._clock.mono_ms()
        last = self._warned_ms.get(reason)
        quiet = last is not None and now - last < REFUSAL_LOG_MS
        if not quiet:
            self._warned_ms[reason] = now
        log.log(logging.DEBUG if quiet else logging.WARNING,
                "policy document refused (%s): %s%s", reason, detail,
                "" if quiet else "; further ones within a minute are only counted")

