"""The distributor's funding is read once from its deployment block, then only new blocks,
and read again from scratch when the chain changes under it (a real ganache node: its
evm_snapshot/evm_revert replace blocks already read, as a reorganisation does)."""

from __future__ import annotations

from typing import Any

from firmware_sim.chain import GanacheNode
from firmware_sim.solidity import Deployment, address_of
from gateway.payout_book import PayoutBook
from gateway.payout_funding import FundingLedger
from osutil.jsonrpc import JsonRpc
from tests.duty_tables import DutyTables
from tests.rewards.conftest import KEYS

TERMS_A, TERMS_B = b"\x0a" * 32, b"\x0b" * 32


class WatchedRpc(JsonRpc):
    """The real node, noting which block ranges eth_getLogs was asked for (and for which
    event: ``topics``, one per range)."""

    def __init__(self, url: str) -> None:
        super().__init__(url, timeout_s=30.0)
        self.ranges: list[tuple[int, int]] = []
        self.topics: list[str] = []

    def logs(self, address: str, topic0: str, from_block: int,
             to_block: int) -> list[dict[str, Any]]:
        self.ranges.append((from_block, to_block))
        self.topics.append(topic0)
        return super().logs(address, topic0, from_block, to_block)


def ledger(book: PayoutBook, rpc: JsonRpc, deployed: Deployment,
           rereads: list[str]) -> FundingLedger:
    return FundingLedger(book, rpc, deployed.distributor,
                         first_block=deployed.distributor_block, confirmations=0,
                         on_reread=rereads.append)


def test_funding_is_read_from_the_deployment_block_once_then_only_the_new_blocks(
        chain: GanacheNode, deployed: Deployment, duty_tables: DutyTables) -> None:
    company = address_of(KEYS["company"])
    deployed.give(company, 10**24)
    deployed.fund(KEYS["company"], 700, TERMS_A)
    rpc, rereads = WatchedRpc(chain.url), []
    book = duty_tables.payout_book()
    try:
        block, totals = ledger(book, rpc, deployed, rereads).read()
        assert totals == {TERMS_A: 700}
        assert rpc.ranges[0][0] == deployed.distributor_block  # never from block 0
        assert block == rpc.block_number()
        deployed.fund(KEYS["company"], 50, TERMS_A)
        deployed.fund(KEYS["company"], 9, TERMS_B)
        rpc.ranges.clear()
        # A new ledger on the same book (a restarted gateway) goes on where it stopped.
        later, totals = ledger(book, rpc, deployed, rereads).read()
        assert totals == {TERMS_A: 750, TERMS_B: 9}
        assert rpc.ranges == [(block + 1, later)]
        rpc.ranges.clear()
        assert ledger(book, rpc, deployed, rereads).read() == (later, totals)
        assert rpc.ranges == []  # nothing new: nothing read
        assert rereads == []
    finally:
        book.close()
        rpc.close()


def test_a_reorganised_chain_is_read_again_never_summed_across_two_forks(
        chain: GanacheNode, deployed: Deployment, duty_tables: DutyTables) -> None:
    company = address_of(KEYS["company"])
    deployed.give(company, 10**24)
    deployed.fund(KEYS["company"], 100, TERMS_A)
    rpc, rereads = WatchedRpc(chain.url), []
    book = duty_tables.payout_book()
    try:
        reader = ledger(book, rpc, deployed, rereads)
        snapshot = rpc.call("evm_snapshot")
        deployed.fund(KEYS["company"], 5, TERMS_B)  # on the fork that will be dropped
        assert reader.read()[1] == {TERMS_A: 100, TERMS_B: 5}
        assert rpc.call("evm_revert", snapshot) is True
        deployed.fund(KEYS["company"], 7, TERMS_A)  # the blocks read are replaced
        _, totals = reader.read()
        assert totals == {TERMS_A: 107}
        assert len(rereads) == 1
    finally:
        book.close()
        rpc.close()


def test_wallet_bindings_are_read_a_page_at_a_time_in_log_order(
        duty_tables: DutyTables) -> None:
    # GET /v1/wallets is public: it read (and verified) every binding for every request.
    book = duty_tables.payout_book()
    for i in range(5):
        book.add_wallet(f"owner-{i}", f"0x{i:040x}", bytes([i]), 10 * i + 3, 0)
    first = book.wallet_documents(-1, 2)
    assert first == [(3, b"\x00"), (13, b"\x01")]
    rest = book.wallet_documents(first[-1][0], 1000)
    assert [index for index, _ in rest] == [23, 33, 43]
    assert book.wallet_documents(43, 1000) == []
    assert len(book.wallet_documents(-1, 10**9)) == 5  # capped at MAX_PAGE, not refused
