"""Ethereum (secp256k1) key files: the gateway's anchor and payout keys, an owner's wallet.

A key file holds the private key as 64 hex digits (optionally 0x-prefixed), mode 0600, like
every edgeproof secret; it is read through :func:`protocol.keys.read_secret_file` (which
refuses a file open to group or others) and never printed: only its address is shown.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from eth_account import Account

from protocol.errors import KeyFileError
from protocol.keys import Secret, read_secret_file, write_secret_file


def load_eth_key(path: Path) -> tuple[Secret, str]:
    """Read a hex secp256k1 private key (mode 0600); return it and its checksum address.

    Raises KeyFileError if the file is missing, open to group/others or not a valid key.
    """
    text = read_secret_file(path).decode("ascii", errors="replace").strip()
    hex_key = text.removeprefix("0x")
    if len(hex_key) != 64 or any(c not in "0123456789abcdefABCDEF" for c in hex_key):
        raise KeyFileError(f"{path}: not a hex secp256k1 private key (64 hex digits)")
    key = bytes.fromhex(hex_key)
    try:
        address = str(Account.from_key(key).address)
    except (ValueError, TypeError):
        raise KeyFileError(f"{path}: not a valid secp256k1 private key") from None
    return Secret(key), address


def new_eth_key(path: Path) -> str:
    """Make a new key in ``path`` (mode 0600, never overwritten); return its address."""
    while True:
        key = secrets.token_bytes(32)
        try:
            address = str(Account.from_key(key).address)
        except (ValueError, TypeError):  # outside the curve order: astronomically rare
            continue
        write_secret_file(path, key.hex().encode("ascii") + b"\n")
        return address
