"""The gateway's payout worker against a real ganache node and a real SQLite log store, its
book on each kind of tables in turn (a SQLite file; the shared PostgreSQL, tests/duty_tables.py).

The worker is stepped by hand (its thread is not started), so every fault lands exactly
between two steps: the node down, the node restarted with the root post still pending (it
forgets it), a post that reverts. The checkpoints are real store rows whose balances table
is what the worker reads; the distributor is the real contract.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from firmware_sim.chain import GanacheNode
from firmware_sim.solidity import Deployment, address_of
from gateway.config import PayoutConfig
from gateway.payout import CLAIMED_TTL_S, PayoutWorker
from gateway.payout_book import FAILED, POSTED
from gateway.sqlite_store import SQLiteLogStore
from protocol import cbor
from protocol.documents import sign_document
from protocol.errors import ConfigError
from protocol.keys import Secret, SigningKey, signer_id, write_secret_file
from rewards import distributor as abi
from rewards.documents import BASE_UNITS_PER_MICRO, WalletBinding, owner_name
from rewards.epoch import decode_balances
from rewards.tree import verify_claim
from tests.duty_tables import DutyTables
from tests.rewards.conftest import KEYS

OWNER_A, OWNER_B = address_of(KEYS["owner_a"]), address_of(KEYS["owner_b"])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def wall_ms(self) -> int:
        return int(self.now * 1000)


def owner_key(n: int) -> SigningKey:
    return SigningKey(Secret(hashlib.sha256(b"payout-owner-%d" % n).digest()))


REGISTRIES: dict[int, CollectorRegistry] = {}  # each worker's own metrics registry
worker_store: dict[int, SQLiteLogStore] = {}  # the store each worker reads


def counted(worker: PayoutWorker, metric: str, suffix: str = "_total", **labels: str) -> float:
    found = REGISTRIES[id(worker)].get_sample_value(f"edgeproof_gateway_payout_{metric}{suffix}",
                                                    labels)
    return found or 0.0


def make_worker(tables: DutyTables, node: GanacheNode, deployed: Deployment, clock: Clock,
                store: SQLiteLogStore, poster: str = "gateway",
                distributor_block: int = 0) -> PayoutWorker:
    """A worker whose book is in ``tables`` (a SQLite file, or the shared PostgreSQL)."""
    key_file = tables.workdir / "payout-eth.key"
    write_secret_file(key_file, KEYS[poster].value.hex().encode())
    # These tests are about posting roots (faults of the node and of transactions), not
    # about which credit counts: the explicit ungated mode pays the balances table as is.
    config = PayoutConfig(rpc_url=node.url, key_file=key_file, chain_id=node.chain_id,
                          distributor=deployed.distributor, interval_s=10.0, max_attempts=2,
                          consent_gated=False, distributor_block=distributor_block)
    registry = CollectorRegistry()
    worker = PayoutWorker(config, store, tables.payout_book(), owner_key(99),
                          wall_ms=clock.wall_ms,
                          monotonic=clock.monotonic, registry=registry)
    REGISTRIES[id(worker)] = registry
    worker_store[id(worker)] = store
    return worker


def checkpoint(store: SQLiteLogStore, size: int, balances: dict[str, int]) -> None:
    table = cbor.encode([[owner, micro] for owner, micro in sorted(balances.items())])
    store.add_checkpoint(size, bytes(32), f"note {size}", 0, table)


def bind(worker: PayoutWorker, key: SigningKey, address: str, chain_id: int) -> str:
    owner_id = signer_id(key.public_key)
    device = SigningKey.generate()
    worker_store[id(worker)].register_device(f"tv-{owner_id.hex()[:8]}", device.public_key,
                                             owner_name(owner_id), 3600, 1)
    doc = sign_document(WalletBinding(owner_id, bytes.fromhex(address[2:]), chain_id), key, 1)
    worker.bind_wallet(doc.raw)
    return owner_name(owner_id)


@pytest.fixture
def store(tmp_path: Path) -> SQLiteLogStore:
    opened = SQLiteLogStore(tmp_path / "gateway.sqlite")
    yield opened
    opened.close()


def funded(deployed: Deployment, amount: int) -> None:
    company = address_of(KEYS["company"])
    deployed.give(company, amount)
    deployed.fund(KEYS["company"], amount, bytes(32))


def test_epoch_pays_bound_owners_and_locks_the_unbound(
        duty_tables: DutyTables, chain: GanacheNode, deployed: Deployment,
        store: SQLiteLogStore) -> None:
    clock = Clock()
    funded(deployed, 10**24)
    worker = make_worker(duty_tables, chain, deployed, clock, store)
    alice = bind(worker, owner_key(1), OWNER_A, chain.chain_id)
    checkpoint(store, 10, {alice: 4000, "unbound-owner": 777})
    worker.step()  # computes epoch 1
    worker.step()  # posts it
    worker.step()  # sees it on chain
    found = worker.posted_tree()
    assert found is not None
    epoch, tree = found
    assert epoch.status == POSTED
    assert deployed.rpc.eth_call(deployed.distributor, abi.view("merkleRoot")) == tree.root
    amount = tree.leaf(OWNER_A).amount
    assert amount == 4000 * BASE_UNITS_PER_MICRO
    verify_claim(tree.root, OWNER_A, amount, tree.proof(OWNER_A))
    assert counted(worker, "locked_micro", suffix="") == 777
    worker.close()


def test_node_down_then_restarted_with_the_post_pending_posts_the_root_once(
        duty_tables: DutyTables, chain: GanacheNode, deployed: Deployment,
        store: SQLiteLogStore) -> None:
    clock = Clock()
    funded(deployed, 10**24)
    worker = make_worker(duty_tables, chain, deployed, clock, store)
    alice = bind(worker, owner_key(2), OWNER_B, chain.chain_id)
    checkpoint(store, 5, {alice: 1234})
    worker.step()  # epoch 1 computed while the node is up
    chain.stop()
    worker.step()  # node down: counted, nothing lost
    assert counted(worker, "rpc_errors", kind="unreachable") == 1
    chain.start()
    chain.rpc("miner_stop")
    worker.step()  # signed, persisted, broadcast: pending (the miner is stopped)
    pending = worker.book.latest()
    assert pending is not None
    assert pending.tx_hash is not None
    chain.stop()  # the node forgets the pending transaction
    chain.start()
    worker.step()  # the node does not know it and its nonce is unused: same bytes again
    assert counted(worker, "retries", reason="dropped") == 1
    worker.step()
    posted = worker.book.latest()
    assert posted is not None
    assert posted.status == POSTED
    assert posted.tx_hash == pending.tx_hash
    assert abi.uint(deployed.rpc.eth_call(deployed.distributor, abi.view("epoch"))) == 1
    assert counted(worker, "transactions") == 2
    worker.close()


def test_root_post_from_a_key_that_does_not_own_the_distributor_fails_counted(
        duty_tables: DutyTables, chain: GanacheNode, deployed: Deployment,
        store: SQLiteLogStore) -> None:
    clock = Clock()
    funded(deployed, 10**24)
    worker = make_worker(duty_tables, chain, deployed, clock, store, poster="stranger")
    alice = bind(worker, owner_key(3), OWNER_A, chain.chain_id)
    checkpoint(store, 5, {alice: 10})
    for _ in range(3):
        worker.step()
    failed = worker.book.latest()
    assert failed is not None
    assert failed.status == FAILED
    assert counted(worker, "retries", reason="reverted") == 1
    assert counted(worker, "epochs", outcome="failed") == 1
    assert abi.uint(deployed.rpc.eth_call(deployed.distributor, abi.view("epoch"))) == 0
    worker.close()


def test_total_beyond_the_funding_is_not_posted_and_counted(
        duty_tables: DutyTables, chain: GanacheNode, deployed: Deployment,
        store: SQLiteLogStore) -> None:
    clock = Clock()
    funded(deployed, 5 * BASE_UNITS_PER_MICRO)
    worker = make_worker(duty_tables, chain, deployed, clock, store)
    alice = bind(worker, owner_key(4), OWNER_A, chain.chain_id)
    checkpoint(store, 5, {alice: 6})
    worker.step()
    assert worker.book.latest() is None
    assert counted(worker, "epochs", outcome="underfunded") == 1
    worker.close()


def test_balances_table_that_is_not_one_is_refused() -> None:
    with pytest.raises(Exception, match="rows must be"):
        decode_balances(cbor.encode([["alice", -1]]))


def test_root_post_stuck_pending_is_replaced_with_the_same_nonce_and_posted_once(
        duty_tables: DutyTables, chain: GanacheNode, deployed: Deployment,
        store: SQLiteLogStore) -> None:
    clock = Clock()
    funded(deployed, 10**24)
    worker = make_worker(duty_tables, chain, deployed, clock, store)
    alice = bind(worker, owner_key(5), OWNER_A, chain.chain_id)
    checkpoint(store, 5, {alice: 99})
    worker.step()  # epoch computed
    chain.rpc("miner_stop")
    try:
        worker.step()  # sent; stays pending
        first = worker.book.latest()
        assert first is not None
        worker.step()  # pending, not yet for resend_after_s
        clock.now += worker.config.resend_after_s + 1
        worker.step()  # stuck: replaced with the same nonce, a higher gas price
        second = worker.book.latest()
        assert second is not None
        assert second.tx_hash != first.tx_hash
        assert second.nonce == first.nonce
        assert counted(worker, "retries", reason="stuck") == 1
    finally:
        chain.rpc("miner_start")
    worker.step()
    done = worker.book.latest()
    assert done is not None
    assert done.status == POSTED
    assert abi.uint(deployed.rpc.eth_call(deployed.distributor, abi.view("epoch"))) == 1
    worker.close()


def test_a_wrong_deployment_block_unchecked_at_start_with_the_node_down_signs_no_epoch(
        duty_tables: DutyTables, chain: GanacheNode, deployed: Deployment,
        store: SQLiteLogStore) -> None:
    clock = Clock()
    funded(deployed, 10**24)  # mined after the deployment
    wrong = deployed.distributor_block + 1
    worker = make_worker(duty_tables, chain, deployed, clock, store, distributor_block=wrong)
    alice = bind(worker, owner_key(6), OWNER_A, chain.chain_id)
    checkpoint(store, 5, {alice: 10})
    chain.stop()
    try:
        worker.start()  # a node down at start is not an error, as for every node call
        worker.stop()
    finally:
        chain.start()
    assert worker.fatal is None
    assert counted(worker, "stopped", suffix="") == 0
    refused = (f"payout.distributor_block = {wrong} is not the deployment block of the "
               f"distributor {deployed.distributor}: no transaction of that block created it")
    for _ in range(2):
        assert worker.step() == 60.0  # checked first: refuted, so nothing more
        assert worker.fatal == refused
    assert worker.book.latest() is None  # no epoch signed
    assert counted(worker, "stopped", suffix="") == 1  # in /metrics, and /healthz says why
    with pytest.raises(ConfigError) as err:
        worker.start()
    assert str(err.value) == refused
    worker.close()


def test_a_payout_notice_asks_the_node_once_per_address_however_often_it_is_requested(
        ) -> None:
    # GET /v1/payouts/notice/{owner} is public: each request cost the operator's node one
    # eth_call, one at a time under a lock with a 5-s time-out.
    calls: list[str] = []
    now = [100.0]

    class Node:
        def eth_call(self, to: str, data: bytes) -> bytes:
            calls.append(to)
            return (7_000).to_bytes(32, "big")

    worker = SimpleNamespace(
        _api_rpc_lock=threading.Lock(), _claimed_cache={}, _monotonic=lambda: now[0],
        _api_rpc=Node(), config=SimpleNamespace(distributor="0x" + "ab" * 20),
        metrics=SimpleNamespace())
    # The worker's own method on a stand-in holding just what it reads (a real worker
    # needs a chain); the node is faked below our code.
    claimed_micro = PayoutWorker._claimed_micro  # noqa: SLF001
    claimed = [claimed_micro(worker, "0x" + "01" * 20, 1000)  # type: ignore[arg-type]
               for _ in range(50)]
    assert claimed == [7] * 50
    assert len(calls) == 1
    now[0] += CLAIMED_TTL_S  # then it is read again
    assert claimed_micro(worker, "0x" + "01" * 20, 1000) == 7  # type: ignore[arg-type]
    assert len(calls) == 2
    claimed_micro(worker, "0x" + "02" * 20, 1000)  # type: ignore[arg-type]
    assert len(calls) == 3  # another address: its own answer
