"""C2SP signed notes with Ed25519 keys (https://c2sp.org/signed-note, v1.0.0).

A signed note is a UTF-8 text that ends in a newline, then one blank line, then one or
more signature lines::

    <text, ending in "\\n">
    <blank line>
    — <key name> <base64(4-byte key ID || signature)>
    ...

The text may itself contain blank lines: the signatures start after the *last* blank line
(spec, "Format"). The whole note must be valid UTF-8 with no ASCII control character other
than newline, so CRLF line endings are rejected.

Keys are written as the Go ``golang.org/x/mod/sumdb/note`` tools write them:

- verifier (public) key: ``<name>+<key ID as 8 lowercase hex digits>+<base64(0x01 || pubkey)>``
- signer (private) key: ``PRIVATE+KEY+<name>+<key ID hex>+<base64(0x01 || 32-byte seed)>``

where the key ID is ``SHA-256(name || 0x0A || 0x01 || 32-byte Ed25519 public key)[:4]``
(spec, "Ed25519 signatures"). Key texts are parsed strictly: the key ID must be lowercase hex
and equal to the recomputed one, base64 must be canonical and no surrounding whitespace is
allowed (strip a trailing newline read from a file before parsing).

This module is pure (no I/O, no clock, no randomness). Failures surface as
:class:`~protocol.errors.MalformedRecord` (input that is not well-formed; ``reason`` is a
short stable code) or :class:`~protocol.errors.VerificationError` (well-formed but not
authentic). PyNaCl exceptions never leave this module.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import nacl.exceptions
import nacl.signing

from protocol.errors import MalformedRecord, VerificationError

__all__ = [
    "ALG_ED25519",
    "MAX_NOTE_BYTES",
    "MAX_SIGNATURES",
    "Note",
    "NoteSignature",
    "NoteSigner",
    "NoteVerifier",
    "b64decode_strict",
    "compute_key_id",
    "is_valid_key_name",
    "parse_note",
    "sign_note",
]

MAX_NOTE_BYTES = 16 * 1024
"""Largest signed note (UTF-8 bytes, text plus signatures) that is parsed or produced."""

MAX_SIGNATURES = 100
"""Most signature lines accepted in one note (the spec requires accepting at least 16)."""

ALG_ED25519 = 0x01
"""Signature type identifier byte for Ed25519 (spec, "Signature types")."""

ED25519_PUBLIC_KEY_BYTES = 32
ED25519_SEED_BYTES = 32
ED25519_SIGNATURE_BYTES = 64
KEY_ID_BYTES = 4

_SIG_PREFIX = "\u2014 "  # EM DASH, SPACE
_PRIVATE_PREFIX = "PRIVATE+KEY+"
_CONTROL_RE = re.compile(r"[\x00-\x09\x0b-\x1f]")  # ASCII controls except "\n"
_KEY_ID_HEX_RE = re.compile(r"[0-9a-f]{8}")


def b64decode_strict(text: str, reason: str) -> bytes:
    """Decode standard, padded, canonical base64 (RFC 4648 section 4).

    Returns the decoded bytes. Raises :class:`MalformedRecord` with ``reason`` if ``text`` has
    characters outside the standard alphabet, wrong padding, or is a non-canonical encoding
    (non-zero unused bits), so each byte string has exactly one accepted encoding.
    """
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedRecord(reason, "invalid base64") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise MalformedRecord(reason, "non-canonical base64")
    return raw


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def is_valid_key_name(name: str) -> bool:
    """Return whether ``name`` is a valid signed-note key name.

    Per the spec ("Format") a key name is non-empty and contains no Unicode space and no
    ``+``; it must also be encodable as UTF-8 and, being part of a note, contain no ASCII
    control character. Never raises.
    """
    if not isinstance(name, str) or not name or "+" in name:
        return False
    if any(ch.isspace() for ch in name) or _CONTROL_RE.search(name) is not None:
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _require_name(name: str) -> None:
    if not is_valid_key_name(name):
        raise MalformedRecord("bad_key_name", "empty, or contains space, '+' or control")


def compute_key_id(name: str, public_key: bytes) -> bytes:
    """Return the 4-byte key ID of an Ed25519 key (spec, "Ed25519 signatures").

    The ID is ``SHA-256(name || 0x0A || 0x01 || public_key)[:4]``. Raises
    :class:`MalformedRecord` (``bad_key_name`` / ``bad_public_key``) for an invalid name or a
    public key that is not 32 bytes.
    """
    _require_name(name)
    if not isinstance(public_key, bytes) or len(public_key) != ED25519_PUBLIC_KEY_BYTES:
        raise MalformedRecord("bad_public_key", "Ed25519 public key must be 32 bytes")
    data = name.encode("utf-8") + b"\n" + bytes([ALG_ED25519]) + public_key
    return hashlib.sha256(data).digest()[:KEY_ID_BYTES]


def _parse_key_id_hex(text: str) -> bytes:
    if _KEY_ID_HEX_RE.fullmatch(text) is None:
        raise MalformedRecord("bad_key_id", "key ID must be 8 lowercase hex digits")
    return bytes.fromhex(text)


def _parse_ed25519_key_material(text: str, what: str) -> bytes:
    raw = b64decode_strict(text, f"bad_{what}")
    if len(raw) != 1 + 32:
        raise MalformedRecord(f"bad_{what}", "expected type byte and 32 bytes")
    if raw[0] != ALG_ED25519:
        raise MalformedRecord("unsupported_key_type", f"type byte {raw[0]:#04x}, want 0x01")
    return raw[1:]


def _split_key_text(text: str, reason: str, form: str, what: str) -> tuple[str, bytes, bytes]:
    """Split ``name+hexid+base64`` key text; return (name, key id, 32-byte key material)."""
    # The base64 key may itself contain "+": split off name and ID only.
    parts = text.split("+", 2)
    if len(parts) != 3:
        raise MalformedRecord(reason, f"want {form}")
    name, id_hex, key_b64 = parts
    _require_name(name)
    return name, _parse_key_id_hex(id_hex), _parse_ed25519_key_material(key_b64, what)


@dataclass(frozen=True)
class NoteSignature:
    """One signature line of a note: key name, 4-byte key ID and raw signature bytes."""

    name: str
    key_id: bytes
    signature: bytes

    def to_line(self) -> str:
        """Return the signature line ``"— <name> <base64(key_id || signature)>\\n"``."""
        return f"{_SIG_PREFIX}{self.name} {_b64encode(self.key_id + self.signature)}\n"


@dataclass(frozen=True)
class Note:
    """A parsed signed note.

    ``text`` is the signed text including its final newline (not the blank separator line);
    ``signatures`` holds every signature line in order; ``verified`` holds those that were
    verified by a trusted key (empty when the note was only parsed with :func:`parse_note`).
    """

    text: str
    signatures: tuple[NoteSignature, ...]
    verified: tuple[NoteSignature, ...] = field(default=())


def _check_utf8_size(note: str | bytes) -> str:
    """Return ``note`` as str after the size cap and the UTF-8 check; raise MalformedRecord."""
    if isinstance(note, bytes):
        if len(note) > MAX_NOTE_BYTES:
            raise MalformedRecord("note_too_large", f"more than {MAX_NOTE_BYTES} bytes")
        try:
            return note.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedRecord("not_utf8", "note is not valid UTF-8") from exc
    if not isinstance(note, str):
        raise MalformedRecord("not_text", "note must be str or bytes")
    if len(note) > MAX_NOTE_BYTES:  # every character is at least one UTF-8 byte
        raise MalformedRecord("note_too_large", f"more than {MAX_NOTE_BYTES} bytes")
    try:
        encoded = note.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MalformedRecord("not_utf8", "note has unpaired surrogates") from exc
    if len(encoded) > MAX_NOTE_BYTES:
        raise MalformedRecord("note_too_large", f"more than {MAX_NOTE_BYTES} bytes")
    return note


def parse_note(note: str | bytes) -> Note:
    """Parse a signed note without verifying any signature (spec, "Format").

    Returns a :class:`Note` whose ``verified`` is empty; its text MUST NOT be trusted until a
    signature is verified (use :meth:`NoteVerifier.verify`). Raises :class:`MalformedRecord`,
    and nothing else, with one of these reasons:

    - ``not_text``: neither str nor bytes;
    - ``note_too_large``: more than :data:`MAX_NOTE_BYTES` bytes of UTF-8;
    - ``not_utf8``: invalid UTF-8 (or unpaired surrogates in a str);
    - ``control_character``: an ASCII control character other than newline (so CRLF too);
    - ``missing_blank_line``: no blank line before the signatures;
    - ``missing_signatures``: no signature line after the last blank line;
    - ``missing_final_newline``: the note does not end in a newline;
    - ``too_many_signatures``: more than :data:`MAX_SIGNATURES` signature lines;
    - ``bad_signature_line``: a line not of the form ``— <name> <base64>``;
    - ``bad_key_name``: an invalid key name in a signature line;
    - ``bad_signature``: a signature that is not canonical base64 of at least 5 bytes.
    """
    text_all = _check_utf8_size(note)
    if _CONTROL_RE.search(text_all) is not None:
        raise MalformedRecord("control_character", "only newline is allowed below U+0020")
    split = text_all.rfind("\n\n")
    if split < 0:
        raise MalformedRecord("missing_blank_line", "no blank line before signatures")
    text, sig_block = text_all[: split + 1], text_all[split + 2 :]
    if not sig_block:
        raise MalformedRecord("missing_signatures", "no signature line after blank line")
    if not sig_block.endswith("\n"):
        raise MalformedRecord("missing_final_newline", "note must end with a newline")
    lines = sig_block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise MalformedRecord("too_many_signatures", f"more than {MAX_SIGNATURES} lines")
    sigs: list[NoteSignature] = []
    for number, line in enumerate(lines, start=1):
        if not line.startswith(_SIG_PREFIX):
            raise MalformedRecord("bad_signature_line", f"line {number}: no em dash prefix")
        name, space, b64 = line[len(_SIG_PREFIX) :].partition(" ")
        if not space or not b64:
            raise MalformedRecord("bad_signature_line", f"line {number}: no signature")
        if not is_valid_key_name(name):
            raise MalformedRecord("bad_key_name", f"signature line {number}")
        raw = b64decode_strict(b64, "bad_signature")
        if len(raw) <= KEY_ID_BYTES:
            raise MalformedRecord("bad_signature", f"line {number}: shorter than 5 bytes")
        sigs.append(NoteSignature(name, raw[:KEY_ID_BYTES], raw[KEY_ID_BYTES:]))
    return Note(text=text, signatures=tuple(sigs))


def _check_text_for_signing(text: str) -> bytes:
    if not isinstance(text, str):
        raise MalformedRecord("not_text", "note text must be str")
    if not text.endswith("\n"):
        raise MalformedRecord("missing_final_newline", "note text must end with a newline")
    if _CONTROL_RE.search(text) is not None:
        raise MalformedRecord("control_character", "only newline is allowed below U+0020")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MalformedRecord("not_utf8", "note text has unpaired surrogates") from exc


class _NamedKey:
    """What signer and verifier share: a key name, its key ID and the public key."""

    __slots__ = ("_key_id", "_name", "_public_key")
    _name: str
    _key_id: bytes
    _public_key: bytes

    @property
    def name(self) -> str:
        """The key name of signature lines."""
        return self._name

    @property
    def key_id(self) -> bytes:
        """The 4-byte key ID (see :func:`compute_key_id`)."""
        return self._key_id

    @property
    def public_key(self) -> bytes:
        """The 32-byte Ed25519 public key."""
        return self._public_key

    def verifier_text(self) -> str:
        """Return the verifier key text ``<name>+<hex id>+<base64(0x01 || pubkey)>``."""
        raw = bytes([ALG_ED25519]) + self._public_key
        return f"{self._name}+{self._key_id.hex()}+{_b64encode(raw)}"


class NoteSigner(_NamedKey):
    """An Ed25519 signed-note signer: a key name plus a 32-byte Ed25519 seed.

    The seed is held privately and never appears in ``repr``. Construct from a seed with
    ``NoteSigner(name, seed)`` or from key-file text with :meth:`from_private_text`. Key
    generation is left to the caller (pass 32 bytes from ``os.urandom``) to keep this module
    free of I/O.
    """

    __slots__ = ("_seed", "_signing_key")

    def __init__(self, name: str, seed: bytes) -> None:
        """Create a signer; raise :class:`MalformedRecord` for a bad name or seed length."""
        _require_name(name)
        if not isinstance(seed, bytes) or len(seed) != ED25519_SEED_BYTES:
            raise MalformedRecord("bad_seed", "Ed25519 seed must be 32 bytes")
        try:
            signing_key = nacl.signing.SigningKey(seed)
        except nacl.exceptions.CryptoError as exc:  # pragma: no cover - length checked above
            raise MalformedRecord("bad_seed", "rejected by Ed25519") from exc
        self._name = name
        self._seed = seed
        self._signing_key = signing_key
        self._public_key = bytes(signing_key.verify_key)
        self._key_id = compute_key_id(name, self._public_key)

    @classmethod
    def from_private_text(cls, text: str) -> NoteSigner:
        """Parse ``PRIVATE+KEY+<name>+<hex id>+<base64(0x01 || seed)>``.

        Returns the signer. Raises :class:`MalformedRecord` if the text does not have exactly
        that shape (``bad_private_key``), the key ID is not 8 lowercase hex digits
        (``bad_key_id``), the type byte is not 0x01 (``unsupported_key_type``), or the key ID
        does not match the one computed from the name and derived public key
        (``key_id_mismatch``).
        """
        if not isinstance(text, str) or not text.startswith(_PRIVATE_PREFIX):
            raise MalformedRecord("bad_private_key", "missing PRIVATE+KEY+ prefix")
        name, key_id, seed = _split_key_text(text[len(_PRIVATE_PREFIX):], "bad_private_key",
                                             "PRIVATE+KEY+name+id+key", "private_key")
        signer = cls(name, seed)
        if signer.key_id != key_id:
            raise MalformedRecord("key_id_mismatch", "key ID does not match name and key")
        return signer

    def private_text(self) -> str:
        """Return the secret key-file text ``PRIVATE+KEY+<name>+<hex id>+<base64(0x01||seed)>``.

        The result is a secret: store it with owner-only permissions.
        """
        raw = bytes([ALG_ED25519]) + self._seed
        return f"{_PRIVATE_PREFIX}{self._name}+{self._key_id.hex()}+{_b64encode(raw)}"

    def verifier(self) -> NoteVerifier:
        """Return the :class:`NoteVerifier` for this signer's public key."""
        return NoteVerifier(self._name, self._public_key)

    def signature_for(self, text: str) -> NoteSignature:
        """Sign note ``text`` (which must end in a newline) and return the signature.

        Raises :class:`MalformedRecord` if ``text`` could not be the text of a note (no final
        newline, a control character other than newline, or not encodable as UTF-8).
        """
        data = _check_text_for_signing(text)
        sig = self._signing_key.sign(data).signature
        return NoteSignature(self._name, self._key_id, bytes(sig))

    def sign(self, body: str) -> str:
        """Return the whole signed note for ``body`` signed by this key alone.

        Equivalent to ``sign_note(body, [self])``; see :func:`sign_note` for what it raises.
        """
        return sign_note(body, [self])

    def __repr__(self) -> str:
        return f"NoteSigner(name={self._name!r}, key_id={self._key_id.hex()!r})"


