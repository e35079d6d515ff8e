"""Tests for protocol.note and protocol.checkpoint.

Specs: https://c2sp.org/signed-note and https://c2sp.org/tlog-checkpoint.

Each test is named after the attack or mistake it catches.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.checkpoint import MAX_TREE_SIZE, Checkpoint, checkpoint_hash, checkpoint_size
from protocol.errors import MalformedRecord, VerificationError
from protocol.note import (
    MAX_NOTE_BYTES,
    MAX_SIGNATURES,
    NoteSignature,
    NoteSigner,
    NoteVerifier,
    compute_key_id,
    parse_note,
    sign_note,
)

# --- fixtures ---------------------------------------------------------------------------

# The example key and note from golang.org/x/mod/sumdb/note (package doc and note_test.go).
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT
    + "\n"
    + "\u2014 PeterNeumann "
    + "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKv"
    + "qfqdngotpRZb6KE6RyyBwJnAM=\n"
)

ORIGIN = "edgeproof.example/gateway/1"
LOG = NoteSigner(ORIGIN, bytes(range(32)))
OTHER = NoteSigner("other.example/log", bytes(range(32, 64)))
SAME_NAME_OTHER_KEY = NoteSigner(ORIGIN, bytes(range(64, 96)))

RFC_ROOT_8 = bytes.fromhex("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")
# The eight leaves of the RFC 6962 / RFC 9162 Merkle tree test data.
RFC_LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]

CP = Checkpoint(ORIGIN, 8, RFC_ROOT_8)
CP_EXT = Checkpoint(
    ORIGIN,
    8,
    RFC_ROOT_8,
    ("prev " + base64.b64encode(b"\x11" * 32).decode(), "balances " + "A" * 43 + "="),
)

VECTORS_PATH = Path(__file__).parent / "vectors" / "checkpoints.json"
GENERATOR_PATH = Path(__file__).parent / "vectors" / "make_checkpoint_vectors.py"


def _mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 section 2.1.1 Merkle Tree Hash, written out independently of the code."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + _mth(leaves[:k]) + _mth(leaves[k:])).digest()


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_checkpoint_vectors", GENERATOR_PATH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _byte_mutations(data: bytes) -> Iterator[bytes]:
    """Every single-byte change: each bit flipped, the byte inverted, the byte deleted."""
    for i in range(len(data)):
        for mask in (0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0xFF):
            yield data[:i] + bytes([data[i] ^ mask]) + data[i + 1 :]
        yield data[:i] + data[i + 1 :]


def _char_mutations(text: str) -> Iterator[str]:
    """Every single-character change of ASCII text that stays ASCII, and every deletion."""
    for i, ch in enumerate(text):
        for bit in range(7):
            yield text[:i] + chr(ord(ch) ^ (1 << bit)) + text[i + 1 :]
        yield text[:i] + text[i + 1 :]


def _sig_line(name: str, raw: bytes) -> str:
    return f"\u2014 {name} {base64.b64encode(raw).decode()}\n"


# --- keys ---------------------------------------------------------------------------------


def test_key_id_is_first_four_bytes_of_sha256_name_newline_type_pubkey() -> None:
    expected = hashlib.sha256(ORIGIN.encode() + b"\x0a" + b"\x01" + LOG.public_key).digest()[:4]
    assert LOG.key_id == expected
    assert compute_key_id(ORIGIN, LOG.public_key) == expected
    assert LOG.verifier().key_id == expected
    assert LOG.verifier_text().split("+")[1] == expected.hex()


def test_go_reference_keys_parse_and_reencode_byte_for_byte() -> None:
    signer = NoteSigner.from_private_text(GO_SKEY)
    assert signer.name == "PeterNeumann"
    assert signer.key_id.hex() == "c74f20a3"
    assert signer.verifier_text() == GO_VKEY
    assert signer.private_text() == GO_SKEY
    verifier = NoteVerifier.from_text(GO_VKEY)
    assert verifier.key_id == signer.key_id
    assert verifier.public_key == signer.public_key
    assert verifier.verifier_text() == GO_VKEY


def test_go_reference_note_reproduced_byte_for_byte() -> None:
    # Ed25519 is deterministic, so our signature must equal the Go one exactly.
    assert NoteSigner.from_private_text(GO_SKEY).sign(GO_TEXT) == GO_NOTE


def test_go_reference_note_verifies() -> None:
    note = NoteVerifier.from_text(GO_VKEY).verify(GO_NOTE)
    assert note.text == GO_TEXT
    assert [s.name for s in note.verified] == ["PeterNeumann"]
    assert NoteVerifier.from_text(GO_VKEY).verify(GO_NOTE.encode()).text == GO_TEXT


def test_go_reference_note_tampered_rejected() -> None:
    with pytest.raises(VerificationError):
        NoteVerifier.from_text(GO_VKEY).verify(GO_NOTE.replace("cryptography", "cryptographY"))


@given(seed=st.binary(min_size=32, max_size=32), name=st.sampled_from([ORIGIN, "a", "é/ü"]))
def test_verifier_and_private_key_text_round_trip(seed: bytes, name: str) -> None:
    signer = NoteSigner(name, seed)
    verifier = NoteVerifier.from_text(signer.verifier_text())
    assert (verifier.name, verifier.key_id, verifier.public_key) == (
        signer.name,
        signer.key_id,
        signer.public_key,
    )
    assert verifier.verifier_text() == signer.verifier_text()
    again = NoteSigner.from_private_text(signer.private_text())
    assert again.private_text() == signer.private_text()
    assert again.verifier_text() == signer.verifier_text()


def test_seed_does_not_leak_through_repr() -> None:
    assert LOG.private_text().split("+")[-1] not in repr(LOG)
    assert bytes(range(32)).hex() not in repr(LOG)


def test_forged_key_id_in_verifier_text_rejected() -> None:
    name, _, key = GO_VKEY.split("+", 2)
    with pytest.raises(MalformedRecord) as exc:
        NoteVerifier.from_text(f"{name}+00000000+{key}")
    assert exc.value.reason == "key_id_mismatch"


@pytest.mark.parametrize(
    "text",
    [
        GO_VKEY.replace("c74f20a3", "C74F20A3"),  # aliasing: uppercase hex of the same ID
        GO_VKEY.replace("c74f20a3", "c74f20a"),
        GO_VKEY.replace("c74f20a3", "0c74f20a3"),
        GO_VKEY + "\n",
        " " + GO_VKEY,
        GO_VKEY.replace("ARpc", "Apc"),  # truncated key
        GO_VKEY.replace("+ARpc", "+AhpC"),  # type byte 0x02
        "PeterNeumann+c74f20a3",
        "+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "",
    ],
)
def test_noncanonical_or_truncated_verifier_text_rejected(text: str) -> None:
    with pytest.raises(MalformedRecord):
        NoteVerifier.from_text(text)


def test_any_single_byte_change_in_verifier_key_rejected() -> None:
    for mutated in _char_mutations(GO_VKEY):
        with pytest.raises(VerificationError):
            NoteVerifier.from_text(mutated).verify(GO_NOTE)


def test_any_single_byte_change_in_private_key_rejected() -> None:
    for mutated in _char_mutations(GO_SKEY):
        try:
            signer = NoteSigner.from_private_text(mutated)
        except MalformedRecord:
            continue
        pytest.fail(f"mutated private key accepted: {mutated!r} -> {signer!r}")


@pytest.mark.parametrize("name", ["", "has space", "has+plus", "tab\there", "nbsp\u00a0x", "x\n"])
def test_invalid_key_names_rejected(name: str) -> None:
    with pytest.raises(MalformedRecord) as exc:
        NoteSigner(name, bytes(32))
    assert exc.value.reason == "bad_key_name"


@pytest.mark.parametrize("seed", [b"", bytes(31), bytes(33)])
def test_wrong_length_seed_rejected(seed: bytes) -> None:
    with pytest.raises(MalformedRecord):
        NoteSigner(ORIGIN, seed)


# --- signed notes ---------------------------------------------------------------------------


def test_sign_verify_round_trip() -> None:
    body = CP_EXT.to_body()
    note = LOG.sign(body)
    parsed = LOG.verifier().verify(note)
    assert parsed.text == body
    assert parsed.signatures == parsed.verified
    assert parsed.verified[0].name == ORIGIN
    assert parsed.verified[0].key_id == LOG.key_id


@pytest.mark.parametrize("note", [LOG.sign(CP.to_body()), LOG.sign(CP_EXT.to_body())])
def test_any_single_byte_change_in_signed_note_rejected(note: str) -> None:
    verifier = LOG.verifier()
    for mutated in _byte_mutations(note.encode()):
        with pytest.raises(VerificationError):
            verifier.verify(mutated)


def test_any_single_byte_change_in_go_note_rejected() -> None:
    verifier = NoteVerifier.from_text(GO_VKEY)
    for mutated in _byte_mutations(GO_NOTE.encode()):
        with pytest.raises(VerificationError):
            verifier.verify(mutated)


def test_note_signed_by_same_name_but_other_key_rejected() -> None:
    note = SAME_NAME_OTHER_KEY.sign(CP.to_body())
    with pytest.raises(VerificationError):
        LOG.verifier().verify(note)


def test_note_signed_only_by_other_key_rejected() -> None:
    note = OTHER.sign(CP.to_body())
    with pytest.raises(VerificationError) as exc:
        LOG.verifier().verify(note)
    assert not isinstance(exc.value, MalformedRecord)


def test_unknown_signatures_are_ignored() -> None:
    body = CP.to_body()
    unknown = _sig_line("pq.example/witness", b"\x01\x02\x03\x04" + bytes(2420))  # any length
    for note in (
        sign_note(body, [OTHER, LOG]),
        sign_note(body, [LOG, OTHER]),
        sign_note(body, [SAME_NAME_OTHER_KEY, LOG]),
        LOG.sign(body) + unknown,
    ):
        parsed = LOG.verifier().verify(note)
        assert parsed.text == body
        assert [s.key_id for s in parsed.verified] == [LOG.key_id]
        assert len(parsed.signatures) == 2


def test_signature_sharing_only_name_or_only_key_id_is_ignored() -> None:
    body = CP.to_body()
    good = LOG.signature_for(body)
    same_name = _sig_line(ORIGIN, b"\x00\x00\x00\x00" + bytes(64))
    same_id = _sig_line("impostor.example", LOG.key_id + bytes(64))
    note = body + "\n" + same_name + same_id + good.to_line()
    assert LOG.verifier().verify(note).verified == (good,)


def test_forged_extra_signature_by_trusted_key_rejects_whole_note() -> None:
    # Signature stuffing: a valid signature plus a second line with the trusted name and ID.
    body = CP.to_body()
    good = LOG.signature_for(body)
    forged = NoteSignature(ORIGIN, LOG.key_id, bytes(64)).to_line()
    for note in (body + "\n" + good.to_line() + forged, body + "\n" + forged + good.to_line()):
        with pytest.raises(VerificationError):
            LOG.verifier().verify(note)


@pytest.mark.parametrize("length", [1, 32, 63, 65, 128])
def test_wrong_length_signature_by_trusted_key_rejected(length: int) -> None:
    body = CP.to_body()
    sig = LOG.signature_for(body).signature
    raw = (sig * 3)[:length]
    note = body + "\n" + _sig_line(ORIGIN, LOG.key_id + raw)
    with pytest.raises(VerificationError):
        LOG.verifier().verify(note)


def test_signature_from_other_body_replayed_rejected() -> None:
    sig = LOG.signature_for(Checkpoint(ORIGIN, 7, RFC_ROOT_8).to_body())
    note = CP.to_body() + "\n" + sig.to_line()
    with pytest.raises(VerificationError):
        LOG.verifier().verify(note)


def test_duplicate_blank_line_before_signatures_rejected() -> None:
    note = LOG.sign(CP.to_body())
    body = CP.to_body()
    with pytest.raises(VerificationError):
        LOG.verifier().verify(note.replace(body + "\n", body + "\n\n", 1))


def test_missing_blank_line_rejected() -> None:
    note = LOG.sign(CP.to_body())
    with pytest.raises(MalformedRecord) as exc:
        LOG.verifier().verify(note.replace("\n\n", "\n", 1))
    assert exc.value.reason == "missing_blank_line"


def test_blank_line_without_signatures_rejected() -> None:
    with pytest.raises(MalformedRecord) as exc:
        parse_note(CP.to_body() + "\n")
    assert exc.value.reason == "missing_signatures"


def test_note_text_may_contain_blank_lines_per_spec() -> None:
    body = "first\n\nthird\n\n"
    note = LOG.sign(body)
    assert LOG.verifier().verify(note).text == body


def test_missing_final_newline_rejected() -> None:
    note = LOG.sign(CP.to_body())
    with pytest.raises(MalformedRecord) as exc:
        LOG.verifier().verify(note[:-1])
    assert exc.value.reason == "missing_final_newline"


def test_oversize_note_rejected_and_cap_is_exact() -> None:
    line_len = len(LOG.sign("x\n").encode()) - len(b"x\n\n")
    fits = "a" * (MAX_NOTE_BYTES - line_len - 2) + "\n"
    note = LOG.sign(fits)
    assert len(note.encode()) == MAX_NOTE_BYTES
    assert LOG.verifier().verify(note).text == fits

    too_big = "a" + fits
    with pytest.raises(MalformedRecord) as exc:
        LOG.sign(too_big)
    assert exc.value.reason == "note_too_large"
    forged = too_big + "\n" + LOG.signature_for(too_big).to_line()
    for candidate in (forged, forged.encode(), "é" * (MAX_NOTE_BYTES // 2 + 1) + note):
        with pytest.raises(MalformedRecord) as exc:
            LOG.verifier().verify(candidate)
        assert exc.value.reason == "note_too_large"


def test_too_many_signature_lines_rejected() -> None:
    body = CP.to_body()
    filler = [_sig_line(f"w{i}.example", bytes(5)) for i in range(MAX_SIGNATURES)]
    ok = body + "\n" + "".join(filler[: MAX_SIGNATURES - 1]) + LOG.signature_for(body).to_line()
    assert LOG.verifier().verify(ok).text == body
    with pytest.raises(MalformedRecord) as exc:
        LOG.verifier().verify(ok + filler[-1])
    assert exc.value.reason == "too_many_signatures"


@pytest.mark.parametrize(
    "bad",
    [
        b"\xff",  # not UTF-8 at all
        b"\xc0\xaf",  # overlong encoding of "/"
        b"\xed\xa0\x80",  # encoded UTF-16 surrogate
        b"\xe2\x80",  # truncated sequence
    ],
)
def test_non_utf8_note_rejected(bad: bytes) -> None:
    note = LOG.sign(CP.to_body()).encode()
    with pytest.raises(MalformedRecord) as exc:
        LOG.verifier().verify(note.replace(b"gateway", b"gate" + bad, 1))
    assert exc.value.reason == "not_utf8"


def test_lone_surrogate_in_str_note_rejected() -> None:
    note = LOG.sign(CP.to_body())
    with pytest.raises(MalformedRecord) as exc:
        LOG.verifier().verify(note.replace("gateway", "gate\udc80", 1))
    assert exc.value.reason == "not_utf8"
    with pytest.raises(MalformedRecord):
        LOG.sign("a\udc80\n")


def test_crlf_line_endings_rejected() -> None:
    note = LOG.sign(CP.to_body())
    with pytest.raises(MalformedRecord) as exc:
        LOG.verifier().verify(note.replace("\n", "\r\n"))
    assert exc.value.reason == "control_character"
    with pytest.raises(MalformedRecord):
        LOG.sign(CP.to_body().replace("\n", "\r\n"))


@pytest.mark.parametrize("ch", ["\x00", "\t", "\x0b", "\x1b", "\x1f"])
def test_control_characters_rejected(ch: str) -> None:
    with pytest.raises(MalformedRecord) as exc:
        parse_note(f"a{ch}b\n\n" + LOG.signature_for("ab\n").to_line())
    assert exc.value.reason == "control_character"
    with pytest.raises(MalformedRecord):
        LOG.sign(f"a{ch}b\n")


def _noncanonical(b64: str) -> str:
    """Return a different base64 string that decodes to the same bytes (unused bits set)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    stripped = b64.rstrip("=")
    last = alphabet.index(stripped[-1])
    changed = stripped[:-1] + alphabet[last + 1] + b64[len(stripped) :]
    assert base64.b64decode(changed) == base64.b64decode(b64)
    return changed


