"""The normative statements of docs/PROTOCOL.md an independent implementer asked about
(issue 13), each checked against the reference, where possible with independent code."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cbor2
import nacl.bindings as sodium
import nacl.exceptions
import pytest

from gateway.checkpoints import canonical_balances
from gateway.store import Balance
from protocol import cbor
from protocol.bundle import key_in_force
from protocol.checkpoint import Checkpoint
from protocol.errors import MalformedRecord, VerificationError
from protocol.keys import Secret, SigningKey, device_id_for
from protocol.note import NoteSigner, NoteVerifier
from protocol.record import (
    GENESIS_PREV,
    ROTATION_STREAM,
    KeyRotation,
    Measurement,
    Record,
    Values,
    credit_micro,
)
from protocol.signed import sign_record

VECTORS = Path(__file__).parent / "vectors"


def _records() -> list[dict[str, object]]:
    data: list[dict[str, object]] = json.loads((VECTORS / "records.json").read_text())
    return data


# --- §9.1: where verifier key text splits ------------------------------------------------


def _signer_whose_base64_holds_a_plus() -> NoteSigner:
    for n in range(256):  # deterministic: the first seed whose key's base64 has a "+"
        signer = NoteSigner("gateway.example/log", bytes([n]) * 32)
        if "+" in signer.verifier_text().split("+", 2)[2]:
            return signer
    raise AssertionError("no seed gives a '+' in the base64 key")


def test_verifier_key_with_a_plus_in_its_base64_splits_at_the_first_two_plus_only() -> None:
    signer = _signer_whose_base64_holds_a_plus()
    text = signer.verifier_text()
    assert text.count("+") >= 3
    name, key_id, _ = text.split("+", 2)
    verifier = NoteVerifier.from_text(text)
    assert (verifier.name, verifier.key_id.hex()) == (name, key_id)
    note = Checkpoint(name, 1, bytes(32)).sign(signer)
    assert Checkpoint.from_note(note, verifier).size == 1
    with pytest.raises(MalformedRecord):  # a name may never hold "+", so no other split
        NoteSigner("gateway+example", bytes(32))


# --- §5.1, §5.2: the CBOR inside the associated data -------------------------------------


def test_sealed_vector_opens_with_aad_built_as_the_text_says_from_independent_code() -> None:
    """§5.3 with libsodium and cbor2 only: device_id as a 16-byte byte string, E and s - E
    as unsigned integers, the stream as text, the header as a nested map (not its bytes)."""
    vec = next(v for v in _records() if "recipient_secret_key" in v)
    assert _open_independently(vec) == vec["plaintext"]


def _open_independently(vec: dict[str, object]) -> object:
    device_id = bytes.fromhex(str(vec["device_id"]))
    epoch = cbor2.loads(cbor2.loads(bytes.fromhex(str(vec["key_epoch_cose_sign1"]))).value[2])
    record = cbor2.loads(bytes.fromhex(str(vec["payload_cbor"])))
    e, seq, stream = epoch[3], record[3], record[8]
    key_delta, ciphertext = record[10]
    assert seq - key_delta == e
    secret = bytes.fromhex(str(vec["recipient_secret_key"]))
    public = bytes.fromhex(str(vec["recipient_public_key"]))
    ephemeral = epoch[13][1]
    shared = sodium.crypto_scalarmult(secret, ephemeral)
    kek = sodium.crypto_generichash_blake2b_salt_personal(
        ephemeral + public + stream.encode(), digest_size=32, key=shared,
        person=b"edgeproof-wrap1\0")
    wrap_aad = cbor2.dumps([device_id, e, stream], canonical=True)
    assert wrap_aad.hex() == "8350" + device_id.hex() + cbor2.dumps(e).hex() + \
        cbor2.dumps(stream).hex()
    wrapped = dict((bytes(k), w) for k, w in epoch[13][2][stream])[
        hashlib.sha256(public).digest()[:8]]
    stream_key = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
        wrapped, wrap_aad, bytes(24), kek)
    header = {k: v for k, v in record.items() if k <= 8}
    assert len(header) == 7
    aad = cbor2.dumps([device_id, header, key_delta], canonical=True)
    assert aad.startswith(b"\x83\x50" + device_id + b"\xa7")  # the map inline, not a bstr
    nonce = bytes(16) + seq.to_bytes(8, "big")
    values = cbor2.loads(sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
        ciphertext, aad, nonce, stream_key))
    header_as_bytes = cbor2.dumps([device_id, cbor2.dumps(header, canonical=True), key_delta])
    with pytest.raises(nacl.exceptions.CryptoError):  # the other reading does not open it
        sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, header_as_bytes, nonce,
                                                          stream_key)
    return values


# --- §5.5: derived streams ---------------------------------------------------------------


def test_derived_record_vector_holds_only_granted_field_under_a_named_consent() -> None:
    """§5.5 from independent code: the key epoch's key 3 maps the derived stream
    ``<stream>~<6 bytes of the consent id>`` to the consent id, only the company's kid holds
    that stream's key, and the record opens to the temperature alone."""
    vec = [v for v in _records() if "recipient_secret_key" in v][-1]
    epoch = cbor2.loads(cbor2.loads(bytes.fromhex(str(vec["key_epoch_cose_sign1"]))).value[2])
    record = cbor2.loads(bytes.fromhex(str(vec["payload_cbor"])))
    stream = record[8]
    ((named, consent_id),) = epoch[13][3].items()
    assert named == stream == "climate~" + consent_id[:6].hex()
    company_kid = hashlib.sha256(bytes.fromhex(str(vec["recipient_public_key"]))).digest()[:8]
    assert [bytes(k) for k, _ in epoch[13][2][stream]] == [company_kid]
    assert company_kid not in [bytes(k) for k, _ in epoch[13][2]["climate"]]
    assert _open_independently(vec) == vec["plaintext"] == [[214, -1, "Cel"]]


