"""Generate tests/vectors/quality.json from fixed keys.

Run ``python tests/vectors/make_quality_vectors.py`` to rewrite the file; the tests
regenerate it in memory and require byte equality with the committed copy.

One vector (PROTOCOL.md §20): a validator's attestation of one ten-minute window of a
site of three DHT22s measuring temperature ("climate", "Cel"), one of them faulty for a
bias, each verdict naming the log indices of the records judged.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from protocol import cose  # noqa: E402
from protocol.documents import Document, sign_document  # noqa: E402
from protocol.keys import Secret, SigningKey, device_id_for  # noqa: E402
from protocol.quality import QualityAttestation, SensorAttestation  # noqa: E402
from protocol.record import Measurement  # noqa: E402
from tests.vectors.make_document_vectors import T0_MS, fixed_bytes  # noqa: E402

OUT = Path(__file__).with_name("quality.json")


def validator_key() -> SigningKey:
    return SigningKey(Secret(fixed_bytes("validator signing hub")))


def devices() -> list[bytes]:
    return sorted(device_id_for(SigningKey(Secret(fixed_bytes(f"device seed {n}"))).public_key)
                  for n in ("a", "b", "c"))


def attestation() -> QualityAttestation:
    a, b, c = devices()
    return QualityAttestation(
        site="living-room", stream="climate", field="Cel", window_start_ms=T0_MS,
        window_ms=600_000, consensus=Measurement(2134, -2, "Cel"),
        sensors=(SensorAttestation(a, "healthy", (), (100, 103, 106)),
                 SensorAttestation(b, "faulty", ("bias",), (101, 104, 107)),
                 SensorAttestation(c, "suspect", ("noise", "spike"), (102, 105))))


def signed() -> Document:
    return sign_document(attestation(), validator_key(), T0_MS + 660_000)


def build() -> dict[str, Any]:
    doc = signed()
    body = attestation()
    return {
        "description": "quality attestation: living-room, climate/Cel, one 10-minute window, "
                       "one sensor faulty (bias), one suspect (noise, spike)",
        "signer_public_key": doc.signer.hex(),
        "signer_id": doc.signer_id.hex(),
        "cose_sign1": doc.raw.hex(),
        "payload_cbor": cose.decode_sign1(doc.raw).payload.hex(),
        "document_id": doc.id.hex(),
        "body": {"site": body.site, "stream": body.stream, "field": body.field,
                 "window_start_ms": body.window_start_ms, "window_ms": body.window_ms,
                 "consensus": [2134, -2, "Cel"],
                 "sensors": [{"device_id": s.device_id.hex(), "state": s.state,
                              "reasons": list(s.reasons), "leaves": list(s.leaves)}
                             for s in body.sensors]},
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
