"""Deterministic CBOR: RFC 8949 §4.2.1 order and forms, strict decoding, caps."""

from __future__ import annotations

import contextlib

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import cbor
from protocol.errors import MalformedRecord

# RFC 8949 Appendix A examples that fall inside edgeproof's subset.
RFC8949_APPENDIX_A = [
    (0, "00"), (1, "01"), (10, "0a"), (23, "17"), (24, "1818"), (25, "1819"),
    (100, "1864"), (1000, "1903e8"), (1000000, "1a000f4240"),
    (1000000000000, "1b000000e8d4a51000"), (18446744073709551615, "1bffffffffffffffff"),
    (-1, "20"), (-10, "29"), (-100, "3863"), (-1000, "3903e7"),
    (-18446744073709551616, "3bffffffffffffffff"),
    (False, "f4"), (True, "f5"), (None, "f6"),
    (b"", "40"), (b"\x01\x02\x03\x04", "4401020304"),
    ("", "60"), ("a", "6161"), ("IETF", "6449455446"), ("\"\\", "62225c"),
    ("\u00fc", "62c3bc"), ("\u6c34", "63e6b0b4"), ("\U00010151", "64f0908591"),
    ([], "80"), ([1, 2, 3], "83010203"), ([1, [2, 3], [4, 5]], "8301820203820405"),
    (list(range(1, 26)), "98190102030405060708090a0b0c0d0e0f101112131415161718181819"),
    ({}, "a0"), ({1: 2, 3: 4}, "a201020304"), ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
    (["a", {"b": "c"}], "826161a161626163"),
    (cbor.Tag(18, b""), "d240"),  # not in Appendix A: the one tag of the subset
]


@pytest.mark.parametrize(("value", "hex_encoding"), RFC8949_APPENDIX_A)
def test_encoding_matches_rfc8949_appendix_a(value: cbor.Value, hex_encoding: str) -> None:
    assert cbor.encode(value).hex() == hex_encoding
    assert cbor.decode(bytes.fromhex(hex_encoding)) == value


def test_map_keys_sorted_bytewise_not_length_first() -> None:
    # 24 encodes as 0x1818 (two bytes), -1 as 0x20 (one byte). RFC 8949 §4.2.1 orders by
    # bytes: 0x18... < 0x20, so 24 comes first. The RFC 7049 length-first rule (cbor2's
    # canonical=True) would put -1 first.
    value = {-1: "n", 24: "b", "a": "t", b"\x00": "y", 0: "z", 256: "c"}
    encoded = cbor.encode(value)
    assert encoded.hex() == ("a6" "00617a" "1818" "6162" "190100" "6163" "20616e"
                             "4100" "6179" "6161" "6174")
    length_first = cbor2.dumps(value, canonical=True)
    assert length_first != encoded  # the difference this codec exists for
    assert cbor2.loads(encoded) == value  # another implementation reads it the same


@given(st.dictionaries(
    st.one_of(st.integers(min_value=-(2**64), max_value=2**64 - 1), st.text(max_size=8),
              st.binary(max_size=8)),
    st.integers(min_value=0, max_value=2**32), max_size=12))
def test_every_key_mix_sorts_by_encoded_bytes(value: dict[cbor.Value, cbor.Value]) -> None:
    encoded = cbor.encode(value)
    decoded = cbor2.loads(encoded)
    assert decoded == value
    keys = [cbor.encode(k) for k in value]
    # Re-encoding each key in emitted order must be strictly increasing bytewise.
    emitted = [cbor.encode(k) for k in cbor.decode(encoded)]  # type: ignore[union-attr]
    assert emitted == sorted(keys)


@pytest.mark.parametrize(("hex_input", "reason"), [
    ("1817", "cbor_not_deterministic"),          # 23 in two bytes
    ("190017", "cbor_not_deterministic"),        # 23 in three bytes
    ("1a0000ffff", "cbor_not_deterministic"),    # 65535 in five bytes
    ("5f4101ff", "cbor_not_deterministic"),      # indefinite-length byte string
    ("9f01ff", "cbor_not_deterministic"),        # indefinite-length array
    ("a202010100", "cbor_unsorted_keys"),        # {2:1, 1:0}
    ("a201010100", "cbor_duplicate_key"),        # {1:1, 1:0}
    ("f93c00", "cbor_unsupported"),              # half float 1.0
    ("fb3ff199999999999a", "cbor_unsupported"),  # double 1.1
    ("f7", "cbor_unsupported"),                  # undefined
    ("62c328", "cbor_bad_utf8"),
    ("0102", "cbor_trailing_bytes"),
    ("44010203", "cbor_truncated"),
    ("9a7fffffff", "cbor_too_many_items"),       # array claiming 2^31 items
    ("98ff01", "cbor_truncated"),                # 255 items claimed, one present
    ("", "cbor_truncated"),
    ("a1f500", "cbor_bad_key"),                  # boolean key
    ("a1800000", "cbor_bad_key"),                # array key
    ("c11a514b67b0", "cbor_unsupported"),        # tag 1 (Appendix A): only tag 18
])
def test_non_deterministic_or_unsupported_input_rejected_with_reason(
    hex_input: str, reason: str
) -> None:
    with pytest.raises(MalformedRecord) as info:
        cbor.decode(bytes.fromhex(hex_input))
    assert info.value.reason == reason


