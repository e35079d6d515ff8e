"""Quality attestations (PROTOCOL.md §20): the bytes, and the gateway's rules for bad input
(unregistered validator, leaves that do not exist or that it cannot read, records outside
the window, conflicting attestations for one window, oversized) each refused with a reason."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cbor2
import pytest
from pycose.headers import KID
from pycose.keys.curves import Ed25519
from pycose.keys.okp import OKPKey

from protocol import cbor
from protocol.contract import Consent, Terms
from protocol.documents import parse_document, sign_document, verify_document
from protocol.errors import MalformedRecord, RejectedDocument
from protocol.grants import derived_stream
from protocol.keys import recipient_kid
from protocol.quality import (
    LeafFacts,
    QualityAttestation,
    SensorAttestation,
    check_attestation,
)
from protocol.reasons import DocumentReason
from tests.test_documents import _pycose
from tests.vectors import make_quality_vectors as vectors

VECTORS = Path(__file__).parent / "vectors" / "quality.json"
BOX = b"\x07" * 32  # the validator's registered X25519 key
BODY = vectors.attestation()
DOC = vectors.signed()


def facts_for(body: QualityAttestation, readable: bytes = BOX):
    table = {leaf: LeafFacts(s.device_id, body.stream, body.window_start_ms + 1000 * leaf,
                             frozenset({recipient_kid(readable)}))
             for s in body.sensors for leaf in s.leaves}
    return table.get


nothing_logged = None


def test_committed_quality_vector_matches_generator_byte_for_byte() -> None:
    assert VECTORS.read_text() == vectors.render()


def test_quality_vector_verifies_with_an_independent_cose_library() -> None:
    vec = json.loads(VECTORS.read_text())
    message = _pycose(bytes.fromhex(vec["cose_sign1"]))
    message.key = OKPKey(crv=Ed25519, x=bytes.fromhex(vec["signer_public_key"]))
    assert message.verify_signature()
    assert message.phdr[KID] == bytes.fromhex(vec["signer_id"])
    payload = cbor2.loads(message.payload)
    assert payload[2] == "quality"
    assert payload[5][7][1][1:3] == [2, 1]  # the second sensor: faulty (2), bias (bit 0)


def test_attestation_round_trips_through_sign_and_verify() -> None:
    doc = verify_document(DOC.raw, expected_signer=vectors.validator_key().public_key,
                          expected_type="quality")
    assert doc.body == BODY


def test_well_formed_attestation_from_a_registered_validator_is_accepted() -> None:
    assert check_attestation(DOC, BOX, facts_for(BODY), nothing_logged) == BODY


def test_attestation_from_an_unregistered_validator_is_rejected() -> None:
    with pytest.raises(RejectedDocument, match="unknown_signer"):
        check_attestation(DOC, None, facts_for(BODY), nothing_logged)


def test_attestation_naming_a_leaf_that_does_not_exist_is_rejected() -> None:
    known = facts_for(BODY)
    with pytest.raises(RejectedDocument, match="unknown_leaf"):
        check_attestation(DOC, BOX, lambda i: None if i == 104 else known(i), nothing_logged)


def test_attestation_naming_another_devices_record_is_rejected() -> None:
    known = facts_for(BODY)

    def swapped(index: int) -> LeafFacts | None:
        facts = known(index)
        return None if facts is None else replace(facts, device_id=b"\x00" * 16)
    with pytest.raises(RejectedDocument, match="unknown_leaf"):
        check_attestation(DOC, BOX, swapped, nothing_logged)


def test_attestation_naming_a_record_the_validator_cannot_read_is_rejected() -> None:
    with pytest.raises(RejectedDocument, match="not_readable"):
        check_attestation(DOC, BOX, facts_for(BODY, readable=b"\x09" * 32), nothing_logged)


def test_attestation_naming_plaintext_records_is_accepted_anyone_reads_them() -> None:
    known = facts_for(BODY)

    def plain(index: int) -> LeafFacts | None:
        facts = known(index)
        return None if facts is None else replace(facts, sealed_to=None)
    assert check_attestation(DOC, BOX, plain, nothing_logged) == BODY


def test_attestation_naming_a_record_outside_its_window_is_rejected() -> None:
    known = facts_for(BODY)

    def late(index: int) -> LeafFacts | None:
        facts = known(index)
        return None if facts is None else replace(facts, wall_ms=BODY.window_end_ms)
    with pytest.raises(RejectedDocument, match="outside_window"):
        check_attestation(DOC, BOX, late, nothing_logged)


CONSENT_ID = b"\x2c" * 32


def consent_to(recipient: bytes = BOX, devices: tuple[bytes, ...] | None = None,
               stream: str = "climate", not_after_ms: int | None = None) -> Consent:
    return Consent(b"\x2d" * 32, recipient,
                   devices or tuple(s.device_id for s in BODY.sensors),
                   Terms(((stream, ("Cel",)),), 60, 0, not_after_ms or BODY.window_end_ms))


def derived(consent_id: bytes = CONSENT_ID, stream: str | None = None):
    """Every leaf a derived record of the attestation's stream under ``consent_id``."""
    known = facts_for(BODY)

    def facts(index: int) -> LeafFacts | None:
        found = known(index)
        return None if found is None else replace(
            found, stream=stream or derived_stream(BODY.stream, consent_id), consent=consent_id)
    return facts