def _bad_signature_lines() -> list[tuple[str, str]]:
    good = LOG.signature_for(CP.to_body()).to_line()[:-1]
    b64 = good.rsplit(" ", 1)[1]
    return [
        ("hyphen", good.replace("\u2014", "-", 1)),
        ("en dash", good.replace("\u2014", "\u2013", 1)),
        ("no space after dash", good.replace("\u2014 ", "\u2014", 1)),
        ("double space", good.replace(f" {b64}", f"  {b64}")),
        ("trailing space", good + " "),
        ("no signature", f"\u2014 {ORIGIN}"),
        ("empty signature", f"\u2014 {ORIGIN} "),
        ("empty name", f"\u2014  {b64}"),
        ("unpadded", good.rstrip("=")),
        ("urlsafe alphabet", f"\u2014 {ORIGIN} " + b64.replace("/", "_").replace("+", "-") + "_"),
        ("noncanonical base64", good.replace(b64, _noncanonical(b64))),
        ("only key id", _sig_line(ORIGIN, LOG.key_id)[:-1]),
        ("not a signature", "hello"),
    ]


@pytest.mark.parametrize(("label", "line"), _bad_signature_lines())
def test_malformed_signature_lines_rejected(label: str, line: str) -> None:
    with pytest.raises(MalformedRecord):
        LOG.verifier().verify(CP.to_body() + "\n" + line + "\n")


