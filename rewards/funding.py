"""Reading the distributor's ``Funded`` events from a node, in bounded windows.

Nodes cap the block range of one ``eth_getLogs`` (and its answer's size), so a range is read
``LOG_WINDOW`` blocks at a time; each window's events are handed out before the next is
fetched, so memory is bounded by one window, not by the chain's history.

Where to start: the distributor's deployment block (no contract emits an event before it
exists). A verifier does not take that block on a gateway's word: :func:`check_deployed_in`
proves it on chain, with what any node serves (no archive state needed).
"""

from __future__ import annotations

from collections.abc import Iterator

from osutil.jsonrpc import JsonRpc, quantity
from protocol.errors import VerificationError
from rewards.distributor import FUNDED, Funding, decode_funded

LOG_WINDOW = 2_000  # blocks per eth_getLogs query


def funded_events(rpc: JsonRpc, distributor: str, from_block: int, to_block: int, *,
                  window: int = LOG_WINDOW) -> Iterator[tuple[int, list[Funding]]]:
    """Yield ``(last block of the window, its Funded events)`` for blocks
    ``from_block..to_block`` (inclusive), window by window, in block order."""
    start = from_block
    while start <= to_block:
        end = min(to_block, start + window - 1)
        yield end, [decode_funded(entry) for entry in rpc.logs(distributor, FUNDED, start, end)]
        start = end + 1


def check_deployed_in(rpc: JsonRpc, distributor: str, block: int) -> None:
    """Raise VerificationError unless a transaction of block ``block`` created
    ``distributor``: a contract-creating transaction (no ``to``) whose receipt succeeded,
    is of that block and names ``distributor`` as its ``contractAddress``.

    Why that is enough: a top-level creation's address comes from its sender and nonce, so
    it is created once; creation fails on an address that already holds code, so the
    distributor had none before this transaction, and an address without code emits no
    event. Every ``Funded`` event is therefore in ``block`` or later. A block after the
    deployment (it would hide the events in between) holds no such transaction, nor does an
    earlier one. A distributor made by another contract (a factory) has no such receipt and
    is refused (its gateway must state no block: its events are then read from block 0)."""
    wanted = distributor.lower()
    for tx in rpc.block_transactions(block):
        if tx.get("to") is not None or not isinstance(tx.get("hash"), str):
            continue  # not a contract creation
        receipt = rpc.receipt(str(tx["hash"]))
        if receipt is None or str(receipt.get("contractAddress")).lower() != wanted:
            continue
        if receipt.get("status") != "0x1" or quantity(receipt.get("blockNumber"),
                                                      "block number") != block:
            break
        return
    raise VerificationError(f"no transaction of block {block} created the distributor "
                            f"{distributor}: it is not its deployment block")


def funded_totals(rpc: JsonRpc, distributor: str, from_block: int,
                  to_block: int) -> dict[bytes, int]:
    """Sum of the ``Funded`` amounts (base units) per terms in ``from_block..to_block``."""
    totals: dict[bytes, int] = {}
    for _, events in funded_events(rpc, distributor, from_block, to_block):
        for funding in events:
            totals[funding.terms] = totals.get(funding.terms, 0) + funding.amount
    return totals
