"""The SQLite log store: atomic batches, restart recovery, proofs from stored nodes."""

from __future__ import annotations

import random
import sqlite3
import time

import pytest

from gateway.anchor import LocalAnchor
from gateway.checkpoints import Checkpointer
from gateway.config import CheckpointConfig
from gateway.gatewaykey import GatewayKey
from gateway.metrics import GatewayMetrics
from gateway.sqlite_store import SQLiteLogStore
from gateway.store import DeviceExists, DeviceNotFound, NewLeaf
from protocol import merkle
from protocol.errors import StorageError


def leaf(i: int, device: bytes = b"d" * 16) -> NewLeaf:
    raw = f"record {i}".encode()
    return NewLeaf(device, i, bytes(32), bytes(32), raw, "s", 0)


def test_store_proofs_equal_list_proofs_and_survive_reopen(tmp_path) -> None:
    path = tmp_path / "log.sqlite"
    store = SQLiteLogStore(path)
    rng = random.Random(5)
    total = 0
    for _ in range(12):
        with store.transaction() as tx:
            for _ in range(rng.randint(1, 9)):
                tx.append(leaf(total))
                total += 1
    store.close()
    store = SQLiteLogStore(path)  # the frontier is rebuilt from the stored nodes
    with store.transaction() as tx:
        tx.append(leaf(total))
        total += 1
    hashes = [merkle.leaf_hash(f"record {i}".encode()) for i in range(total)]
    assert store.size() == total
    assert store.root(total) == merkle.root(hashes)
    for size in range(1, total + 1):
        for index in range(0, size, 7):
            assert (merkle.inclusion_proof_from_nodes(store, index, size)
                    == merkle.inclusion_proof(hashes[:size], index))
        assert (merkle.consistency_proof_from_nodes(store, size, total)
                == merkle.consistency_proof(hashes, size))
    store.close()


def test_failed_batch_leaves_no_trace(tmp_path) -> None:
    store = SQLiteLogStore(tmp_path / "log.sqlite")
    with store.transaction() as tx:
        tx.append(leaf(0))

    def append_twice() -> None:
        with store.transaction() as tx:
            tx.append(leaf(1))
            tx.append(leaf(1))  # the dedup index refuses a second (device, seq)

    with pytest.raises(StorageError):
        append_twice()
    assert store.size() == 1
    assert store.leaf(1) is None
    with store.transaction() as tx:
        assert tx.append(leaf(1)) == 1  # same index again, frontier restored
    hashes = [merkle.leaf_hash(f"record {i}".encode()) for i in range(2)]
    assert store.root(2) == merkle.root(hashes)
    store.close()


def test_registry_rejects_duplicates_and_revokes(tmp_path) -> None:
    store = SQLiteLogStore(tmp_path / "log.sqlite")
    device = store.register_device("a", b"k" * 32, "alice", 10, 1)
    with pytest.raises(DeviceExists):
        store.register_device("a", b"j" * 32, "alice", 10, 1)
    with pytest.raises(DeviceExists):
        store.register_device("b", b"k" * 32, "alice", 10, 1)
    revoked = store.revoke_device(device.device_id, 5)
    assert revoked.status == "revoked"
    assert revoked.revoked_ms == 5
    assert store.revoke_device(device.device_id, 9).revoked_ms == 5
    with pytest.raises(DeviceNotFound):
        store.revoke_device(b"\0" * 16, 1)
    store.close()


def test_gateway_refuses_a_log_that_disagrees_with_its_checkpoint(tmp_path) -> None:
    path = tmp_path / "log.sqlite"
    store = SQLiteLogStore(path)
    key = GatewayKey.generate("gw.test/log")

    def checkpointer(s: SQLiteLogStore) -> Checkpointer:
        return Checkpointer(s, key, LocalAnchor(lambda: 0), config=CheckpointConfig(),
                            metrics=GatewayMetrics(), wall_ms=lambda: 0,
                            monotonic=time.monotonic)

    with store.transaction() as tx:
        for i in range(4):
            tx.append(leaf(i))
    assert checkpointer(store).issue().size == 4
    store.close()
    with sqlite3.connect(path) as conn:  # someone rewrites history under the gateway
        conn.execute("UPDATE nodes SET hash = ? WHERE level = 2 AND idx = 0", (bytes(32),))
    store = SQLiteLogStore(path)
    with pytest.raises(StorageError, match="does not match"):
        checkpointer(store)
    store.close()
