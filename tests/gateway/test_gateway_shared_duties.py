"""The chain duties of a shared log: three real gateway processes over one PostgreSQL
database with the ``ethereum`` anchor on a real ganache node, all with the same anchor key.

Only the sequencer runs the anchor's worker; its queue (and the transactions it signed,
written before they are broadcast) is in the shared database, so after kill -9 of the
sequencer the next one resumes exactly there. What the tests assert is on the chain: the
key's transaction count (its nonce) and the anchoring transactions mined, never a flag.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from firmware_sim.broker import MosquittoBroker
from firmware_sim.chain import GanacheNode
from firmware_sim.procs import GatewayProcess
from protocol.keys import write_secret_file
from tests.gateway.chainkit import (
    address_of,
    anchored_hashes,
    eth_key,
    nonce,
    running_chain,
    sender_txs,
)
from tests.gateway.clusterkit import Cluster, wait
from tests.gateway.gwkit import DeviceClient, TestDevice, register
from tests.harness.waiting import within
from tests.pg import PostgresCluster

CHAIN_ID = 1337
FOLLOWER_KEY, FAILOVER_KEY = eth_key(201), eth_key(202)
WORKER_POLL_S = 1.0  # the anchor worker's poll (gateway.eth_anchor.EthTiming)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GanacheNode]:
    yield from running_chain(tmp_path_factory.mktemp("chain"), [FOLLOWER_KEY, FAILOVER_KEY])


@contextmanager
def anchoring(tmp_path: Path, broker: MosquittoBroker, postgres: PostgresCluster,
              dbname: str, chain: GanacheNode, key: str, *,
              interval_s: float) -> Iterator[tuple[Cluster, DeviceClient]]:
    """Three running processes of one log, each configured to anchor with ``key`` (one
    file), and a device client; both stopped on leaving."""
    key_file = tmp_path / "anchor-eth.key"
    write_secret_file(key_file, key.encode("ascii") + b"\n")
    # resend_after_s: a pending transaction is followed, never replaced, during a test.
    anchor = f"""
