"""Generate tests/vectors/documents.json from fixed keys.

Run ``python tests/vectors/make_document_vectors.py`` to rewrite the file; the tests
regenerate it in memory and require byte equality with the committed copy.

The vectors are one story: a recipient requests climate temperature and humidity from two
devices at one reading a minute for a day; the owner of one device consents to temperature
only, at one reading every two minutes, for the first twelve hours; then revokes. Each
vector holds the signer's raw Ed25519 public key, the tagged COSE_Sign1 bytes, the payload
CBOR, the document id and the payload as JSON; the last one is the MQTT delivery of the
consent and the revocation to the device (PROTOCOL.md §17). ``lapse`` is §19.4: a second
consent of that owner carrying ``lapses_on_shortfall`` (key 8) and the gateway's signed
notice that ends it, embedding the consent's exact bytes.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from protocol import cose  # noqa: E402
from protocol.contract import Consent, DataRequest, Lapse, Revocation, Terms  # noqa: E402
from protocol.delivery import PolicyDelivery, PolicySync, policy_topic, sync_topic  # noqa: E402
from protocol.documents import Document, sign_document  # noqa: E402
from protocol.keys import OwnerKey, RecipientKey, Secret, SigningKey, device_id_for  # noqa: E402

OUT = Path(__file__).with_name("documents.json")
T0_MS = 1_764_403_200_000  # 2025-11-29T08:00:00Z
HOUR_MS = 3_600_000


def fixed_bytes(label: str, n: int = 32) -> bytes:
    return hashlib.sha256(f"edgeproof test vector {label}".encode()).digest()[:n]


def body_json(doc: Document) -> dict[str, Any]:
    body = doc.body
    if isinstance(body, DataRequest | Consent):
        t = body.terms
        out: dict[str, Any] = {
            "recipient": body.recipient.hex(), "devices": [d.hex() for d in body.devices],
            "streams": {s: list(f) for s, f in t.streams}, "min_interval_s": t.min_interval_s,
            "not_before_ms": t.not_before_ms, "not_after_ms": t.not_after_ms}
        if isinstance(body, DataRequest):
            out.update(owners=[o.hex() for o in body.owners], purpose=body.purpose,
                       reward_micro_per_hour=body.reward_micro_per_hour)
        else:
            out["request"] = body.request.hex()
            if body.lapses_on_shortfall:
                out["lapses_on_shortfall"] = True
        return out
    if isinstance(body, Lapse):
        return {"consent": body.consent.hex(), "request": body.request.hex(),
                "short_at": body.short_at, "funding_block": body.funding_block,
                "chain_id": body.chain_id, "distributor": body.distributor.hex()}
    assert isinstance(body, Revocation)
    return {"consent": body.consent.hex(), "counter": body.counter, "reason": body.reason}


def vector(description: str, doc: Document) -> dict[str, Any]:
    return {
        "description": description,
        "signer_public_key": doc.signer.hex(),
        "signer_id": doc.signer_id.hex(),
        "cose_sign1": doc.raw.hex(),
        "payload_cbor": cose.decode_sign1(doc.raw).payload.hex(),
        "document_id": doc.id.hex(),
        "payload": {"version": 1, "type": doc.type, "signer": doc.signer.hex(),
                    "issued_ms": doc.issued_ms, "body": body_json(doc)},
    }


def build() -> dict[str, Any]:
    buyer_signing = SigningKey(Secret(fixed_bytes("recipient signing acme")))
    buyer_sealing = RecipientKey(Secret(fixed_bytes("recipient alice")))
    owner = OwnerKey(SigningKey(Secret(fixed_bytes("owner signing olga"))),
                     RecipientKey(Secret(fixed_bytes("owner sealing olga"))))
    device = device_id_for(SigningKey(Secret(fixed_bytes("device seed"))).public_key)
    other = device_id_for(SigningKey(Secret(fixed_bytes("device seed other"))).public_key)
    request = sign_document(DataRequest(
        recipient=buyer_sealing.public_key, devices=tuple(sorted((device, other))), owners=(),
        terms=Terms((("climate", ("%RH", "Cel")),), 60, T0_MS, T0_MS + 24 * HOUR_MS),
        purpose="Indoor temperature study", reward_micro_per_hour=20_000),
        buyer_signing, T0_MS - HOUR_MS)
    consent = sign_document(Consent(
        request=request.id, recipient=buyer_sealing.public_key, devices=(device,),
        terms=Terms((("climate", ("Cel",)),), 120, T0_MS, T0_MS + 12 * HOUR_MS)),
        owner.signing, T0_MS - 30 * 60_000)
    revocation = sign_document(Revocation(consent=consent.id, counter=1, reason="owner"),
                               owner.signing, T0_MS + 2 * HOUR_MS)
    delivery = PolicyDelivery(((7, consent.raw), (9, revocation.raw)), 12, True)
    gateway = SigningKey(Secret(fixed_bytes("gateway receipts")))
    lapsable = sign_document(Consent(
        request=request.id, recipient=buyer_sealing.public_key, devices=(device,),
        terms=Terms((("climate", ("Cel",)),), 120, T0_MS, T0_MS + 12 * HOUR_MS),
        lapses_on_shortfall=True), owner.signing, T0_MS + 3 * HOUR_MS)
    notice = sign_document(Lapse(lapsable.raw, request.id, short_at=41, funding_block=17,
                                 chain_id=1337, distributor=fixed_bytes("distributor", 20)),
                           gateway, T0_MS + 5 * HOUR_MS)
    return {
        "owner": {"signing_public_key": owner.public_key.hex(),
                  "sealing_public_key": owner.sealing_public_key.hex(),
                  "owner_id": owner.owner_id.hex()},
        "documents": [
            vector("request: climate Cel and %RH of two devices, one a minute, one day",
                   request),
            vector("consent, narrower: one device, Cel only, one per two minutes, 12 hours",
                   consent),
            vector("revocation of that consent, the owner's first (counter 1)", revocation),
        ],
        "delivery": {"device_id": device.hex(), "topic": policy_topic(device),
                     "payload_cbor": delivery.to_cbor().hex(),
                     "sync_topic": sync_topic(device),
                     "sync_payload_cbor": PolicySync(7).to_cbor().hex()},
        "lapse": {"gateway_public_key": gateway.public_key.hex(),
                  "consent": vector("consent that lapses on shortfall (key 8 = true)",
                                    lapsable),
                  "notice": vector("the gateway's lapse notice: request short at leaf 41 "
                                   "with the funding of block 17", notice)},
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
