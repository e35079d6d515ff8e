"""Transparency-log checkpoints (https://c2sp.org/tlog-checkpoint, v1.0.0).

A checkpoint is a signed note (:mod:`protocol.note`, https://c2sp.org/signed-note) whose
text is::

    <origin>\\n
    <tree size, ASCII decimal, no leading zeros unless "0">\\n
    <root hash, standard padded base64 of 32 bytes>\\n
    [<extension line, non-empty>\\n]...

The edgeproof gateway uses two extension lines, ``prev <base64 SHA-256 of the previous
signed note>`` (see :func:`checkpoint_hash`) and ``balances <base64 hash>``. This module
gives them no meaning; it only guarantees that extension lines round-trip unchanged and are
covered by the signature like the rest of the text.

The spec says the signing key's name SHOULD match the origin. Our gateway uses the same
string for both, so :meth:`Checkpoint.sign` and :meth:`Checkpoint.from_note` enforce
``origin == key name`` unless called with ``require_origin_match=False``.

Pure (no I/O). Failures surface as :class:`~protocol.errors.MalformedRecord` (not a
well-formed checkpoint; ``reason`` is a short stable code) or
:class:`~protocol.errors.VerificationError` (not authentic).
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

from protocol.errors import MalformedRecord, VerificationError
from protocol.note import MAX_NOTE_BYTES, NoteSigner, NoteVerifier, b64decode_strict

__all__ = ["MAX_TREE_SIZE", "ROOT_HASH_BYTES", "Checkpoint", "checkpoint_hash", "checkpoint_size"]

MAX_TREE_SIZE = 2**64 - 1
"""Largest tree size accepted (an unsigned 64-bit integer, as in the Go implementations)."""

ROOT_HASH_BYTES = 32
"""Length of an RFC 6962 / RFC 9162 SHA-256 Merkle tree root hash."""

_SIZE_RE = re.compile(r"0|[1-9][0-9]{0,19}")  # ASCII digits only; at most 20 digits
_CONTROL_RE = re.compile(r"[\x00-\x1f]")  # any ASCII control, newline included


def _check_line(value: object, reason: str, what: str) -> None:
    if not isinstance(value, str) or not value:
        raise MalformedRecord(reason, f"{what} must be a non-empty str")
    if _CONTROL_RE.search(value) is not None:
        raise MalformedRecord(reason, f"{what} contains a newline or control character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MalformedRecord(reason, f"{what} is not encodable as UTF-8") from exc


@dataclass(frozen=True)
class Checkpoint:
    """A transparency-log tree head: origin, tree size, root hash and extension lines.

    Construction validates every field and raises :class:`MalformedRecord` (``bad_origin``,
    ``bad_tree_size``, ``bad_root_hash``, ``bad_extension``) if the checkpoint could not be
    written as a valid checkpoint body.
    """

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Validate the fields; raise :class:`MalformedRecord` on the first bad one."""
        _check_line(self.origin, "bad_origin", "origin")
        if (
            not isinstance(self.size, int)
            or isinstance(self.size, bool)
            or not 0 <= self.size <= MAX_TREE_SIZE
        ):
            raise MalformedRecord("bad_tree_size", "tree size must be an int in [0, 2**64)")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != ROOT_HASH_BYTES:
            raise MalformedRecord("bad_root_hash", "root hash must be 32 bytes")
        if not isinstance(self.extensions, tuple):
            raise MalformedRecord("bad_extension", "extensions must be a tuple of str")
        for ext in self.extensions:
            _check_line(ext, "bad_extension", "extension line")

    def to_body(self) -> str:
        """Return the checkpoint note text (spec, "Note text"), ending in a newline."""
        root = base64.b64encode(self.root_hash).decode("ascii")
        lines = [self.origin, str(self.size), root, *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def from_body(cls, body: str) -> Checkpoint:
        """Parse checkpoint note text strictly (spec, "Note text").

        Returns the :class:`Checkpoint`; for any accepted ``body``,
        ``Checkpoint.from_body(body).to_body() == body``. Raises :class:`MalformedRecord` if
        ``body`` is not a str (``not_text``), exceeds the note size cap
        (``checkpoint_too_large``), does not end in a newline (``missing_final_newline``), has
        fewer than three lines (``too_few_lines``), an empty or control-character origin
        (``bad_origin``), a tree size that is not canonical ASCII decimal below 2**64
        (``bad_tree_size``), a root hash that is not canonical padded base64 of 32 bytes
        (``bad_root_hash``), or an empty or control-character extension line
        (``bad_extension``).
        """
        if not isinstance(body, str):
            raise MalformedRecord("not_text", "checkpoint body must be str")
        if len(body) > MAX_NOTE_BYTES:
            raise MalformedRecord("checkpoint_too_large", f"more than {MAX_NOTE_BYTES} bytes")
        if not body.endswith("\n"):
            raise MalformedRecord("missing_final_newline", "checkpoint must end in a newline")
        lines = body[:-1].split("\n")
        if len(lines) < 3:
            raise MalformedRecord("too_few_lines", "need origin, tree size and root hash")
        origin, size_text, root_text, *extensions = lines
        _check_line(origin, "bad_origin", "origin")
        if _SIZE_RE.fullmatch(size_text) is None:
            raise MalformedRecord(
                "bad_tree_size", "tree size must be ASCII decimal without leading zeros"
            )
        size = int(size_text)
        if size > MAX_TREE_SIZE:
            raise MalformedRecord("bad_tree_size", "tree size does not fit in 64 bits")
        root_hash = b64decode_strict(root_text, "bad_root_hash")
        if len(root_hash) != ROOT_HASH_BYTES:
            raise MalformedRecord("bad_root_hash", f"root hash is {len(root_hash)} bytes, not 32")
        return cls(origin=origin, size=size, root_hash=root_hash, extensions=tuple(extensions))

    def sign(self, signer: NoteSigner, *, require_origin_match: bool = True) -> str:
        """Return this checkpoint as a signed note signed by ``signer``.

        The signature covers the whole body, extension lines included. Raises
        :class:`MalformedRecord` (``origin_mismatch``) if ``require_origin_match`` and the
        origin differs from ``signer.name`` (tlog-checkpoint, "Signatures": the key name
        SHOULD match the origin), or ``note_too_large`` if the note would exceed the cap.
        """
        if require_origin_match and self.origin != signer.name:
            raise MalformedRecord("origin_mismatch", "origin differs from the signer key name")
        return signer.sign(self.to_body())

    @classmethod
    def from_note(
        cls,
        note_text: str | bytes,
        verifier: NoteVerifier,
        *,
        require_origin_match: bool = True,
    ) -> Checkpoint:
        """Verify a signed checkpoint note with ``verifier`` and parse its text.

        The signature is verified before the text is interpreted (signed-note: the text MUST
        be ignored unless signed by a trusted key). Unless ``require_origin_match`` is false,
        the origin must equal ``verifier.name``. Returns the :class:`Checkpoint`. Raises
        :class:`VerificationError` if the note is not validly signed by ``verifier`` or the
        origin does not match, and its subclass :class:`MalformedRecord` if the note or the
        checkpoint text is not well-formed.
        """
        note = verifier.verify(note_text)
        checkpoint = cls.from_body(note.text)
        if require_origin_match and checkpoint.origin != verifier.name:
            raise VerificationError("checkpoint: origin does not match the verifier key name")
        return checkpoint


def checkpoint_hash(note_text: str) -> bytes:
    """Return SHA-256 of the full signed note text, UTF-8 encoded.

    This is the value the gateway puts, base64-encoded, in the next checkpoint's
    ``prev`` extension line. It commits to the signatures as well as the body. Raises
    :class:`MalformedRecord` (``not_utf8``) if ``note_text`` cannot be encoded as UTF-8.
    """
    try:
        data = note_text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MalformedRecord("not_utf8", "note has unpaired surrogates") from exc
    return hashlib.sha256(data).digest()


def checkpoint_size(note_text: str) -> int:
    """Return the tree size a signed checkpoint note names, WITHOUT verifying it.

    For notes the caller already trusts (the gateway's own, read back from its store): the
    body is parsed as :meth:`Checkpoint.from_body` does, the signatures are not looked at.
    Raises :class:`MalformedRecord` if the body is not a well-formed checkpoint.
    """
    return Checkpoint.from_body(note_text.split("\n\n", 1)[0] + "\n").size
