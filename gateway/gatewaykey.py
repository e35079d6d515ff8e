"""The gateway's Ed25519 key: one C2SP signed-note private key for checkpoints and receipts.

The key file (mode 0600, read through :func:`protocol.keys.read_secret_file`) holds
``PRIVATE+KEY+<name>+<hex id>+<base64(0x01 || seed)>`` (https://c2sp.org/signed-note).
Checkpoints are signed notes under that key; receipts are COSE_Sign1 by the same key with
kid = its 4-byte key id. Devices and verifiers are configured with the verifier-key text.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import Path

from protocol.errors import KeyFileError, MalformedRecord
from protocol.keys import Secret, SigningKey, read_secret_file, write_secret_file
from protocol.note import NoteSigner


@dataclass(frozen=True)
class GatewayKey:
    """The gateway's signer in both forms it is used in."""

    note_signer: NoteSigner
    signing_key: SigningKey

    @property
    def name(self) -> str:
        return self.note_signer.name

    @property
    def kid(self) -> bytes:
        """The 4-byte C2SP key id: the kid of every receipt."""
        return self.note_signer.key_id

    @property
    def public_key(self) -> bytes:
        return self.note_signer.public_key

    def verifier_text(self) -> str:
        """The verifier-key text devices and auditors are configured with."""
        return self.note_signer.verifier_text()

    @classmethod
    def from_private_text(cls, text: str) -> GatewayKey:
        """Parse the private key text; raise MalformedRecord if it is not one."""
        signer = NoteSigner.from_private_text(text)
        # from_private_text checked the shape, type byte and key id; take the seed back out.
        # Key names contain no "+", while the base64 key material may.
        material = text.split("+", 4)[4]
        try:
            seed = base64.b64decode(material, validate=True)[1:]
        except (binascii.Error, ValueError):
            raise MalformedRecord("bad_private_key", "key material is not base64") from None
        return cls(signer, SigningKey(Secret(seed)))

    @classmethod
    def generate(cls, name: str) -> GatewayKey:
        """Make a fresh key named ``name``; raise MalformedRecord for a bad name."""
        seed = os.urandom(32)
        return cls(NoteSigner(name, seed), SigningKey(Secret(seed)))

    def private_text(self) -> str:
        """The secret key-file text (write it only with :func:`save_gateway_key`)."""
        return self.note_signer.private_text()


def load_gateway_key(path: Path) -> GatewayKey:
    """Read the gateway key file (mode 0600 required).

    Raises KeyFileError if the file is missing, open to others, or not a C2SP private key.
    """
    data = read_secret_file(path)
    try:
        return GatewayKey.from_private_text(data.decode("ascii").strip())
    except (UnicodeDecodeError, MalformedRecord, ValueError, binascii.Error):
        raise KeyFileError(f"{path}: not a C2SP signed-note private key "
                           "(PRIVATE+KEY+<name>+<id>+<key>)") from None


def save_gateway_key(path: Path, key: GatewayKey) -> None:
    """Write the key file with mode 0600; raise KeyFileError if it exists or on OS errors."""
    write_secret_file(path, (key.private_text() + "\n").encode("ascii"))
