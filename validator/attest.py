"""A window's verdict as a signed quality attestation (docs/PROTOCOL.md §20).

In the running role a sensor's name at its site is its device id in hex, so a verdict
maps onto the attestation's devices directly; ``leaves`` says which logged records (leaf
indices) each sensor's window was judged on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal

from protocol.documents import Document, sign_document
from protocol.keys import SigningKey
from protocol.quality import QualityAttestation, SensorAttestation
from protocol.record import Measurement
from validator.model import WindowVerdict

CONSENSUS_EXPONENT = -2  # hundredths: finer than any DHT22 reading (0.1)


def attestation_for(verdict: WindowVerdict, stream: str, field: str,
                    leaves: Mapping[str, Sequence[int]]) -> QualityAttestation:
    """The attestation of ``verdict`` (sensor names are device ids in hex).

    Raises ValueError if a sensor name is not a device id; MalformedRecord if the result
    breaks a cap of §20 (more than 64 leaves for a sensor).
    """
    sensors = []
    for v in verdict.sensors:
        device_id = bytes.fromhex(v.sensor)
        sensors.append(SensorAttestation(device_id, v.state, v.reasons,
                                         tuple(sorted(leaves.get(v.sensor, ())))))
    consensus = None
    if verdict.consensus is not None:
        scaled = Decimal(str(verdict.consensus)).scaleb(-CONSENSUS_EXPONENT)
        consensus = Measurement(int(scaled.to_integral_value()), CONSENSUS_EXPONENT, field)
    return QualityAttestation(
        site=verdict.site, stream=stream, field=field, window_start_ms=verdict.start_s * 1000,
        window_ms=verdict.window_s * 1000, consensus=consensus,
        sensors=tuple(sorted(sensors, key=lambda s: s.device_id)))


def sign_attestation(body: QualityAttestation, key: SigningKey, now_ms: int) -> Document:
    """The signed document (COSE_Sign1 in the §16.2 envelope)."""
    return sign_document(body, key, now_ms)