def test_signing_text_without_final_newline_rejected() -> None:
    with pytest.raises(MalformedRecord):
        LOG.sign("no newline")
    with pytest.raises(MalformedRecord):
        LOG.sign("")


def test_sign_note_needs_a_signer() -> None:
    with pytest.raises(MalformedRecord):
        sign_note(CP.to_body(), [])


# --- checkpoints ----------------------------------------------------------------------------


def test_checkpoint_body_layout() -> None:
    assert CP.to_body() == f"{ORIGIN}\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n"
    assert CP_EXT.to_body().endswith(f"\n{CP_EXT.extensions[0]}\n{CP_EXT.extensions[1]}\n")


def test_checkpoint_round_trips_through_body_and_note() -> None:
    for cp in (CP, CP_EXT, Checkpoint(ORIGIN, 0, hashlib.sha256(b"").digest())):
        assert Checkpoint.from_body(cp.to_body()) == cp
        assert Checkpoint.from_note(cp.sign(LOG), LOG.verifier()) == cp


_line_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40
)


@given(
    origin=_line_text,
    size=st.integers(min_value=0, max_value=MAX_TREE_SIZE),
    root=st.binary(min_size=32, max_size=32),
    extensions=st.lists(_line_text, max_size=4),
)
@settings(deadline=None)
def test_checkpoint_round_trip_property(
    origin: str, size: int, root: bytes, extensions: list[str]
) -> None:
    cp = Checkpoint(origin, size, root, tuple(extensions))
    body = cp.to_body()
    assert Checkpoint.from_body(body) == cp
    note = cp.sign(LOG, require_origin_match=False)
    assert Checkpoint.from_note(note, LOG.verifier(), require_origin_match=False) == cp


