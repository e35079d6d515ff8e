"""Offline proof bundles: an honest bundle verifies; every tampered part fails by name."""

from __future__ import annotations

import dataclasses
import json

import pytest

from protocol import merkle
from protocol.bundle import EthereumAnchor, ProofBundle, verify_bundle
from protocol.checkpoint import Checkpoint, checkpoint_hash
from protocol.errors import MalformedRecord, VerificationError
from protocol.keys import Secret, SigningKey, device_id_for
from protocol.note import NoteSigner
from protocol.record import GENESIS_PREV, Measurement, Record, Values
from protocol.signed import sign_record

GATEWAY = NoteSigner("gateway.test/log", bytes(range(32)))


def _bundle(index: int = 3, size: int = 7) -> ProofBundle:
    key = SigningKey(Secret(bytes(range(1, 33))))
    device_id = device_id_for(key.public_key)
    leaves = []
    records = []
    prev = GENESIS_PREV
    for seq in range(size):
        signed = sign_record(Record(1, seq, prev, 1_764_403_200_000 + seq, True, seq, "cpu",
                                    Values((Measurement(400 + seq, -1, "Cel"),))),
                             device_id, key)
        prev = signed.hash
        records.append(signed.raw)
        leaves.append(merkle.leaf_hash(signed.raw))
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
