"""The device identity: an Ed25519 key in ``<state dir>/device.key`` (mode 0600).

The key is generated on the device and never leaves it; the device id is derived from the
public key (``protocol.keys.device_id_for``). Reading the key checks its mode: a key file
that group or others can access is refused, and the agent does not start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from protocol.errors import KeyFileError
from protocol.keys import SigningKey, device_id_for, load_device_key, save_device_key

KEY_FILE_NAME = "device.key"


@dataclass(frozen=True)
class Identity:
    """The device's signing key and the id derived from it."""

    key: SigningKey
    device_id: bytes

    @property
    def public_key_hex(self) -> str:
        return self.key.public_key.hex()


def ensure_state_dir(state_dir: Path) -> None:
    """Create the state directory (mode 0700) if needed; raise KeyFileError if impossible."""
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyFileError(f"{state_dir}: cannot create state directory ({exc.strerror})"
                           ) from None
    if not os.access(state_dir, os.W_OK):
        raise KeyFileError(f"{state_dir}: state directory is not writable")


def create_identity(key_file: Path) -> Identity:
    """Generate a new device key at ``key_file`` (mode 0600); return the identity.

    Raises KeyFileError if a key already exists there (it is never overwritten).
    """
    ensure_state_dir(key_file.parent)
    key = SigningKey.generate()
    save_device_key(key_file, key)
    return Identity(key, device_id_for(key.public_key))


def load_identity(key_file: Path) -> Identity:
    """Read the device key (mode 0600 or stricter required); return the identity.

    Raises KeyFileError if the file is missing, malformed or readable by others.
    """
    key = load_device_key(key_file)
    return Identity(key, device_id_for(key.public_key))
