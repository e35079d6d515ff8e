"""The call data and events of contracts/CumulativeMerkleDistributor.sol and the ERC-20.

Function calls are the 4-byte selector (keccak256 of the signature) and the ABI-encoded
arguments (eth-abi); events are matched on topic 0 (keccak256 of the event signature).
Nothing here talks to a node: :mod:`rewards.chain` sends what this encodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode, encode
from eth_hash.auto import keccak
from eth_utils.address import to_checksum_address


def selector(signature: str) -> bytes:
    """The 4-byte function selector of ``signature`` (e.g. ``"epoch()"``)."""
    return bytes(keccak(signature.encode("ascii")))[:4]


def topic(signature: str) -> str:
    """The 0x topic 0 of an event signature."""
    return "0x" + bytes(keccak(signature.encode("ascii"))).hex()


def call_data(signature: str, types: Sequence[str], args: Sequence[Any]) -> bytes:
    """Selector of ``signature`` followed by ``args`` ABI-encoded as ``types``."""
    return selector(signature) + encode(list(types), list(args))


def post_root(epoch: int, root: bytes, total: int) -> bytes:
    """postRoot(uint64 epoch, bytes32 root, uint256 total): the gateway's per-epoch call."""
    return call_data("postRoot(uint64,bytes32,uint256)", ("uint64", "bytes32", "uint256"),
                     (epoch, root, total))


def claim(account: str, cumulative: int, proof: Sequence[bytes]) -> bytes:
    """claim(address account, uint256 cumulativeAmount, bytes32[] proof)."""
    return call_data("claim(address,uint256,bytes32[])", ("address", "uint256", "bytes32[]"),
                     (account, cumulative, list(proof)))


def fund(amount: int, terms: bytes) -> bytes:
    """fund(uint256 amount, bytes32 terms): a company pays into the distributor."""
    return call_data("fund(uint256,bytes32)", ("uint256", "bytes32"), (amount, terms))


def approve(spender: str, amount: int) -> bytes:
    """ERC-20 approve(address spender, uint256 amount)."""
    return call_data("approve(address,uint256)", ("address", "uint256"), (spender, amount))


def transfer(to: str, amount: int) -> bytes:
    """ERC-20 transfer(address to, uint256 amount)."""
    return call_data("transfer(address,uint256)", ("address", "uint256"), (to, amount))


def view(name: str, *addresses: str) -> bytes:
    """A view call taking only addresses: ``epoch()``, ``claimed(address)``, ``balanceOf``..."""
    signature = f"{name}({','.join('address' for _ in addresses)})"
    return call_data(signature, ["address"] * len(addresses), addresses)


def uint(answer: bytes) -> int:
    """Decode a single uint answer of a view call."""
    value = decode(["uint256"], answer)[0]
    assert isinstance(value, int)
    return value


ROOT_POSTED = topic("RootPosted(uint64,bytes32,uint256)")
FUNDED = topic("Funded(address,bytes32,uint256)")


@dataclass(frozen=True)
class Funding:
    """One Funded event: who paid how much for which terms, where on chain."""

    funder: str
    terms: bytes
    amount: int
    block_number: int
    log_index: int
    tx_hash: str


def decode_funded(entry: dict[str, Any]) -> Funding:
    """Decode one eth_getLogs entry of a Funded event; ValueError if it is not one."""
    topics = entry.get("topics") or []
    if len(topics) != 3 or topics[0] != FUNDED:
        raise ValueError("log entry is not a Funded event")
    funder = to_checksum_address("0x" + str(topics[1])[-40:])
    terms = bytes.fromhex(str(topics[2])[2:])
    (amount,) = decode(["uint256"], bytes.fromhex(str(entry["data"])[2:]))
    return Funding(str(funder), terms, int(amount), int(str(entry["blockNumber"]), 16),
                   int(str(entry["logIndex"]), 16), str(entry["transactionHash"]))
