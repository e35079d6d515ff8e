"""Generate tests/vectors/records.json from fixed keys and fixed randomness.

Run ``python tests/vectors/make_record_vectors.py`` to rewrite the file; the tests
regenerate it in memory and require byte equality with the committed copy.

Every vector holds the device's raw Ed25519 public key, the tagged COSE_Sign1 bytes, the
decoded payload as JSON, and for sealed values the recipient's X25519 secret key, the
key-epoch record the values depend on, and the plaintext: enough to verify and decrypt
with docs/PROTOCOL.md alone.
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

from protocol.grants import AccessGrant, epoch_recipients, granted_values  # noqa: E402
from protocol.keys import RecipientKey, Secret, SigningKey, device_id_for  # noqa: E402
from protocol.record import (  # noqa: E402
    GENESIS_PREV,
    Gap,
    KeyEpoch,
    KeyRotation,
    Measurement,
    Record,
    Sealed,
    Usage,
    Values,
)
from protocol.sealing import new_key_epoch, seal_values  # noqa: E402
from protocol.signed import SignedRecord, sign_record  # noqa: E402

OUT = Path(__file__).with_name("records.json")
WALL_MS = 1_764_403_200_000  # 2025-11-29T08:00:00Z


def fixed_bytes(label: str, n: int = 32) -> bytes:
    return hashlib.sha256(f"edgeproof test vector {label}".encode()).digest()[:n]


class CountingRandom:
    """Deterministic stand-in for os.urandom: SHA-256 of a label and a counter."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.count = 0

    def __call__(self, n: int) -> bytes:
        self.count += 1
        return fixed_bytes(f"{self.label}/{self.count}", n)


def body_json(record: Record) -> dict[str, Any]:
    body = record.body
    if isinstance(body, Values):
        return {"type": "values", "values": [[m.mantissa, m.exponent, m.unit]
                                             for m in body.values]}
    if isinstance(body, Sealed):
        return {"type": "sealed", "key_delta": body.key_delta,
                "ciphertext": body.ciphertext.hex()}
    if isinstance(body, Usage):
        return {"type": "usage", "start_mono_ms": body.start_mono_ms,
                "end_mono_ms": body.end_mono_ms, "usage_ms": body.usage_ms,
                "rate_micro_per_hour": body.rate_micro_per_hour,
                "credit_micro": body.credit_micro}
    if isinstance(body, Gap):
        return {"type": "gap", "first_seq": body.first_seq, "last_seq": body.last_seq,
                "reason": body.reason}
    if isinstance(body, KeyEpoch):
        out = {"type": "key_epoch", "ephemeral_public": body.ephemeral_public.hex(),
               "grants": {stream: [[g.recipient_kid.hex(), g.wrapped_key.hex()] for g in gs]
                          for stream, gs in body.grants}}
        if body.consents:
            out["consents"] = {stream: h.hex() for stream, h in body.consents}
        return out
    assert isinstance(body, KeyRotation)
    return {"type": "key_rotation", "new_public_key": body.new_public_key.hex()}


def payload_json(record: Record) -> dict[str, Any]:
    return {"version": 1, "boot": record.boot, "seq": record.seq, "prev": record.prev.hex(),
            "wall_ms": record.wall_ms, "clock_synced": record.clock_synced,
            "mono_ms": record.mono_ms, "stream": record.stream, "body": body_json(record)}


def vector(description: str, key: SigningKey, signed: SignedRecord,
           **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "device_public_key": key.public_key.hex(),
        "device_id": signed.device_id.hex(),
        "cose_sign1": signed.raw.hex(),
        "payload_cbor": signed.record.to_cbor().hex(),
        "payload": payload_json(signed.record),
        **extra,
    }


