"""The log store contract: what every :class:`gateway.store.LogStore` must do.

One suite, run against every implementation in ``STORES`` (SQLite, and PostgreSQL on the
session's private cluster, tests/pg.py). A new store is tested by adding one
``pytest.param`` line there: a function of the test's ``request`` and ``tmp_path`` that
opens the store on a fresh database and opens it again for the restart tests. Tests that
reach below the interface (tampering with the stores' tables) stay in
tests/gateway/test_gateway_store.py.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.sqlite_store import SQLiteLogStore
from gateway.store import (
    DEVICE_EQUIVOCATED,
    STATUS_REVOKED,
    DeviceCounts,
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
from protocol.keys import device_id_for
from tests.stores import store_factory_for

Opener = Callable[[], LogStore]


def _sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    return lambda: SQLiteLogStore(tmp_path / "log.sqlite")


def _postgresql(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    return store_factory_for(request, "postgresql", tmp_path).open


# One line per implementation: (a factory of openers of one fresh database).
STORES = [
    pytest.param(_sqlite, id="sqlite"),
    pytest.param(_postgresql, id="postgresql"),
]


class Reopenable:
    """The store under test, and a way to close and reopen it on the same database."""

    def __init__(self, opener: Opener) -> None:
        self._open = opener
        self.store = opener()

    def reopen(self) -> LogStore:
        self.store.close()
        self.store = self._open()
        return self.store


@pytest.fixture(params=STORES)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Reopenable]:
    under_test = Reopenable(request.param(request, tmp_path))
    try:
        yield under_test
    finally:
        under_test.store.close()


@pytest.fixture
def store(db: Reopenable) -> LogStore:
    return db.store


DEVICE = b"d" * 16


def leaf(i: int, device: bytes = DEVICE, seq: int | None = None) -> NewLeaf:
    raw = f"record {i} of {device.hex()}".encode()
    return NewLeaf(device, i if seq is None else seq, bytes([i % 256]) * 32, bytes(32), raw,
                   "s", 1000 + i)


def leaf_hashes(leaves: list[NewLeaf]) -> list[bytes]:
    return [merkle.leaf_hash(x.raw) for x in leaves]


def append(store: LogStore, *leaves: NewLeaf) -> list[int]:
    with store.transaction() as tx:
        return [tx.append(x) for x in leaves]


# --- the log ------------------------------------------------------------------------------


def test_store_proofs_from_stored_nodes_equal_proofs_from_the_leaves(db: Reopenable) -> None:
    rng = random.Random(5)
    written: list[NewLeaf] = []
    for _ in range(12):
        batch = [leaf(len(written) + k) for k in range(rng.randint(1, 9))]
        append(db.store, *batch)
        written += batch
    store = db.reopen()  # the frontier is rebuilt from what was stored
    written.append(leaf(len(written)))
    append(store, written[-1])
    hashes, total = leaf_hashes(written), len(written)
    assert store.size() == total
    assert store.root(total) == merkle.root(hashes)
    for size in range(1, total + 1):
        for index in range(0, size, 7):
            assert (merkle.inclusion_proof_from_nodes(store, index, size)
                    == merkle.inclusion_proof(hashes[:size], index))
        assert (merkle.consistency_proof_from_nodes(store, size, total)
                == merkle.consistency_proof(hashes, size))


def test_store_hands_out_consecutive_indices_from_zero(store: LogStore) -> None:
    assert store.size() == 0
    assert append(store, leaf(0), leaf(1)) == [0, 1]
    assert append(store, leaf(2)) == [2]
    assert store.size() == 3


def test_store_refuses_a_second_leaf_for_the_same_device_and_seq(store: LogStore) -> None:
    append(store, leaf(0))
    with pytest.raises(StorageError):
        append(store, leaf(1, seq=0))
    assert store.size() == 1


def test_failed_transaction_leaves_no_trace(store: LogStore) -> None:
    append(store, leaf(0))
    store.register_device("a", b"k" * 32, "alice", 3600, 1)
    device_id = device_id_for(b"k" * 32)

    def batch_with_a_repeated_seq() -> None:
        with store.transaction() as tx:
            tx.append(leaf(1))
            tx.add_usage(UsageEntry(device_id, 1, 7, 0, 1000, 1000, 1))
            tx.append(leaf(1))  # the dedup index refuses a second (device, seq)

    with pytest.raises(StorageError):
        batch_with_a_repeated_seq()
    assert store.size() == 1
    assert store.leaf(1) is None
    assert store.balances()[0].balance_micro == 0
    with store.transaction() as tx:
        assert not tx.usage_overlaps(device_id, 7, 0, 1000)
        assert tx.append(leaf(1)) == 1  # the same index again: the frontier was restored
    assert store.root(2) == merkle.root(leaf_hashes([leaf(0), leaf(1)]))


def test_exception_inside_a_transaction_rolls_it_back(store: LogStore) -> None:
    class SequencerFailed(Exception):
        pass

    def failing_batch() -> None:
        with store.transaction() as tx:
            tx.append(leaf(0))
            raise SequencerFailed

    with pytest.raises(SequencerFailed):
        failing_batch()
    assert store.size() == 0
    assert store.leaf(0) is None


def test_transaction_sees_its_own_appends_before_the_commit(store: LogStore) -> None:
    with store.transaction() as tx:
        tx.append(leaf(0))
        assert tx.size == 1
    assert store.size() == 1


def test_committed_leaves_survive_a_reopen_unchanged(db: Reopenable) -> None:
    written = [leaf(0), leaf(1, device=b"e" * 16)]
    append(db.store, *written)
    store = db.reopen()
    for index, new in enumerate(written):
        got = store.leaf(index)
        assert got is not None
        assert (got.index, got.device_id, got.seq, got.record_hash, got.raw, got.stream,
                got.received_ms, got.flags) == (index, new.device_id, new.seq,
                                                new.record_hash, new.raw, new.stream,
                                                new.received_ms, new.flags)


def test_a_transaction_of_many_leaves_is_stored_row_for_row(db: Reopenable) -> None:
    # More leaves than one multi-row INSERT takes (gateway.sqlite_store: 50), plus a rest,
    # from three devices interleaved as a group commit writes them.
    devices = [b"d" * 16, b"e" * 16, b"f" * 16]
    written = [leaf(i, device=devices[i % 3], seq=i // 3) for i in range(123)]
    append(db.store, leaf(1000, seq=10_000))
    assert append(db.store, *written) == list(range(1, 124))
    store = db.reopen()
    assert store.size() == 124
    for index, new in enumerate(written, start=1):
        got = store.leaf(index)
        assert got is not None
        assert (got.device_id, got.seq, got.record_hash, got.raw, got.stream,
                got.received_ms, got.flags) == (new.device_id, new.seq, new.record_hash,
                                                new.raw, new.stream, new.received_ms,
                                                new.flags)
    assert store.root(124) == merkle.root(leaf_hashes([leaf(1000, seq=10_000), *written]))


def test_a_repeated_seq_deep_in_a_large_transaction_is_refused_and_leaves_no_trace(
        store: LogStore) -> None:
    append(store, leaf(0))
    batch = [leaf(i) for i in range(1, 121)]
    batch[74] = leaf(75, seq=10)  # a second (device, seq) inside the second 50 rows
    with pytest.raises(StorageError):
        append(store, *batch)
    assert store.size() == 1
    assert store.leaf(1) is None
    assert append(store, *[leaf(i) for i in range(1, 121)]) == list(range(1, 121))


def test_leaf_beyond_the_log_is_not_found(store: LogStore) -> None:
    append(store, leaf(0))
    assert store.leaf(1) is None
    assert store.leaf(10**6) is None


def test_readers_never_see_a_batch_before_its_commit(store: LogStore) -> None:
    seen: list[object] = []

    def read() -> None:  # another thread: the API's view while the sequencer writes
        seen.extend([store.size(), store.leaf(0)])

    with store.transaction() as tx:
        tx.append(leaf(0))
        assert tx.links(DEVICE, 0, 0)  # the leaf is written inside the transaction
        reader = threading.Thread(target=read)
        reader.start()
        reader.join()
    assert seen == [0, None]
    assert store.size() == 1
    assert store.leaf(0) is not None


def test_device_records_are_paged_in_seq_order_after_the_cursor(store: LogStore) -> None:
    append(store, leaf(3), leaf(0, device=b"e" * 16), leaf(1), leaf(2))
    assert [x.seq for x in store.device_records(DEVICE, -1, 10)] == [1, 2, 3]
    assert [x.seq for x in store.device_records(DEVICE, 1, 1)] == [2]
    assert store.device_records(DEVICE, 3, 10) == []


def test_stream_leaves_are_one_streams_leaves_of_an_index_range_in_index_order(
        store: LogStore) -> None:
    usage = [leaf(i)._replace(stream="usage") for i in (0, 2, 3, 5)]
    append(store, usage[0], leaf(1), usage[1], usage[2], leaf(4), usage[3])
    assert [x.index for x in store.stream_leaves("usage", 0, 6, 10)] == [0, 2, 3, 5]
    assert [x.index for x in store.stream_leaves("usage", 1, 5, 10)] == [2, 3]
    assert [x.index for x in store.stream_leaves("usage", 2, 6, 2)] == [2, 3]
    assert store.stream_leaves("usage", 6, 9, 10) == []
    assert [x.index for x in store.stream_leaves(None, 1, 6, 3)] == [1, 2, 3]


def test_links_show_only_the_devices_own_neighbours_in_range(store: LogStore) -> None:
    append(store, leaf(0), leaf(1), leaf(2), leaf(1, device=b"e" * 16))
    with store.transaction() as tx:
        links = tx.links(DEVICE, 1, 5)
    assert sorted(links) == [1, 2]
    assert links[1].index == 1
    assert links[1].record_hash == leaf(1).record_hash
    assert links[2].prev == leaf(2).prev


# --- the registry -------------------------------------------------------------------------


def test_second_device_with_a_taken_name_is_refused(store: LogStore) -> None:
    store.register_device("a", b"k" * 32, "alice", 10, 1)
    with pytest.raises(DeviceExists):
        store.register_device("a", b"j" * 32, "alice", 10, 1)
    assert [d.name for d in store.devices()] == ["a"]


def test_second_device_with_a_taken_key_is_refused(store: LogStore) -> None:
    store.register_device("a", b"k" * 32, "alice", 10, 1)
    with pytest.raises(DeviceExists):
        store.register_device("b", b"k" * 32, "alice", 10, 1)
    assert [d.name for d in store.devices()] == ["a"]


def test_registered_device_is_found_under_the_id_of_its_key(store: LogStore) -> None:
    made = store.register_device("a", b"k" * 32, "alice", 10, 1)
    assert made.device_id == device_id_for(b"k" * 32)
    assert store.device(made.device_id) == made
    assert store.device(b"\0" * 16) is None


def test_revoking_twice_keeps_the_first_revocation_time(store: LogStore) -> None:
    device = store.register_device("a", b"k" * 32, "alice", 10, 1)
    revoked = store.revoke_device(device.device_id, 5)
    assert revoked.status == STATUS_REVOKED
    assert revoked.revoked_ms == 5
    assert store.revoke_device(device.device_id, 9).revoked_ms == 5


def test_revoking_an_unknown_device_is_not_found(store: LogStore) -> None:
    with pytest.raises(DeviceNotFound):
        store.revoke_device(b"\0" * 16, 1)


def test_rotated_key_signs_from_its_seq_and_stays_in_use(store: LogStore) -> None:
    device = store.register_device("a", b"k" * 32, "alice", 10, 1)
    with store.transaction() as tx:
        tx.add_key(device.device_id, KeyEntry(5, b"n" * 32))
        assert tx.key_in_use(b"n" * 32)
        assert tx.key_in_use(b"k" * 32)
        assert not tx.key_in_use(b"x" * 32)
    found = store.device(device.device_id)
    assert found is not None
    assert found.key_for_seq(4) == b"k" * 32
    assert found.key_for_seq(5) == b"n" * 32
    assert found.enrolled_key == b"k" * 32
    assert found.current_key == b"n" * 32


def test_key_a_device_rotated_to_cannot_enrol_another_device(store: LogStore) -> None:
    device = store.register_device("a", b"k" * 32, "alice", 10, 1)
    with store.transaction() as tx:
        tx.add_key(device.device_id, KeyEntry(8, b"n" * 32))
    with pytest.raises(DeviceExists, match="rotated to it at seq 7"):
        store.register_device("b", b"n" * 32, "bob", 10, 2)
    assert [d.name for d in store.devices()] == ["a"]


# --- settlement and evidence --------------------------------------------------------------


def test_usage_credit_settles_to_the_device_and_its_owner(store: LogStore) -> None:
    a = store.register_device("a", b"k" * 32, "alice", 3600, 1)
    b = store.register_device("b", b"j" * 32, "alice", 3600, 1)
    with store.transaction() as tx:
        tx.add_usage(UsageEntry(a.device_id, 0, 1, 0, 1000, 1000, 7))
        tx.add_usage(UsageEntry(b.device_id, 0, 1, 0, 1000, 1000, 5))
    found = store.device(a.device_id)
    assert found is not None
    assert found.settled_micro == 7
    assert [(x.owner, x.balance_micro) for x in store.balances()] == [("alice", 12)]


def test_balances_are_ordered_by_owner_bytes_and_hold_large_credits(store: LogStore) -> None:
    a = store.register_device("a", b"k" * 32, "zoë", 3600, 1)
    b = store.register_device("b", b"j" * 32, "Zed", 3600, 1)
    c = store.register_device("c", b"i" * 32, "alice", 3600, 1)
    with store.transaction() as tx:
        tx.add_usage(UsageEntry(a.device_id, 0, 1, 0, 1000, 1000, 2**40))
        tx.add_usage(UsageEntry(a.device_id, 1, 1, 1000, 2000, 1000, 2**40))
        tx.add_usage(UsageEntry(b.device_id, 0, 1, 0, 1000, 1000, 3))
    assert [(x.owner, x.balance_micro) for x in store.balances()] == [
        ("Zed", 3), ("alice", 0), ("zoë", 2**41)]
    found = store.device(c.device_id)
    assert found is not None
    assert found.settled_micro == 0


def test_overlapping_usage_of_the_same_boot_is_detected(store: LogStore) -> None:
    a = store.register_device("a", b"k" * 32, "alice", 3600, 1)
    with store.transaction() as tx:
        tx.add_usage(UsageEntry(a.device_id, 0, 1, 1000, 2000, 500, 1))
        assert tx.usage_overlaps(a.device_id, 1, 1500, 2500)
        assert not tx.usage_overlaps(a.device_id, 1, 2000, 3000)  # touching is no overlap
        assert not tx.usage_overlaps(a.device_id, 2, 1500, 2500)  # another boot


def test_overlap_is_found_among_many_intervals_by_the_neighbour_alone(store: LogStore) -> None:
    # The check probes only the interval starting last before the end (the store scanned
    # every earlier interval of the boot: a device's own history slowed every commit).
    a = store.register_device("a", b"k" * 32, "alice", 3600, 1)
    with store.transaction() as tx:
        for i in range(200):  # [0, 10), [20, 30), ... [3980, 3990), and a zero-length one
            tx.add_usage(UsageEntry(a.device_id, i, 1, 20 * i, 20 * i + 10, 5, 1))
        tx.add_usage(UsageEntry(a.device_id, 200, 1, 5000, 5000, 0, 0))
        assert tx.usage_overlaps(a.device_id, 1, 15, 21)  # reaches into [20, 30)
        assert tx.usage_overlaps(a.device_id, 1, 9, 11)  # starts inside [0, 10)
        assert tx.usage_overlaps(a.device_id, 1, 0, 4000)  # covers them all
        assert tx.usage_overlaps(a.device_id, 1, 3985, 3985)  # a point inside the last
        assert not tx.usage_overlaps(a.device_id, 1, 10, 20)  # the gap between two
        assert not tx.usage_overlaps(a.device_id, 1, 3990, 4990)
        assert tx.usage_overlaps(a.device_id, 1, 4990, 5001)  # holds the zero-length one
        assert not tx.usage_overlaps(a.device_id, 1, 5000, 5010)  # starts at it


def test_an_owners_settled_credit_is_summed_without_overflow(store: LogStore) -> None:
    a = store.register_device("a", b"k" * 32, "alice", 3600, 1)
    b = store.register_device("b", b"j" * 32, "alice", 3600, 1)
    store.register_device("c", b"i" * 32, "bob", 3600, 1)
    big = 2**62 + 12345
    with store.transaction() as tx:
        assert tx.owner_settled_micro("alice") == 0
        tx.add_usage(UsageEntry(a.device_id, 0, 1, 0, 1000, 1000, big))
        tx.add_usage(UsageEntry(b.device_id, 0, 1, 0, 1000, 1000, 7))
        assert tx.owner_settled_micro("alice") == big + 7  # this transaction's own credit
        assert tx.owner_settled_micro("bob") == 0
        assert tx.owner_settled_micro("nobody") == 0


def test_equivocation_flags_the_device_and_keeps_its_evidence(store: LogStore) -> None:
    a = store.register_device("a", b"k" * 32, "alice", 10, 1)
    with store.transaction() as tx:
        assert tx.equivocation_evidence(a.device_id) == 0
        tx.add_equivocation(a.device_id, 3, b"other bytes", 9)
        assert tx.equivocation_evidence(a.device_id) == 1
    found = store.device(a.device_id)
    assert found is not None
    assert found.flags & DEVICE_EQUIVOCATED
    assert store.counts()["equivocations"] == 1


def test_same_equivocation_evidence_twice_is_kept_once(store: LogStore) -> None:
    a = store.register_device("a", b"k" * 32, "alice", 10, 1)
    with store.transaction() as tx:
        tx.add_equivocation(a.device_id, 3, b"other bytes", 9)
        tx.add_equivocation(a.device_id, 3, b"other bytes", 10)  # the same record resent
        tx.add_equivocation(a.device_id, 3, b"third bytes", 11)
        assert tx.equivocation_evidence(a.device_id) == 2


def test_declared_gap_is_counted(store: LogStore) -> None:
    with store.transaction() as tx:
        tx.add_gap(GapEntry(DEVICE, 9, 3, 8, "outbox_full"))
        tx.add_gap(GapEntry(DEVICE, 9, 3, 8, "outbox_full"))  # the same record resent
    assert store.counts()["gaps_declared"] == 1


# --- checkpoints --------------------------------------------------------------------------


def test_no_checkpoint_before_the_first_is_issued(store: LogStore) -> None:
    assert store.latest_checkpoint() is None
    assert store.checkpoints(0, 10) == []


def test_checkpoints_are_numbered_in_issue_order_and_survive_a_reopen(db: Reopenable) -> None:
    first = db.store.add_checkpoint(1, b"a" * 32, "note 1", 10, b"")
    second = db.store.add_checkpoint(2, b"b" * 32, "note 2", 20, b"balances")
    assert second.number > first.number
    store = db.reopen()
    assert store.latest_checkpoint() == second
    assert store.checkpoints(0, 10) == [first, second]
    assert store.checkpoints(first.number, 10) == [second]
    assert store.checkpoints(0, 1) == [first]


def test_checkpoint_numbers_count_from_one_without_gaps_across_a_reopen(
        db: Reopenable) -> None:
    numbers = [db.store.add_checkpoint(i, b"a" * 32, f"note {i}", i, b"").number
               for i in range(2)]
    store = db.reopen()
    numbers.append(store.add_checkpoint(2, b"a" * 32, "note 2", 2, b"").number)
    assert numbers == [1, 2, 3]


def test_anchoring_a_checkpoint_twice_is_not_an_error(store: LogStore) -> None:
    cp = store.add_checkpoint(1, b"a" * 32, "note 1", 10, b"")
    store.add_anchor(cp.number, "local", "ref", 11)
    store.add_anchor(cp.number, "local", "ref", 12)  # a retried anchor result


# --- paged reads (the dashboard and the admin listing) -------------------------------------


def test_device_listing_pages_by_name_bytes_without_repeats_or_holes(store: LogStore) -> None:
    names = [f"dev-{i:03d}" for i in range(25)] + ["Zed", "alpha"]
    for i, name in enumerate(names):
        store.register_device(name, bytes([i]) * 32, "o", 1, 1)
    seen: list[str] = []
    after = ""
    while page := store.devices(after, 10):
        assert len(page) <= 10
        seen += [d.name for d in page]
        after = page[-1].name
    assert seen == sorted(names, key=lambda n: n.encode())


def test_last_records_name_each_devices_newest_leaf_and_skip_silent_ones(
        store: LogStore) -> None:
    a = store.register_device("a", b"k" * 32, "o", 1, 1)
    b = store.register_device("b", b"j" * 32, "o", 1, 1)
    append(store, leaf(0, a.device_id), leaf(1, a.device_id), leaf(2, a.device_id, seq=7))
    found = store.last_records([a.device_id, b.device_id])
    assert set(found) == {a.device_id}
    assert (found[a.device_id].seq, found[a.device_id].received_ms) == (7, 1002)


def test_owner_credits_page_by_owner_bytes_with_device_counts(store: LogStore) -> None:
    owners = ["zoë", "Zed", "alice", "bob"]
    for i, owner in enumerate(owners):
        store.register_device(f"d{i}", bytes([i]) * 32, owner, 1, 1)
    extra = store.register_device("d9", b"\x09" * 32, "alice", 1, 1)
    with store.transaction() as tx:
        tx.add_usage(UsageEntry(extra.device_id, 0, 1, 0, 1000, 1000, 2**40))
    first = store.owner_credits("", 2)
    rest = store.owner_credits(first[-1].owner, 10)
    assert [(o.owner, o.balance_micro, o.devices) for o in first + rest] == [
        ("Zed", 0, 1), ("alice", 2**40, 2), ("bob", 0, 1), ("zoë", 0, 1)]


def test_device_counts_match_the_registry(store: LogStore) -> None:
    assert store.device_counts() == DeviceCounts(0, 0, 0)
    a = store.register_device("a", b"k" * 32, "o", 1, 1)
    b = store.register_device("b", b"j" * 32, "o", 1, 1)
    store.register_device("c", b"i" * 32, "o", 1, 1)
    store.revoke_device(a.device_id, 2)
    with store.transaction() as tx:
        tx.add_equivocation(b.device_id, 0, b"x", 3)
    assert store.device_counts() == DeviceCounts(registered=3, revoked=1, equivocated=1)
