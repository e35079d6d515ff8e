"""Data recipients: X25519 key pairs kept in ``FLEET/recipients/<name>.key`` and ``.pub``.

The secret half (``<name>.key``, mode 0600, :func:`protocol.keys.save_recipient_key`) is
handed to the recipient and then removed from the fleet if the operator wishes; devices only
ever need the public half (``<name>.pub``, 64 hex digits), which goes into their config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from protocol.errors import ConfigError, KeyFileError
from protocol.keys import RecipientKey, recipient_kid, save_recipient_key
from provisioning.fleet import FleetConfig

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def check_name(name: str, what: str = "recipient") -> str:
    """Return ``name`` if it is a usable file and config name; raise ConfigError otherwise."""
    if NAME_RE.fullmatch(name) is None:
        raise ConfigError(f"{what} name {name!r}: use 1-63 letters, digits, '.', '_' or '-', "
                          "starting with a letter or digit")
    return name


@dataclass(frozen=True)
class Recipient:
    """A recipient's public half: name, X25519 public key and its 8-byte kid."""

    name: str
    public_key: bytes

    @property
    def kid(self) -> bytes:
        return recipient_kid(self.public_key)


def add_recipient(fleet: FleetConfig, name: str,
                  key: RecipientKey | None = None) -> Recipient:
    """Create a recipient key pair; return its public half.

    Raises ConfigError for a bad or taken name, KeyFileError if the key cannot be written.
    """
    check_name(name)
    key = key or RecipientKey.generate()
    secret_path, public_path = _paths(fleet, name)
    if secret_path.exists() or public_path.exists():
        raise ConfigError(f"recipient {name!r} already exists in {fleet.recipients_dir}")
    fleet.recipients_dir.mkdir(parents=True, exist_ok=True)
    save_recipient_key(secret_path, key)
    try:
        public_path.write_text(key.public_key.hex() + "\n", encoding="ascii")
    except OSError as exc:
        secret_path.unlink(missing_ok=True)
        raise KeyFileError(f"{public_path}: cannot write: {exc.strerror}") from None
    return Recipient(name, key.public_key)


def load_recipient(fleet: FleetConfig, name: str) -> Recipient:
    """Return a recipient's public half; raise ConfigError if it does not exist or is bad."""
    check_name(name)
    _, public_path = _paths(fleet, name)
    try:
        text = public_path.read_text(encoding="ascii").strip()
        public_key = bytes.fromhex(text)
    except FileNotFoundError:
        hint = f"edgeproof-provision recipient add {name} --fleet {fleet.root}"
        raise ConfigError(f"no recipient {name!r}; create it with: {hint}") from None
    except (OSError, UnicodeDecodeError, ValueError):
        raise ConfigError(f"{public_path}: not a recipient public key (64 hex digits)") from None
    if len(public_key) != 32:
        raise ConfigError(f"{public_path}: not a recipient public key (64 hex digits)")
    return Recipient(name, public_key)


def list_recipients(fleet: FleetConfig) -> list[Recipient]:
    """Return every recipient of the fleet, sorted by name."""
    if not fleet.recipients_dir.is_dir():
        return []
    names = sorted(p.stem for p in fleet.recipients_dir.glob("*.pub"))
    return [load_recipient(fleet, n) for n in names if NAME_RE.fullmatch(n)]


def _paths(fleet: FleetConfig, name: str) -> tuple[Path, Path]:
    return fleet.recipients_dir / f"{name}.key", fleet.recipients_dir / f"{name}.pub"
