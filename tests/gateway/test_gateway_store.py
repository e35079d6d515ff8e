"""The log store, SQLite and PostgreSQL alike: atomic batches, restart recovery, proofs from
stored nodes, the registry's key-claim rule, settlement, checkpoints and anchors."""

from __future__ import annotations

import random
import threading
import time

import pytest

from gateway.anchor import LocalAnchor
from gateway.checkpoints import Checkpointer
from gateway.config import CheckpointConfig
from gateway.gatewaykey import GatewayKey
from gateway.metrics import GatewayMetrics
from gateway.store import (
    DEVICE_EQUIVOCATED,
    DeviceExists,
    DeviceNotFound,
    GapEntry,
    KeyEntry,
    LogStore,
    NewLeaf,
    UsageEntry,
)
from protocol import merkle
from protocol.errors import StorageError
from tests.stores import StoreFactory


def leaf(i: int, device: bytes = b"d" * 16) -> NewLeaf:
    raw = f"record {i}".encode()
    return NewLeaf(device, i, bytes(32), bytes(32), raw, "s", 0)


def test_store_proofs_equal_list_proofs_and_survive_reopen(store_factory: StoreFactory) -> None:
    store = store_factory.open()
    rng = random.Random(5)
    total = 0
    for _ in range(12):
        with store.transaction() as tx:
            for _ in range(rng.randint(1, 9)):
                tx.append(leaf(total))
                total += 1
    store.close()
    store = store_factory.open()  # the frontier is rebuilt from the stored nodes
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


def test_failed_batch_leaves_no_trace(store_factory: StoreFactory) -> None:
    store = store_factory.open()
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


def test_readers_never_see_a_batch_before_its_commit(store_factory: StoreFactory) -> None:
    store = store_factory.open()
    seen: list[object] = []

    def read() -> None:  # another thread: the API's view while the sequencer writes
        seen.extend([store.size(), store.leaf(0)])

    with store.transaction() as tx:
        tx.append(leaf(0))
        assert tx.links(b"d" * 16, 0, 0)  # the leaf is written inside the transaction
        reader = threading.Thread(target=read)
        reader.start()
        reader.join()
    assert seen == [0, None]
    assert store.size() == 1
    assert store.leaf(0) is not None
    store.close()


def test_registry_rejects_duplicates_and_revokes(store_factory: StoreFactory) -> None:
    store = store_factory.open()
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
    assert store.counts()["devices_revoked"] == 1
    store.close()


def test_key_a_device_rotated_to_cannot_enrol_another_device(
        store_factory: StoreFactory) -> None:
    store = store_factory.open()
    device = store.register_device("a", b"k" * 32, "alice", 10, 1)
    with store.transaction() as tx:
        assert not tx.key_in_use(b"n" * 32)
        tx.add_key(device.device_id, KeyEntry(8, b"n" * 32))
        assert tx.key_in_use(b"n" * 32)
    with pytest.raises(DeviceExists, match="rotated to it at seq 7"):
        store.register_device("b", b"n" * 32, "bob", 10, 2)
    found = store.device(device.device_id)
    assert found is not None
    assert found.key_for_seq(7) == b"k" * 32
    assert found.current_key == b"n" * 32
    assert [d.name for d in store.devices()] == ["a"]
    store.close()


def test_usage_credit_settles_to_the_owner_and_overlaps_are_found(
        store_factory: StoreFactory) -> None:
    store = store_factory.open()
    a = store.register_device("a", b"k" * 32, "zoë", 10, 1)
    b = store.register_device("b", b"j" * 32, "alice", 10, 1)
    with store.transaction() as tx:
        tx.add_usage(UsageEntry(a.device_id, 1, 0, 100, 200, 100, 2**40))
        tx.add_usage(UsageEntry(a.device_id, 2, 0, 200, 300, 100, 2**40))
        tx.add_usage(UsageEntry(b.device_id, 1, 0, 0, 50, 50, 7))
        assert tx.usage_overlaps(a.device_id, 0, 150, 160)
        assert not tx.usage_overlaps(a.device_id, 0, 300, 400)
        assert not tx.usage_overlaps(a.device_id, 1, 150, 160)  # another boot
        tx.add_gap(GapEntry(b.device_id, 3, 1, 2, "buffer_full"))
        tx.add_gap(GapEntry(b.device_id, 3, 1, 2, "buffer_full"))  # resent: kept once
    assert [(x.owner, x.balance_micro) for x in store.balances()] == [
        ("alice", 7), ("zoë", 2**41)]
    counts = store.counts()
    assert counts["usage_records"] == 3
    assert counts["gaps_declared"] == 1
    store.close()


def test_equivocation_evidence_is_kept_once_and_flags_the_device(
        store_factory: StoreFactory) -> None:
    store = store_factory.open()
    device = store.register_device("a", b"k" * 32, "alice", 10, 1)
    with store.transaction() as tx:
        tx.add_equivocation(device.device_id, 4, b"other record", 1)
        tx.add_equivocation(device.device_id, 4, b"other record", 2)  # the same evidence
        tx.add_equivocation(device.device_id, 4, b"a third record", 3)
        assert tx.equivocation_evidence(device.device_id) == 2
    found = store.device(device.device_id)
    assert found is not None
    assert found.flags & DEVICE_EQUIVOCATED
    assert store.counts()["devices_equivocated"] == 1
    store.close()


def test_checkpoints_are_numbered_in_issue_order_and_anchors_are_idempotent(
        store_factory: StoreFactory) -> None:
    store = store_factory.open()
    assert store.latest_checkpoint() is None
    first = store.add_checkpoint(0, bytes(32), "note 1", 10, b"")
    second = store.add_checkpoint(3, b"r" * 32, "note 2", 20, b"balances")
    assert (first.number, second.number) == (1, 2)
    store.add_anchor(2, "local", "ref", 30)
    store.add_anchor(2, "local", "ref again", 31)
    store.close()
    store = store_factory.open()
    assert store.latest_checkpoint() == second
    assert store.checkpoints(0, 10) == [first, second]
    assert store.checkpoints(1, 10) == [second]
    assert store.add_checkpoint(4, b"s" * 32, "note 3", 40, b"").number == 3
    store.close()


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
