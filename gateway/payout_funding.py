"""The distributor's funding per request, read from the chain incrementally.

A consent-gated epoch (PROTOCOL.md §19.4) needs, per request, the sum of the distributor's
``Funded`` events up to the epoch's ``funding_block``. Reading them from block 0 every epoch
costs a scan of the whole chain each time and memory for every event. Instead the sums per
terms and the next block to read are kept in the payout book: the first read starts at the
distributor's deployment block (``[payout] distributor_block``), every later one reads only
the blocks since, in windows (:mod:`rewards.funding`), so one epoch costs the new blocks
and memory holds one window's events plus one sum per request.

``funding_block`` trails the head by ``[payout] funding_confirmations`` blocks: a block that
deep is taken as final. Should the chain still change under what was read (the block read
last no longer has the hash noted, or the head is below it), everything read is forgotten
and read again from the deployment block (``edgeproof_gateway_payout_funding_rereads_total``):
never a sum of two forks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from gateway.payout_book import PayoutBook
from osutil.jsonrpc import JsonRpc
from protocol.errors import TransportError
from rewards.funding import funded_events

log = logging.getLogger(__name__)


class FundingLedger:
    """Sums of the distributor's Funded events per terms, up to a confirmed block."""

    def __init__(self, book: PayoutBook, rpc: JsonRpc, distributor: str, *, first_block: int,
                 confirmations: int, on_reread: Callable[[str], None]) -> None:
        self._book, self._rpc, self._distributor = book, rpc, distributor
        self._first, self._confirmations = first_block, confirmations
        self._on_reread = on_reread

    def read(self) -> tuple[int, dict[bytes, int]]:
        """Read the blocks since the last read; return ``(funding_block, totals)``: the sums
        (base units) of every Funded event from the deployment block to ``funding_block``."""
        to_block = self._rpc.block_number() - self._confirmations
        state = self._book.funding(self._distributor)
        start, totals, reset = self._first, {}, True
        if state is not None and state.next_block > self._first:
            why = self._changed(state.next_block, state.last_hash, to_block)
            if why is None:
                start, totals, reset = state.next_block, dict(state.totals), False
            else:
                log.warning("payout: re-reading the distributor's funding from block %d: %s",
                            self._first, why)
                self._on_reread(why)
        for end, events in funded_events(self._rpc, self._distributor, start, to_block):
            added: dict[bytes, int] = {}
            for funding in events:
                added[funding.terms] = added.get(funding.terms, 0) + funding.amount
            self._book.add_funding(self._distributor, end + 1, self._rpc.block_hash(end), added,
                                   reset=reset)
            reset = False
            for terms, amount in added.items():
                totals[terms] = totals.get(terms, 0) + amount
        return max(to_block, 0), totals

    def _changed(self, next_block: int, last_hash: str | None, to_block: int) -> str | None:
        """Why what was read up to ``next_block - 1`` no longer holds (None: it holds)."""
        if next_block - 1 > to_block:
            return f"the confirmed head {to_block} is below block {next_block - 1} read before"
        try:
            now = self._rpc.block_hash(next_block - 1)
        except TransportError:
            return f"block {next_block - 1} read before is gone"
        if last_hash is not None and now != last_hash:
            return f"block {next_block - 1} changed (reorganisation)"
        return None
