"""Records, COSE_Sign1, sealing, batches and receipts: round trips, vectors, attacks."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import cbor2
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from pycose.algorithms import EdDSA
from pycose.headers import KID, Algorithm
from pycose.keys import OKPKey
from pycose.keys.curves import Ed25519
from pycose.messages import Sign1Message

from protocol import cbor
from protocol.batch import (
    MAX_BATCH_BYTES,
    MAX_BATCH_RECORDS,
    Batch,
    device_id_from_topic,
    receipts_topic,
    records_topic,
)
from protocol.cose import sign1, verify_sign1
from protocol.errors import KeyFileError, MalformedRecord, VerificationError
from protocol.keys import (
    RecipientKey,
    Secret,
    SigningKey,
    device_id_for,
    load_device_key,
    save_device_key,
    verify_ed25519,
)
from protocol.receipt import (
    MAX_CHECKPOINT_CHARS,
    MAX_OUTCOMES,
    MAX_RECEIPT_BYTES,
    Outcome,
    Receipt,
    Status,
)
from protocol.record import (
    GENESIS_PREV,
    Gap,
    Measurement,
    Record,
    Sealed,
    Usage,
    Values,
    credit_micro,
    encode_values,
)
from protocol.sealing import (
    new_key_epoch,
    open_values,
    seal_values,
    unwrap_stream_key,
    value_nonce,
)
from protocol.signed import (
    MAX_SIGNED_RECORD_BYTES,
    parse_signed_record,
    sign_record,
    verify_signed_record,
)
from tests.vectors import make_record_vectors

VECTORS = Path(__file__).parent / "vectors" / "records.json"


def _pycose_message(raw: bytes) -> Sign1Message:
    # pycose 1.1 expects the list/dict cbor2 5.x produced; cbor2 6 returns a tuple and a
    # frozendict inside tags, so hand pycose the COSE object in the shape it expects.
    tagged = cbor2.loads(raw)
    assert tagged.tag == 18
    protected, unprotected, payload, signature = tagged.value
    return Sign1Message.from_cose_obj([protected, dict(unprotected), payload, signature], True)


@pytest.fixture(scope="module")
def device() -> tuple[SigningKey, bytes]:
    key = SigningKey(Secret(bytes(range(32))))
    return key, device_id_for(key.public_key)


def _record(seq: int = 0, body: object = None, stream: str = "cpu") -> Record:
    return Record(boot=1, seq=seq, prev=GENESIS_PREV, wall_ms=1_764_403_200_000,
                  clock_synced=True, mono_ms=5_000, stream=stream,
                  body=body or Values((Measurement(473, -1, "Cel"),)))  # type: ignore[arg-type]


# --- vectors ----------------------------------------------------------------------------


def test_committed_record_vectors_match_generator_byte_for_byte() -> None:
    assert VECTORS.read_text() == make_record_vectors.render()


def test_every_vector_verifies_with_an_independent_cose_library() -> None:
    for vec in json.loads(VECTORS.read_text()):
        raw = bytes.fromhex(vec["cose_sign1"])
        message = _pycose_message(raw)
        message.key = OKPKey(crv=Ed25519, x=bytes.fromhex(vec["device_public_key"]))
        assert message.verify_signature(), vec["description"]
        assert message.phdr[KID] == bytes.fromhex(vec["device_id"])
        assert message.payload.hex() == vec["payload_cbor"]
        assert cbor2.loads(message.payload)[3] == vec["payload"]["seq"]


def test_sealed_vector_decrypts_with_recipient_key_alone() -> None:
    vec = next(v for v in json.loads(VECTORS.read_text()) if "recipient_secret_key" in v)
    device_id = bytes.fromhex(vec["device_id"])
    public = bytes.fromhex(vec["device_public_key"])
    epoch = verify_signed_record(bytes.fromhex(vec["key_epoch_cose_sign1"]), public)
    sealed = verify_signed_record(bytes.fromhex(vec["cose_sign1"]), public)
    recipient = RecipientKey(Secret(bytes.fromhex(vec["recipient_secret_key"])))
    stream_key = unwrap_stream_key(device_id, epoch.record.seq, epoch.record.body,  # type: ignore[arg-type]
                                   sealed.record.stream, recipient)
    values = open_values(device_id, sealed.record, stream_key)
    assert [[m.mantissa, m.exponent, m.unit] for m in values] == vec["plaintext"]


# --- signing ----------------------------------------------------------------------------


def test_record_round_trips_through_cose(device: tuple[SigningKey, bytes]) -> None:
    key, device_id = device
    signed = sign_record(_record(), device_id, key)
    again = verify_signed_record(signed.raw, key.public_key, device_id)
    assert again.record == signed.record
    assert again.raw == signed.raw


def test_pycose_signed_message_verifies_here(device: tuple[SigningKey, bytes]) -> None:
    key, device_id = device
    message = Sign1Message(phdr={Algorithm: EdDSA, KID: device_id},
                           payload=_record().to_cbor())
    message.key = OKPKey(crv=Ed25519, d=key.seed.value, x=key.public_key)
    verified = verify_signed_record(message.encode(), key.public_key, device_id)
    assert verified.record == _record()


def test_every_single_bit_flip_of_a_signed_record_fails(device: tuple[SigningKey, bytes]) -> None:
    key, device_id = device
    raw = sign_record(_record(), device_id, key).raw
    for bit in range(len(raw) * 8):
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(VerificationError):
            verify_signed_record(bytes(flipped), key.public_key, device_id)


def test_record_signed_by_another_key_rejected(device: tuple[SigningKey, bytes]) -> None:
    key, device_id = device
    forger = SigningKey.generate()
    raw = sign_record(_record(), device_id, forger).raw  # claims the victim's kid
    with pytest.raises(VerificationError):
        verify_signed_record(raw, key.public_key, device_id)


def test_record_under_another_device_id_rejected(device: tuple[SigningKey, bytes]) -> None:
    key, device_id = device
    raw = sign_record(_record(), bytes(16), key).raw
    with pytest.raises(VerificationError, match="another device"):
        verify_signed_record(raw, key.public_key, device_id)


def test_cose_with_other_algorithm_rejected(device: tuple[SigningKey, bytes]) -> None:
    key, _ = device
    protected = cbor.encode({1: -7, 4: b"k"})  # ES256 claimed
    raw = cbor.encode(cbor.Tag(18, [protected, {}, b"x", bytes(64)]))
    with pytest.raises(MalformedRecord, match="EdDSA"):
        verify_sign1(raw, key.public_key)


def test_untagged_or_detached_cose_rejected(device: tuple[SigningKey, bytes]) -> None:
    key, _ = device
    raw = sign1(b"payload", b"kid", key)
    untagged = cbor.encode(cbor.decode(raw).value)  # type: ignore[union-attr]
    with pytest.raises(MalformedRecord):
        verify_sign1(untagged, key.public_key)
    detached = cbor.encode(cbor.Tag(18, [cbor.encode({1: -8, 4: b"kid"}), {}, None, bytes(64)]))
    with pytest.raises(MalformedRecord):
        verify_sign1(detached, key.public_key)


# --- record validation ------------------------------------------------------------------


def test_record_with_two_bodies_rejected() -> None:
    fields = cbor.decode(_record().to_cbor())
    assert isinstance(fields, dict)
    fields[12] = [0, 0, "x"]
    with pytest.raises(MalformedRecord, match="exactly one body"):
        Record.from_cbor(cbor.encode(fields))


@pytest.mark.parametrize("wall_fields", [
    {5: 1_764_403_200_000, 6: 1_764_403_200_000},  # synced and unsynced at once
    {5: 1_764_403_200_000, 6: True},  # the earlier draft's clock_synced bool
    {},  # no wall time at all
    {6: False},  # unsynced wall time that is not a time
])
def test_record_with_ambiguous_or_missing_wall_time_rejected(
    wall_fields: dict[int, object]
) -> None:
    fields = cbor.decode(_record().to_cbor())
    assert isinstance(fields, dict)
    del fields[5]
    fields.update(wall_fields)  # type: ignore[arg-type]
    with pytest.raises(MalformedRecord):
        Record.from_cbor(cbor.encode(fields))


@pytest.mark.parametrize("synced", [True, False])
def test_clock_sync_state_survives_the_wall_time_key(synced: bool) -> None:
    record = dataclasses.replace(_record(), clock_synced=synced)
    payload = record.to_cbor()
    assert payload[:1] == b"\xa8"
    assert record.header_cbor()[:1] == b"\xa7"
    assert (5 in cbor.decode(payload)) is synced  # type: ignore[operator]
    assert Record.from_cbor(payload) == record == Record.from_cbor_strict(payload)


def test_gap_must_point_backwards() -> None:
    with pytest.raises(MalformedRecord):
        _record(seq=5, body=Gap(5, 9, "outbox_full"))


def test_usage_credit_is_integer_floor() -> None:
    usage = Usage(0, 3_600_000, 3_599_999, 1_000_000)
    assert usage.credit_micro == 999_999
    assert credit_micro(3_600_000, 1_000_000) == 1_000_000
    assert credit_micro(1, 3_599_999) == 0


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_random_bytes_never_escape_record_decoders(data: bytes) -> None:
    for decoder in (Record.from_cbor, parse_signed_record, Batch.from_cbor, Receipt.from_cbor):
        with contextlib.suppress(MalformedRecord):
            decoder(data)  # type: ignore[operator]


@settings(max_examples=300)
@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_mutated_signed_records_raise_only_verification_errors(position: int, byte: int) -> None:
    key = SigningKey(Secret(bytes(range(32))))
    device_id = device_id_for(key.public_key)
    raw = bytearray(sign_record(_record(), device_id, key).raw)
    raw[position % len(raw)] = byte
    with contextlib.suppress(VerificationError):
        verify_signed_record(bytes(raw), key.public_key, device_id)


# --- sealing ----------------------------------------------------------------------------


@pytest.fixture
def sealed_setup(device: tuple[SigningKey, bytes]) -> dict[str, object]:
    _key, device_id = device
    alice, bob, eve = RecipientKey.generate(), RecipientKey.generate(), RecipientKey.generate()
    body, keys = new_key_epoch(device_id, 7, {"climate": [alice.public_key],
                                              "presence": [alice.public_key, bob.public_key]})
    epoch = _record(seq=7, body=body, stream="keys")
    values = [Measurement(214, -1, "Cel")]
    header = _record(seq=8, stream="climate")
    record = dataclasses.replace(header, body=seal_values(device_id, header, keys, values))
    return {"alice": alice, "bob": bob, "eve": eve, "epoch": epoch, "record": record,
            "device_id": device_id, "keys": keys, "values": values}


def test_granted_recipient_decrypts(sealed_setup: dict[str, object]) -> None:
    s = sealed_setup
    key = unwrap_stream_key(s["device_id"], 7, s["epoch"].body, "climate", s["alice"])  # type: ignore[arg-type, attr-defined]
    assert list(open_values(s["device_id"], s["record"], key)) == s["values"]  # type: ignore[arg-type]


def test_recipient_not_granted_a_stream_cannot_open_it(sealed_setup: dict[str, object]) -> None:
    s = sealed_setup
    for stranger in (s["bob"], s["eve"]):
        with pytest.raises(VerificationError, match="no key"):
            unwrap_stream_key(s["device_id"], 7, s["epoch"].body, "climate", stranger)  # type: ignore[arg-type, attr-defined]
    # Bob's presence key does not open the climate stream either.
    bob_presence = unwrap_stream_key(s["device_id"], 7, s["epoch"].body, "presence", s["bob"])  # type: ignore[arg-type, attr-defined]
    with pytest.raises(VerificationError):
        open_values(s["device_id"], s["record"], bob_presence)  # type: ignore[arg-type]


def test_ciphertext_moved_to_another_record_does_not_open(sealed_setup: dict[str, object]) -> None:
    s = sealed_setup
    record: Record = s["record"]  # type: ignore[assignment]
    key = unwrap_stream_key(s["device_id"], 7, s["epoch"].body, "climate", s["alice"])  # type: ignore[arg-type, attr-defined]
    for changed in (dataclasses.replace(record, seq=9, body=Sealed(2, record.body.ciphertext)),  # type: ignore[union-attr]
                    dataclasses.replace(record, wall_ms=record.wall_ms + 1),
                    dataclasses.replace(record, clock_synced=False),
                    dataclasses.replace(record, stream="presence")):
        with pytest.raises(VerificationError):
            open_values(s["device_id"], changed, key)  # type: ignore[arg-type]
    with pytest.raises(VerificationError):
        open_values(bytes(16), record, key)


def test_wrapped_key_bound_to_its_epoch_and_device(sealed_setup: dict[str, object]) -> None:
    s = sealed_setup
    with pytest.raises(VerificationError):
        unwrap_stream_key(s["device_id"], 6, s["epoch"].body, "climate", s["alice"])  # type: ignore[arg-type, attr-defined]
    with pytest.raises(VerificationError):
        unwrap_stream_key(bytes(16), 7, s["epoch"].body, "climate", s["alice"])  # type: ignore[arg-type, attr-defined]


def test_low_order_recipient_key_refused(device: tuple[SigningKey, bytes]) -> None:
    _, device_id = device
    with pytest.raises(VerificationError, match="low-order"):
        new_key_epoch(device_id, 0, {"climate": [bytes(32)]})


def test_nonces_differ_for_every_record_of_an_epoch(sealed_setup: dict[str, object]) -> None:
    assert len({value_nonce(seq) for seq in range(10_000)}) == 10_000


# --- batches, topics, receipts ------------------------------------------------------------


def test_batch_round_trip_and_caps() -> None:
    batch = Batch(42, (b"a", b"b"))
    assert Batch.from_cbor(batch.to_cbor()) == batch
    with pytest.raises(MalformedRecord):
        Batch(1, ())
    with pytest.raises(MalformedRecord):
        Batch.from_cbor(cbor.encode({1: 1, 2: 1, 3: [b"x"] * 1001}))


def test_topics_name_one_device_exactly() -> None:
    device_id = bytes(range(16))
    assert device_id_from_topic(records_topic(device_id)) == device_id
    assert device_id_from_topic(receipts_topic(device_id), "receipts") == device_id
    for bad in ("edgeproof/v1/devices/+/records", "edgeproof/v1/devices/ABC/records",
                records_topic(device_id).upper(), records_topic(device_id) + "/x",
                "edgeproof/v1/devices/" + "00" * 17 + "/records"):
        with pytest.raises(MalformedRecord):
            device_id_from_topic(bad)


def test_receipt_round_trip_and_forgery(device: tuple[SigningKey, bytes]) -> None:
    gateway = SigningKey.generate()
    _, device_id = device
    receipt = Receipt(device_id, 5, (
        Outcome(0, bytes(16), Status.ACCEPTED, leaf_index=10),
        Outcome(1, bytes(16), Status.DUPLICATE, leaf_index=3),
        Outcome(None, bytes(16), Status.REJECTED, reason="malformed"),
    ), "checkpoint note\n", 1_764_403_200_000, 12)
    raw = receipt.sign(gateway, b"\x01\x02\x03\x04")
    assert Receipt.verify(raw, gateway.public_key, b"\x01\x02\x03\x04") == receipt
    with pytest.raises(VerificationError):
        Receipt.verify(raw, SigningKey.generate().public_key, b"\x01\x02\x03\x04")
    with pytest.raises(VerificationError):
        Receipt.verify(raw, gateway.public_key, b"\x09\x09\x09\x09")
    forged = receipt.sign(SigningKey.generate(), b"\x01\x02\x03\x04")
    with pytest.raises(VerificationError):
        Receipt.verify(forged, gateway.public_key, b"\x01\x02\x03\x04")


_OUTCOMES = st.one_of(
    st.builds(lambda seq, h, i, dup: Outcome(seq, h, Status.DUPLICATE if dup else
                                             Status.ACCEPTED, leaf_index=i),
              st.none() | st.integers(0, 2**64 - 1), st.binary(min_size=16, max_size=16),
              st.integers(0, 2**64 - 1), st.booleans()),
    st.builds(lambda seq, h, why: Outcome(seq, h, Status.REJECTED, reason=why),
              st.none() | st.integers(0, 2**64 - 1), st.binary(min_size=16, max_size=16),
              st.text(min_size=1, max_size=40)))


@settings(max_examples=200, deadline=None)
@given(st.lists(_OUTCOMES, max_size=30), st.integers(0, 2**64 - 1), st.text(max_size=300),
       st.integers(0, 2**64 - 1), st.integers(0, 2**63 - 1))
def test_receipt_framed_by_hand_is_the_generic_deterministic_encoding_byte_for_byte(
        outcomes: list[Outcome], batch_id: int, note: str, issued: int, settled: int) -> None:
    receipt = Receipt(bytes(range(16)), batch_id, tuple(outcomes), note, issued, settled)
    generic = cbor.encode({1: 1, 2: receipt.device_id, 3: batch_id,
                           4: [o.to_cbor_value() for o in outcomes], 5: note, 6: issued,
                           7: settled})
    assert receipt.to_cbor() == generic
    assert Receipt.from_cbor(generic) == receipt


# --- key files --------------------------------------------------------------------------


def test_key_file_written_0600_and_refused_when_readable_by_others(tmp_path: Path) -> None:
    path = tmp_path / "device.key"
    key = SigningKey.generate()
    save_device_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_device_key(path).public_key == key.public_key
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_device_key(path)


def test_key_file_never_overwritten_silently(tmp_path: Path) -> None:
    path = tmp_path / "device.key"
    save_device_key(path, SigningKey.generate())
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        save_device_key(path, SigningKey.generate())


def test_secret_repr_is_redacted() -> None:
    key = SigningKey.generate()
    assert key.seed.value.hex() not in repr(key)
    assert "redacted" in repr(key)


@given(st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=0, max_value=2**64 - 1),
       st.booleans(), st.text(min_size=1, max_size=64).filter(str.isprintable),
       st.lists(st.tuples(st.integers(min_value=-(2**63), max_value=2**64 - 1),
                          st.integers(min_value=-30, max_value=30),
                          st.text(min_size=1, max_size=16).filter(str.isprintable)),
                min_size=1, max_size=16))
def test_hand_framed_encodings_equal_the_generic_encoder(
    seq: int, wall: int, synced: bool, stream: str, values: list[tuple[int, int, str]]
) -> None:
    measurements = tuple(Measurement(*v) for v in values)
    record = Record(boot=seq // 3, seq=seq, prev=bytes(range(32)), wall_ms=wall,
                    clock_synced=synced, mono_ms=wall // 7, stream=stream,
                    body=Values(measurements))
    fields = record.header_map()
    assert record.header_cbor() == cbor.encode(fields)
    assert record.to_cbor() == cbor.encode({**fields, 9: [m.to_cbor_value() for m in measurements]})
    assert Record.from_cbor(record.to_cbor()) == record
    assert encode_values(measurements) == cbor.encode([m.to_cbor_value() for m in measurements])


_FAST_PATH_BODIES = [
    Values((Measurement(214, -1, "Cel"), Measurement(-553, 2, "%RH"))),
    Values((Measurement(2**64 - 1, 30, "µS/cm"), Measurement(-(2**63), -30, "x" * 16))),
    Values(tuple(Measurement(n * 1000 - 8000, n - 8, "Cel") for n in range(16))),
    Sealed(3, bytes(40)),
    Sealed(2, bytes(300)),
    Usage(10, 5000, 4000, 360_000),
    Gap(1, 2, "outbox_full"),
]


@settings(max_examples=1500)
@given(st.integers(min_value=3, max_value=2**64 - 1), st.sampled_from(_FAST_PATH_BODIES),
       st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)),
                max_size=3), st.booleans())
def test_fast_record_decoder_never_accepts_what_the_generic_one_refuses(
    seq: int, body: object, mutations: list[tuple[int, int]], synced: bool
) -> None:
    from protocol.record import _record_fast  # noqa: PLC0415 - the private shortcut under test

    record = dataclasses.replace(_record(seq=seq, body=body), clock_synced=synced)
    payload = bytearray(record.to_cbor())
    for position, byte in mutations:
        payload[position % len(payload)] = byte
    fast = _record_fast(bytes(payload))
    try:
        generic: Record | None = Record.from_cbor_strict(bytes(payload))
    except MalformedRecord:
        generic = None
    assert fast == generic or fast is None
    if not mutations:
        assert fast is not None  # the shortcut takes every record we emit
    if fast is not None:
        assert fast.to_cbor() == bytes(payload)


# A values body as an attacker may frame it: any CBOR the generic decoder reads, and bytes.
_CBOR_ITEMS = st.recursive(
    st.integers(min_value=-(2**64), max_value=2**64 - 1) | st.sampled_from([-31, -30, 30, 31])
    | st.text(max_size=20) | st.binary(max_size=4) | st.booleans() | st.none(),
    lambda children: st.lists(children, max_size=17), max_leaves=40)


_MEASUREMENT_LISTS = st.lists(
    st.tuples(st.integers(min_value=-(2**64), max_value=2**64 - 1),
              st.integers(min_value=-31, max_value=31),
              st.sampled_from(["Cel", "%RH", "µS/cm", "x" * 16, "m\x00", "x" * 17, ""])
              | st.text(max_size=18)).map(list), min_size=1, max_size=17)


@settings(max_examples=1000)
@given(st.one_of(_MEASUREMENT_LISTS.map(cbor.encode), _CBOR_ITEMS.map(cbor.encode),
                 st.binary(max_size=40)),
       st.sampled_from([1, 3, 2**64 - 1]),
       st.sampled_from(["cpu", "é" * 64, "climate", "a\tb", "x" * 65]))
def test_fast_values_decoder_agrees_with_the_generic_one_on_any_body(
    body: bytes, seq: int, stream: str
) -> None:
    """Type confusion, overlong or negative-overflow integers, bad units, 0 or 17 values,
    trailing bytes, control characters and overlong streams: the shortcut for values
    bodies (and its caches, asked twice) gives the generic decoder's answer or none."""
    from protocol.record import _record_fast  # noqa: PLC0415 - the private shortcut under test

    fields = _record(seq=seq).header_cbor()[1:]
    assert fields.endswith(b"\x08\x63cpu")
    payload = b"\xa8" + fields[:-4] + cbor.encode(stream) + b"\x09" + body
    try:
        generic: Record | None = Record.from_cbor_strict(payload)
    except MalformedRecord:
        generic = None
    event("valid record" if generic is not None else "invalid record")
    for _ in range(2):  # the second time from the caches
        fast = _record_fast(payload)
        assert fast == generic or fast is None
        if generic is not None and isinstance(generic.body, Values):
            assert fast is not None  # every valid values record takes the shortcut
            assert fast.to_cbor() == payload
        try:
            assert Record.from_cbor(payload) == generic
        except MalformedRecord:
            assert generic is None


