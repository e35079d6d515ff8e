"""What the log stores do below the interface: tampering with their tables is caught, on
SQLite and on PostgreSQL alike (tests/stores.py opens each and rewrites its nodes).

What every log store must do is in tests/contracts/test_log_store_contract.py."""

from __future__ import annotations

import time

import pytest

from gateway.anchor import LocalAnchor
from gateway.checkpoints import Checkpointer
from gateway.config import CheckpointConfig
from gateway.gatewaykey import GatewayKey
from gateway.metrics import GatewayMetrics
from gateway.store import STORED_NODE_LEVEL, LogStore, NewLeaf
from protocol import merkle
from protocol.errors import StorageError
from tests.stores import StoreFactory


def leaf(i: int, device: bytes = b"d" * 16) -> NewLeaf:
    raw = f"record {i}".encode()
    return NewLeaf(device, i, bytes(32), bytes(32), raw, "s", 0)


@pytest.mark.parametrize("rewrite", ["stored_node", "leaf_bytes"])
def test_gateway_refuses_a_log_that_disagrees_with_its_checkpoint(
        store_factory: StoreFactory, rewrite: str) -> None:
    store = store_factory.open()
    key = GatewayKey.generate("gw.test/log")

    def checkpointer(s: LogStore) -> Checkpointer:
        return Checkpointer(s, key, LocalAnchor(lambda: 0), config=CheckpointConfig(),
                            metrics=GatewayMetrics(), wall_ms=lambda: 0,
                            monotonic=time.monotonic)

    with store.transaction() as tx:
        for i in range(20):  # peaks: 16 leaves (a stored node) and 4 (hashed from leaves)
            tx.append(leaf(i))
    issued = checkpointer(store).issue()
    assert issued is not None
    assert issued.size == 20
    store.close()
    # Someone rewrites history under the gateway: a stored subtree, or a leaf's bytes
    # under a subtree too small to be stored.
    if rewrite == "stored_node":
        store_factory.set_node_hash(STORED_NODE_LEVEL, 0, bytes(32))
    else:
        store_factory.run("UPDATE leaves SET raw = ? WHERE idx = ?", (b"rewritten", 17))
    store = store_factory.open()
    with pytest.raises(StorageError, match="does not match"):
        checkpointer(store)
    store.close()


def test_only_subtrees_of_16_leaves_are_stored_and_every_proof_still_checks(
        store_factory: StoreFactory) -> None:
    leaves = [leaf(i) for i in range(40)]
    store = store_factory.open()
    with store.transaction() as tx:
        for item in leaves[:5]:
            tx.append(item)
    assert store_factory.run("SELECT level, idx FROM nodes") == []  # nothing of 16 yet
    with store.transaction() as tx:
        for item in leaves[5:]:
            tx.append(item)
    assert sorted(store_factory.run("SELECT level, idx FROM nodes")) == [(4, 0), (4, 1), (5, 0)]
    hashes = [merkle.leaf_hash(x.raw) for x in leaves]
    assert store.get_node(0, 3) == hashes[3]  # from the leaf's bytes
    assert store.get_node(3, 4) == merkle.root(hashes[32:40])
    for size in (1, 7, 16, 23, 40):
        root = merkle.root(hashes[:size])
        assert store.root(size) == root
        for index in range(size):
            proof = merkle.inclusion_proof_from_nodes(store, index, size)
            merkle.verify_inclusion(hashes[index], index, size, proof, root)
        for old in range(1, size):
            proof = merkle.consistency_proof_from_nodes(store, old, size)
            merkle.verify_consistency(old, size, merkle.root(hashes[:old]), root, proof)
    with pytest.raises(StorageError, match="missing"):
        store.get_node(3, 5)  # leaves 40..47 are not in the log
    store.close()


def test_a_log_written_with_low_node_rows_still_proves_and_grows(
        store_factory: StoreFactory) -> None:
    leaves = [leaf(i) for i in range(20)]
    store = store_factory.open()
    with store.transaction() as tx:
        for item in leaves:
            tx.append(item)
    store.close()
    # Logs written before 2026-12-06 hold a row for every subtree, leaves included; they
    # are no longer read (the same hashes come from the leaves' bytes).
    hashes = [merkle.leaf_hash(x.raw) for x in leaves]
    for level in range(STORED_NODE_LEVEL):
        for index in range(len(leaves) >> level):
            first = index << level
            store_factory.run("INSERT INTO nodes VALUES (?, ?, ?)",
                              (level, index, merkle.root(hashes[first:first + (1 << level)])))
    store = store_factory.open()
    with store.transaction() as tx:
        tx.append(leaf(20))
    hashes.append(merkle.leaf_hash(leaf(20).raw))
    assert store.root(21) == merkle.root(hashes)
    proof = merkle.inclusion_proof_from_nodes(store, 19, 21)
    merkle.verify_inclusion(hashes[19], 19, 21, proof, merkle.root(hashes))
    store.close()
