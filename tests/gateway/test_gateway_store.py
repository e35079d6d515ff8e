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
from gateway.store import LogStore, NewLeaf
from protocol import merkle
from protocol.errors import StorageError
from tests.stores import StoreFactory


def leaf(i: int, device: bytes = b"d" * 16) -> NewLeaf:
    raw = f"record {i}".encode()
    return NewLeaf(device, i, bytes(32), bytes(32), raw, "s", 0)


def test_gateway_refuses_a_log_that_disagrees_with_its_checkpoint(
        store_factory: StoreFactory) -> None:
    store = store_factory.open()
    key = GatewayKey.generate("gw.test/log")

    def checkpointer(s: LogStore) -> Checkpointer:
        return Checkpointer(s, key, LocalAnchor(lambda: 0), config=CheckpointConfig(),
                            metrics=GatewayMetrics(), wall_ms=lambda: 0,
                            monotonic=time.monotonic)

    with store.transaction() as tx:
        for i in range(4):
            tx.append(leaf(i))
    issued = checkpointer(store).issue()
    assert issued is not None
    assert issued.size == 4
    store.close()
    store_factory.set_node_hash(2, 0, bytes(32))  # someone rewrites history under the gateway
    store = store_factory.open()
    with pytest.raises(StorageError, match="does not match"):
        checkpointer(store)
    store.close()


def test_a_leaf_hash_is_not_stored_twice_and_a_log_with_level_0_rows_still_proves(
        store_factory: StoreFactory) -> None:
    leaves = [leaf(i) for i in range(5)]
    store = store_factory.open()
    with store.transaction() as tx:
        for item in leaves:
            tx.append(item)
    assert store.get_node(0, 3) == merkle.leaf_hash(leaves[3].raw)  # from the leaf's bytes
    store.close()
    assert sorted(store_factory.run("SELECT level, idx FROM nodes")) == [(1, 0), (1, 1), (2, 0)]
    # A log written before level 0 was dropped holds every leaf's hash as a node row too.
    for i, item in enumerate(leaves):
        store_factory.run("INSERT INTO nodes VALUES (?, ?, ?)", (0, i, merkle.leaf_hash(item.raw)))
    store = store_factory.open()
    with store.transaction() as tx:
        tx.append(leaf(5))
    hashes = [merkle.leaf_hash(x.raw) for x in [*leaves, leaf(5)]]
    assert store.root(6) == merkle.root(hashes)
    proof = merkle.inclusion_proof_from_nodes(store, 4, 6)
    merkle.verify_inclusion(hashes[4], 4, 6, proof, merkle.root(hashes))
    store.close()
