"""Ethereum (secp256k1) key files: the gateway's anchor and payout keys, an owner's wallet.

A key file holds the private key as 64 hex digits (optionally 0x-prefixed), mode 0600, like
every edgeproof secret; it is read through :func:`protocol.keys.read_secret_file` (which
refuses a file open to group or others) and never printed: only its address is shown.
:func:`sign_transaction` signs with such a key (the gateway's anchor and payout workers).

``eth_account`` is imported on first use: importing it builds py_ecc's curve tables, about
0.4 s of CPU (``python -X importtime``), which every gateway start paid, with or without a
chain backend.
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from protocol.errors import KeyFileError
from protocol.keys import Secret, read_secret_file, write_secret_file

if TYPE_CHECKING:
    from eth_account.account import Account as AccountType


def _account() -> type[AccountType]:
    limit = sys.getrecursionlimit()
    from eth_account import Account  # noqa: PLC0415 - imported on first use (see above)

    # py_ecc, which eth_account imports, raises the interpreter's recursion limit to 100,000
    # for good. With it, json's C decoder given deeply nested input overflows the C stack
    # instead of raising RecursionError: a 64 KiB body of "[" from anyone killed a gateway
    # with a chain backend (SIGSEGV). Nothing of eth_account's that we call needs it.
    sys.setrecursionlimit(limit)
    return Account


def address_of(key: bytes) -> str:
    """The checksum address of secp256k1 private ``key``; ValueError if it is not one."""
    try:
        return str(_account().from_key(key).address)
    except TypeError as exc:
        raise ValueError(str(exc)) from None


class SignedTx(NamedTuple):
    """A signed transaction: its hash (``0x`` hex) and the raw bytes to broadcast."""

    tx_hash: str
    raw: bytes


def sign_transaction(tx: dict[str, Any], key: bytes) -> SignedTx:
    """Sign ``tx`` (nonce, gasPrice, gas, to, value, data, chainId) with secp256k1 ``key``."""
    signed = _account().sign_transaction(tx, key)
    return SignedTx("0x" + bytes(signed.hash).hex(), bytes(signed.raw_transaction))


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
        address = address_of(key)
    except ValueError:
        raise KeyFileError(f"{path}: not a valid secp256k1 private key") from None
    return Secret(key), address


def new_eth_key(path: Path) -> str:
    """Make a new key in ``path`` (mode 0600, never overwritten); return its address."""
    while True:
        key = secrets.token_bytes(32)
        try:
            address = address_of(key)
        except ValueError:  # outside the curve order: astronomically rare
            continue
        write_secret_file(path, key.hex().encode("ascii") + b"\n")
        return address
