"""Election and fencing of the sequencer of a shared PostgreSQL store (gateway/cluster.py):
one process leads at a time, a deposed sequencer cannot append or sign, the new one continues
the tree from the database, and handed-over batches are sequenced exactly once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway import cluster
from gateway.anchor import LocalAnchor
from gateway.checkpoints import Checkpointer
from gateway.cluster import Role
from gateway.config import CheckpointConfig, Limits
from gateway.gatewaykey import GatewayKey
from gateway.metrics import GatewayMetrics
from gateway.pg_store import PostgresLogStore
from gateway.sequencer import Sequencer
from gateway.store import NewLeaf, NotSequencer, PendingBatch
from protocol import merkle
from protocol.errors import StorageError
from tests.harness.waiting import eventually
from tests.pg import PostgresCluster

WRITER_LOCK = 0x65_64_67_65_03  # gateway.pg_store._WRITER_LOCK


def _leaf(n: int) -> NewLeaf:
    raw = b"record-%d" % n
    return NewLeaf(device_id=bytes(16), seq=n, record_hash=merkle.leaf_hash(raw), prev=bytes(32),
                   raw=raw, stream="s", received_ms=n)


def _append(store: PostgresLogStore, first: int, count: int) -> None:
    with store.transaction() as tx:
        for n in range(first, first + count):
            tx.append(_leaf(n))


def _log_and_consume(store: PostgresLogStore, ids: list[int]) -> None:
    with store.transaction() as tx:
        tx.append(_leaf(0))
        tx.consume_pending(ids)


@pytest.fixture
def two(postgres: PostgresCluster, pg_database: str) -> Iterator[list[PostgresLogStore]]:
    dsn = postgres.dsn(pg_database)
    stores = [PostgresLogStore(dsn, postgres.password, shared=True) for _ in range(2)]
    try:
        yield stores
    finally:
        for store in stores:
            store.close()


def _terminate_sequencer_session(postgres: PostgresCluster, dbname: str) -> None:
    """What a network partition or the server's keepalive timeout does: end the session."""
    rows = postgres.execute_as_admin(
        dbname, "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
        "AND granted AND classid = %s AND objid = %s",
        (WRITER_LOCK >> 32, WRITER_LOCK & 0xFFFF_FFFF))
    assert rows == [(True,)]


def test_only_one_process_of_a_shared_store_can_append(
        two: list[PostgresLogStore]) -> None:
    a, b = two
    assert a.lead()
    assert not b.lead()
    with pytest.raises(NotSequencer):
        _append(b, 0, 1)
    with pytest.raises(NotSequencer):
        b.add_checkpoint(0, merkle.EMPTY_ROOT, "note", 0, b"")
    _append(a, 0, 3)
    assert b.size() == 3


def test_deposed_sequencer_that_still_believes_it_leads_cannot_append(
        two: list[PostgresLogStore], postgres: PostgresCluster, pg_database: str) -> None:
    a, b = two
    assert a.lead()
    _append(a, 0, 4)
    assert a.leading  # a has not noticed anything yet
    _terminate_sequencer_session(postgres, pg_database)
    # pg_terminate_backend signals the backend; the lock is free once it has exited.
    eventually(b.lead, "the lock to pass to the other process")
    _append(b, 4, 2)  # b continues the tree from the database
    with pytest.raises(NotSequencer):  # a's session is gone and the new one has no lock
        _append(a, 6, 1)
    with pytest.raises(NotSequencer):
        a.add_checkpoint(6, b.root(6), "note", 0, b"")
    assert not a.lead()
    assert b.size() == 6
    assert [leaf.raw for leaf in (b.leaf(i) for i in range(6)) if leaf is not None] == \
        [_leaf(n).raw for n in range(6)]


def test_new_sequencer_continues_the_tree_without_a_fork(
        two: list[PostgresLogStore], postgres: PostgresCluster, pg_database: str) -> None:
    a, b = two
    assert a.lead()
    _append(a, 0, 5)
    old_root = a.root(5)
    a.close()  # the sequencer's process dies: its session ends, the lock is free
    # The server ends the session (and frees the lock) a moment after the client has gone.
    eventually(b.lead, "the lock to pass to the other process")
    _append(b, 5, 6)
    proof = merkle.consistency_proof_from_nodes(b, 5, 11)
    merkle.verify_consistency(5, 11, old_root, b.root(11), proof)