def test_extension_lines_are_covered_by_signature() -> None:
    note = CP_EXT.sign(LOG)
    prev = CP_EXT.extensions[0]
    tampered = [
        note.replace(prev, "prev " + base64.b64encode(b"\x22" * 32).decode()),  # rewrite chain
        note.replace(prev + "\n", "", 1),  # drop the prev link
        note.replace(prev + "\n", prev + "\nforged extension\n", 1),  # add a line
        note.replace("\n\n", "\nforged extension\n\n", 1),  # append a line
    ]
    for candidate in tampered:
        assert candidate != note
        with pytest.raises(VerificationError):
            Checkpoint.from_note(candidate, LOG.verifier())


def test_extensions_cannot_be_added_to_a_plain_checkpoint() -> None:
    note = CP.sign(LOG)
    with pytest.raises(VerificationError):
        Checkpoint.from_note(note.replace("\n\n", "\nprev x\n\n", 1), LOG.verifier())


def test_checkpoint_from_another_log_key_rejected() -> None:
    with pytest.raises(VerificationError):
        Checkpoint.from_note(CP.sign(SAME_NAME_OTHER_KEY), LOG.verifier())
    other_cp = Checkpoint(OTHER.name, 8, RFC_ROOT_8)
    with pytest.raises(VerificationError):
        Checkpoint.from_note(other_cp.sign(OTHER), LOG.verifier())


