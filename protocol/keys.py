"""Keys: device identities (Ed25519), recipient keys (X25519), and secret files.

A device signs with Ed25519; its device id is derived from the public key it was
enrolled with (``device_id_for``) and stays the same across key rotation. A data
recipient holds an X25519 key pair; devices encrypt values to its public key.

Secret files are the one place :mod:`protocol` touches the filesystem: every package reads
and writes keys through :func:`read_secret_file` and :func:`write_secret_file`, so the rule
"a secret lives in a file of mode 0600, and a file others can read is refused" is enforced
in one place.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import nacl.bindings
import nacl.exceptions
import nacl.public
import nacl.signing

from protocol import sodium
from protocol.errors import ConfigError, KeyFileError, VerificationError

DEVICE_ID_BYTES = 16
RECIPIENT_KID_BYTES = 8
SIGNER_ID_BYTES = 16
_DEVICE_ID_CONTEXT = b"edgeproof/v1 device-id\x00"
_SIGNER_ID_CONTEXT = b"edgeproof/v1 signer-id\x00"


def device_id_for(public_key: bytes) -> bytes:
    """Return the 16-byte device id: SHA-256("edgeproof/v1 device-id" 0x00 || key)[:16]."""
    if len(public_key) != 32:
        raise ValueError("Ed25519 public key must be 32 bytes")
    return hashlib.sha256(_DEVICE_ID_CONTEXT + public_key).digest()[:DEVICE_ID_BYTES]


def signer_id(public_key: bytes) -> bytes:
    """Return the 16-byte id of a document signer (an owner or a recipient's signing key):
    SHA-256("edgeproof/v1 signer-id" 0x00 || Ed25519 public key)[:16]."""
    if len(public_key) != 32:
        raise ValueError("Ed25519 public key must be 32 bytes")
    return hashlib.sha256(_SIGNER_ID_CONTEXT + public_key).digest()[:SIGNER_ID_BYTES]


def recipient_kid(public_key: bytes) -> bytes:
    """Return the 8-byte id of a recipient's X25519 public key: SHA-256(key)[:8]."""
    return hashlib.sha256(public_key).digest()[:RECIPIENT_KID_BYTES]


@dataclass(frozen=True)
class Secret:
    """Secret bytes whose repr never shows them."""

    value: bytes = field(repr=False)

    def __repr__(self) -> str:
        return "Secret(<redacted>)"

    __str__ = __repr__


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 signing key (a device's or the gateway's), built from its 32-byte seed."""

    seed: Secret

    def __post_init__(self) -> None:
        if len(self.seed.value) != 32:
            raise ValueError("Ed25519 seed must be 32 bytes")

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Secret(bytes(nacl.signing.SigningKey.generate())))

    @cached_property
    def _keypair(self) -> tuple[bytes, bytes]:
        public, secret = nacl.bindings.crypto_sign_seed_keypair(self.seed.value)
        return bytes(public), bytes(secret)

    @property
    def public_key(self) -> bytes:
        return self._keypair[0]

    def sign(self, message: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of ``message``."""
        secret = self._keypair[1]
        if sodium.lib is None:
            return nacl.bindings.crypto_sign(message, secret)[:64]
        # libsodium's crypto_sign straight through PyNaCl's cffi handle (protocol.sodium):
        # the same bytes as the binding, without its argument checks on every record.
        out = sodium.ffi.new("unsigned char[]", len(message) + 64)
        if sodium.lib.crypto_sign(out, sodium.ffi.NULL, message, len(message), secret) != 0:
            raise ValueError("libsodium crypto_sign failed")  # pragma: no cover - cannot fail
        return bytes(sodium.ffi.buffer(out, 64))


def verify_ed25519(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Check an Ed25519 signature; raise VerificationError if it does not verify."""
    if len(public_key) != 32 or len(signature) != 64:
        raise VerificationError("bad Ed25519 key or signature length")
    signed = bytes(signature) + message
    if sodium.lib is not None and type(public_key) is bytes and type(signed) is bytes:
        # libsodium's crypto_sign_open straight through PyNaCl's cffi handle
        # (protocol.sodium): once per record in the gateway's verify workers, where the
        # public binding's checks and copies cost about 1.1 µs of a 55 µs verify. The same
        # function decides (strict: canonical S, no small-order key or R), so the answer is
        # the binding's on every input (tests/test_records.py holds it to that).
        opened = sodium.ffi.new("unsigned char[]", len(signed))
        if sodium.lib.crypto_sign_open(opened, sodium.ffi.NULL, signed, len(signed),
                                       public_key) != 0:
            raise VerificationError("Ed25519 signature does not verify")
        return
    try:
        nacl.bindings.crypto_sign_open(signed, public_key)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError,
            nacl.exceptions.TypeError) as exc:
        raise VerificationError("Ed25519 signature does not verify") from exc


@dataclass(frozen=True)
class RecipientKey:
    """A data recipient's X25519 key pair (the secret half stays with the recipient)."""

    secret: Secret

    def __post_init__(self) -> None:
        if len(self.secret.value) != 32:
            raise ValueError("X25519 secret key must be 32 bytes")

    @classmethod
    def generate(cls) -> RecipientKey:
        return cls(Secret(bytes(nacl.public.PrivateKey.generate())))

    @property
    def public_key(self) -> bytes:
        return bytes(nacl.public.PrivateKey(self.secret.value).public_key)

    @property
    def kid(self) -> bytes:
        return recipient_kid(self.public_key)


# --- secret files ------------------------------------------------------------------------


def require_private_mode(path: Path) -> None:
    """Raise KeyFileError if ``path`` is missing or readable/writable by group or others."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyFileError(f"{path}: key file not found") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot stat key file: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path}: key file mode is {stat.S_IMODE(mode):04o}; it must not be accessible "
            f"by group or others (chmod 600 {path})"
        )


def read_secret_file(path: Path) -> bytes:
    """Return the contents of a secret file after checking it is mode 0600 or stricter.

    Raises KeyFileError if the file is missing, unreadable, or open to group/others.
    """
    require_private_mode(path)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file: {exc.strerror}") from None


def write_secret_file(path: Path, data: bytes, *, overwrite: bool = False) -> None:
    """Create ``path`` with mode 0600 holding ``data``, atomically.

    The file is written under a temporary name created with mode 0600 (never world-readable,
    not even for an instant), fsynced, then renamed into place. Raises KeyFileError if the
    file exists and ``overwrite`` is false, or on any OS error.
    """
    if path.exists() and not overwrite:
        raise KeyFileError(f"{path}: already exists; refusing to overwrite a key")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise KeyFileError(f"{path}: cannot write key file: {exc.strerror}") from None


def encode_key_text(kind: str, secret: bytes) -> bytes:
    """Return the text form of a secret key file: ``<kind> <hex>\\n``."""
    return f"{kind} {secret.hex()}\n".encode("ascii")


def decode_key_text(kind: str, text: bytes, path: Path) -> bytes:
    """Parse ``<kind> <64 hex digits>``; raise KeyFileError naming the file otherwise."""
    try:
        label, hex_value = text.decode("ascii").split()
        value = bytes.fromhex(hex_value)
    except (UnicodeDecodeError, ValueError):
        raise KeyFileError(f"{path}: not an edgeproof {kind} key file") from None
    if label != kind or len(value) != 32:
        raise KeyFileError(f"{path}: not an edgeproof {kind} key file")
    return value


DEVICE_KEY_KIND = "edgeproof-ed25519-seed"
RECIPIENT_KEY_KIND = "edgeproof-x25519-secret"


@dataclass(frozen=True)
class OwnerKey:
    """An owner's two key pairs: Ed25519 to sign consents and revocations, X25519 so that
    its devices seal every stream to it. Made on the owner's machine; never leaves it."""

    signing: SigningKey
    sealing: RecipientKey

    @classmethod
    def generate(cls) -> OwnerKey:
        return cls(SigningKey.generate(), RecipientKey.generate())

    @property
    def public_key(self) -> bytes:
        """The Ed25519 public key that devices pin and that consents are checked against."""
        return self.signing.public_key

    @property
    def sealing_public_key(self) -> bytes:
        """The X25519 public key devices seal every stream to."""
        return self.sealing.public_key

    @property
    def owner_id(self) -> bytes:
        return signer_id(self.signing.public_key)


OWNER_PUBLIC_KIND = "edgeproof-owner"


@dataclass(frozen=True)
class OwnerPublic:
    """An owner's two public keys, as devices pin them. Text form (one line, not secret):
    ``edgeproof-owner <64 hex Ed25519> <64 hex X25519>``."""

    public_key: bytes
    sealing_key: bytes

    def __post_init__(self) -> None:
        if len(self.public_key) != 32 or len(self.sealing_key) != 32:
            raise ValueError("owner public keys are 32 bytes each")

    @property
    def owner_id(self) -> bytes:
        return signer_id(self.public_key)

    def text(self) -> str:
        return f"{OWNER_PUBLIC_KIND} {self.public_key.hex()} {self.sealing_key.hex()}"

    @classmethod
    def of(cls, key: OwnerKey) -> OwnerPublic:
        return cls(key.public_key, key.sealing_public_key)

    @classmethod
    def from_text(cls, text: str) -> OwnerPublic:
        """Parse the text form; raise ConfigError with a one-line reason otherwise."""
        parts = text.split()
        try:
            if len(parts) == 3 and parts[0] == OWNER_PUBLIC_KIND:
                return cls(bytes.fromhex(parts[1]), bytes.fromhex(parts[2]))
        except ValueError:
            pass
        raise ConfigError("an owner public key is 'edgeproof-owner <64 hex> <64 hex>' "
                          "(what edgeproof-owner show prints)")


def load_signing_key(path: Path) -> SigningKey:
    """Read an Ed25519 key file (a device's, or a recipient's signing key); mode 0600."""
    return SigningKey(Secret(decode_key_text(DEVICE_KEY_KIND, read_secret_file(path), path)))


def save_signing_key(path: Path, key: SigningKey, *, overwrite: bool = False) -> None:
    """Write an Ed25519 key file with mode 0600; refuse to overwrite unless asked."""
    write_secret_file(path, encode_key_text(DEVICE_KEY_KIND, key.seed.value), overwrite=overwrite)


def load_owner_key(path: Path) -> OwnerKey:
    """Read an owner key file: the device-key line, then the recipient-key line (mode 0600).

    Raises KeyFileError if the file is missing, open to others, or not two such lines.
    """
    lines = read_secret_file(path).splitlines()
    if len(lines) != 2:
        raise KeyFileError(f"{path}: not an edgeproof owner key file")
    seed = decode_key_text(DEVICE_KEY_KIND, lines[0], path)
    secret = decode_key_text(RECIPIENT_KEY_KIND, lines[1], path)
    return OwnerKey(SigningKey(Secret(seed)), RecipientKey(Secret(secret)))


def save_owner_key(path: Path, key: OwnerKey, *, overwrite: bool = False) -> None:
    """Write an owner key file (both secrets, one line each) with mode 0600."""
    data = (encode_key_text(DEVICE_KEY_KIND, key.signing.seed.value)
            + encode_key_text(RECIPIENT_KEY_KIND, key.sealing.secret.value))
    write_secret_file(path, data, overwrite=overwrite)


def load_device_key(path: Path) -> SigningKey:
    """Read a device key file (mode 0600 required); raise KeyFileError on any problem."""
    return load_signing_key(path)


def save_device_key(path: Path, key: SigningKey, *, overwrite: bool = False) -> None:
    """Write a device key file with mode 0600; refuse to overwrite unless asked."""
    save_signing_key(path, key, overwrite=overwrite)


def load_recipient_key(path: Path) -> RecipientKey:
    """Read a recipient key file (mode 0600 required); raise KeyFileError on any problem."""
    raw = decode_key_text(RECIPIENT_KEY_KIND, read_secret_file(path), path)
    return RecipientKey(Secret(raw))


def save_recipient_key(path: Path, key: RecipientKey, *, overwrite: bool = False) -> None:
    """Write a recipient key file with mode 0600; refuse to overwrite unless asked."""
    data = encode_key_text(RECIPIENT_KEY_KIND, key.secret.value)
    write_secret_file(path, data, overwrite=overwrite)