def test_deep_nesting_rejected_without_recursion_error() -> None:
    deep = b"\x81" * 100_000 + b"\x00"
    with pytest.raises(MalformedRecord) as info:
        cbor.decode(deep, cbor.Limits(max_bytes=200_000))
    assert info.value.reason == "cbor_depth"


def test_oversized_input_rejected_before_parsing() -> None:
    with pytest.raises(MalformedRecord) as info:
        cbor.decode(b"\x40" * 10, cbor.Limits(max_bytes=5))
    assert info.value.reason == "too_large"


def test_string_length_cap() -> None:
    with pytest.raises(MalformedRecord) as info:
        cbor.decode(cbor.encode(b"x" * 100), cbor.Limits(max_string=50))
    assert info.value.reason == "cbor_string_too_long"


@settings(max_examples=500)
@given(st.binary(max_size=256))
def test_random_bytes_give_value_or_malformed_never_another_error(data: bytes) -> None:
    try:
        value = cbor.decode(data)
    except MalformedRecord:
        return
    # Whatever decodes is deterministic: re-encoding reproduces the input exactly.
    assert cbor.encode(value) == data


values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**64), max_value=2**64 - 1),
              st.binary(max_size=20), st.text(max_size=20)),
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(st.integers(min_value=-1000, max_value=1000),
                                  st.text(max_size=5)), children, max_size=5)),
    max_leaves=20)


@given(values)
def test_round_trip_and_agreement_with_cbor2(value: cbor.Value) -> None:
    encoded = cbor.encode(value)
    assert cbor.decode(encoded) == value
    assert cbor2.loads(encoded) == value


@given(values, st.integers(min_value=0, max_value=1000), st.integers(min_value=0, max_value=255))
def test_mutated_encodings_never_escape_as_other_errors(
    value: cbor.Value, position: int, byte: int
) -> None:
    encoded = bytearray(cbor.encode(value))
    if encoded:
        encoded[position % len(encoded)] = byte
    with contextlib.suppress(MalformedRecord):
        cbor.decode(bytes(encoded))


@settings(max_examples=1000)
@given(st.binary(min_size=1, max_size=12), st.integers(min_value=0, max_value=11))
def test_hand_path_head_reader_refuses_exactly_what_the_decoder_refuses(
    data: bytes, pos: int
) -> None:
    # read_head serves the hand-written fast paths; it must agree with the strict decoder's
    # head reading on every input: same value, or the same refusal.
    reader = cbor._Reader(data, cbor.DEFAULT_LIMITS)  # noqa: SLF001 - the decoder's own reader
    reader.pos = pos
    try:
        expected: tuple[int, int, int] | str = (*reader.head(), reader.pos)
    except MalformedRecord as exc:
        expected = exc.reason
    try:
        got: tuple[int, int, int] | str = cbor.read_head(data, pos)
    except MalformedRecord as exc:
        got = exc.reason
    assert got == expected


# Tags other than 18 are outside the subset (docs/PROTOCOL.md §1). Accepting them broke
# "one value, one byte string": cbor2 reads the bignum c2 41 01 and the self-described
# d9d9f7 00 as the integer that 01 and 00 already encode.
@pytest.mark.parametrize(("hex_input", "other_reading"), [
    ("c24101", 1),            # bignum 1, not in preferred serialization (RFC 8949 §3.4.3)
    ("c2420001", 1),          # bignum with a leading zero
    ("c240", 0),              # bignum 0 as the empty string
    ("c34100", -1),           # negative bignum -1
    ("d9d9f700", 0),          # self-describe tag 55799 around 0
])
def test_non_preferred_bignum_and_self_describe_tags_rejected(
    hex_input: str, other_reading: int
) -> None:
    data = bytes.fromhex(hex_input)
    assert cbor2.loads(data) == other_reading  # another decoder: a second encoding of it
    assert cbor2.dumps(other_reading, canonical=True) != data
    with pytest.raises(MalformedRecord) as info:
        cbor.decode(data)
    assert info.value.reason == "cbor_unsupported"


def test_tag_with_content_of_the_wrong_type_rejected() -> None:
    # Tag 0 (date/time string) around null: cbor2 refuses it as invalid; so must we.
    with pytest.raises(MalformedRecord) as info:
        cbor.decode(bytes.fromhex("c0f6"))
    assert info.value.reason == "cbor_unsupported"


@pytest.mark.parametrize("number", [-1, True, 1, 2, 24, 2**64])
def test_encoder_refuses_tag_numbers_other_than_18_instead_of_wrong_bytes(number: int) -> None:
    # Tag(-1, 0) used to encode as d7 00 (tag 23: the head table indexed from the end),
    # Tag(True, 0) as c1 00 (tag 1), and Tag(2**64, 0) raised OverflowError.
    with pytest.raises(TypeError):
        cbor.encode(cbor.Tag(number, 0))
    assert cbor.encode(cbor.Tag(18, 0)) == b"\xd2\x00"


@pytest.mark.parametrize("key", [True, False, None, cbor.Tag(18, 0)])
def test_encoder_refuses_map_keys_the_decoder_refuses(key: cbor.Value) -> None:
    # {True: 1} used to encode as a1 f5 01, which decode() refuses (cbor_bad_key).
    with pytest.raises(TypeError):
        cbor.encode({key: 1})
