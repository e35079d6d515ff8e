"""The outbox on real SQLite files: sequence numbers, group commit, bounds, receipts, damage."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from agent.clock import ManualClock
from agent.outbox import DeviceState, Outbox, OutboxSettings
from agent.outbox import journal as journal_module
from agent.records import EpochPolicy, RecordFactory, RecordWriter
from protocol import reasons
from protocol.errors import StorageError
from protocol.keys import RecipientKey, SigningKey, device_id_for
from protocol.receipt import Outcome, Receipt, Status, hash_prefix
from protocol.record import Gap, KeyEpoch, Measurement, Record
from protocol.signed import parse_signed_record, record_hash


class Box:
    """An outbox with its state file, signer and writer, reopenable like after a restart."""

    def __init__(self, tmp: Path, settings: OutboxSettings | None = None,
                 recipients: dict[str, list[bytes]] | None = None) -> None:
        self.dir = tmp
        self.settings = settings or OutboxSettings()
        self.clock = ManualClock()
        self.key = SigningKey(SigningKey.generate().seed)
        self.device_id = device_id_for(self.key.public_key)
        self.recipients = recipients or {}
        self.open()

    def open(self) -> None:
        self.state = DeviceState.open(self.dir / "state.sqlite", self.clock.wall_ms)
        self.outbox = Outbox(self.dir / "outbox.sqlite", self.settings, self.state, self.clock)
        self.factory = RecordFactory(self.device_id, self.key, self.outbox.boot, self.clock)
        self.outbox.attach(self.factory)
        self.writer = RecordWriter(self.factory, self.outbox, self.recipients,
                                   policy=EpochPolicy(), clock=self.clock)

    def close(self) -> None:
        self.outbox.close()
        self.state.close()

    def crash(self) -> None:
        """kill -9: nothing more is written, the open transaction rolls back; what was
        handed to the kernel (the journal) stays. Private on purpose: no public call may
        close the outbox without committing."""
        self.outbox._db.acquire()  # noqa: SLF001 - a group commit in flight ends first
        self.outbox._conn.close()  # noqa: SLF001
        self.outbox._journal.close()  # noqa: SLF001
        self.state.close()

    def reading(self, value: int = 1, stream: str = "cpu") -> int | None:
        self.clock.advance(10)
        return self.writer.write_values(stream, (Measurement(value, -1, "Cel"),),
                                        self.clock.mono_ms())

    def stored(self) -> list[tuple[int, Record]]:
        self.outbox.commit()
        rows = self.outbox.unsent(-1, 100_000, 1 << 30)
        return [(seq, parse_signed_record(raw)[1]) for seq, raw in rows]

    def receipt(self, seqs: list[int], status: Status = Status.ACCEPTED,
                reason: str | None = None, tamper: bool = False) -> Receipt:
        rows = dict(self.outbox.fetch(seqs))
        outcomes = []
        for i, seq in enumerate(seqs):
            prefix = hash_prefix(rows[seq])
            if tamper:
                prefix = bytes(16)
            if status is Status.REJECTED:
                outcomes.append(Outcome(seq, prefix, status, reason=reason))
            else:
                outcomes.append(Outcome(seq, prefix, status, leaf_index=i))
        return Receipt(self.device_id, 1, tuple(outcomes), "cp\n", 0, 0)


def gaps_of(records: list[tuple[int, Record]]) -> list[Gap]:
    return [r.body for _, r in records if isinstance(r.body, Gap)]


def test_restart_continues_sequence_and_chain(tmp_path: Path) -> None:
    box = Box(tmp_path)
    for i in range(5):
        box.reading(i)
    box.close()
    box.open()
    for i in range(5):
        box.reading(i)
    records = box.stored()
    assert [s for s, _ in records] == list(range(10))
    assert records[5][1].boot == records[0][1].boot + 1
    raws = dict(box.outbox.unsent(-1, 100, 1 << 30))
    for seq, record in records[1:]:
        assert record.prev == record_hash(raws[seq - 1])


def test_records_are_offered_once_journaled_without_waiting_for_the_window(
        tmp_path: Path) -> None:
    box = Box(tmp_path, OutboxSettings(commit_window_ms=1000, commit_max_records=100))
    box.reading()
    assert [s for s, _ in box.outbox.unsent(-1, 100, 1 << 30)] == [0]
    assert box.outbox.committed_through == -1  # not yet fsynced: only in the journal
    box.clock.advance(1000)
    assert box.outbox.maybe_commit()
    assert box.outbox.committed_through == 0


def test_group_commits_when_the_record_limit_is_reached(tmp_path: Path) -> None:
    box = Box(tmp_path, OutboxSettings(commit_window_ms=60_000, commit_max_records=4))
    for _ in range(4):
        box.reading()
    assert box.outbox.committed_through == 3
    box.reading()
    assert box.outbox.committed_through == 3


def test_kill_9_inside_the_window_loses_nothing_and_declares_no_gap(tmp_path: Path) -> None:
    box = Box(tmp_path, OutboxSettings(commit_window_ms=60_000, commit_max_records=3))
    for i in range(5):  # 0..2 committed, 3..4 only in the journal
        box.reading(i)
    sent = dict(box.outbox.unsent(-1, 100, 1 << 30))
    assert sorted(sent) == [0, 1, 2, 3, 4]
    box.crash()  # same kernel: what was written to the journal survives
    box.open()
    box.reading(99)
    records = box.stored()
    assert [s for s, _ in records] == [0, 1, 2, 3, 4, 5]
    assert gaps_of(records) == []
    assert box.outbox.stats().counter("journal_replays") == 1
    assert records[5][1].prev == record_hash(sent[4])
    for seq, raw in sent.items():
        assert dict(box.outbox.unsent(-1, 100, 1 << 30))[seq] == raw


class DiskFillsMidWrite:
    """``os`` as the journal sees it: once armed, a write stores part of its bytes and
    returns short, and the next one fails with ENOSPC, as a filesystem that fills up does."""

    def __init__(self) -> None:
        self.armed = False
        self.full = False

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: bytes) -> int:
        if self.full:
            self.full = False
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if self.armed:
            self.armed, self.full = False, True
            return os.write(fd, data[:len(data) // 2])
        return os.write(fd, data)


def test_kill_9_after_a_write_torn_by_a_full_disk_loses_nothing_stored_after_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    box = Box(tmp_path, OutboxSettings(commit_window_ms=60_000, commit_max_records=10_000))
    disk = DiskFillsMidWrite()
    monkeypatch.setattr(journal_module, "os", disk)
    for i in range(3):
        box.reading(i)
    disk.armed = True
    with pytest.raises(StorageError, match="No space left on device"):
        box.reading(99)  # half a frame reached the file before the disk filled
    for i in range(3):  # room again (a log rotated away): these are stored and offered
        box.reading(i)
    offered = dict(box.outbox.unsent(-1, 100, 1 << 30))
    assert sorted(offered) == [0, 1, 2, 3, 4, 5]
    box.crash()
    box.open()
    box.reading(7)
    records = box.stored()
    # Without cutting the torn frame off, the replay stopped there: 3..5 vanished and
    # their numbers were given to new records.
    assert [s for s, _ in records] == [0, 1, 2, 3, 4, 5, 6]
    after = dict(box.outbox.unsent(-1, 100, 1 << 30))
    assert all(after[seq] == raw for seq, raw in offered.items())
    assert gaps_of(records) == []


def test_a_torn_frame_that_cannot_be_cut_off_stops_appends_until_the_next_generation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = DiskFillsMidWrite()

    def ftruncate_fails(fd: int, length: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(journal_module, "os", disk)
    journal = journal_module.Journal(tmp_path / "journal")
    journal.start(1)
    journal.append_record(0, "cpu", False, b"zero")
    disk.armed = True
    monkeypatch.setattr(disk, "ftruncate", ftruncate_fails, raising=False)
    with pytest.raises(StorageError, match="No space left on device"):
        journal.append_record(1, "cpu", False, b"one")
    with pytest.raises(StorageError, match="partial frame that could not be cut off"):
        journal.append_record(1, "cpu", False, b"one")  # would land behind the tear
    monkeypatch.setattr(disk, "ftruncate", os.ftruncate)
    journal.start(2)
    journal.append_record(1, "cpu", False, b"one")
    journal.close()
    generation, ops = journal_module.read_journal(tmp_path / "journal")
    assert generation == 2
    assert len(ops) == 1


def test_kill_9_replays_drops_and_refusals_as_well_as_records(tmp_path: Path) -> None:
    box = Box(tmp_path, OutboxSettings(max_bytes=2000, full_policy="reject-new",
                                       commit_window_ms=60_000, commit_max_records=10_000))
    while box.reading() is not None:
        pass
    refused = box.outbox.stats().counter("rejected_new")
    box.crash()
    box.open()
    assert box.outbox.stats().counter("rejected_new") == refused == 1
    box.outbox.close()  # declares the refused run
    box.open()
    gaps = gaps_of(box.stored())
    assert len(gaps) == 1
    assert gaps[0].first_seq == gaps[0].last_seq


def test_boot_counter_increments_on_every_start(tmp_path: Path) -> None:
    box = Box(tmp_path)
    boots = [box.outbox.boot]
    for _ in range(3):
        box.close()
        box.open()
        boots.append(box.outbox.boot)
    assert boots == [0, 1, 2, 3]


def test_drop_oldest_declares_exactly_the_dropped_records(tmp_path: Path) -> None:
    recipient = RecipientKey.generate()
    box = Box(tmp_path, OutboxSettings(max_bytes=64 * 1024, full_policy="drop-oldest"),
              recipients={"climate": [recipient.public_key]})
    box.writer.start_epoch()
    issued = []
    for i in range(600):
        seq = box.reading(i, stream="climate" if i % 2 else "cpu")
        assert seq is not None
        issued.append(seq)
    records = box.stored()
    kept = {s for s, _ in records}
    declared = {s for g in gaps_of(records) for s in range(g.first_seq, g.last_seq + 1)}
    stats = box.outbox.stats()
    assert stats.counter("dropped") == len(declared) > 0
    assert all(g.reason == reasons.OUTBOX_FULL for g in gaps_of(records))
    assert kept.isdisjoint(declared)
    assert kept | declared == set(range(max(kept) + 1))  # nothing vanished undeclared
    assert stats.bytes <= 64 * 1024 + 4096
    assert any(isinstance(r.body, KeyEpoch) for _, r in records)  # the epoch is kept


def test_reject_new_refuses_counts_and_declares_the_refused_numbers(tmp_path: Path) -> None:
    box = Box(tmp_path, OutboxSettings(max_bytes=64 * 1024, full_policy="reject-new"))
    results = [box.reading(i) for i in range(600)]
    refused = [i for i, r in enumerate(results) if r is None]
    assert refused
    assert box.outbox.stats().counter("rejected_new") == len(refused)
    kept = [s for s, _ in box.stored()]
    box.outbox.apply_receipt(box.receipt(kept[:100]))  # a receipt makes room
    seq = box.reading(7)
    assert seq is not None
    records = box.stored()
    (gap,) = gaps_of(records)
    assert (gap.first_seq, gap.last_seq) == (kept[-1] + 1, seq - 1)
    assert gap.reason == reasons.OUTBOX_FULL
    assert records[-1][0] == seq + 1  # the gap record follows the accepted record


def test_reject_new_run_is_declared_at_shutdown(tmp_path: Path) -> None:
    box = Box(tmp_path, OutboxSettings(max_bytes=64 * 1024, full_policy="reject-new"))
    results = [box.reading(i) for i in range(500)]
    assert None in results
    box.close()
    box.open()
    gaps = gaps_of(box.stored())
    assert len(gaps) == 1
    assert gaps[0].last_seq == len(results) - 1


def test_receipt_removes_accepted_and_duplicates_and_dead_letters_rejections(
        tmp_path: Path) -> None:
    box = Box(tmp_path)
    for i in range(6):
        box.reading(i)
    box.outbox.commit()
    box.outbox.apply_receipt(box.receipt([0, 1]))
    box.outbox.apply_receipt(box.receipt([2], Status.DUPLICATE))
    box.outbox.apply_receipt(box.receipt([3], Status.REJECTED, reason=reasons.FUTURE_TIMESTAMP))
    stats = box.outbox.stats()
    assert [s for s, _ in box.stored()] == [4, 5]
    assert stats.dead_letters == {reasons.FUTURE_TIMESTAMP: 1}
    assert stats.counter("receipt_delivered") == 2
    assert stats.counter("receipt_duplicates") == 1


def test_receipt_naming_another_record_hash_removes_nothing(tmp_path: Path) -> None:
    box = Box(tmp_path)
    box.reading()
    box.outbox.commit()
    result = box.outbox.apply_receipt(box.receipt([0], tamper=True))
    assert result.mismatched == 1
    assert result.removed == 0
    assert [s for s, _ in box.stored()] == [0]


def test_corrupt_outbox_is_moved_aside_and_the_loss_declared(tmp_path: Path) -> None:
    box = Box(tmp_path)
    for i in range(10):
        box.reading(i)
    box.close()
    (tmp_path / "outbox.sqlite").write_bytes(b"this is not a database" * 400)
    (tmp_path / "outbox.sqlite-wal").unlink(missing_ok=True)
    box.open()
    moved = list(tmp_path.glob("outbox.sqlite.corrupt-*"))
    assert len(moved) == 1
    assert moved[0].read_bytes().startswith(b"this is not")
    assert box.outbox.stats().corrupt_outboxes == 1
    box.reading(1)
    records = box.stored()
    gap = records[0][1].body
    assert isinstance(gap, Gap)
    assert gap.reason == reasons.OUTBOX_CORRUPT
    assert gap.first_seq == 0
    assert gap.last_seq >= 9
    assert records[0][0] > 9
    assert records[1][0] == records[0][0] + 1


def test_deleted_outbox_never_restarts_the_sequence_at_zero(tmp_path: Path) -> None:
    box = Box(tmp_path)
    for i in range(3):
        box.reading(i)
    box.outbox.commit()
    box.outbox.apply_receipt(box.receipt([0, 1, 2]))
    box.close()
    for name in ("outbox.sqlite", "outbox.sqlite-wal", "outbox.sqlite-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    box.open()
    records = box.stored()
    gap = records[0][1].body
    assert isinstance(gap, Gap)
    assert gap.first_seq == 3
    assert records[0][0] > 2


def test_lost_state_file_is_rebuilt_from_the_outbox_copy(tmp_path: Path) -> None:
    box = Box(tmp_path)
    box.reading()
    boot = box.outbox.boot
    box.close()
    for name in ("state.sqlite", "state.sqlite-wal", "state.sqlite-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    box.open()
    assert box.outbox.boot == boot + 1
    box.reading()
    assert [s for s, _ in box.stored()] == [0, 1]
    assert box.state.seq_reserved > 1


def test_damage_found_while_running_is_replaced_without_reusing_numbers(
        tmp_path: Path) -> None:
    box = Box(tmp_path)
    for i in range(4):
        box.reading(i)
    box.outbox.commit()
    before = box.outbox.stats().head_seq
    box.outbox.recover()
    assert list(tmp_path.glob("outbox.sqlite.corrupt-*"))
    seq = box.reading(5)
    assert seq is not None
    assert seq > before + 1
    assert box.outbox.generation == 1


@pytest.mark.parametrize("policy", ["drop-oldest", "reject-new"])
def test_protected_records_are_never_dropped(tmp_path: Path, policy: str) -> None:
    recipient = RecipientKey.generate()
    box = Box(tmp_path, OutboxSettings(max_bytes=64 * 1024, full_policy=policy),  # type: ignore[arg-type]
              recipients={"climate": [recipient.public_key]})
    epochs = [box.writer.start_epoch()]
    for i in range(900):
        box.reading(i, stream="climate")
        if i % 300 == 299:
            epochs.append(box.writer.start_epoch())
    kept = {s for s, _ in box.stored()}
    assert set(epochs) <= kept


def test_outcome_without_seq_is_matched_by_record_hash_within_the_batch(
        tmp_path: Path) -> None:
    box = Box(tmp_path)
    for i in range(3):
        box.reading(i)
    box.outbox.commit()
    raw = dict(box.outbox.fetch([1]))[1]
    outcome = Outcome(None, hash_prefix(raw), Status.REJECTED,
                      reason=reasons.MALFORMED)
    receipt = Receipt(box.device_id, 1, (outcome,), "cp\n", 0, 0)
    assert box.outbox.apply_receipt(receipt).unknown == 1  # no batch given: nothing matched
    assert box.outbox.apply_receipt(receipt, sent=(0, 1, 2)).rejected == 1
    assert [s for s, _ in box.stored()] == [0, 2]
    assert box.outbox.stats().dead_letters == {reasons.MALFORMED: 1}