# --- §9.2: checkpoint body and balances table ---------------------------------------------


def test_checkpoint_bodies_have_no_empty_line_before_or_after_extension_lines() -> None:
    for vec in json.loads((VECTORS / "checkpoints.json").read_text()):
        body, signatures = vec["note"].split("\n\n", 1)
        lines = body.split("\n")
        assert all(lines), vec["description"]
        assert len(lines) >= 3, vec["description"]
        assert signatures.startswith("\u2014 ")
    with_ext = Checkpoint("o", 1, bytes(32), ("prev x", "balances y")).to_body()
    assert with_ext == f"o\n1\n{'A' * 43}=\nprev x\nbalances y\n"


def test_balances_table_bytes_are_as_protocol_md_defines_them() -> None:
    table = canonical_balances([Balance("bob", 0), Balance("alice", 245_833)])
    assert table.hex() == "828265616c6963651a0003c0498263626f6200"  # the §9.2 example
    assert canonical_balances([]) == b"\x80"
    owners = ["\u00f8ystein", "alice", "Zoe", "al"]  # bytewise UTF-8 order, not collation
    ordered = cbor.decode(canonical_balances([Balance(o, 1) for o in owners]))
    assert [row[0] for row in ordered] == ["Zoe", "al", "alice", "\u00f8ystein"]  # type: ignore[index, union-attr]


# --- §3.3: the key in force at a seq ------------------------------------------------------


def test_rotated_key_takes_over_at_the_seq_after_the_rotation_record() -> None:
    k0, k1 = SigningKey(Secret(bytes([7]) * 32)), SigningKey(Secret(bytes([8]) * 32))
    device_id = device_id_for(k0.public_key)
    rotation = sign_record(Record(1, 4, bytes(32), 1, True, 1, ROTATION_STREAM,
                                  KeyRotation(k1.public_key)), device_id, k0)
    assert key_in_force(k0.public_key, [], device_id, 4) == (k0.public_key, None)
    assert key_in_force(k0.public_key, [rotation.raw], device_id, 5) == (k1.public_key, 4)
    with pytest.raises(VerificationError, match="out of order"):  # its own seq: key before
        key_in_force(k0.public_key, [rotation.raw], device_id, 4)
    with pytest.raises(VerificationError, match="enrolment key"):
        key_in_force(k1.public_key, [], device_id, 0)


# --- §11: nesting depth ---------------------------------------------------------------------


def _nested(depth: int) -> bytes:
    """A byte string at ``depth`` inside arrays (the outermost array at depth 0)."""
    item: cbor.Value = b"x"
    for _ in range(depth):
        item = [item]
    return cbor.encode(item)


