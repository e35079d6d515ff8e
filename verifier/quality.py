"""The quality attestations that cover a record, for its proof bundle (PROTOCOL.md §20)."""

from __future__ import annotations

from protocol.bundle import MAX_ATTESTATIONS, AttestationProof
from protocol.documents import parse_document
from protocol.quality import QUALITY, QualityAttestation
from verifier.client import DocumentClient, LoggedRecord

PAGE = 1000


def covering_attestations(client: DocumentClient, logged: LoggedRecord, size: int
                          ) -> tuple[AttestationProof, ...]:
    """The quality attestations (PROTOCOL.md §20) in the tree of ``size`` leaves whose
    verdict on the record's device names its leaf, each with its inclusion proof. Which
    validators to believe is the reader's call: the report names each by its signer id."""
    found: list[AttestationProof] = []
    after = -1
    while len(found) < MAX_ATTESTATIONS:
        page = client.documents(QUALITY, after, PAGE)
        for doc in page:
            if doc.index < size and _names(doc.raw, logged):
                proof = tuple(client.inclusion_proof(doc.index, size))
                found.append(AttestationProof(doc.raw, doc.index, proof))
        if len(page) < PAGE or page[-1].index >= size:
            break
        after = page[-1].index
    return tuple(found[:MAX_ATTESTATIONS])


def _names(raw: bytes, logged: LoggedRecord) -> bool:
    body = parse_document(raw).body  # its signature is checked with the bundle
    if not isinstance(body, QualityAttestation):
        return False
    try:
        return logged.index in body.of(logged.device_id).leaves
    except KeyError:
        return False