def test_seal_record_reuses_the_header_without_changing_a_byte(
    sealed_setup: dict[str, object]
) -> None:
    from protocol.sealing import seal_record  # noqa: PLC0415

    s = sealed_setup
    header = _record(seq=8, stream="climate")
    header.header_cbor()  # the cached encoding is what seal_record carries over
    fast = seal_record(s["device_id"], header, s["keys"], s["values"])  # type: ignore[arg-type]
    slow = dataclasses.replace(header, body=fast.body)
    assert fast == slow
    assert fast.to_cbor() == slow.to_cbor()


def test_sealing_shortcut_gives_the_public_bindings_bytes() -> None:
    import nacl.bindings  # noqa: PLC0415

    from protocol.sealing import _seal_fast  # noqa: PLC0415 - the private shortcut under test

    for size in (0, 1, 18, 200, 1024):
        plaintext, aad = os.urandom(size), os.urandom(size % 97)
        nonce, key = os.urandom(24), os.urandom(32)
        expected = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
            plaintext, aad, nonce, key)
        assert _seal_fast(plaintext, aad, nonce, key) == expected


def test_signing_shortcut_gives_the_public_bindings_signature() -> None:
    import nacl.signing  # noqa: PLC0415

    from protocol import sodium  # noqa: PLC0415

    assert sodium.lib is not None  # the shortcut is in use on this PyNaCl
    for size in (0, 1, 64, 199, 4096):
        key = SigningKey.generate()
        message = os.urandom(size)
        expected = nacl.signing.SigningKey(key.seed.value).sign(message).signature
        assert key.sign(message) == expected
        nacl.signing.VerifyKey(key.public_key).verify(message, expected)