def test_checkpoint_origin_must_match_key_name() -> None:
    # Log-identity confusion: a key trusted for one log vouching for another log's origin.
    foreign = Checkpoint("someone-else.example/log", 8, RFC_ROOT_8)
    with pytest.raises(MalformedRecord) as exc:
        foreign.sign(LOG)
    assert exc.value.reason == "origin_mismatch"
    note = foreign.sign(LOG, require_origin_match=False)
    with pytest.raises(VerificationError):
        Checkpoint.from_note(note, LOG.verifier())
    relaxed = Checkpoint.from_note(note, LOG.verifier(), require_origin_match=False)
    assert relaxed == foreign


def test_validly_signed_text_that_is_not_a_checkpoint_rejected() -> None:
    with pytest.raises(MalformedRecord) as exc:
        Checkpoint.from_note(GO_NOTE, NoteVerifier.from_text(GO_VKEY), require_origin_match=False)
    assert exc.value.reason == "too_few_lines"
    root = base64.b64encode(RFC_ROOT_8).decode()
    signed = LOG.sign(f"{ORIGIN}\n08\n{root}\n")
    with pytest.raises(MalformedRecord) as exc:
        Checkpoint.from_note(signed, LOG.verifier())
    assert exc.value.reason == "bad_tree_size"