def build() -> list[dict[str, Any]]:
    key = SigningKey(Secret(fixed_bytes("device seed")))
    device_id = device_id_for(key.public_key)
    alice = RecipientKey(Secret(fixed_bytes("recipient alice")))
    bob = RecipientKey(Secret(fixed_bytes("recipient bob")))
    vectors = []

    def make(seq: int, prev: bytes, stream: str, body: Any, synced: bool = True) -> Record:
        return Record(boot=3, seq=seq, prev=prev, wall_ms=WALL_MS + seq * 1000,
                      clock_synced=synced, mono_ms=120_000 + seq * 1000, stream=stream,
                      body=body)

    plain = sign_record(make(0, GENESIS_PREV, "cpu",
                             Values((Measurement(473, -1, "Cel"),))), device_id, key)
    vectors.append(vector("plaintext CPU temperature, first record of the device", key, plain))

    epoch_body, epoch_keys = new_key_epoch(
        device_id, 1, {"climate": [alice.public_key], "presence": [alice.public_key,
                                                                  bob.public_key]},
        CountingRandom("epoch"))
    epoch = sign_record(make(1, plain.hash, "keys", epoch_body), device_id, key)
    vectors.append(vector("key epoch: climate for alice, presence for alice and bob",
                          key, epoch))

    dht = [Measurement(214, -1, "Cel"), Measurement(553, -1, "%RH")]
    header = make(2, epoch.hash, "climate", Values(tuple(dht)))
    sealed = sign_record(make(2, epoch.hash, "climate",
                              seal_values(device_id, header, epoch_keys, dht)), device_id, key)
    vectors.append(vector(
        "DHT22 reading sealed for alice (bob holds no key for climate)", key, sealed,
        recipient_secret_key=alice.secret.value.hex(),
        recipient_public_key=alice.public_key.hex(),
        key_epoch_cose_sign1=epoch.raw.hex(),
        plaintext=[[m.mantissa, m.exponent, m.unit] for m in dht]))

    usage = sign_record(make(3, sealed.hash, "usage", Usage(60_000, 3_660_000, 3_540_000,
                                                            250_000)), device_id, key)
    vectors.append(vector("TV usage: 59 minutes at 0.25 credits per hour", key, usage))

    gap = sign_record(make(9, fixed_bytes("record 8"), "gap", Gap(4, 8, "outbox_full"),
                           synced=False), device_id, key)
    vectors.append(vector("declared gap of records 4..8, clock not synced", key, gap))

    next_key = SigningKey(Secret(fixed_bytes("device seed 2")))
    rotation = sign_record(make(10, gap.hash, "rotation", KeyRotation(next_key.public_key)),
                           device_id, key)
    vectors.append(vector("key rotation announced with the current key", key, rotation))
    vectors += granted_vectors(device_id, next_key, rotation.hash, make)
    return vectors


def granted_vectors(device_id: bytes, key: SigningKey, prev: bytes, make: Any
                    ) -> list[dict[str, Any]]:
    """A key epoch applying a consent (PROTOCOL.md §5.5) and the derived record it seals."""
    owner = RecipientKey(Secret(fixed_bytes("owner sealing")))
    company = RecipientKey(Secret(fixed_bytes("recipient company")))
    consent_id = fixed_bytes("consent document")
    grant = AccessGrant(consent_id, company.public_key, "climate", ("Cel",), 60_000,
                        WALL_MS, WALL_MS + 86_400_000)
    recipients, consents = epoch_recipients({"climate": (owner.public_key,)}, (grant,))
    epoch_body, epoch_keys = new_key_epoch(device_id, 11, recipients,
                                           CountingRandom("granted epoch"), consents)
    epoch = sign_record(make(11, prev, "keys", epoch_body), device_id, key)
    dht = [Measurement(214, -1, "Cel"), Measurement(553, -1, "%RH")]
    granted = list(granted_values(dht, grant.fields))
    header = make(13, fixed_bytes("record 12"), grant.derived_stream, Values(tuple(granted)))
    derived = sign_record(header.with_body(seal_values(device_id, header, epoch_keys,
                                                       granted)), device_id, key)
    return [
        vector("key epoch applying consent H(consent document): climate for the owner, "
               "its derived stream for the company", key, epoch),
        vector("derived record: the temperature only of a DHT22 reading, sealed for the "
               "company (record 12 is the full reading, sealed for the owner)", key, derived,
               recipient_secret_key=company.secret.value.hex(),
               recipient_public_key=company.public_key.hex(),
               key_epoch_cose_sign1=epoch.raw.hex(),
               plaintext=[[m.mantissa, m.exponent, m.unit] for m in granted]),
    ]


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
