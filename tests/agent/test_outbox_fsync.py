"""Group commits are fsynced off the sampling path; nothing is sent on the strength of an
fsync that has not returned, and a failed fsync is not ignored."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from agent.clock import ManualClock
from agent.outbox import DeviceState, Outbox, OutboxSettings
from agent.outbox.durability import Durability, fsync_path
from agent.records import EpochPolicy, RecordFactory, RecordWriter
from protocol.errors import StorageError
from protocol.keys import SigningKey, device_id_for
from protocol.record import Measurement


class GatedFsync:
    """An fsync that waits until the test opens the gate (a disk that is slow to flush)."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls = 0
        self.fail = False

    def __call__(self, path: Path) -> None:
        self.entered.set()
        self.gate.wait(60)
        self.calls += 1
        if self.fail:
            raise OSError(5, "Input/output error")
        fsync_path(path)


def open_box(tmp: Path, fsync: GatedFsync, settings: OutboxSettings) -> tuple[Outbox, RecordWriter]:
    clock = ManualClock()
    state = DeviceState.open(tmp / "state.sqlite", clock.wall_ms)
    outbox = Outbox(tmp / "outbox.sqlite", settings, state, clock, fsync=fsync)
    key = SigningKey.generate()
    factory = RecordFactory(device_id_for(key.public_key), key, outbox.boot, clock)
    outbox.attach(factory)
    return outbox, RecordWriter(factory, outbox, {}, policy=EpochPolicy(), clock=clock)


def write(writer: RecordWriter, n: int) -> None:
    for i in range(n):
        writer.write_values("cpu", (Measurement(i, -1, "Cel"),), i)


def test_send_limit_rises_only_after_the_group_commits_fsync_returns(tmp_path: Path) -> None:
    fsync = GatedFsync()
    fsync.gate.set()  # start-up commits are inline and must get through
    settings = OutboxSettings(commit_max_records=8)
    outbox, writer = open_box(tmp_path, fsync, settings)
    limit_at_start = outbox.send_limit
    fsync.gate.clear()
    fsync.entered.clear()
    write(writer, limit_at_start + 1 + 8)  # past the durable limit, group commits on the way
    assert fsync.entered.wait(60)  # the background fsync has started and hangs on the disk
    assert outbox.send_limit == limit_at_start
    assert outbox.sendable_through == limit_at_start  # nothing past the durable promise
    fsync.gate.set()
    outbox.commit()  # inline: returns only once everything committed is durable
    assert outbox.send_limit > limit_at_start
    assert outbox.sendable_through == outbox.stats().head_seq
    outbox.close()


def test_sampling_does_not_wait_for_a_slow_disk(tmp_path: Path) -> None:
    fsync = GatedFsync()
    fsync.gate.set()
    outbox, writer = open_box(tmp_path, fsync, OutboxSettings(commit_max_records=4))
    fsync.gate.clear()
    write(writer, 40)  # ten group commits while the disk does not answer
    assert outbox.committed_through == 39
    fsync.gate.set()
    outbox.close()


def test_failed_background_fsync_fails_the_next_commit(tmp_path: Path) -> None:
    fsync = GatedFsync()
    fsync.gate.set()
    outbox, writer = open_box(tmp_path, fsync, OutboxSettings(commit_max_records=4))
    limit = outbox.send_limit
    fsync.fail = True
    fsync.entered.clear()
    write(writer, 4)  # a group commit whose fsync fails in the background
    assert fsync.entered.wait(60)
    # Raised by the error the thread kept, or (if the thread is not there yet) by the
    # inline fsync this commit asks for: either way the failure is not passed over.
    with pytest.raises(StorageError, match="fsync failed"):
        outbox.commit()
    assert outbox.send_limit == limit  # never raised on an fsync that failed


def test_durability_reports_the_newest_token_once_its_fsync_returned(tmp_path: Path) -> None:
    fsync = GatedFsync()
    done: list[tuple[int, int]] = []
    reported = threading.Event()

    def on_durable(token: tuple[int, int]) -> None:
        done.append(token)
        reported.set()

    durability = Durability(tmp_path / "db.sqlite", on_durable, fsync=fsync)
    durability.request((1, 10))
    assert fsync.entered.wait(60)
    durability.request((1, 20))
    durability.request((1, 30))  # coalesced: one fsync covers both
    assert done == []
    fsync.gate.set()
    durability.close()
    assert done[-1] == (1, 30)
    assert len(done) <= 2


def test_after_a_failed_background_fsync_nothing_later_is_reported_durable(
        tmp_path: Path) -> None:
    fsync = GatedFsync()
    done: list[tuple[int, int]] = []
    durability = Durability(tmp_path / "db.sqlite", done.append, fsync=fsync)
    durability.request((1, 10))
    assert fsync.entered.wait(60)
    durability.request((1, 20))  # pending behind the fsync that is about to fail
    fsync.fail = True
    fsync.gate.set()
    durability.close()  # the fsync thread stopped at the failure: (1, 20) is not fsynced
    assert done == []
    assert fsync.calls == 1  # no later fsync may vouch for pages the failed one lost
    with pytest.raises(StorageError, match="fsync failed"):
        durability.check()
    with pytest.raises(StorageError, match="fsync failed"):
        durability.request((1, 30))
    assert done == []
