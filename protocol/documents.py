"""Signed documents, every type this protocol defines registered: what decoders import.

The envelope, the signing and the decoding are :mod:`protocol.document_envelope`'s
(docs/PROTOCOL.md §16); the body types register themselves there when their modules are
imported.
This module imports each of them, :mod:`protocol.contract` (request, consent, revocation,
lapse), :mod:`protocol.payout_notice` and :mod:`protocol.quality`, so that whoever decodes
through it finds every type; the body modules import the envelope, never this module. Types
defined outside ``protocol`` (:mod:`rewards.documents`) register the same way when imported.
"""

from __future__ import annotations

# Imported for what importing does: each module registers its body types.
from protocol import contract, payout_notice, quality  # noqa: F401
from protocol.document_envelope import (
    MAX_DOCUMENT_BYTES,
    Body,
    Document,
    document_hash,
    parse_document,
    sign_document,
    verify_document,
)

__all__ = [
    "MAX_DOCUMENT_BYTES",
    "Body",
    "Document",
    "document_hash",
    "parse_document",
    "sign_document",
    "verify_document",
]