def test_derived_records_under_a_consent_to_the_validator_in_force_are_accepted() -> None:
    logged = {CONSENT_ID: consent_to()}
    assert check_attestation(DOC, BOX, derived(), nothing_logged, logged.get) == BODY


def test_derived_records_under_a_consent_not_logged_or_to_another_recipient_are_not_readable(
        ) -> None:
    with pytest.raises(RejectedDocument, match="not_readable"):
        check_attestation(DOC, BOX, derived(), nothing_logged, {}.get)
    other = {CONSENT_ID: consent_to(recipient=b"\x09" * 32)}
    with pytest.raises(RejectedDocument, match="not_readable"):
        check_attestation(DOC, BOX, derived(), nothing_logged, other.get)


def test_derived_records_outside_the_consents_devices_stream_or_period_are_not_readable(
        ) -> None:
    for consent in (consent_to(devices=(b"\x00" * 16,)), consent_to(stream="power"),
                    consent_to(not_after_ms=BODY.window_start_ms + 1)):
        with pytest.raises(RejectedDocument, match="not_readable"):
            check_attestation(DOC, BOX, derived(), nothing_logged, {CONSENT_ID: consent}.get)


def test_derived_records_of_another_base_stream_or_not_named_by_their_epoch_are_unknown(
        ) -> None:
    logged = {CONSENT_ID: consent_to()}
    with pytest.raises(RejectedDocument, match="unknown_leaf"):  # power~<tag>: not climate
        check_attestation(DOC, BOX, derived(stream=derived_stream("power", CONSENT_ID)),
                          nothing_logged, logged.get)
    with pytest.raises(RejectedDocument, match="unknown_leaf"):  # tag of another consent
        check_attestation(DOC, BOX, derived(stream=derived_stream("climate", b"\x01" * 32)),
                          nothing_logged, logged.get)


def test_second_different_attestation_for_one_window_is_conflicting_and_same_is_duplicate(
        ) -> None:
    with pytest.raises(RejectedDocument, match="conflicting"):
        check_attestation(DOC, BOX, facts_for(BODY), b"\x01" * 32)
    with pytest.raises(RejectedDocument, match="duplicate"):
        check_attestation(DOC, BOX, facts_for(BODY), DOC.id)


def test_oversized_attestation_cannot_be_signed_or_parsed() -> None:
    sensors = tuple(SensorAttestation(bytes([i]) * 16, "healthy", (),
                                      tuple(range(i * 100, i * 100 + 64))) for i in range(20))
    big = replace(BODY, sensors=sensors)
    with pytest.raises(MalformedRecord, match="too_large"):
        sign_document(big, vectors.validator_key(), 0)
    with pytest.raises(MalformedRecord, match="too_large"):
        parse_document(b"\xd2" + b"\x00" * 9000)


@pytest.mark.parametrize("change", [
    {"sensors": BODY.sensors[:2]},
    {"sensors": tuple(reversed(BODY.sensors))},
    {"window_ms": 0},
    {"site": ""},
])
def test_malformed_attestation_bodies_are_refused(change: dict[str, object]) -> None:
    with pytest.raises(MalformedRecord):
        replace(BODY, **change)  # type: ignore[arg-type]


@pytest.mark.parametrize("verdict", [
    [b"\x01" * 16, 4, 0, b""],  # unknown state
    [b"\x01" * 16, 0, 1 << 7, b""],  # unknown reason bit
    [b"\x01" * 16, 0, 0, b"\x00" * 7],  # leaves not 8-byte aligned
    [b"\x01" * 16, 0, 0, (2).to_bytes(8, "big") + (1).to_bytes(8, "big")],  # not increasing
    [b"\x01" * 15, 0, 0, b""],  # short device id
])
def test_malformed_verdicts_are_refused(verdict: list[object]) -> None:
    with pytest.raises(MalformedRecord):
        SensorAttestation.from_cbor_value(verdict)  # type: ignore[arg-type]


def test_same_leaf_attested_for_two_sensors_is_refused() -> None:
    a, b, c = BODY.sensors
    with pytest.raises(MalformedRecord, match="one sensor"):
        replace(BODY, sensors=(a, replace(b, leaves=a.leaves), c))


def test_attestation_body_bytes_decode_with_protocol_cbor_limits() -> None:
    payload = cbor.decode(bytes.fromhex(json.loads(VECTORS.read_text())["payload_cbor"]))
    assert isinstance(payload, dict)
    assert QualityAttestation.from_cbor_value(payload[5]) == BODY
    assert DocumentReason.CONFLICTING.value == "conflicting"
