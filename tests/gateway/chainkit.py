"""What the Ethereum anchor's tests read off the real chain (tests/gateway/test_eth_anchor.py,
tests/gateway/test_gateway_shared_duties.py): test keys, and every transaction a sender got
mined, found by scanning the blocks."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from eth_account import Account

from firmware_sim.chain import ETHER, GanacheNode
from gateway.eth_anchor import ANCHOR_PREFIX


def eth_key(n: int) -> str:
    return "0x" + hashlib.sha256(f"edgeproof-test-eth-key-{n}".encode()).hexdigest()


def address_of(key: str) -> str:
    return str(Account.from_key(key).address)


@dataclass(frozen=True)
class ChainTx:
    hash: str
    nonce: int
    to: str
    data: bytes
    status: int
    block: int


def sender_txs(node: GanacheNode, sender: str) -> list[ChainTx]:
    """Every mined transaction from ``sender``, scanning all blocks."""
    found = []
    for number in range(int(node.rpc("eth_blockNumber"), 16) + 1):
        block = node.rpc("eth_getBlockByNumber", hex(number), True)
        for tx in block["transactions"]:
            if tx["from"].lower() == sender.lower():
                receipt = node.rpc("eth_getTransactionReceipt", tx["hash"])
                found.append(ChainTx(tx["hash"], int(tx["nonce"], 16), tx["to"] or "",
                                     bytes.fromhex(tx["input"][2:]),
                                     int(receipt["status"], 16), number))
    return found


def anchored_hashes(txs: list[ChainTx]) -> list[bytes]:
    return [tx.data[4:] for tx in txs if tx.status == 1 and tx.data[:4] == ANCHOR_PREFIX]


def nonce(node: GanacheNode, sender: str) -> int:
    """The sender's count of mined transactions (ganache's "pending" count leaves out
    transactions waiting while its miner is stopped: look those up by hash)."""
    return int(node.rpc("eth_getTransactionCount", sender, "latest"), 16)


def running_chain(workdir: Path, keys: list[str]) -> Iterator[GanacheNode]:
    """A ganache node (instamine) with ``keys`` funded, for a fixture to yield from."""
    node = GanacheNode(workdir, accounts=tuple((key, 100 * ETHER) for key in keys))
    node.start()
    try:
        yield node
    finally:
        node.kill()