def sign_note(body: str, signers: Sequence[NoteSigner]) -> str:
    """Return ``body`` signed by every signer, as signed-note text (spec, "Format").

    Ed25519 signs the exact UTF-8 bytes of ``body``, which must end in a newline; the
    signature lines follow in the order of ``signers``. Raises :class:`MalformedRecord` if
    there are no signers or more than :data:`MAX_SIGNATURES` (``bad_signers``), ``body`` is
    not valid note text (see :meth:`NoteSigner.signature_for`), or the result would exceed
    :data:`MAX_NOTE_BYTES` (``note_too_large``) and so be rejected by :func:`parse_note`.
    """
    if not signers or len(signers) > MAX_SIGNATURES:
        raise MalformedRecord("bad_signers", f"need 1 to {MAX_SIGNATURES} signers")
    lines = [signer.signature_for(body).to_line() for signer in signers]
    note = body + "\n" + "".join(lines)
    if len(note.encode("utf-8")) > MAX_NOTE_BYTES:
        raise MalformedRecord("note_too_large", f"more than {MAX_NOTE_BYTES} bytes")
    return note


class NoteVerifier(_NamedKey):
    """A trusted Ed25519 signed-note key: name, key ID and 32-byte public key."""

    __slots__ = ("_verify_key",)

    def __init__(self, name: str, public_key: bytes) -> None:
        """Create a verifier; raise :class:`MalformedRecord` for a bad name or key length."""
        self._key_id = compute_key_id(name, public_key)
        self._name = name
        self._public_key = public_key
        try:
            self._verify_key = nacl.signing.VerifyKey(public_key)
        except nacl.exceptions.CryptoError as exc:  # pragma: no cover - length checked above
            raise MalformedRecord("bad_public_key", "rejected by Ed25519") from exc

    @classmethod
    def from_text(cls, text: str) -> NoteVerifier:
        """Parse verifier key text ``<name>+<hex id>+<base64(0x01 || pubkey)>``.

        Returns the verifier. Raises :class:`MalformedRecord` if the text does not have three
        ``+``-separated fields (``bad_verifier_key``), the name is invalid (``bad_key_name``),
        the ID is not 8 lowercase hex digits (``bad_key_id``), the key is not canonical base64
        of 33 bytes (``bad_public_key``), the type byte is not 0x01 (``unsupported_key_type``),
        or the ID does not match the name and key (``key_id_mismatch``).
        """
        if not isinstance(text, str):
            raise MalformedRecord("bad_verifier_key", "verifier key must be str")
        name, key_id, public_key = _split_key_text(text, "bad_verifier_key", "name+id+key",
                                                   "public_key")
        verifier = cls(name, public_key)
        if verifier.key_id != key_id:
            raise MalformedRecord("key_id_mismatch", "key ID does not match name and key")
        return verifier

    def _verifies(self, text: bytes, sig: bytes) -> bool:
        if len(sig) != ED25519_SIGNATURE_BYTES:
            return False
        try:
            self._verify_key.verify(text, sig)
        except nacl.exceptions.CryptoError:
            return False
        return True

    def verify(self, note: str | bytes) -> Note:
        """Parse ``note`` and verify it against this key (spec, "Signatures").

        Signature lines whose (name, key ID) pair is not this key's are ignored, even if one
        of the two matches. *Every* line that carries this key's name and ID must verify over
        the exact UTF-8 bytes of the note text; one that does not rejects the whole note.
        Returns the :class:`Note` with this key's signatures in ``verified``. Raises
        :class:`MalformedRecord` if the note is not well-formed (see :func:`parse_note`) and
        :class:`VerificationError` if a signature by this key fails or none is present.
        """
        parsed = parse_note(note)
        text = parsed.text.encode("utf-8")
        mine = [
            sig
            for sig in parsed.signatures
            if sig.name == self._name and sig.key_id == self._key_id
        ]
        for sig in mine:
            if not self._verifies(text, sig.signature):
                raise VerificationError(
                    f"signed note: signature by {self._name} ({self._key_id.hex()}) is invalid"
                )
        if not mine:
            raise VerificationError(
                f"signed note: no signature by {self._name} ({self._key_id.hex()})"
            )
        return Note(text=parsed.text, signatures=parsed.signatures, verified=tuple(mine))

    def __repr__(self) -> str:
        return f"NoteVerifier(name={self._name!r}, key_id={self._key_id.hex()!r})"