[anchor]
backend = "ethereum"
rpc_url = "{chain.url}"
key_file = "{key_file}"
chain_id = {CHAIN_ID}
interval_s = {interval_s}
resend_after_s = 600
"""
    cluster = Cluster(tmp_path, broker.port, postgres, dbname, size=3, extra=anchor)
    cluster.start()
    client = DeviceClient(broker.port, cluster.key.verifier_text())
    try:
        yield cluster, client
    finally:
        client.close()
        cluster.stop()


def anchor_rows(postgres: PostgresCluster, dbname: str) -> dict[bytes, tuple[str, int | None,
                                                                           str | None]]:
    """checkpoint hash -> (state, nonce, tx hash) as the shared anchor queue holds them."""
    rows = postgres.execute_as_admin(
        dbname, "SELECT checkpoint_hash, state, nonce, tx_hash FROM eth_anchor.anchors", ())
    return {bytes(h): (str(s), None if n is None else int(str(n)),  # type: ignore[arg-type]
                       None if t is None else str(t)) for h, s, n, t in rows}


def sent_txs(postgres: PostgresCluster, dbname: str) -> list[tuple[bytes, int, str]]:
    """(checkpoint hash, nonce, tx hash) of every transaction the queue persisted."""
    rows = postgres.execute_as_admin(
        dbname, "SELECT checkpoint_hash, nonce, tx_hash FROM eth_anchor.txs", ())
    return [(bytes(h), int(str(n)), str(t)) for h, n, t in rows]  # type: ignore[arg-type]


def pending_on_node(chain: GanacheNode, postgres: PostgresCluster, dbname: str) -> bool:
    """Whether a persisted transaction of a ``sending`` checkpoint is on the node, unmined."""
    sending = {(h, n) for h, (s, n, _) in anchor_rows(postgres, dbname).items()
               if s == "sending"}
    for digest, tx_nonce, tx_hash in sent_txs(postgres, dbname):
        if (digest, tx_nonce) in sending:
            found = chain.rpc("eth_getTransactionByHash", tx_hash)
            if found is not None and found.get("blockNumber") is None:
                return True
    return False


def served_anchor(gateway: GatewayProcess) -> dict[str, object] | None:
    response = httpx.get(f"{gateway.url}/v1/anchors", timeout=5)
    return dict(response.json()) if response.status_code == 200 else None


def log_records(client: DeviceClient, dev: TestDevice, batch_id: int) -> None:
    client.send(dev, dev.records(3), batch_id)
    client.wait_for(dev.device_id, batch_id)


def anchor_first_checkpoint(cluster: Cluster, client: DeviceClient, chain: GanacheNode,
                            sender: str, seed: int) -> tuple[GatewayProcess, TestDevice]:
    """The sequencer logs a device's first records and anchors them (the key's nonce 0
    used: ganache 7.9 mines both a nonce-0 transaction and its replacement)."""
    first = cluster.sequencer()
    dev = TestDevice.create(f"anchored-{seed}", seed)
    register(first.url, dev)
    log_records(client, dev, 1)
    wait("the first checkpoint anchored", lambda: nonce(chain, sender) == 1)
    return first, dev


def test_followers_never_send_and_the_next_sequencer_takes_the_queue_over(
        broker: MosquittoBroker, postgres: PostgresCluster, pg_database: str,
        chain: GanacheNode, tmp_path: Path) -> None:
    # interval_s of an hour: after its first anchor the sequencer leaves the next checkpoints
    # queued; a worker that had just started (in any process) would send one at once.
    sender = address_of(FOLLOWER_KEY)
    with anchoring(tmp_path, broker, postgres, pg_database, chain, FOLLOWER_KEY,
                   interval_s=3600) as (cluster, client):
        first, dev = anchor_first_checkpoint(cluster, client, chain, sender, 401)
        wait("its anchor confirmed in the shared queue", lambda: any(
            s == "confirmed" for s, _, _ in anchor_rows(postgres, pg_database).values()))
        followers = [g for g in cluster.gateways if g is not first]
        # Every process serves the anchor from the shared queue, followers included.
        wait("the anchor served by the followers",
             lambda: all(served_anchor(g) is not None for g in followers))
        log_records(client, dev, 2)
        wait("a later checkpoint queued", lambda: any(
            s == "queued" for s, _, _ in anchor_rows(postgres, pg_database).values()))
        # The followers see due work in the shared queue and send nothing: no worker runs.
        assert not within(lambda: nonce(chain, sender) > 1, timeout_s=3 * WORKER_POLL_S)
        assert cluster.roles().count("verifier") == 2

        assert first.kill() == -signal.SIGKILL
        successor = cluster.sequencer()
        assert successor is not first
        # Its worker started on taking over and sent the newest queued checkpoint.
        wait("the queued checkpoint anchored by the next sequencer",
             lambda: nonce(chain, sender) == 2)
        wait("its anchor confirmed in the shared queue", lambda: sum(
            s == "confirmed" for s, _, _ in anchor_rows(postgres, pg_database).values()) == 2)
        first.start()  # back as a follower: it sends nothing either
        assert not within(lambda: nonce(chain, sender) > 2, timeout_s=3 * WORKER_POLL_S)
    mined = sender_txs(chain, sender)
    assert len(anchored_hashes(mined)) == len(set(anchored_hashes(mined))) == 2
    assert sorted((n, h) for _, n, h in sent_txs(postgres, pg_database)) == sorted(
        (tx.nonce, tx.hash) for tx in mined)  # every transaction sent was persisted first


def test_kill9_of_the_sequencer_with_an_anchor_pending_the_next_one_confirms_that_same_tx(
        broker: MosquittoBroker, postgres: PostgresCluster, pg_database: str,
        chain: GanacheNode, tmp_path: Path) -> None:
    sender = address_of(FAILOVER_KEY)
    with anchoring(tmp_path, broker, postgres, pg_database, chain, FAILOVER_KEY,
                   interval_s=0.2) as (cluster, client):
        first, dev = anchor_first_checkpoint(cluster, client, chain, sender, 402)
        chain.rpc("miner_stop")
        try:
            log_records(client, dev, 2)
            wait("an anchoring transaction sent, not mined",
                 lambda: pending_on_node(chain, postgres, pg_database))
            (in_flight,) = [(h, n) for h, (s, n, _) in
                            anchor_rows(postgres, pg_database).items() if s == "sending"]
            persisted = [t for h, n, t in sent_txs(postgres, pg_database)
                         if (h, n) == in_flight]
            assert len(persisted) == 1
            assert in_flight[1] == nonce(chain, sender) == 1
            assert first.kill() == -signal.SIGKILL
            successor = cluster.sequencer()
            assert successor is not first
        finally:
            chain.rpc("miner_start")
        digest, same_nonce = in_flight
        wait("the pending anchor confirmed by the next sequencer",
             lambda: anchor_rows(postgres, pg_database)[digest][0] == "confirmed")
        _state, confirmed_nonce, tx_hash = anchor_rows(postgres, pg_database)[digest]
        assert (confirmed_nonce, tx_hash) == (same_nonce, persisted[0])
        # Settle: everything queued meanwhile anchored, nothing in flight.
        wait("the queue settled", lambda: all(
            s in ("confirmed", "superseded") for s, _, _ in
            anchor_rows(postgres, pg_database).values())
            and not pending_on_node(chain, postgres, pg_database))
    mined = sender_txs(chain, sender)
    assert anchored_hashes(mined).count(digest) == 1  # no second transaction for it
    confirmed = [t for s, _, t in anchor_rows(postgres, pg_database).values()
                 if s == "confirmed"]
    assert sorted(confirmed) == sorted(tx.hash for tx in mined)  # nothing else was mined
    assert [tx.nonce for tx in sorted(mined, key=lambda t: t.nonce)] == list(range(len(mined)))
