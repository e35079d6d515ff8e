"""Payouts of a shared log: three real gateway processes over one PostgreSQL database, all
with the same ``[payout]`` section, posting to the real distributor on a real ganache node.

Only the sequencer runs the payout worker; the book (bindings, epochs, the raw root post
written before it is broadcast) is in the shared database. kill -9 of the sequencer while
an epoch's postRoot is sent but not mined: the next sequencer confirms that same
transaction (same nonce), and the chain holds one postRoot for the epoch. What is asserted
is on the chain and in the database, never a flag.
"""

from __future__ import annotations

import hashlib
import signal
from pathlib import Path

import httpx

from firmware_sim.broker import MosquittoBroker
from firmware_sim.chain import GanacheNode
from firmware_sim.solidity import Deployment, address_of
from protocol.documents import sign_document
from protocol.keys import Secret, SigningKey, signer_id
from rewards import distributor as abi
from rewards.documents import WalletBinding, owner_name
from tests.gateway.chainkit import sender_txs
from tests.gateway.clusterkit import Cluster, wait
from tests.gateway.gwkit import DeviceClient, TestDevice, register
from tests.pg import PostgresCluster
from tests.rewards.conftest import KEYS, payout_section

POST_ROOT = abi.post_root(1, bytes(32), 0)[:4]  # the selector of postRoot(uint64,bytes32,uint256)


def epochs(postgres: PostgresCluster, dbname: str) -> dict[int, tuple[str, str | None,
                                                                      int | None]]:
    """epoch -> (status, tx hash, nonce) as the shared payout book holds them."""
    rows = postgres.execute_as_admin(
        dbname, "SELECT epoch, status, tx_hash, nonce FROM payout.epochs", ())
    return {int(str(e)): (str(s), None if t is None else str(t),
                          None if n is None else int(str(n))) for e, s, t, n in rows}


def post_pending(chain: GanacheNode, postgres: PostgresCluster, dbname: str) -> bool:
    """Whether a pending epoch's persisted root post is on the node, not mined."""
    for status, tx_hash, _ in epochs(postgres, dbname).values():
        if status == "pending" and tx_hash is not None:
            found = chain.rpc("eth_getTransactionByHash", tx_hash)
            if found is not None and found.get("blockNumber") is None:
                return True
    return False


def test_kill9_of_the_sequencer_with_a_root_post_pending_the_next_one_confirms_that_same_tx(
        broker: MosquittoBroker, postgres: PostgresCluster, pg_database: str,
        chain: GanacheNode, deployed: Deployment, tmp_path: Path) -> None:
    company = address_of(KEYS["company"])
    deployed.give(company, 10**24)
    deployed.fund(KEYS["company"], 10**24, bytes(32))
    poster = address_of(KEYS["gateway"])
    # resend_after_s: a pending root post is followed, never replaced, during the test.
    payout = payout_section(tmp_path, chain, deployed,
                            "resend_after_s = 600\nunsafe_ungated = true\n")
    cluster = Cluster(tmp_path, broker.port, postgres, pg_database, size=3, extra=payout)
    cluster.start()
    client = DeviceClient(broker.port, cluster.key.verifier_text())
    owner = SigningKey(Secret(hashlib.sha256(b"shared-payout-owner").digest()))
    try:
        first = cluster.sequencer()
        tv = TestDevice.create("tv-shared", 77)
        register(first.url, tv, owner=owner_name(signer_id(owner.public_key)))
        tv.mono_ms = 100_000
        client.send(tv, [tv.usage(10_000, 40_000, 30_000).raw], 1)
        client.wait_for(tv.device_id, 1)
        chain.rpc("miner_stop")
        try:
            binding = sign_document(WalletBinding(
                signer_id(owner.public_key), bytes.fromhex(address_of(KEYS["owner_a"])[2:]),
                chain.chain_id), owner, 1)
            answer = httpx.post(f"{first.url}/v1/wallets",
                                json={"document": binding.raw.hex()}, timeout=10)
            assert answer.status_code == 201, answer.text
            wait("a root post sent, not mined",
                 lambda: post_pending(chain, postgres, pg_database))
            ((number, (_, tx_hash, tx_nonce)),) = [
                (e, row) for e, row in epochs(postgres, pg_database).items()
                if row[0] == "pending"]
            assert first.kill() == -signal.SIGKILL
            successor = cluster.sequencer()
            assert successor is not first
        finally:
            chain.rpc("miner_start")
        wait("the epoch posted by the next sequencer",
             lambda: epochs(postgres, pg_database)[number][0] == "posted")
        assert epochs(postgres, pg_database)[number] == ("posted", tx_hash, tx_nonce)
        assert abi.uint(deployed.rpc.eth_call(deployed.distributor, abi.view("epoch"))) \
            == number
        # Every process serves the book, followers included.
        for gateway in cluster.gateways:
            if gateway.running:
                served = httpx.get(f"{gateway.url}/v1/payouts/epochs/{number}", timeout=5)
                assert served.json()["status"] == "posted"
                assert httpx.get(f"{gateway.url}/v1/wallets", timeout=5).json()
        # A follower refuses a binding (only the sequencer logs and records one), in a line.
        follower = next(g for g in cluster.gateways if g.running and g is not successor)
        refused = httpx.post(f"{follower.url}/v1/wallets",
                             json={"document": binding.raw.hex()}, timeout=10)
        assert refused.status_code == 503, refused.text
    finally:
        client.close()
        cluster.stop()
    posts = [tx for tx in sender_txs(chain, poster)
             if tx.to.lower() == deployed.distributor.lower() and tx.data[:4] == POST_ROOT]
    for_epoch = [tx for tx in posts if int.from_bytes(tx.data[4:36], "big") == number]
    assert [(tx.hash, tx.nonce, tx.status) for tx in for_epoch] == [(tx_hash, tx_nonce, 1)]
    booked = {row[1] for row in epochs(postgres, pg_database).values()}
    assert {tx.hash for tx in posts} <= booked  # every root post sent was persisted first


def test_a_sequencer_configured_with_a_wrong_deployment_block_exits_before_its_payouts_start(
        broker: MosquittoBroker, postgres: PostgresCluster, pg_database: str,
        chain: GanacheNode, deployed: Deployment, tmp_path: Path) -> None:
    deployed.rpc.call("evm_mine")  # a block after the deployment exists
    wrong = deployed.distributor_block + 1
    cluster = Cluster(tmp_path, broker.port, postgres, pg_database, size=1,
                      extra=payout_section(tmp_path, chain, deployed, block=wrong))
    (gateway,) = cluster.gateways
    gateway.spawn()  # takes the lock at once (alone), so it starts the chain duties
    try:
        assert gateway.child is not None
        code = gateway.child.wait(60)
    finally:
        cluster.stop()
    assert code == 2, gateway.log_tail()
    assert gateway.log_tail(1) == (
        f"edgeproof-gateway: error: payout.distributor_block = {wrong} is not the deployment "
        f"block of the distributor {deployed.distributor}: no transaction of that block "
        "created it")
