"""Lapse notices: the gateway ends the consents of a short request whose owners allowed it.

When a consent-gated epoch (PROTOCOL.md §19.4) finds a request short (its funding at the
epoch's ``funding_block`` does not cover what its consents earned up to leaf ``short_at``),
every consent to that request that carries the owner-signed ``lapses_on_shortfall`` term
and is still in force gets ONE lapse notice: signed with the gateway key (the key devices
pin for receipts), embedding the consent's signed bytes, logged as a leaf under the
consent's devices (so the courier delivers it to them, §17). A consent without the term
is left alone (counted ``no_term``): the gateway can never end a consent its owner did not
allow to lapse. In the gating rule a notice's leaf acts as a revocation leaf, so the next
epoch pays that consent nothing after it.
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from dataclasses import dataclass

from gateway.contracts import Logged
from gateway.store import LogStore, NewDocument, StoredDocument
from protocol.contract import Consent, Lapse
from protocol.documents import parse_document, sign_document
from protocol.keys import SigningKey

PAGE = 1000


@dataclass(frozen=True)
class Shortfall:
    """What an epoch found: request id -> first unfunded leaf, at ``funding_block``."""

    short_at: dict[bytes, int]
    funding_block: int
    chain_id: int
    distributor: bytes


@dataclass
class LapseOutcome:
    """The notices logged by one pass, and the consents of short requests left alone."""

    logged: list[Logged]
    no_term: int = 0


def issue_lapses(store: LogStore, signer: SigningKey, ended: Set[bytes],
                 shortfall: Shortfall, *, size: int, now_ms: int) -> LapseOutcome:
    """Sign and log a notice for each lapsable consent of a short request below ``size``
    that no revocation or notice ended yet (``ended``: their ids). Raises StorageError."""
    out = LapseOutcome([])
    if not shortfall.short_at:
        return out
    for stored in _documents(store, "consent", size):
        doc = parse_document(stored.raw)
        consent = doc.body
        assert isinstance(consent, Consent)
        short_at = shortfall.short_at.get(consent.request)
        if short_at is None or doc.id in ended:
            continue
        if not consent.lapses_on_shortfall:
            out.no_term += 1
            continue
        notice = sign_document(Lapse(doc.raw, consent.request, short_at,
                                     shortfall.funding_block, shortfall.chain_id,
                                     shortfall.distributor), signer, now_ms)
        with store.transaction() as tx:
            if tx.document_by_ref(signer.public_key, "lapse", doc.id) is not None:
                continue  # one notice per consent, whatever checkpoint it was found at
            index = tx.append_document(NewDocument(notice.id, notice.type, notice.signer,
                                                   notice.raw, doc.id, 0, consent.devices,
                                                   now_ms))
        out.logged.append(Logged(StoredDocument(index, notice.id, notice.type, notice.signer,
                                                notice.raw, doc.id, 0, now_ms), False,
                                 consent.devices))
    return out


def _documents(store: LogStore, doc_type: str, size: int) -> Iterable[StoredDocument]:
    after = -1
    while True:
        page = store.documents(doc_type, after, PAGE)
        yield from (stored for stored in page if stored.index < size)
        if len(page) < PAGE:
            return
        after = page[-1].index
