"""Reading the distributor's ``Funded`` events from a node, in bounded windows.

Nodes cap the block range of one ``eth_getLogs`` (and its answer's size), so a range is read
``LOG_WINDOW`` blocks at a time; each window's events are handed out before the next is
fetched, so memory is bounded by one window, not by the chain's history.
"""

from __future__ import annotations

from collections.abc import Iterator

from osutil.jsonrpc import JsonRpc
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


def funded_totals(rpc: JsonRpc, distributor: str, from_block: int,
                  to_block: int) -> dict[bytes, int]:
    """Sum of the ``Funded`` amounts (base units) per terms in ``from_block..to_block``."""
    totals: dict[bytes, int] = {}
    for _, events in funded_events(rpc, distributor, from_block, to_block):
        for funding in events:
            totals[funding.terms] = totals.get(funding.terms, 0) + funding.amount
    return totals
