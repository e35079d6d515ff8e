"""A group commit reads each device's logged neighbours, and only those (gateway.rules)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import sqlite_store
from gateway.rules import _merged
from gateway.sequencer import Sequencer
from gateway.sqlite_store import SQLiteLogStore
from gateway.store import LoggedLink
from protocol import reasons
from protocol.receipt import Status
from tests.gateway.gwkit import RATE, TestDevice
from tests.gateway.seqkit import NOW_MS, prepared, sequencer_for

BATCH = 10


@pytest.fixture
def log(tmp_path: Path) -> Iterator[tuple[SQLiteLogStore, Sequencer]]:
    store = SQLiteLogStore(tmp_path / "log.sqlite")
    try:
        yield store, sequencer_for(store)
    finally:
        store.close()


def test_a_batch_resent_from_long_ago_reads_its_own_neighbours_not_the_log_in_between(
        log: tuple[SQLiteLogStore, Sequencer], monkeypatch: pytest.MonkeyPatch) -> None:
    store, sequencer = log
    dev = TestDevice.create("resender", 1)
    store.register_device(dev.name, dev.enrolled_key, "alice", RATE, NOW_MS)
    batches = [dev.records(BATCH) for _ in range(30)]
    for number, records in enumerate(batches, start=1):
        sequencer.commit(prepared(store, dev, records, number))
    newest = dev.records(BATCH)
    lookups: list[tuple[int, int, int]] = []
    transaction = sqlite_store._Transaction  # noqa: SLF001 - spying on the store's lookups
    real_links = transaction.links

    def counted(tx: sqlite_store._Transaction, device_id: bytes, first: int,
                last: int) -> dict[int, LoggedLink]:
        found = real_links(tx, device_id, first, last)
        lookups.append((first, last, len(found)))
        return found

    monkeypatch.setattr(transaction, "links", counted)
    # One group: batch 2 again (the device never saw its receipt), then the next batch.
    receipts = sequencer.commit_group([prepared(store, dev, batches[1], 2),
                                       prepared(store, dev, newest, 31)])
    resent, new = (r.receipt.outcomes for r in receipts if r is not None)
    assert [o.status for o in resent] == [Status.DUPLICATE] * BATCH
    assert [o.leaf_index for o in resent] == list(range(BATCH, 2 * BATCH))
    assert [o.status for o in new] == [Status.ACCEPTED] * BATCH
    assert store.size() == 31 * BATCH
    # Two lookups, each the batch and one record either side; not the 280 records between.
    assert sorted(lookups) == [(BATCH - 1, 2 * BATCH, BATCH + 2),
                               (30 * BATCH - 1, 31 * BATCH, 1)]


def test_a_broken_chain_next_to_a_resent_batch_is_still_refused(
        log: tuple[SQLiteLogStore, Sequencer]) -> None:
    store, sequencer = log
    dev = TestDevice.create("forker", 2)
    store.register_device(dev.name, dev.enrolled_key, "alice", RATE, NOW_MS)
    batches = [dev.records(BATCH) for _ in range(5)]
    for number in (1, 2, 4, 5):  # batch 3 not logged yet
        sequencer.commit(prepared(store, dev, batches[number - 1], number))
    other = TestDevice.create("forker", 2)  # the same key: a second chain of seqs 20..29
    other.seq, other.prev = 2 * BATCH, b"\x07" * 32
    forged = other.records(BATCH)
    receipts = sequencer.commit_group([prepared(store, dev, batches[0], 1),
                                       prepared(store, dev, forged, 3)])
    resent, refused = (r.receipt.outcomes for r in receipts if r is not None)
    assert [o.status for o in resent] == [Status.DUPLICATE] * BATCH
    assert refused[0].reason == reasons.CHAIN_MISMATCH  # its prev is not seq 19's hash
    assert refused[-1].reason == reasons.CHAIN_MISMATCH  # seq 30's prev is not its hash


runs = st.lists(st.lists(st.integers(0, 200), min_size=1, max_size=12).map(
    lambda seqs: [min(seqs), max(seqs)]), min_size=1, max_size=8)


@given(runs)
def test_merged_lookups_cover_every_neighbour_and_no_seq_far_from_the_group(
        given_runs: list[list[int]]) -> None:
    wanted = {s + d for low, high in given_runs for s in range(low, high + 1) for d in (-1, 0, 1)}
    merged = _merged(given_runs)
    covered = [s for low, high in merged for s in range(low - 1, high + 2)]
    assert len(covered) == len(set(covered)), "lookups overlap"
    assert wanted <= set(covered)
    in_runs = {s for low, high in given_runs for s in range(low, high + 1)}
    assert {s for low, high in merged for s in range(low, high + 1)} == in_runs | {
        s for s in range(min(in_runs), max(in_runs) + 1)
        if s - 1 in in_runs and s + 1 in in_runs}
