"""What ``edgeproof-owner`` does: find requests, sign consents and revocations, submit them.

Every document fetched from the gateway is verified before it is used (its signature under
its own signer key, and for this owner's documents under this owner's key); a consent is
checked here against its request with the same rules the gateway and the devices apply, so
a mistake is reported before anything is signed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from protocol.contract import (
    CONSENT,
    REQUEST,
    REVOCATION,
    Consent,
    DataRequest,
    Revocation,
    Streams,
    Terms,
    body_of,
    check_consent,
    owner_id,
)
from protocol.documents import Document, sign_document, verify_document
from protocol.errors import ConfigError
from protocol.keys import OwnerKey
from verifier.client import DocumentClient
from verifier.documents import describe, parse_hex


@dataclass(frozen=True)
class Narrowing:
    """What the owner restricts (empty/None: as requested)."""

    devices: tuple[bytes, ...]
    streams: Streams
    min_interval_s: int | None
    not_before_ms: int | None
    not_after_ms: int | None
    lapses_on_shortfall: bool = False  # the gateway may end it if funding runs short (§19.4)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _targets_owner(request: DataRequest, key: OwnerKey, mine: set[bytes]) -> bool:
    return owner_id(key.public_key) in request.owners or bool(mine & set(request.devices))


def requests_for(client: DocumentClient, key: OwnerKey, *,
                 everything: bool) -> list[dict[str, object]]:
    """Logged requests naming this owner or its devices (or all), verified and described."""
    mine = {d for d, _, _ in client.owner_devices(key.public_key)}
    out = []
    for logged in client.all_documents(REQUEST):
        doc = verify_document(logged.raw, expected_type=REQUEST)
        if everything or _targets_owner(body_of(doc, DataRequest), key, mine):
            out.append(describe(doc, logged.index))
    return out


def _find(client: DocumentClient, doc_id: str, doc_type: str) -> Document:
    wanted = parse_hex(doc_id, 32, f"{doc_type} id")
    for logged in client.all_documents(doc_type):
        doc = verify_document(logged.raw, expected_type=doc_type)
        if doc.id == wanted:
            return doc
    raise ConfigError(f"no logged {doc_type} {doc_id}")


def consent(client: DocumentClient, key: OwnerKey, request_id: str,
            wanted: Narrowing) -> dict[str, object]:
    """Sign a consent to the request (narrowed as asked), check it, submit it."""
    request_doc = _find(client, request_id, REQUEST)
    request = body_of(request_doc, DataRequest)
    mine = {d for d, _, _ in client.owner_devices(key.public_key)}
    targeted = mine if owner_id(key.public_key) in request.owners else \
        mine & set(request.devices)
    devices = wanted.devices or tuple(sorted(targeted))
    if not devices:
        raise ConfigError("the request targets none of this owner's devices")
    asked = request.terms
    terms = Terms(wanted.streams or asked.streams,
                  asked.min_interval_s if wanted.min_interval_s is None
                  else wanted.min_interval_s,
                  asked.not_before_ms if wanted.not_before_ms is None else wanted.not_before_ms,
                  asked.not_after_ms if wanted.not_after_ms is None else wanted.not_after_ms)
    doc = sign_document(Consent(request_doc.id, request.recipient, devices, terms,
                                wanted.lapses_on_shortfall), key.signing, _now_ms())
    check_consent(doc, request_doc, _now_ms())  # the gateway's and the devices' rules
    return _submitted(client, doc)


def revoke(client: DocumentClient, key: OwnerKey, consent_id: str,
           reason: str) -> dict[str, object]:
    """Sign a revocation of one of this owner's consents with the next counter; submit it."""
    consent_doc = _find(client, consent_id, CONSENT)
    body_of(consent_doc, Consent)
    if consent_doc.signer != key.public_key:
        raise ConfigError("that consent was signed by another owner")
    last = 0
    for logged in client.all_documents(REVOCATION):
        doc = verify_document(logged.raw, expected_type=REVOCATION)
        if doc.signer == key.public_key:
            last = max(last, body_of(doc, Revocation).counter)
    doc = sign_document(Revocation(consent_doc.id, last + 1, reason), key.signing, _now_ms())
    return _submitted(client, doc)


def _submitted(client: DocumentClient, doc: Document) -> dict[str, object]:
    index, duplicate = client.submit(doc.raw)
    info = describe(doc, index)
    info["duplicate"] = duplicate
    return info
