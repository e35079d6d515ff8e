"""Differential tests against other implementations of the same formats: cbor2 for
deterministic CBOR (RFC 8949 §4.2.1) and pycose for COSE_Sign1 with EdDSA (RFC 9052/9053).

What is checked is what an independent implementation sees in our bytes, not what our own
decoder sees: every byte string our decoder accepts must be the one encoding cbor2 gives the
value cbor2 reads from it, and every COSE_Sign1 either side makes must verify on the other.
"""

from __future__ import annotations

from typing import Any

import cbor2
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pycose.algorithms import EdDSA
from pycose.headers import KID, Algorithm
from pycose.keys import OKPKey
from pycose.keys.curves import Ed25519
from pycose.messages import Sign1Message

from protocol import cbor, cose
from protocol.errors import MalformedRecord
from protocol.keys import Secret, SigningKey

_FAST = settings(max_examples=300, derandomize=True, deadline=None)

# Integers at and around every head-width boundary, the 64-bit ends included.
_BOUNDARIES = sorted({b + d for b in (0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32,
                                      2**64 - 1) for d in (-1, 0, 1)} - {2**64})
_INTS = st.one_of(st.sampled_from(_BOUNDARIES + [-1 - b for b in _BOUNDARIES]),
                  st.integers(min_value=-(2**64), max_value=2**64 - 1))


def _plain(value: Any) -> Any:
    """cbor2's reading of a value in Python terms comparable with ours (tuples and frozen
    dicts inside tags, CBORTag for tags)."""
    if isinstance(value, cbor2.CBORTag):
        return cbor.Tag(value.tag, _plain(value.value))
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict) or type(value).__name__ == "frozendict":
        return {_plain(k): _plain(v) for k, v in value.items()}
    return value


def _to_cbor2(value: cbor.Value) -> Any:
    if isinstance(value, cbor.Tag):
        return cbor2.CBORTag(value.number, _to_cbor2(value.value))
    if isinstance(value, list):
        return [_to_cbor2(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_cbor2(v) for k, v in value.items()}
    return value


# Values whose maps only have one-byte keys: there RFC 7049 length-first order (cbor2's
# canonical=True) and RFC 8949 §4.2.1 bytewise order agree, so the bytes must be equal.
_one_byte_key_values = st.recursive(
    st.one_of(st.none(), st.booleans(), _INTS, st.binary(max_size=300),
              st.text(max_size=30)),
    lambda children: st.one_of(
        st.lists(children, max_size=30),
        st.dictionaries(st.integers(min_value=-24, max_value=23), children, max_size=6),
        st.builds(lambda v: cbor.Tag(18, v), children)),
    max_leaves=25)


@_FAST
@given(_one_byte_key_values)
def test_our_encoding_is_cbor2_canonical_encoding_where_the_rfcs_agree(value: cbor.Value) -> None:
    encoded = cbor.encode(value)
    assert _plain(cbor2.loads(encoded)) == value
    assert cbor2.dumps(_to_cbor2(value), canonical=True) == encoded


def _accepted_or_none(data: bytes) -> cbor.Value | None:
    try:
        return cbor.decode(data)
    except MalformedRecord:
        return None


# Byte strings to try: random bytes, and encodings of valid values with one byte replaced
# or a tag head put in front (so that the decoder's acceptance is actually exercised).
_candidates = st.one_of(
    st.binary(max_size=40),
    st.builds(lambda v, pos, byte: _mutate(cbor.encode(v), pos, byte),
              _one_byte_key_values, st.integers(min_value=0, max_value=1000),
              st.integers(min_value=0, max_value=255)),
    st.builds(lambda tag, v: tag + cbor.encode(v),
              st.sampled_from([b"\xc0", b"\xc1", b"\xc2", b"\xc3", b"\xd2", b"\xd8\x18",
                               b"\xd9\xd9\xf7"]), _one_byte_key_values),
)


def _mutate(data: bytes, pos: int, byte: int) -> bytes:
    buffer = bytearray(data)
    buffer[pos % len(buffer)] = byte
    return bytes(buffer)


@_FAST
@given(_candidates)
@example(bytes.fromhex("c24101"))    # bignum 1: cbor2 reads the integer 1, which is 01
@example(bytes.fromhex("d9d9f700"))  # self-described 0: cbor2 reads 0, which is 00
def test_every_accepted_byte_string_is_cbor2s_encoding_of_what_cbor2_reads(data: bytes) -> None:
    value = _accepted_or_none(data)
    if value is None:
        return
    try:
        theirs = cbor2.loads(data)
    except cbor2.CBORDecodeError as exc:  # pragma: no cover - a failure, with the reason
        raise AssertionError(f"we accept {data.hex()}, cbor2 refuses it: {exc}") from exc
    assert _plain(theirs) == value
    # cbor2's default encoder keeps map order and uses shortest heads: one value, one
    # byte string, whoever reads it.
    assert cbor2.dumps(theirs) == data


# --- COSE_Sign1 ---------------------------------------------------------------------------

_KEY = SigningKey(Secret(bytes(range(32))))
_PYCOSE_KEY = OKPKey(crv=Ed25519, d=bytes(range(32)), x=_KEY.public_key)


def _pycose_message(raw: bytes) -> Sign1Message:
    tagged = cbor2.loads(raw)
    assert tagged.tag == cose.COSE_SIGN1_TAG
    protected, unprotected, payload, signature = tagged.value
    return Sign1Message.from_cose_obj([protected, dict(unprotected), payload, signature], True)


# Payload and kid lengths across the one-, two- and three-byte bstr heads.
_payloads = st.one_of(st.binary(max_size=30),
                      st.sampled_from([23, 24, 255, 256, 4096]).map(lambda n: b"\xa5" * n))
_kids = st.binary(min_size=1, max_size=cose.MAX_KID_BYTES)


@settings(max_examples=60, derandomize=True, deadline=None)
@given(_payloads, _kids)
def test_sign1_verifies_with_pycose_and_pycose_sign1_verifies_here(
    payload: bytes, kid: bytes
) -> None:
    ours = cose.sign1(payload, kid, _KEY)
    message = _pycose_message(ours)
    message.key = _PYCOSE_KEY
    assert message.verify_signature()
    assert message.phdr == {Algorithm: EdDSA, KID: kid}
    assert message.payload == payload

    theirs = Sign1Message(phdr={Algorithm: EdDSA, KID: kid}, payload=payload)
    theirs.key = _PYCOSE_KEY
    encoded = theirs.encode()
    verified = cose.verify_sign1(encoded, _KEY.public_key, kid)
    assert verified.payload == payload
    # Ed25519 is deterministic: both sides made the same bytes.
    assert encoded == ours
