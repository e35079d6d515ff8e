"""The device identity: an Ed25519 key in ``<state dir>/device.key`` (mode 0600).

The key is generated on the device and never leaves it; the device id is derived from the
public key the device was enrolled with (``protocol.keys.device_id_for``) and never changes,
not even when the key is rotated (docs/PROTOCOL.md §3.3). It is therefore kept in its own
file, ``device.id`` (32 hex digits), written the first time the identity is created or
loaded. Reading the key checks its mode: a key file that group or others can access is
refused, and the agent does not start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from protocol.errors import KeyFileError
from protocol.keys import (
    DEVICE_ID_BYTES,
    SigningKey,
    device_id_for,
    load_device_key,
    save_device_key,
    write_secret_file,
)

KEY_FILE_NAME = "device.key"


@dataclass(frozen=True)
class Identity:
    """The device's signing key and its (enrolment-derived) device id."""

    key: SigningKey
    device_id: bytes

    @property
    def public_key_hex(self) -> str:
        return self.key.public_key.hex()


@dataclass(frozen=True)
class KeyFiles:
    """The files of one device identity, named after its key file (``device.key``).

    ``next`` is where the operator puts the next key (``edgeproof-provision device
    rotate``), ``prev`` holds the old key until the gateway accepted a rotation,
    ``rejected`` a next key the gateway refused, ``id_file`` the device id.
    """

    current: Path

    def _sibling(self, tag: str) -> Path:
        return self.current.with_name(f"{self.current.stem}.{tag}{self.current.suffix}")

    @property
    def next(self) -> Path:
        return self._sibling("next")

    @property
    def prev(self) -> Path:
        return self._sibling("prev")

    @property
    def rejected(self) -> Path:
        return self._sibling("rejected")

    @property
    def id_file(self) -> Path:
        return self.current.with_name(f"{self.current.stem}.id")


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
    device_id = device_id_for(key.public_key)
    _write_device_id(KeyFiles(key_file).id_file, device_id)
    return Identity(key, device_id)


def load_identity(key_file: Path, device_id: bytes | None = None) -> Identity:
    """Read the device key (mode 0600 or stricter required); return the identity.

    The device id comes from ``device.id``; if that file is missing it is ``device_id``
    (what the caller knows from a recorded key rotation) or else derived from the key, and
    the file is written. Raises KeyFileError if the key file is missing, malformed or
    readable by others, if ``device.id`` is malformed or disagrees with ``device_id``, or if
    it is missing while ``device.prev.key`` shows that the key was rotated.
    """
    key = load_device_key(key_file)
    files = KeyFiles(key_file)
    stored = _read_device_id(files.id_file)
    if stored is None:
        if device_id is None and files.prev.exists():
            raise KeyFileError(f"{files.id_file}: missing after a key rotation; the device id "
                               "cannot be derived from a rotated key (restore the file)")
        stored = device_id or device_id_for(key.public_key)
        _write_device_id(files.id_file, stored)
    elif device_id is not None and stored != device_id:
        raise KeyFileError(f"{files.id_file}: names device {stored.hex()}, but its key "
                           f"rotation was recorded for device {device_id.hex()}")
    return Identity(key, stored)


def _read_device_id(path: Path) -> bytes | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: cannot read the device id ({exc})") from None
    try:
        value = bytes.fromhex(text)
    except ValueError:
        value = b""
    if len(value) != DEVICE_ID_BYTES:
        raise KeyFileError(f"{path}: not a device id ({DEVICE_ID_BYTES * 2} hex digits)")
    return value


def _write_device_id(path: Path, device_id: bytes) -> None:
    # Not a secret, but written like one: atomically and fsynced.
    write_secret_file(path, (device_id.hex() + "\n").encode("ascii"), overwrite=True)