def test_oversize_checkpoint_note_rejected() -> None:
    huge = Checkpoint(ORIGIN, 8, RFC_ROOT_8, ("x" * MAX_NOTE_BYTES,))
    with pytest.raises(MalformedRecord) as exc:
        huge.sign(LOG)
    assert exc.value.reason == "note_too_large"
    with pytest.raises(MalformedRecord):
        Checkpoint.from_body(huge.to_body())


_ROOT_B64 = base64.b64encode(RFC_ROOT_8).decode()


@pytest.mark.parametrize(
    "size",
    [
        "00",  # leading zero
        "08",
        "-1",  # negative
        "-0",
        "+8",
        " 8",
        "8 ",
        "8a",  # non-digit
        "0x8",
        "1_0",
        "8.0",
        "1e3",
        "\u0668",  # ARABIC-INDIC DIGIT EIGHT: int() accepts it, we must not
        "\uff18",  # FULLWIDTH DIGIT EIGHT
        "",
        str(MAX_TREE_SIZE + 1),  # does not fit in 64 bits
        "1" * 25,
        "9" * 5000,  # longer than int()'s default digit limit
    ],
)
def test_noncanonical_or_out_of_range_tree_size_rejected(size: str) -> None:
    with pytest.raises(MalformedRecord) as exc:
        Checkpoint.from_body(f"{ORIGIN}\n{size}\n{_ROOT_B64}\n")
    assert exc.value.reason == "bad_tree_size"


def test_largest_tree_size_accepted() -> None:
    cp = Checkpoint.from_body(f"{ORIGIN}\n{MAX_TREE_SIZE}\n{_ROOT_B64}\n")
    assert cp.size == MAX_TREE_SIZE


@pytest.mark.parametrize(
    "root",
    [
        base64.b64encode(RFC_ROOT_8[:31]).decode(),  # 31 bytes
        base64.b64encode(RFC_ROOT_8 + b"\x00").decode(),  # 33 bytes
        base64.b64encode(hashlib.sha512(b"").digest()).decode(),  # 64 bytes
        _ROOT_B64.rstrip("="),  # unpadded
        base64.urlsafe_b64encode(RFC_ROOT_8).decode(),  # wrong alphabet (has - or _)
        _noncanonical(_ROOT_B64),  # same bytes, different text
        " " + _ROOT_B64,
        RFC_ROOT_8.hex(),  # hex instead of base64
        "",
    ],
)
def test_root_hash_of_wrong_length_or_encoding_rejected(root: str) -> None:
    with pytest.raises(MalformedRecord) as exc:
        Checkpoint.from_body(f"{ORIGIN}\n8\n{root}\n")
    assert exc.value.reason == "bad_root_hash"