_L = 2**252 + 27742317777372353535851937790883648493  # the order of Ed25519's base point
# Encodings of points of small order (the identity, order 2, 4 and 8 points) and a
# non-canonical y (p + 1): libsodium refuses each as a key and as R.
_SMALL_ORDER = [bytes([1]) + bytes(31), bytes(32), bytes([0xEC]) + b"\xff" * 30 + b"\x7f",
                bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
                bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
                bytes([0xEE]) + b"\xff" * 30 + b"\x7f"]


def _public_binding_accepts(public_key: bytes, message: bytes, signature: bytes) -> bool:
    import nacl.bindings  # noqa: PLC0415
    import nacl.exceptions  # noqa: PLC0415

    try:
        nacl.bindings.crypto_sign_open(signature + message, public_key)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError,
            nacl.exceptions.TypeError):
        return False
    return True


def _shortcut_accepts(public_key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        verify_ed25519(public_key, message, signature)
    except VerificationError:
        return False
    return True


def test_the_verify_shortcut_decides_as_the_public_binding_on_forged_and_edge_inputs() -> None:
    from protocol import sodium  # noqa: PLC0415

    assert sodium.lib is not None  # the shortcut is in use on this PyNaCl
    key = SigningKey.generate()
    message = os.urandom(150)
    good = key.sign(message)
    s = int.from_bytes(good[32:], "little")
    cases = [(key.public_key, message, good),  # honest: both accept
             (key.public_key, message + b"x", good),  # another message
             (key.public_key, message, good[:32] + (s + _L).to_bytes(32, "little")),  # S + L
             (key.public_key, message, good[:63] + bytes([good[63] ^ 0x80])),
             (key.public_key, message, bytes(64))]
    cases += [(small, message, good) for small in _SMALL_ORDER]  # a small-order key
    cases += [(key.public_key, message, small + good[32:]) for small in _SMALL_ORDER]  # R
    cases += [(small, b"", small + bytes(32)) for small in _SMALL_ORDER]  # 0 = 0 forgeries
    answers = [_shortcut_accepts(*case) for case in cases]
    assert answers == [_public_binding_accepts(*case) for case in cases]
    assert answers[0]
    assert not any(answers[1:])


@settings(max_examples=300, deadline=None)
@given(message=st.binary(max_size=300), flip=st.integers(0, 64 * 8),
       key=st.binary(min_size=32, max_size=32))
def test_the_verify_shortcut_agrees_with_the_public_binding_on_any_bytes(
        message: bytes, flip: int, key: bytes) -> None:
    signer = SigningKey(Secret(key))
    signature = bytearray(signer.sign(message))
    if flip < 64 * 8:  # one bit of the signature flipped; else the honest signature
        signature[flip // 8] ^= 1 << (flip % 8)
    for public_key in (signer.public_key, key):  # its key, and 32 arbitrary bytes as a key
        accepted = _shortcut_accepts(public_key, message, bytes(signature))
        assert accepted == _public_binding_accepts(public_key, message, bytes(signature))
        event(f"accepted={accepted}")


def test_with_body_refuses_a_body_that_does_not_fit_the_record() -> None:
    header = _record(seq=4, stream="climate")
    with pytest.raises(MalformedRecord):
        header.with_body(Sealed(5, bytes(34)))  # its key epoch would follow the record
    with pytest.raises(MalformedRecord):
        header.with_body(Gap(4, 4, "outbox_full"))  # a gap must lie before the record


_U64 = st.integers(0, (1 << 64) - 1)
_MEASUREMENTS = st.builds(Measurement, st.integers(-(1 << 63), (1 << 64) - 1),
                          st.integers(-30, 30), st.sampled_from(["Cel", "%RH", "s", "W", "lx"]))


@settings(max_examples=300, deadline=None)
@given(boot=_U64, key_seq=st.integers(0, 1 << 40), delta=st.integers(-2, 1 << 20),
       prev=st.binary(min_size=32, max_size=32) | st.binary(min_size=31, max_size=33),
       wall=st.integers(-1, (1 << 64)), synced=st.booleans(), mono=_U64,
       stream=st.sampled_from(["climate", "c", "x" * 23, "y" * 24, "z" * 64, "z" * 65, "bad\n"]),
       values=st.lists(_MEASUREMENTS, min_size=1, max_size=16).map(tuple)
       | st.lists(_MEASUREMENTS, min_size=0, max_size=17).map(tuple))
def test_stream_sealer_shortcut_signs_the_generic_encoders_bytes(
        boot: int, key_seq: int, delta: int, prev: bytes, wall: int, synced: bool, mono: int,
        stream: str, values: tuple[Measurement, ...]) -> None:
    """The write path's StreamSealer gives byte for byte what Record + seal_record +
    signed_bytes give, and declines (None) exactly where the generic path raises."""
    from protocol.sealing import EpochKeys, StreamSealer, seal_record  # noqa: PLC0415
    from protocol.signed import signed_bytes  # noqa: PLC0415

    key = SigningKey(Secret(bytes(range(32))))
    device_id = device_id_for(key.public_key)
    epoch = EpochKeys(key_seq, {stream: Secret(bytes(32 - i for i in range(32)))})
    seq = key_seq + delta
    sealer = StreamSealer(device_id, boot, epoch, stream)
    fast = sealer.sign(key, seq, prev, wall, synced, mono, values) if seq >= 0 else None
    try:
        header = Record(boot, seq, prev, wall, synced, mono, stream, Values(values))
        generic: bytes | None = signed_bytes(seal_record(device_id, header, epoch, values),
                                             device_id, key)
    except (MalformedRecord, ValueError):
        generic = None
    event("sealed" if generic is not None else "refused")
    assert fast == generic


# --- the receipt and batch shortcuts -----------------------------------------------------
# Receipt.from_cbor and Batch.from_cbor read the form their encoders make by hand
# (_receipt_fast, _batch_fast) and leave anything else to from_cbor_strict. These hold the
# shortcuts to the strict decoders: never an answer the strict one would not give, the
# very same objects, and every payload we make takes the shortcut.

_WIDTHS = {1: 24, 2: 25, 4: 26, 8: 27}


def _rewritten_head(data: bytes, which: int, new_head: Callable[[int, int], bytes]) -> bytes:
    """``data`` with one of its heads (``which``, modulo their number; string contents hold
    none) replaced by ``new_head(major, argument)``; unchanged if ``data`` has no head."""
    offsets, pos = [], 0
    with contextlib.suppress(MalformedRecord):
        while pos < len(data):
            offsets.append(pos)
            major, argument, pos = cbor.read_head(data, pos)
            if major in (2, 3):
                pos += argument
    if not offsets:
        return data
    start = offsets[which % len(offsets)]
    try:
        major, argument, stop = cbor.read_head(data, start)
    except MalformedRecord:
        return data
    return data[:start] + new_head(major, argument) + data[stop:]


def _widened(width: int) -> Callable[[int, int], bytes]:
    """A head with its argument in ``width`` bytes, longer than the shortest form (the
    same head if the argument does not fit)."""
    def head(major: int, argument: int) -> bytes:
        if argument >= 1 << (8 * width):
            return cbor.head(major, argument)
        return bytes(((major << 5) | _WIDTHS[width],)) + argument.to_bytes(width, "big")
    return head


# (operation, position, argument): overwrite, insert or delete a byte, cut the payload,
# append trailing bytes, write a head in a longer form than the shortest, or put a
# one-byte item (another key, status, small integer, null, true) where a head was.
# Positions (and heads) among the first and the last few (the map head, keys, ids, the
# receipt's closing fields) are drawn as often as any other; negative ones count from the
# end.
_POSITIONS = st.integers(-12, 12) | st.integers(min_value=0)
_PAYLOAD_MUTATIONS = st.lists(st.one_of(
    st.tuples(st.sampled_from(["set", "insert"]), _POSITIONS, st.integers(0, 255)),
    st.tuples(st.sampled_from(["delete", "truncate"]), _POSITIONS, st.just(0)),
    st.tuples(st.just("append"), st.integers(1, 3), st.integers(0, 255)),
    st.tuples(st.just("widen"), _POSITIONS, st.sampled_from(sorted(_WIDTHS))),
    st.tuples(st.just("replace"), _POSITIONS,
              st.integers(0, 0x17) | st.integers(0, 255) | st.sampled_from([0xF4, 0xF5, 0xF6]))),
    max_size=3)


def _mutated(data: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    for operation, position, argument in mutations:
        at = position % len(data) if data else 0
        if operation == "set" and data:
            data = data[:at] + bytes((argument,)) + data[at + 1:]
        elif operation == "insert":
            data = data[:at] + bytes((argument,)) + data[at:]
        elif operation == "delete":
            data = data[:at] + data[at + 1:]
        elif operation == "truncate":
            data = data[:at]
        elif operation == "append":
            data += bytes((argument,)) * position
        elif operation == "widen":
            data = _rewritten_head(data, position, _widened(argument))
        elif operation == "replace":
            data = _rewritten_head(data, position, lambda _m, _a, b=argument: bytes((b,)))
    return data


# A shortcut, the strict decoder, and the public one that tries the first, then the second.
_Decoders = tuple[Callable[[bytes], object | None], Callable[[bytes], object],
                  Callable[[bytes], object]]


def _held_to_strict(data: bytes, decoders: _Decoders) -> object | None:
    """Assert that the shortcut gives the strict decoder's object or nothing, and that the
    public decoder gives the strict answer; return the strict object (None if refused)."""
    fast_path, strict, public = decoders
    try:
        expected: object | None = strict(data)
    except MalformedRecord:
        expected = None
    fast = fast_path(data)
    if fast is not None:
        assert expected is not None, "the shortcut accepted what the strict decoder refuses"
        assert fast == expected
        assert repr(fast) == repr(expected)  # the same types too (Status, not 0; bytes)
    try:
        answer: object | None = public(data)
    except MalformedRecord:
        answer = None
    assert answer == expected
    assert repr(answer) == repr(expected)
    return expected


def _judged_alike(data: bytes, decoders: _Decoders) -> None:
    """:func:`_held_to_strict`, counting the strict decoder's answers (in a Hypothesis test)."""
    event("accepted" if _held_to_strict(data, decoders) is not None else "refused")


def _receipt_fast(data: bytes) -> Receipt | None:
    from protocol.receipt import _receipt_fast as fast  # noqa: PLC0415 - the private shortcut

    return fast(data)


def _batch_fast(data: bytes) -> Batch | None:
    from protocol.batch import _batch_fast as fast  # noqa: PLC0415 - the private shortcut

    return fast(data)


_RECEIPT_DECODERS: _Decoders = (_receipt_fast, Receipt.from_cbor_strict, Receipt.from_cbor)
_BATCH_DECODERS: _Decoders = (_batch_fast, Batch.from_cbor_strict, Batch.from_cbor)


_REASONS = st.text(min_size=1, max_size=40) | st.sampled_from(
    ["bad_signature", "é", "\x00", "x" * MAX_CHECKPOINT_CHARS, "€" * 2730])
_ANY_OUTCOME = st.one_of(
    st.builds(lambda seq, h, i, dup: Outcome(seq, h, Status.DUPLICATE if dup else
                                             Status.ACCEPTED, leaf_index=i),
              st.none() | _U64, st.binary(min_size=16, max_size=16), _U64, st.booleans()),
    st.builds(lambda seq, h, why: Outcome(seq, h, Status.REJECTED, reason=why),
              st.none() | _U64, st.binary(min_size=16, max_size=16), _REASONS))
_RECEIPTS = st.builds(
    Receipt, st.just(bytes(range(16))) | st.binary(max_size=40), _U64,
    st.lists(_ANY_OUTCOME, max_size=40).map(tuple),
    st.text(max_size=300) | st.sampled_from(["", "n" * MAX_CHECKPOINT_CHARS]), _U64, _U64)


@settings(max_examples=400, deadline=None)
@given(_RECEIPTS)
def test_a_receipt_the_gateway_signs_takes_the_fast_path_to_the_strict_decoders_object(
        receipt: Receipt) -> None:
    payload = receipt.to_cbor()
    expected = receipt if len(payload) <= MAX_RECEIPT_BYTES else None
    assert _held_to_strict(payload, _RECEIPT_DECODERS) == expected
    # no receipt we make misses the shortcut
    assert (_receipt_fast(payload) is not None) is (expected is not None)


@settings(max_examples=1500, deadline=None)
@given(_RECEIPTS, _PAYLOAD_MUTATIONS)
def test_a_receipt_fast_path_accepts_nothing_the_strict_decoder_refuses(
        receipt: Receipt, mutations: list[tuple[str, int, int]]) -> None:
    """A receipt with overwritten, inserted or deleted bytes, cut short, with bytes after
    it or a head longer than the shortest form: the shortcut agrees or declines."""
    _judged_alike(_mutated(receipt.to_cbor(), mutations), _RECEIPT_DECODERS)


# Values a decoder could mistake for the right one: booleans for integers, integers just
# out of range, text for bytes, strings one byte short or long, containers for scalars.
_CONFUSABLE = st.one_of(st.booleans(), st.none(), st.sampled_from([-1, 0, 3, 2**64 - 1, "", "1"]),
                        st.binary(min_size=15, max_size=17), _CBOR_ITEMS)


def _with_one_changed(fields: st.SearchStrategy[dict[cbor.Value, cbor.Value]],
                      keys: list[cbor.Value]) -> st.SearchStrategy[dict[cbor.Value, cbor.Value]]:
    """``fields`` with at most two entries replaced by confusable values, deleted, or one
    more entry added."""
    changes = st.dictionaries(st.sampled_from([*keys, len(keys) + 1, "x"]),
                              _CONFUSABLE | st.just("delete"), max_size=2)

    def apply(pair: tuple[dict[cbor.Value, cbor.Value], dict[cbor.Value, cbor.Value]]
              ) -> dict[cbor.Value, cbor.Value]:
        result, change = pair
        for key, value in change.items():
            if value == "delete":
                result.pop(key, None)
            else:
                result[key] = value
        return result

    return st.tuples(fields, changes).map(apply)


_OUTCOME_VALUE = _with_one_changed(st.fixed_dictionaries({
    0: st.none() | _U64, 1: st.binary(min_size=16, max_size=16), 2: st.integers(0, 2),
    3: _U64 | st.text(max_size=3)}), [0, 1, 2, 3]).map(
        lambda fields: [fields[k] for k in sorted(k for k in fields if isinstance(k, int))])


@settings(max_examples=600, deadline=None)
@given(_with_one_changed(st.fixed_dictionaries({
    1: st.just(1), 2: st.binary(max_size=20), 3: _U64,
    4: st.lists(_OUTCOME_VALUE, max_size=4), 5: st.text(max_size=20), 6: _U64, 7: _U64,
}), [1, 2, 3, 4, 5, 6, 7]))
def test_a_receipt_fast_path_confuses_no_type_the_strict_decoder_tells_apart(
        fields: dict[cbor.Value, cbor.Value]) -> None:
    """Booleans for integers, negative or too large integers, text for bytes, unknown
    statuses, details of the wrong kind, outcomes of three or five fields, missing and
    extra keys, all in deterministic CBOR."""
    _judged_alike(cbor.encode(fields), _RECEIPT_DECODERS)


def _grown_to(size: int, build: Callable[[int], bytes]) -> bytes:
    """``build(n)`` for the n that makes it exactly ``size`` bytes long."""
    n = 0
    for _ in range(8):
        data = build(n)
        if len(data) == size:
            return data
        n += size - len(data)
    raise AssertionError(f"no payload of {size} bytes")


def _receipt_of(outcomes: int, reason: str = "", checkpoint: str = "",
                device_id: bytes = bytes(16)) -> bytes:
    return Receipt(device_id, 1, tuple(
        Outcome(i, bytes(16), Status.REJECTED, reason=reason) if reason
        else Outcome(i, bytes(16), Status.ACCEPTED, leaf_index=i) for i in range(outcomes)),
        checkpoint, 2, 3).to_cbor()


@pytest.mark.parametrize(("payload", "accepted"), [
    (_receipt_of(MAX_OUTCOMES), True),
    (_receipt_of(MAX_OUTCOMES + 1), False),
    (_receipt_of(0), True),
    (cbor.encode({1: 1, 2: bytes(16), 3: 1, 4: [[None, bytes(16), 2, ""]], 5: "", 6: 2, 7: 3}),
     False),  # a rejection without a reason
    (_receipt_of(1, reason="r" * MAX_CHECKPOINT_CHARS, checkpoint="c" * MAX_CHECKPOINT_CHARS,
                 device_id=bytes(MAX_CHECKPOINT_CHARS)), True),
    (_receipt_of(1, reason="r" * (MAX_CHECKPOINT_CHARS + 1)), False),
    (_receipt_of(1, checkpoint="€" * 2731), False),  # 8193 bytes of UTF-8
    (_receipt_of(1, device_id=bytes(MAX_CHECKPOINT_CHARS + 1)), False),
    (_grown_to(MAX_RECEIPT_BYTES, lambda n: _receipt_of(MAX_OUTCOMES, reason="r" * 70,
                                                        checkpoint="c" * n)), True),
    (_grown_to(MAX_RECEIPT_BYTES + 1, lambda n: _receipt_of(MAX_OUTCOMES, reason="r" * 70,
                                                            checkpoint="c" * n)), False),
], ids=["1000-outcomes", "1001-outcomes", "no-outcomes", "empty-reason", "strings-at-the-cap",
        "reason-over-the-cap", "checkpoint-over-the-cap", "device-id-over-the-cap",
        "payload-at-the-cap", "payload-over-the-cap"])
def test_a_receipt_over_a_cap_is_refused_on_the_fast_path_as_on_the_strict_one(
        payload: bytes, accepted: bool) -> None:
    assert (_held_to_strict(payload, _RECEIPT_DECODERS) is not None) is accepted
    assert (_receipt_fast(payload) is not None) is accepted


_RECORD_BYTES = st.binary(max_size=300) | st.sampled_from(
    [0, 1, 23, 24, 255, 256, MAX_SIGNED_RECORD_BYTES]).map(lambda n: bytes((n % 251,)) * n)
_BATCHES = st.builds(Batch, _U64, st.lists(_RECORD_BYTES, min_size=1, max_size=40).map(tuple))


@settings(max_examples=400, deadline=None)
@given(_BATCHES)
def test_a_batch_a_device_sends_takes_the_fast_path_to_the_strict_decoders_object(
        batch: Batch) -> None:
    payload = batch.to_cbor()
    assert _held_to_strict(payload, _BATCH_DECODERS) == batch
    assert _batch_fast(payload) is not None  # no batch we make misses the shortcut


@settings(max_examples=1500, deadline=None)
@given(_BATCHES, _PAYLOAD_MUTATIONS)
def test_a_batch_fast_path_accepts_nothing_the_strict_decoder_refuses(
        batch: Batch, mutations: list[tuple[str, int, int]]) -> None:
    """The same for batches: a record's head overwritten or widened, a record cut short,
    bytes after the last record; the shortcut agrees with the strict decoder or declines."""
    _judged_alike(_mutated(batch.to_cbor(), mutations), _BATCH_DECODERS)


@settings(max_examples=600, deadline=None)
@given(_with_one_changed(st.fixed_dictionaries({
    1: st.just(1), 2: _U64, 3: st.lists(st.binary(max_size=30), min_size=1, max_size=4)
    | st.lists(st.binary(max_size=30) | _CONFUSABLE, max_size=4),
}), [1, 2, 3]))
def test_a_batch_fast_path_confuses_no_type_the_strict_decoder_tells_apart(
        fields: dict[cbor.Value, cbor.Value]) -> None:
    """Booleans for integers, negative batch ids, records that are not byte strings, no
    records, missing and extra keys, all in deterministic CBOR."""
    _judged_alike(cbor.encode(fields), _BATCH_DECODERS)


def _batch_of(records: int, size: int = 150, last: int | None = None) -> bytes:
    sizes = [size] * records + ([] if last is None else [last])
    return cbor.encode({1: 1, 2: 7, 3: [bytes(n) for n in sizes]})


@pytest.mark.parametrize(("payload", "accepted"), [
    (_batch_of(MAX_BATCH_RECORDS), True),
    (_batch_of(MAX_BATCH_RECORDS + 1), False),
    (_batch_of(0), False),
    (_batch_of(1, MAX_SIGNED_RECORD_BYTES), True),
    (_batch_of(1, MAX_SIGNED_RECORD_BYTES + 1), False),
    (_grown_to(MAX_BATCH_BYTES, lambda n: _batch_of(130, 4000, last=n)), True),
    (_grown_to(MAX_BATCH_BYTES + 1, lambda n: _batch_of(130, 4000, last=n)), False),
], ids=["1000-records", "1001-records", "no-records", "record-at-the-cap",
        "record-over-the-cap", "payload-at-the-cap", "payload-over-the-cap"])
def test_a_batch_over_a_cap_is_refused_on_the_fast_path_as_on_the_strict_one(
        payload: bytes, accepted: bool) -> None:
    assert (_held_to_strict(payload, _BATCH_DECODERS) is not None) is accepted
    assert (_batch_fast(payload) is not None) is accepted
