"""Offline proof bundles: an honest bundle verifies; every tampered part fails by name."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

import pytest

from protocol import merkle
from protocol.bundle import (
    EthereumAnchor,
    ProofBundle,
    RotationProof,
    key_in_force,
    verify_bundle,
)
from protocol.checkpoint import Checkpoint, checkpoint_hash
from protocol.errors import MalformedRecord, VerificationError
from protocol.jsontext import parse_json
from protocol.keys import Secret, SigningKey, device_id_for
from protocol.note import NoteSigner
from protocol.record import (
    GENESIS_PREV,
    ROTATION_STREAM,
    Body,
    KeyRotation,
    Measurement,
    Record,
    Values,
)
from protocol.signed import parse_signed_record, sign_record

GATEWAY = NoteSigner("gateway.test/log", bytes(range(32)))


def cpu_log(key: SigningKey, size: int) -> tuple[list[bytes], list[bytes]]:
    """``size`` chained CPU-temperature records signed by ``key``, and their leaf hashes."""
    device_id = device_id_for(key.public_key)
    records, prev = [], GENESIS_PREV
    for seq in range(size):
        signed = sign_record(Record(1, seq, prev, 1_764_403_200_000 + seq, True, seq, "cpu",
                                    Values((Measurement(400 + seq, -1, "Cel"),))),
                             device_id, key)
        prev = signed.hash
        records.append(signed.raw)
    return records, [merkle.leaf_hash(r) for r in records]


def _bundle(index: int = 3, size: int = 7) -> ProofBundle:
    key = SigningKey(Secret(bytes(range(1, 33))))
    records, leaves = cpu_log(key, size)
    note = Checkpoint(GATEWAY.name, size, merkle.root(leaves)).sign(GATEWAY)
    return ProofBundle(records[index], key.public_key, index, size,
                       tuple(merkle.inclusion_proof(leaves, index)), note,
                       GATEWAY.verifier_text())


def test_honest_bundle_passes_every_check_and_survives_json() -> None:
    bundle = _bundle()
    again = ProofBundle.from_json(bundle.to_json())
    assert again == bundle
    report = verify_bundle(again, trusted_gateway_key=GATEWAY.verifier_text())
    assert [name for name, _ in report.passed] == [
        "gateway key", "record signature", "checkpoint signature", "inclusion proof"]


@pytest.mark.parametrize(("change", "failed_check"), [
    (lambda b: dataclasses.replace(b, record=b.record[:-1] + bytes([b.record[-1] ^ 1])),
     "record signature"),
    (lambda b: dataclasses.replace(b, device_public_key=SigningKey.generate().public_key),
     "record signature"),
    (lambda b: dataclasses.replace(b, leaf_index=b.leaf_index + 1), "inclusion proof"),
    (lambda b: dataclasses.replace(b, inclusion_proof=b.inclusion_proof[:-1]), "inclusion proof"),
    (lambda b: dataclasses.replace(
        b, inclusion_proof=(bytes(32), *b.inclusion_proof[1:])), "inclusion proof"),
    (lambda b: dataclasses.replace(b, tree_size=b.tree_size + 1), "checkpoint signature"),
    (lambda b: dataclasses.replace(b, checkpoint=b.checkpoint.replace("\n7\n", "\n8\n")),
     "checkpoint signature"),
    (lambda b: dataclasses.replace(b, gateway_key=NoteSigner(
        "gateway.test/log", bytes(32)).verifier_text()), "gateway key"),
])
def test_tampered_bundle_fails_naming_the_check(change: object, failed_check: str) -> None:
    bundle = change(_bundle())  # type: ignore[operator]
    with pytest.raises(VerificationError, match=rf"^{failed_check}:"):
        verify_bundle(bundle, trusted_gateway_key=GATEWAY.verifier_text())


def test_bundle_signed_by_an_impostor_gateway_fails_even_if_self_consistent() -> None:
    impostor = NoteSigner("gateway.test/log", bytes(32))
    honest = _bundle()
    root = Checkpoint.from_body(honest.checkpoint.split("\n\n")[0] + "\n").root_hash
    forged = dataclasses.replace(honest, checkpoint=Checkpoint(
        impostor.name, honest.tree_size, root).sign(impostor),
        gateway_key=impostor.verifier_text())
    verify_bundle(forged)  # consistent on its own terms ...
    with pytest.raises(VerificationError, match=r"^gateway key:"):
        verify_bundle(forged, trusted_gateway_key=GATEWAY.verifier_text())  # ... not trusted


def test_anchor_must_carry_the_checkpoint_hash() -> None:
    bundle = _bundle()
    good = EthereumAnchor(1337, "0xabc", 5, b"\x00" * 4 + checkpoint_hash(bundle.checkpoint))
    report = verify_bundle(dataclasses.replace(bundle, anchor=good))
    assert report.passed[-1][0] == "anchor"
    bad = dataclasses.replace(good, tx_input=b"\x00" * 36)
    with pytest.raises(VerificationError, match=r"^anchor:"):
        verify_bundle(dataclasses.replace(bundle, anchor=bad))


@pytest.mark.parametrize("text", [
    "", "[]", "{}", '{"format": "other"}', "not json",
    json.dumps({"format": "edgeproof-proof-bundle/1", "record": "zz"}),
    "x" * 300_000,
])
def test_malformed_bundle_files_rejected_with_reason(text: str) -> None:
    with pytest.raises(MalformedRecord):
        ProofBundle.from_json(text)


# --- a record signed after a key rotation (docs/PROTOCOL.md §3.3, §15) -------------------

K0 = SigningKey(Secret(bytes(range(1, 33))))
K1 = SigningKey(Secret(bytes(range(2, 34))))
ROTATION_SEQ = 2


def _rotated_log(size: int = 6) -> tuple[list[bytes], str]:
    """A device log whose record 2 rotates K0 -> K1; records 3.. are signed with K1."""
    device_id = device_id_for(K0.public_key)
    records: list[bytes] = []
    prev = GENESIS_PREV
    for seq in range(size):
        body: Body = Values((Measurement(400 + seq, -1, "Cel"),))
        stream = "cpu"
        if seq == ROTATION_SEQ:
            body, stream = KeyRotation(K1.public_key), ROTATION_STREAM
        key = K0 if seq <= ROTATION_SEQ else K1
        signed = sign_record(Record(1, seq, prev, 1_764_403_200_000 + seq, True, seq, stream,
                                    body), device_id, key)
        prev = signed.hash
        records.append(signed.raw)
    leaves = [merkle.leaf_hash(r) for r in records]
    return records, Checkpoint(GATEWAY.name, size, merkle.root(leaves)).sign(GATEWAY)


def _rotated_bundle(index: int = 5) -> ProofBundle:
    records, note = _rotated_log()
    leaves = [merkle.leaf_hash(r) for r in records]
    rotations = tuple(RotationProof(records[ROTATION_SEQ], ROTATION_SEQ, tuple(
        merkle.inclusion_proof(leaves, ROTATION_SEQ))) for _ in range(index > ROTATION_SEQ))
    return ProofBundle(records[index], K0.public_key, index, len(records),
                       tuple(merkle.inclusion_proof(leaves, index)), note,
                       GATEWAY.verifier_text(), rotations=rotations)


def test_record_signed_after_a_rotation_verifies_offline_from_its_bundle() -> None:
    bundle = ProofBundle.from_json(_rotated_bundle().to_json())
    assert bundle == _rotated_bundle()
    assert len(bundle.rotations) == 1
    report = verify_bundle(bundle, trusted_gateway_key=GATEWAY.verifier_text())
    checks = dict(report.passed)
    assert "rotation at seq 2" in checks["record signature"]
    assert "1 key rotation" in checks["inclusion proof"]
    # The rotation record itself and a record before it need no rotation.
    for index in (ROTATION_SEQ, 0):
        verify_bundle(_rotated_bundle(index), trusted_gateway_key=GATEWAY.verifier_text())


def _swap_rotation(b: ProofBundle, **changes: Any) -> ProofBundle:
    return dataclasses.replace(b, rotations=(dataclasses.replace(b.rotations[0], **changes),))


def _unlogged_rotation() -> bytes:
    """A rotation to K1 at seq 2 correctly signed by K0, but other bytes than were logged."""
    records, _ = _rotated_log()
    _, record = parse_signed_record(records[ROTATION_SEQ])
    return sign_record(dataclasses.replace(record, mono_ms=record.mono_ms + 1),
                       device_id_for(K0.public_key), K0).raw


@pytest.mark.parametrize(("change", "failed_check"), [
    (lambda b: dataclasses.replace(b, rotations=()), "record signature"),  # removed
    (lambda b: _swap_rotation(b, record=b.rotations[0].record[:-1] + bytes(
        [b.rotations[0].record[-1] ^ 1])), "record signature"),  # tampered signature
    (lambda b: _swap_rotation(b, record=_rotated_log()[0][1]), "record signature"),  # not one
    (lambda b: dataclasses.replace(b, rotations=b.rotations * 2), "record signature"),
    (lambda b: dataclasses.replace(b, device_public_key=K1.public_key), "record signature"),
    (lambda b: _swap_rotation(b, record=_unlogged_rotation()), "inclusion proof"),
    (lambda b: _swap_rotation(b, leaf_index=3), "inclusion proof"),
    (lambda b: _swap_rotation(b, inclusion_proof=b.rotations[0].inclusion_proof[1:]),
     "inclusion proof"),
])
def test_tampered_or_missing_rotation_fails_verification(change: object,
                                                         failed_check: str) -> None:
    bundle = change(_rotated_bundle())  # type: ignore[operator]
    with pytest.raises(VerificationError, match=rf"^{failed_check}:"):
        verify_bundle(bundle, trusted_gateway_key=GATEWAY.verifier_text())


def test_rotation_after_the_record_is_refused_as_out_of_order() -> None:
    records, _ = _rotated_log()  # record 1, bundled with the rotation at seq 2 after it
    before = dataclasses.replace(_rotated_bundle(), record=records[1], leaf_index=1,
                                 inclusion_proof=tuple(merkle.inclusion_proof(
                                     [merkle.leaf_hash(r) for r in records], 1)))
    with pytest.raises(VerificationError, match="out of order"):
        verify_bundle(before)


def _as_version_1(bundle: ProofBundle, key: bytes) -> str:
    data = json.loads(bundle.to_json())
    del data["rotations"]
    return json.dumps({**data, "format": "edgeproof-proof-bundle/1",
                       "device_public_key": key.hex()})


def test_version_1_bundles_stay_readable_but_an_unproven_rotated_key_fails() -> None:
    old = ProofBundle.from_json(_as_version_1(_bundle(), K0.public_key))
    assert old.version == 1
    assert old.rotations == ()
    verify_bundle(old, trusted_gateway_key=GATEWAY.verifier_text())
    rotated = ProofBundle.from_json(_as_version_1(_rotated_bundle(), K1.public_key))
    with pytest.raises(VerificationError, match=r"^record signature: version 1 bundle"):
        verify_bundle(rotated, trusted_gateway_key=GATEWAY.verifier_text())


# --- hostile bundle files: a clear MalformedRecord, never a library exception ----------


@pytest.mark.parametrize("length", [0, 1, 31, 33])
def test_bundle_with_a_device_key_of_the_wrong_length_is_malformed_not_a_value_error(
        length: int) -> None:
    data = json.loads(_bundle().to_json())
    data["device_public_key"] = "ab" * length
    with pytest.raises(MalformedRecord, match="device_public_key must be 32 bytes") as caught:
        ProofBundle.from_json(json.dumps(data))
    assert caught.value.reason == "bad_bundle"
    # A bundle built in code (not read from JSON) fails closed the same way, by check name.
    for version in (1, 2):
        short = dataclasses.replace(_bundle(), device_public_key=b"\x11" * length,
                                    version=version)
        with pytest.raises(VerificationError, match=r"^record signature: bad_key:"):
            verify_bundle(short, trusted_gateway_key=GATEWAY.verifier_text())


def test_key_in_force_refuses_a_key_or_device_id_of_the_wrong_length() -> None:
    device_id = device_id_for(K0.public_key)
    with pytest.raises(MalformedRecord, match="bad_key"):
        key_in_force(K0.public_key[:31], [], device_id, 1)
    with pytest.raises(MalformedRecord, match="bad_device_id"):
        key_in_force(K0.public_key, [], device_id[:5], 1)


@pytest.mark.parametrize("text", [
    "[" * 100_000 + "]" * 100_000,
    '{"a":' * 100_000 + "1" + "}" * 100_000,
    b"\xff\xfe\x00\xd8",  # no UTF encoding
])
def test_deeply_nested_or_undecodable_bundle_json_is_bad_bundle_not_a_recursion_error(
        text: str | bytes) -> None:
    with pytest.raises(MalformedRecord, match=r"^bad_bundle: not JSON$"):
        ProofBundle.from_json(text)


def test_deep_json_is_refused_before_parsing_even_with_a_raised_recursion_limit() -> None:
    """py_ecc (imported with the chain libraries) raises the limit to 100 000: json's C
    parser would then overflow the C stack on this text and crash the process, so the
    depth is bounded before json sees it."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)
    try:
        with pytest.raises(ValueError, match="nested deeper"):
            parse_json("[" * 100_000 + "]" * 100_000)
        with pytest.raises(MalformedRecord, match=r"^bad_bundle: not JSON$"):
            ProofBundle.from_json("{" + '"a":[' * 50_000)
    finally:
        sys.setrecursionlimit(old)
    assert parse_json('{"a": ["[[[", {"b": "}}"}]}') == {"a": ["[[[", {"b": "}}"}]}