def test_urlsafe_root_fixture_really_differs() -> None:
    assert base64.urlsafe_b64encode(RFC_ROOT_8).decode() != _ROOT_B64


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (f"{ORIGIN}\n8\n", "too_few_lines"),
        (f"{ORIGIN}\n8\n{_ROOT_B64}", "missing_final_newline"),
        (f"\n8\n{_ROOT_B64}\n", "bad_origin"),
        (f"{ORIGIN}\n8\n{_ROOT_B64}\n\n", "bad_extension"),  # trailing blank line
        (f"{ORIGIN}\n8\n{_ROOT_B64}\nprev x\n\nbalances y\n", "bad_extension"),
        (f"{ORIGIN}\r\n8\r\n{_ROOT_B64}\r\n", "bad_origin"),  # CRLF
        (f"{ORIGIN}\n8\n{_ROOT_B64}\nprev\tx\n", "bad_extension"),
        ("", "missing_final_newline"),
    ],
)
def test_malformed_checkpoint_body_rejected(body: str, reason: str) -> None:
    with pytest.raises(MalformedRecord) as exc:
        Checkpoint.from_body(body)
    assert exc.value.reason == reason


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"origin": ""}, "bad_origin"),
        ({"origin": "a\nb"}, "bad_origin"),  # line injection through the origin
        ({"size": -1}, "bad_tree_size"),
        ({"size": MAX_TREE_SIZE + 1}, "bad_tree_size"),
        ({"size": True}, "bad_tree_size"),
        ({"root_hash": bytes(31)}, "bad_root_hash"),
        ({"root_hash": "not bytes"}, "bad_root_hash"),
        ({"extensions": ("",)}, "bad_extension"),
        ({"extensions": ("prev x\n1",)}, "bad_extension"),  # line injection via extension
        ({"extensions": ["a list"]}, "bad_extension"),
    ],
)
def test_checkpoint_constructor_refuses_unwritable_fields(
    kwargs: dict[str, object], reason: str
) -> None:
    fields: dict[str, object] = {"origin": ORIGIN, "size": 8, "root_hash": RFC_ROOT_8}
    fields.update(kwargs)
    with pytest.raises(MalformedRecord) as exc:
        Checkpoint(**fields)  # type: ignore[arg-type]
    assert exc.value.reason == reason


def test_checkpoint_hash_commits_to_whole_signed_note() -> None:
    body = CP.to_body()
    solo = LOG.sign(body)
    cosigned = sign_note(body, [LOG, OTHER])
    assert checkpoint_hash(solo) == hashlib.sha256(solo.encode("utf-8")).digest()
    assert checkpoint_hash(solo) != checkpoint_hash(cosigned)
    assert len(checkpoint_hash(solo)) == 32


# --- fuzzing -------------------------------------------------------------------------------

_TOKENS = [
    *"ab+/=019AZ \n\r\t\x00\u2014\u2013-é\u2028\ufeff",
    ORIGIN,
    "\u2014 ",
    "\n\n",
    "c74f20a3",
    "PeterNeumann",
    *GO_VKEY.split("+"),
    GO_NOTE.rsplit(" ", 1)[1],
    CP.to_body(),
]
_NOTEISH = st.lists(st.sampled_from(_TOKENS), max_size=30).map("".join)


@given(st.one_of(st.text(max_size=400), _NOTEISH))
@settings(deadline=None)
def test_fuzz_parse_note_random_text_only_malformed(text: str) -> None:
    try:
        parsed = parse_note(text)
    except MalformedRecord:
        return
    # Anything accepted must re-serialise to exactly the input (no ambiguous encodings).
    assert parsed.text + "\n" + "".join(s.to_line() for s in parsed.signatures) == text


@given(st.binary(max_size=400))
@settings(deadline=None)
def test_fuzz_parse_note_random_bytes_only_malformed(data: bytes) -> None:
    with contextlib.suppress(MalformedRecord):
        parse_note(data)


@given(st.one_of(st.text(max_size=200), _NOTEISH))
@settings(deadline=None)
def test_fuzz_verifier_key_text_only_malformed(text: str) -> None:
    try:
        verifier = NoteVerifier.from_text(text)
    except MalformedRecord:
        return
    assert verifier.verifier_text() == text


_VALID_NOTES = [CP.sign(LOG), CP_EXT.sign(LOG), sign_note(CP.to_body(), [OTHER, LOG])]


@st.composite
def _mutated_note(draw: st.DrawFn) -> tuple[str, bytes]:
    original = draw(st.sampled_from(_VALID_NOTES))
    data = bytearray(original.encode())
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        op = draw(st.sampled_from(["replace", "insert", "delete", "splice"]))
        pos = draw(st.integers(min_value=0, max_value=max(len(data) - 1, 0)))
        chunk = draw(
            st.one_of(
                st.binary(min_size=1, max_size=4),
                st.sampled_from([b"\n", b"\n\n", "\u2014 ".encode(), b"+", b"=", b"0", b"\r"]),
            )
        )
        if op == "replace" and data:
            data[pos : pos + len(chunk)] = chunk
        elif op == "insert":
            data[pos:pos] = chunk
        elif op == "delete" and data:
            del data[pos : pos + draw(st.integers(min_value=1, max_value=8))]
        else:
            other = draw(st.sampled_from(_VALID_NOTES)).encode()
            start = draw(st.integers(min_value=0, max_value=len(other) - 1))
            data[pos:pos] = other[start : start + draw(st.integers(1, 40))]
    return original, bytes(data)


