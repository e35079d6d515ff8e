"""Signed documents (requests, consents, revocations), their rules and their delivery."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cbor2
import pytest
from pycose.headers import KID
from pycose.keys import OKPKey
from pycose.keys.curves import Ed25519
from pycose.messages import Sign1Message

from protocol import cbor, cose
from protocol.batch import Batch
from protocol.contract import (
    Consent,
    DataRequest,
    Lapse,
    Revocation,
    Terms,
    check_consent,
    check_lapse,
    check_owner,
    check_revocation,
    owner_id,
)
from protocol.delivery import (
    MAX_DELIVERY_BYTES,
    PolicyDelivery,
    PolicySync,
    device_id_from_sync_topic,
    pack_deliveries,
    sync_topic,
)
from protocol.documents import (
    MAX_DOCUMENT_BYTES,
    Document,
    parse_document,
    sign_document,
    verify_document,
)
from protocol.errors import KeyFileError, MalformedRecord, RejectedDocument, VerificationError
from protocol.keys import (
    OwnerKey,
    RecipientKey,
    Secret,
    SigningKey,
    load_owner_key,
    save_owner_key,
    signer_id,
)
from protocol.reasons import DocumentReason
from protocol.receipt import Outcome, Receipt, Status
from protocol.record import GENESIS_PREV, Measurement, Record, Values
from protocol.signed import sign_record
from tests.vectors import make_document_vectors
from verifier.cli import main as verify_main

VECTORS = Path(__file__).parent / "vectors" / "documents.json"
T0 = make_document_vectors.T0_MS
HOUR = make_document_vectors.HOUR_MS
DEV_A, DEV_B = bytes(range(16)), bytes(range(16, 32))


def _key(label: str) -> SigningKey:
    return SigningKey(Secret(make_document_vectors.fixed_bytes(label)))


BUYER, OWNER, OTHER_OWNER, GATEWAY = _key("b"), _key("o"), _key("o2"), _key("gw")
SEAL = RecipientKey(Secret(make_document_vectors.fixed_bytes("seal"))).public_key


def _request(**kw: object) -> Document:
    fields: dict[str, object] = dict(
        recipient=SEAL, devices=(DEV_A, DEV_B), owners=(),
        terms=Terms((("climate", ("%RH", "Cel")),), 60, T0, T0 + 24 * HOUR),
        purpose="study", reward_micro_per_hour=10)
    fields.update(kw)
    return sign_document(DataRequest(**fields), BUYER, T0)  # type: ignore[arg-type]


def _consent(request: Document, key: SigningKey = OWNER, **kw: object) -> Document:
    fields: dict[str, object] = dict(
        request=request.id, recipient=SEAL, devices=(DEV_A,),
        terms=Terms((("climate", ("Cel",)),), 60, T0, T0 + 12 * HOUR))
    fields.update(kw)
    return sign_document(Consent(**fields), key, T0)  # type: ignore[arg-type]


def _pycose(raw: bytes) -> Sign1Message:
    tagged = cbor2.loads(raw)
    protected, unprotected, payload, signature = tagged.value
    return Sign1Message.from_cose_obj([protected, dict(unprotected), payload, signature], True)


# --- vectors ------------------------------------------------------------------------------


def test_committed_document_vectors_match_generator_byte_for_byte() -> None:
    assert VECTORS.read_text() == make_document_vectors.render()


def test_every_document_vector_verifies_with_an_independent_cose_library() -> None:
    for vec in json.loads(VECTORS.read_text())["documents"]:
        message = _pycose(bytes.fromhex(vec["cose_sign1"]))
        message.key = OKPKey(crv=Ed25519, x=bytes.fromhex(vec["signer_public_key"]))
        assert message.verify_signature(), vec["description"]
        assert message.phdr[KID] == bytes.fromhex(vec["signer_id"])
        assert message.payload.hex() == vec["payload_cbor"]
        payload = cbor2.loads(message.payload)
        assert payload[2] == vec["payload"]["type"]
        assert payload[3] == bytes.fromhex(vec["signer_public_key"])


def test_document_vectors_hold_together_request_consent_revocation_delivery() -> None:
    data = json.loads(VECTORS.read_text())
    request, consent, revocation = (verify_document(bytes.fromhex(v["cose_sign1"]))
                                    for v in data["documents"])
    owner = bytes.fromhex(data["owner"]["signing_public_key"])
    check_consent(consent, request, now_ms=T0)
    check_revocation(revocation, consent, last_counter=0)
    delivery = PolicyDelivery.from_cbor(bytes.fromhex(data["delivery"]["payload_cbor"]))
    assert [verify_document(d, expected_signer=owner).raw for _, d in delivery.documents] == [
        consent.raw, revocation.raw]
    assert delivery.to_cbor().hex() == data["delivery"]["payload_cbor"]


def test_lapse_vector_verifies_with_an_independent_cose_library_and_as_a_device_checks_it(
        ) -> None:
    data = json.loads(VECTORS.read_text())
    lapse = data["lapse"]
    for vec in (lapse["consent"], lapse["notice"]):
        message = _pycose(bytes.fromhex(vec["cose_sign1"]))
        message.key = OKPKey(crv=Ed25519, x=bytes.fromhex(vec["signer_public_key"]))
        assert message.verify_signature(), vec["description"]
    notice_payload = cbor2.loads(bytes.fromhex(lapse["notice"]["payload_cbor"]))
    assert notice_payload[2] == "lapse"
    assert notice_payload[5][1].hex() == lapse["consent"]["cose_sign1"]  # embedded as signed
    assert cbor2.loads(bytes.fromhex(lapse["consent"]["payload_cbor"]))[5][8] is True
    gateway = bytes.fromhex(lapse["gateway_public_key"])
    owner = bytes.fromhex(data["owner"]["signing_public_key"])
    notice = verify_document(bytes.fromhex(lapse["notice"]["cose_sign1"]), gateway, "lapse")
    body, consent = check_lapse(notice, gateway, owner)
    assert (body.short_at, body.funding_block, consent.id.hex()) == (
        41, 17, lapse["consent"]["document_id"])


def test_lapse_notice_is_refused_unless_gateway_signed_and_the_consent_carries_the_term(
        ) -> None:
    request = _request()
    plain, lapsable = _consent(request), _consent(request, lapses_on_shortfall=True)

    def notice(consent: Document, key: SigningKey = GATEWAY) -> Document:
        return sign_document(Lapse(consent.raw, request.id, 3, 4, 1337, bytes(20)), key, T0)

    check_lapse(notice(lapsable), GATEWAY.public_key, OWNER.public_key)
    refused = [(notice(plain), "no_lapse_term"), (notice(lapsable, OWNER), "unsigned_policy"),
               (notice(_consent(request, OTHER_OWNER, lapses_on_shortfall=True)), "not_owner")]
    for doc, reason in refused:
        with pytest.raises(RejectedDocument) as err:
            check_lapse(doc, GATEWAY.public_key, OWNER.public_key)
        assert err.value.reason == reason
    assert Consent.from_cbor_value(plain.body.to_cbor_value()).lapses_on_shortfall is False
    bad = dict(lapsable.body.to_cbor_value())  # type: ignore[arg-type]
    bad[8] = False  # absent means false; an explicit false is not canonical
    with pytest.raises(MalformedRecord):
        Consent.from_cbor_value(bad)


# --- envelope -----------------------------------------------------------------------------


def test_document_round_trips_and_its_id_is_the_hash_of_its_exact_bytes() -> None:
    doc = _request()
    again = verify_document(doc.raw, expected_signer=BUYER.public_key, expected_type="request")
    assert again == doc
    assert parse_document(doc.raw).body == doc.body
    assert doc.signer_id == signer_id(BUYER.public_key)


def test_every_single_bit_flip_of_a_document_fails() -> None:
    raw = _consent(_request()).raw
    for i in range(len(raw) * 8):
        flipped = bytearray(raw)
        flipped[i // 8] ^= 1 << (i % 8)
        with pytest.raises(VerificationError):
            verify_document(bytes(flipped), expected_signer=OWNER.public_key)


def test_document_with_its_signer_key_swapped_is_rejected() -> None:
    # Re-sign the owner's payload with another key under the owner's kid: kid no longer
    # matches, and under the attacker's kid the embedded key no longer matches.
    doc = _consent(_request())
    payload = cose.decode_sign1(doc.raw).payload
    forged = cose.sign1(payload, signer_id(OWNER.public_key), OTHER_OWNER)
    with pytest.raises(VerificationError):
        verify_document(forged)
    forged = cose.sign1(payload, signer_id(OTHER_OWNER.public_key), OTHER_OWNER)
    with pytest.raises(MalformedRecord):
        verify_document(forged)


def test_consent_signed_by_gateway_or_another_owner_is_rejected_under_the_pinned_owner() -> None:
    request = _request()
    for key in (GATEWAY, OTHER_OWNER, BUYER):
        forged = _consent(request, key)
        verify_document(forged.raw)  # a valid signature by its own signer ...
        with pytest.raises(VerificationError):  # ... but not by the owner a device pinned
            verify_document(forged.raw, expected_signer=OWNER.public_key)
        with pytest.raises(RejectedDocument) as exc:
            check_owner(forged, (DEV_A,), {DEV_A: OWNER.public_key})
        assert exc.value.reason == DocumentReason.NOT_OWNER


def test_oversized_and_deeply_nested_documents_are_malformed() -> None:
    with pytest.raises(MalformedRecord) as exc:
        parse_document(b"\x00" * (MAX_DOCUMENT_BYTES + 1))
    assert exc.value.reason == "too_large"
    deep: cbor.Value = "x"
    for _ in range(10):
        deep = [deep]
    payload = cbor.encode({1: 1, 2: "request", 3: OWNER.public_key, 4: 0, 5: deep})
    with pytest.raises(MalformedRecord) as exc:
        parse_document(cose.sign1(payload, signer_id(OWNER.public_key), OWNER))
    assert exc.value.reason == "cbor_depth"


def test_unknown_document_type_and_record_bytes_are_not_documents() -> None:
    payload = cbor.encode({1: 1, 2: "no_such_type", 3: OWNER.public_key, 4: 0, 5: {}})
    with pytest.raises(MalformedRecord) as exc:
        parse_document(cose.sign1(payload, signer_id(OWNER.public_key), OWNER))
    assert exc.value.reason == "unknown_document_type"
    record_vector = json.loads((VECTORS.parent / "records.json").read_text())[0]
    with pytest.raises(MalformedRecord):
        parse_document(bytes.fromhex(record_vector["cose_sign1"]))


def test_a_decoder_importing_only_protocol_documents_finds_every_protocol_type() -> None:
    # In a fresh interpreter: importing protocol.documents alone registers every body type
    # that any protocol module defines (a type left out would decode as unknown).
    script = (
        "import importlib, pkgutil, protocol, protocol.documents\n"
        "from protocol.document_envelope import BODY_TYPES\n"
        "first = sorted(BODY_TYPES)\n"
        "for m in pkgutil.iter_modules(protocol.__path__):\n"
        "    importlib.import_module('protocol.' + m.name)\n"
        "print(first == sorted(BODY_TYPES), ','.join(first))\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[1],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "consent,lapse,payout_notice,quality,request,revocation"]


# --- consent rules -----------------------------------------------------------------------


def test_narrower_consent_is_accepted() -> None:
    request = _request()
    consent = check_consent(_consent(request), request, now_ms=T0 + HOUR)
    assert consent.terms.fields("climate") == ("Cel",)


@pytest.mark.parametrize("change", [
    {"terms": Terms((("climate", ("Cel", "lux")),), 60, T0, T0 + HOUR)},
    {"terms": Terms((("presence", ("on",)),), 60, T0, T0 + HOUR)},
    {"terms": Terms((("climate", ("Cel",)),), 30, T0, T0 + HOUR)},
    {"terms": Terms((("climate", ("Cel",)),), 60, T0 - 1, T0 + HOUR)},
    {"terms": Terms((("climate", ("Cel",)),), 60, T0, T0 + 25 * HOUR)},
    {"recipient": RecipientKey(Secret(bytes(32))).public_key},
], ids=["extra_field", "other_stream", "higher_rate", "earlier", "later", "other_recipient"])
def test_consent_wider_than_its_request_is_rejected(change: dict[str, object]) -> None:
    request = _request()
    with pytest.raises(RejectedDocument) as exc:
        check_consent(_consent(request, **change), request, now_ms=T0)
    assert exc.value.reason == DocumentReason.WIDER_THAN_REQUEST


def test_consent_for_an_expired_request_is_rejected() -> None:
    request = _request()
    with pytest.raises(RejectedDocument) as exc:
        check_consent(_consent(request), request, now_ms=T0 + 24 * HOUR)
    assert exc.value.reason == DocumentReason.REQUEST_EXPIRED


def test_consent_for_another_request_or_an_untargeted_device_is_rejected() -> None:
    request, other = _request(), _request(purpose="another")
    with pytest.raises(RejectedDocument) as exc:
        check_consent(_consent(other), request, now_ms=T0)
    assert exc.value.reason == DocumentReason.UNKNOWN_REQUEST
    untargeted = _consent(request, devices=(bytes(16),))
    with pytest.raises(RejectedDocument) as exc:
        check_consent(untargeted, request, now_ms=T0)
    assert exc.value.reason == DocumentReason.NOT_TARGETED


def test_request_to_an_owner_covers_any_device_that_owner_consents_for() -> None:
    request = _request(devices=(), owners=(owner_id(OWNER.public_key),))
    check_consent(_consent(request, devices=(bytes(16),)), request, now_ms=T0)
    with pytest.raises(RejectedDocument) as exc:
        check_consent(_consent(request, OTHER_OWNER), request, now_ms=T0)
    assert exc.value.reason == DocumentReason.NOT_TARGETED


def test_replayed_or_reordered_revocation_is_rejected_by_its_counter() -> None:
    consent = _consent(_request())
    first = sign_document(Revocation(consent.id, 5, "owner"), OWNER, T0)
    assert check_revocation(first, consent, last_counter=4).counter == 5
    for last in (5, 6):
        with pytest.raises(RejectedDocument) as exc:
            check_revocation(first, consent, last_counter=last)
        assert exc.value.reason == DocumentReason.STALE_COUNTER


def test_revocation_by_another_key_or_of_another_consent_is_rejected() -> None:
    request = _request()
    consent, other = _consent(request), _consent(request, devices=(DEV_B,))
    by_other = sign_document(Revocation(consent.id, 1, "x"), OTHER_OWNER, T0)
    with pytest.raises(RejectedDocument) as exc:
        check_revocation(by_other, consent, last_counter=0)
    assert exc.value.reason == DocumentReason.NOT_OWNER
    wrong = sign_document(Revocation(other.id, 1, "x"), OWNER, T0)
    with pytest.raises(RejectedDocument) as exc:
        check_revocation(wrong, consent, last_counter=0)
    assert exc.value.reason == DocumentReason.UNKNOWN_CONSENT


@pytest.mark.parametrize("bad", [
    {"devices": (DEV_B, DEV_A)}, {"devices": (), "owners": ()}, {"purpose": ""},
    {"purpose": "x" * 513}, {"purpose": "a\nb"},
], ids=["unsorted_devices", "no_target", "empty_purpose", "long_purpose", "control_char"])
def test_malformed_request_bodies_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(MalformedRecord):
        _request(**bad)


def test_reserved_or_unsorted_streams_and_fields_are_refused() -> None:
    for streams in ((("keys", ("a",)),), (("climate", ("b", "a")),), (("climate", ()),)):
        with pytest.raises(MalformedRecord):
            Terms(streams, 0, 0, 1)  # type: ignore[arg-type]
    with pytest.raises(MalformedRecord):  # an empty period
        Terms((("climate", ("Cel",)),), 60, T0, T0)


# --- keys ---------------------------------------------------------------------------------


def test_owner_key_file_is_0600_round_trips_and_is_refused_when_others_can_read(
        tmp_path: Path) -> None:
    key = OwnerKey.generate()
    path = tmp_path / "owner.key"
    save_owner_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_owner_key(path)
    assert (loaded.public_key, loaded.sealing_public_key) == (key.public_key,
                                                              key.sealing_public_key)
    assert key.signing.seed.value.hex() not in repr(key)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError):
        load_owner_key(path)
    os.chmod(path, 0o600)
    path.write_bytes(path.read_bytes().splitlines()[0] + b"\n")
    with pytest.raises(KeyFileError):
        load_owner_key(path)


# --- delivery -----------------------------------------------------------------------------


def test_sync_answer_is_split_under_the_caps_and_only_the_last_part_is_complete() -> None:
    docs = [(i * 3, bytes([i % 256]) * 8000) for i in range(20)]
    parts = pack_deliveries(docs, next_index=100)
    assert [d for p in parts for d in p.documents] == docs
    assert [p.complete for p in parts] == [False] * (len(parts) - 1) + [True]
    assert parts[-1].next_index == 100
    for part in parts:
        assert len(part.to_cbor()) <= MAX_DELIVERY_BYTES
        assert PolicyDelivery.from_cbor(part.to_cbor()) == part
    assert pack_deliveries([], 5) == [PolicyDelivery((), 5, True)]


def test_malformed_deliveries_and_syncs_are_refused() -> None:
    bad = [
        cbor.encode({1: 1, 2: [[3, b"x"], [2, b"y"]], 3: 9, 4: True}),  # indexes fall
        cbor.encode({1: 1, 2: [[3, b"x"]], 3: 3, 4: True}),  # index not below next
        cbor.encode({1: 2, 2: [], 3: 0, 4: True}),  # version
        cbor.encode({1: 1, 2: [[0, "text"]], 3: 1, 4: True}),
        cbor.encode({1: 1, 2: [], 3: 0, 4: 1}),
    ]
    for data in bad:
        with pytest.raises(MalformedRecord):
            PolicyDelivery.from_cbor(data)
    assert PolicySync.from_cbor(PolicySync(42).to_cbor()).from_index == 42
    with pytest.raises(MalformedRecord):
        PolicySync.from_cbor(cbor.encode({1: 1, 2: -1}))
    assert device_id_from_sync_topic(sync_topic(DEV_A)) == DEV_A


def test_every_document_reason_code_is_named_in_protocol_md() -> None:
    text = (Path(__file__).parents[1] / "docs" / "PROTOCOL.md").read_text()
    missing = [r.value for r in DocumentReason if f"`{r.value}`" not in text]
    assert missing == []


def test_verify_document_shows_a_lapse_notice_and_refuses_one_ending_an_unwilling_consent(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lapse = json.loads(VECTORS.read_text())["lapse"]
    path = tmp_path / "notice.cose"
    path.write_text(lapse["notice"]["cose_sign1"])
    assert verify_main(["document", str(path), "--signer", lapse["gateway_public_key"],
                        "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["type"], shown["consent"], shown["short_at"], shown["funding_block"]) == (
        "lapse", lapse["consent"]["document_id"], 41, 17)
    request = _request()
    forged = sign_document(Lapse(_consent(request).raw, request.id, 3, 4, 1337, bytes(20)),
                           GATEWAY, T0)
    path.write_bytes(forged.raw)
    assert verify_main(["document", str(path)]) == 1
    assert "did not allow" in capsys.readouterr().err


def _version_as_true(encoded: bytes) -> bytes:
    """``encoded`` (a map with version 1 under key 1) with the version written as CBOR
    ``true``: Python's ``True == 1`` must not let it through."""
    item = cbor.decode(encoded)
    assert isinstance(item, dict)
    assert item[1] == 1
    item[1] = True
    return cbor.encode(item)