def test_depth_counts_the_outermost_item_as_zero_and_admits_the_cap() -> None:
    limits = cbor.Limits(max_depth=5)
    cbor.decode(_nested(5), limits)  # the byte string at depth 5: at the cap, accepted
    with pytest.raises(MalformedRecord) as info:
        cbor.decode(_nested(6), limits)
    assert info.value.reason == "cbor_depth"
    assert cbor.decode(cbor.encode({1: {2: b"k"}}), cbor.Limits(max_depth=2)) == {1: {2: b"k"}}
    with pytest.raises(MalformedRecord):  # a map's values are one deeper than the map
        cbor.decode(cbor.encode({1: {2: [b"k"]}}), cbor.Limits(max_depth=2))


def test_key_epoch_grant_sits_exactly_at_the_record_depth_cap() -> None:
    vec = next(v for v in _records() if v["payload"]["body"]["type"] == "key_epoch")  # type: ignore[index]
    payload = bytes.fromhex(str(vec["payload_cbor"]))
    Record.from_cbor_strict(payload)  # kid and wrapped at depth 5 of a cap of 5: valid
    Record.from_cbor(payload)
    with pytest.raises(MalformedRecord):  # one level more is over the cap
        cbor.decode(payload, cbor.Limits(max_depth=4))


# --- §12: the JSON form of payload ----------------------------------------------------------


def test_vector_payload_json_is_the_documented_reading_of_the_cbor() -> None:
    for vec in _records():
        wire = cbor2.loads(bytes.fromhex(str(vec["payload_cbor"])))
        payload = vec["payload"]
        assert isinstance(payload, dict)
        assert (payload["version"], payload["boot"], payload["seq"], payload["mono_ms"],
                payload["stream"]) == (wire[1], wire[2], wire[3], wire[7], wire[8])
        assert payload["prev"] == wire[4].hex()
        wall_key = 5 if payload["clock_synced"] else 6
        assert payload["wall_ms"] == wire[wall_key]
        assert 11 - wall_key not in wire
        body = payload["body"]
        (key, item), = ((k, v) for k, v in wire.items() if k >= 9)
        kind = ["values", "sealed", "usage", "gap", "key_epoch", "key_rotation"][key - 9]
        assert body["type"] == kind
        if kind == "usage":  # credit_micro is derived (§10), not on the wire
            assert item == [body["start_mono_ms"], body["end_mono_ms"], body["usage_ms"],
                            body["rate_micro_per_hour"]]
            assert body["credit_micro"] == credit_micro(body["usage_ms"],
                                                        body["rate_micro_per_hour"])
        elif kind == "key_epoch":
            assert body["ephemeral_public"] == item[1].hex()
            assert body["grants"] == {s: [[k.hex(), w.hex()] for k, w in gs]
                                      for s, gs in item[2].items()}
            assert list(body["grants"]) == list(item[2])  # wire order
        elif kind == "key_rotation":
            assert body["new_public_key"] == item.hex()
        elif kind == "sealed":
            assert [body["key_delta"], body["ciphertext"]] == [item[0], item[1].hex()]
        elif kind == "gap":
            assert [body["first_seq"], body["last_seq"], body["reason"]] == item
        else:
            assert body["values"] == item


# --- §3.1, §3.2: printable characters ------------------------------------------------------


def _reading(stream: str, unit: str = "Cel") -> Record:
    return Record(1, 0, GENESIS_PREV, 1, True, 1, stream, Values((Measurement(1, 0, unit),)))


@pytest.mark.parametrize("stream", ["temp\u00e9rature", "a b", "\u00e9" * 64, "~!#$%",
                                    "\u6e29\u5ea6"])
def test_printable_means_unicode_printable_counted_in_code_points(stream: str) -> None:
    record = _reading(stream)
    assert Record.from_cbor(record.to_cbor()).stream == stream


@pytest.mark.parametrize("stream", ["a\tb", "a\u00a0b", "a\u200bb", "a\u2028b", "\u00e9" * 65,
                                    "\x7f", "a\u0378b"])
def test_control_format_separator_unassigned_or_too_long_names_are_refused(stream: str) -> None:
    with pytest.raises(MalformedRecord):
        _reading(stream)
    with pytest.raises(MalformedRecord):
        _reading("cpu", unit=stream if len(stream) <= 16 else "x" * 17)
