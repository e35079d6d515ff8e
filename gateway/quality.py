"""Quality attestations at the gateway's document desk (docs/PROTOCOL.md §20).

A validator is a registered recipient (``POST /v1/recipients``): its Ed25519 key signs the
attestation and its X25519 key is the one the attested records must be sealed to. The
checks are :func:`protocol.quality.check_attestation`'s; this module supplies what the log
says of each named leaf (device, stream, wall time, and the recipients of the key epoch a
sealed record points to, and the consent it names for a derived stream), the logged
consents a derived leaf is read under, and the attestation already logged for the same
window slot.
"""

from __future__ import annotations

from gateway.store import MAX_STORED_INT, LogStore, LogTransaction, NewDocument
from protocol.contract import CONSENT, Consent
from protocol.documents import Document, parse_document
from protocol.errors import MalformedRecord
from protocol.quality import (
    QUALITY,
    LeafFacts,
    attestation_of,
    check_attestation,
    slot_ref,
)
from protocol.record import KeyEpoch, Sealed, Values
from protocol.signed import parse_signed_record


def check_quality(store: LogStore, tx: LogTransaction, doc: Document, now: int
                  ) -> NewDocument:
    """Check a verified quality attestation; return what to log. Raises RejectedDocument."""
    body = attestation_of(doc)
    box_key = next((r.sealing_key for r in store.recipients() if r.signing_key == doc.signer),
                   None)
    ref = slot_ref(body.site, body.window_start_ms)
    previous = tx.document_by_ref(doc.signer, QUALITY, ref)
    check_attestation(doc, box_key, lambda index: leaf_facts(store, index),
                      None if previous is None else previous.doc_id,
                      lambda consent_id: logged_consent(tx, consent_id))
    devices = tuple(s.device_id for s in body.sensors)
    return NewDocument(doc.id, doc.type, doc.signer, doc.raw, ref, 0, devices, now)


def leaf_facts(store: LogStore, index: int) -> LeafFacts | None:
    """What the log says of the reading record at leaf ``index`` (None: no such record)."""
    if not 0 <= index <= MAX_STORED_INT:  # an attestation's uint64 the log cannot hold
        return None
    leaf = store.leaf(index)
    if leaf is None or leaf.seq < 0:  # documents sit at negative seqs
        return None
    try:
        _, record = parse_signed_record(leaf.raw)
    except MalformedRecord:
        return None
    if isinstance(record.body, Values):
        return LeafFacts(leaf.device_id, leaf.stream, record.wall_ms, None)
    if not isinstance(record.body, Sealed):
        return None  # usage, gap, key epoch, rotation: not a reading
    epoch_seq = leaf.seq - record.body.key_delta
    found = store.device_records(leaf.device_id, epoch_seq - 1, 1)
    if not found or found[0].seq != epoch_seq:
        return None
    _, epoch = parse_signed_record(found[0].raw)
    if not isinstance(epoch.body, KeyEpoch):
        return None
    kids = frozenset(g.recipient_kid for g in epoch.body.grants_for(leaf.stream))
    return LeafFacts(leaf.device_id, leaf.stream, record.wall_ms, kids,
                     dict(epoch.body.consents).get(leaf.stream))


def logged_consent(tx: LogTransaction, consent_id: bytes) -> Consent | None:
    """The body of the consent logged as ``consent_id`` (None: no such consent)."""
    stored = tx.document(consent_id)
    if stored is None or stored.type != CONSENT:
        return None
    body = parse_document(stored.raw).body  # verified when it was logged
    return body if isinstance(body, Consent) else None