@given(_mutated_note())
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_mutated_notes_never_verify_other_text(case: tuple[str, bytes]) -> None:
    original, data = case
    body = parse_note(original).text
    verifier = LOG.verifier()
    try:
        note = verifier.verify(data)
    except VerificationError:
        pass
    else:
        assert note.text == body  # only unsigned decoration can change
    try:
        cp = Checkpoint.from_note(data, verifier)
    except VerificationError:
        pass
    else:
        assert cp.to_body() == body
    with contextlib.suppress(MalformedRecord):
        parse_note(data)


_CP_LINES = st.sampled_from(
    [
        ORIGIN,
        "0",
        "8",
        "08",
        "-1",
        "18446744073709551616",
        _ROOT_B64,
        _ROOT_B64.rstrip("="),
        "prev x",
        "",
        " ",
        "\r",
        "\u0668",
        "a+b",
    ]
)


@given(
    st.one_of(
        st.builds(
            lambda lines, end: "\n".join(lines) + end,
            st.lists(_CP_LINES, max_size=6),
            st.sampled_from(["", "\n", "\n\n"]),
        ),
        st.text(max_size=200),
    )
)
@settings(deadline=None)
def test_fuzz_checkpoint_body_only_malformed_and_canonical(body: str) -> None:
    try:
        cp = Checkpoint.from_body(body)
    except MalformedRecord:
        return
    assert cp.to_body() == body


# --- committed vectors ----------------------------------------------------------------------


def test_vectors_file_is_reproducible_from_fixed_seeds() -> None:
    generator = _load_generator()
    expected = generator.render(generator.build_vectors()).encode("utf-8")
    assert VECTORS_PATH.read_bytes() == expected


def test_vectors_verify_with_their_vkeys() -> None:
    vectors = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
    assert isinstance(vectors, list)
    assert vectors
    for vector in vectors:
        assert set(vector) == {"description", "note", "vkey"}
        verifier = NoteVerifier.from_text(vector["vkey"])
        cp = Checkpoint.from_note(vector["note"], verifier)
        assert cp.origin == verifier.name
        assert Checkpoint.from_note(vector["note"].encode("utf-8"), verifier) == cp


def test_vectors_cover_required_tree_sizes_and_extensions() -> None:
    vectors = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
    cps = [Checkpoint.from_note(v["note"], NoteVerifier.from_text(v["vkey"])) for v in vectors]
    by_size = {cp.size: cp.root_hash for cp in cps}
    assert by_size[0] == _mth([])
    assert by_size[1] == _mth(RFC_LEAVES[:1])
    assert by_size[8] == _mth(RFC_LEAVES) == RFC_ROOT_8
    with_ext = [cp for cp in cps if cp.extensions]
    assert with_ext
    kinds = {ext.split(" ", 1)[0] for cp in with_ext for ext in cp.extensions}
    assert kinds == {"prev", "balances"}


def test_vector_prev_extension_commits_to_previous_note() -> None:
    vectors = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
    pairs = [
        (Checkpoint.from_note(v["note"], NoteVerifier.from_text(v["vkey"])), v["note"])
        for v in vectors
    ]
    hashes = {checkpoint_hash(note) for _, note in pairs}
    linked = [cp for cp, _ in pairs if cp.extensions]
    assert linked
    for cp in linked:
        prev = base64.b64decode(cp.extensions[0].removeprefix("prev "), validate=True)
        assert prev in hashes


def test_checkpoint_size_reads_the_size_of_a_note_and_refuses_a_malformed_body() -> None:
    assert checkpoint_size(LOG.sign(CP.to_body())) == 8
    assert checkpoint_size(LOG.sign(CP_EXT.to_body())) == CP_EXT.size
    assert checkpoint_size(LOG.sign(Checkpoint(ORIGIN, 0, RFC_ROOT_8).to_body())) == 0
    for bad in ("", LOG.sign("just one line\n"), LOG.sign(CP.to_body().replace("\n8\n", "\n08\n"))):
        with pytest.raises(MalformedRecord):
            checkpoint_size(bad)