def test_handed_over_batch_is_sequenced_exactly_once_by_whoever_leads(
        two: list[PostgresLogStore], postgres: PostgresCluster, pg_database: str) -> None:
    a, b = two
    assert a.lead()
    b.enqueue([PendingBatch(0, "t", b"payload", bytes(32), None, b"")], now_ms=1)
    with pytest.raises(NotSequencer):
        b.pending(10)
    assert b.pending_depth() == 1  # any process reads the depth (verifiers bound the queue)
    taken = a.pending(10)
    assert [p.payload for p in taken] == [b"payload"]
    with a.transaction() as tx:
        tx.consume_pending([p.id for p in taken])
    assert a.pending(10) == []
    assert b.pending_depth() == 0


def test_batch_taken_by_another_writer_fails_the_transaction(
        two: list[PostgresLogStore], postgres: PostgresCluster, pg_database: str) -> None:
    a, b = two
    assert a.lead()
    b.enqueue([PendingBatch(0, "t", b"p", bytes(32), None, b"")], now_ms=1)
    taken = a.pending(10)
    postgres.execute_as_admin(pg_database, "DELETE FROM pending", ())
    with pytest.raises(StorageError, match="taken by another writer"):
        _log_and_consume(a, [p.id for p in taken])
    assert a.size() == 0  # the leaf went with the rolled-back transaction


class Clock:
    """An injected monotonic clock (seconds) that only moves when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _role(store: PostgresLogStore, key: GatewayKey, clock: Clock) -> Role:
    metrics = GatewayMetrics()
    checkpointer = Checkpointer(store, key, LocalAnchor(lambda: 0), config=CheckpointConfig(),
                                metrics=metrics, wall_ms=lambda: 0, monotonic=clock)
    sequencer = Sequencer(store, checkpointer, key, limits=Limits(), metrics=metrics,
                          wall_ms=lambda: 0, monotonic=clock)
    return Role(store, checkpointer, sequencer, limits=Limits(), metrics=metrics,
                wall_ms=lambda: 0, monotonic=clock)


def test_verifier_sees_a_full_queue_and_the_sequencer_empties_it(
        two: list[PostgresLogStore], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster, "MAX_PENDING_BATCHES", 2)
    key, clock = GatewayKey.generate("gateway.test/edgeproof"), Clock()
    sequencer, verifier = (_role(store, key, clock) for store in two)
    assert sequencer.elect(now=True)
    assert not verifier.elect(now=True)
    assert not verifier.backlogged()
    unreadable = PendingBatch(0, "not/a/records/topic", b"", bytes(32), "wrong_topic", b"")
    two[1].enqueue([unreadable, unreadable], now_ms=1)
    assert not verifier.backlogged()  # read at most once a second
    clock.now += cluster.DEPTH_EVERY_S
    assert verifier.backlogged()
    assert sequencer.drain() == [None, None]  # sequenced (counted), nowhere to answer
    clock.now += cluster.DEPTH_EVERY_S
    assert not verifier.backlogged()


def test_new_sequencer_reloads_the_checkpoint_chain_of_the_old_one(
        two: list[PostgresLogStore]) -> None:
    key, clock = GatewayKey.generate("gateway.test/edgeproof"), Clock()
    first_store, second_store = two
    first, second = _role(first_store, key, clock), _role(second_store, key, clock)
    assert first.elect(now=True)  # signs the first checkpoint (size 0)
    _append(first_store, 0, 3)
    assert not second.elect(now=True)
    first_store.close()  # the sequencer's process is gone
    # PostgreSQL frees a closed session's advisory lock once its backend has noticed the
    # disconnect, not at once: the next election after that takes over and signs the 3
    # leaves the other left.
    eventually(lambda: second.elect(now=True), "the second process takes over")
    latest = second_store.latest_checkpoint()
    assert latest is not None
    assert latest.number == 2
    assert latest.size == 3
    assert second.leading