def test_a_version_written_as_true_is_refused_by_every_decoder() -> None:
    key = _key("device")
    device_id = signer_id(key.public_key)
    record = Record(boot=1, seq=0, prev=GENESIS_PREV, wall_ms=T0, clock_synced=True,
                    mono_ms=5_000, stream="cpu", body=Values((Measurement(473, -1, "Cel"),)))
    signed = sign_record(record, device_id, key).raw
    receipt = Receipt(device_id, 1, (Outcome(0, bytes(16), Status.ACCEPTED, leaf_index=0),),
                      "note", 1, 0).to_cbor()
    document = _request()
    cases: list[tuple[Callable[[bytes], object], bytes]] = [
        (Record.from_cbor, _version_as_true(record.to_cbor())),
        (Record.from_cbor_strict, _version_as_true(record.to_cbor())),
        (Batch.from_cbor, _version_as_true(Batch(1, (signed,)).to_cbor())),
        (Batch.from_cbor_strict, _version_as_true(Batch(1, (signed,)).to_cbor())),
        (Receipt.from_cbor, _version_as_true(receipt)),
        (Receipt.from_cbor_strict, _version_as_true(receipt)),
        (PolicyDelivery.from_cbor, _version_as_true(PolicyDelivery((), 0, True).to_cbor())),
        (PolicySync.from_cbor, _version_as_true(PolicySync(0).to_cbor())),
        (parse_document, cose.sign1(_version_as_true(cose.decode_sign1(document.raw).payload),
                                    signer_id(BUYER.public_key), BUYER)),
    ]
    for decode, data in cases:
        with pytest.raises(MalformedRecord) as refused:
            decode(data)
        assert refused.value.reason == "bad_version", decode
