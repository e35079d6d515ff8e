"""Group commits run on their own thread while sampling appends to the other journal file;
a kill -9 with a group in flight loses nothing, a failed group keeps its records, and a
power cut that kept the newer journal file but not the older replays nothing after the
hole."""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest

from agent.outbox import DeviceState, Outbox, OutboxSettings
from agent.outbox import store as outbox_store
from agent.outbox.durability import Committer
from agent.outbox.model import UNCLEAN_REBOOT
from protocol.errors import StorageError
from protocol.record import Gap
from protocol.signed import record_hash
from tests.agent.test_outbox import Box, gaps_of

KILL_IMAGE = ("outbox.sqlite", "outbox.sqlite-wal", "outbox.sqlite.journal",
              "outbox.sqlite.journal2", "state.sqlite", "state.sqlite-wal")


def hold_write_lock(path: Path) -> sqlite3.Connection:
    """Another connection takes the database's write lock (the group commit waits)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def kill_image(source: Path, target: Path) -> None:
    """What a kill -9 leaves now: every file as the kernel holds it (no -shm: rebuilt)."""
    target.mkdir()
    for name in KILL_IMAGE:
        if (source / name).exists():
            shutil.copyfile(source / name, target / name)


def device_dir(tmp: Path) -> Path:
    (tmp / "dev").mkdir()
    return tmp / "dev"


def chain_is_whole(box: Box, count: int) -> None:
    records = box.stored()
    assert [seq for seq, _ in records] == list(range(count))
    raws = dict(box.outbox.unsent(-1, 100_000, 1 << 30))
    for seq, record in records[1:]:
        assert record.prev == record_hash(raws[seq - 1])


def test_kill_while_a_group_commit_waits_for_sqlite_loses_nothing(tmp_path: Path) -> None:
    box = Box(device_dir(tmp_path), OutboxSettings(commit_max_records=8, commit_window_ms=60_000))
    for i in range(3):
        box.reading(i)
    box.outbox.commit()
    blocker = hold_write_lock(box.dir / "outbox.sqlite")
    for i in range(3, 11):
        box.reading(i)  # the 8th pending record hands a group to the committing thread
    for i in range(11, 14):
        box.reading(i)  # appended to the other journal file meanwhile
    kill_image(box.dir, tmp_path / "killed")
    blocker.rollback()
    blocker.close()
    box.close()

    box.dir = tmp_path / "killed"
    box.open()  # the same kernel: a crash of the process, both journal files replayed
    assert box.outbox.stats().counter("journal_replays") == 1
    box.reading(14)
    chain_is_whole(box, 15)
    assert gaps_of(box.stored()) == []
    box.close()


def test_a_group_commit_that_fails_keeps_its_records_and_fails_the_next_commit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    quick = dataclasses.replace(outbox_store.OUTBOX_PRAGMAS, busy_timeout_s=0.05)
    monkeypatch.setattr(outbox_store, "OUTBOX_PRAGMAS", quick)
    box = Box(tmp_path, OutboxSettings(commit_max_records=4, commit_window_ms=60_000))
    box.reading(0)  # reserves a block of numbers (a write to SQLite) before the lock is taken
    box.outbox.commit()
    blocker = hold_write_lock(box.dir / "outbox.sqlite")
    for i in range(1, 7):
        box.reading(i)  # a group of 4 fails on the committing thread: database locked
    with pytest.raises(StorageError, match="locked"):
        box.outbox.commit()
    assert dict(box.outbox.unsent(-1, 100, 1 << 30)).keys() == set(range(7))  # all still there
    blocker.rollback()
    blocker.close()
    for i in range(7, 10):
        box.reading(i)
    chain_is_whole(box, 10)
    box.crash()
    box.open()  # what the failed group held was committed since: nothing to replay twice
    chain_is_whole(box, 10)
    box.close()


def test_power_cut_that_kept_only_the_newer_journal_replays_nothing_after_the_hole(
        tmp_path: Path) -> None:
    box = Box(device_dir(tmp_path), OutboxSettings(commit_max_records=8, commit_window_ms=60_000))
    for i in range(3):
        box.reading(i)
    box.outbox.commit()  # 0..2 durable
    limit = box.outbox.send_limit
    blocker = hold_write_lock(box.dir / "outbox.sqlite")
    for i in range(3, 14):
        box.reading(i)  # 3..10 in the group in flight (older file), 11..13 in the newer
    kill_image(box.dir, tmp_path / "cut")
    blocker.rollback()
    blocker.close()
    box.close()

    cut = tmp_path / "cut"
    (cut / "outbox.sqlite.journal").write_bytes(b"")  # write-back never reached it
    box.dir = cut
    box.state = DeviceState.open(cut / "state.sqlite", box.clock.wall_ms)
    box.outbox = Outbox(cut / "outbox.sqlite", box.settings, box.state, box.clock,
                        kernel_boot=lambda: "a kernel booted after the power cut")
    box.factory.boot = box.outbox.boot
    box.outbox.attach(box.factory)
    records = box.stored()
    assert [seq for seq, _ in records][:3] == [0, 1, 2]
    assert not any(3 <= seq <= limit for seq, _ in records[3:])  # 11..13 not replayed
    assert gaps_of(records) == [Gap(3, limit + 1, UNCLEAN_REBOOT)]
    box.outbox.close()
    box.state.close()


def test_close_with_groups_waiting_commits_them_all_in_order() -> None:
    committer = Committer()
    started, gate = threading.Event(), threading.Event()
    ran: list[int] = []

    def slow_group() -> None:
        started.set()
        assert gate.wait(60)
        ran.append(0)

    committer.submit(slow_group)
    assert started.wait(60)
    committer.submit(lambda: ran.append(1))
    committer.submit(lambda: ran.append(2))
    closer = threading.Thread(target=committer.close)
    closer.start()  # while group 0 is on the disk and 1 and 2 wait
    gate.set()
    closer.join(60)
    assert not closer.is_alive()
    assert ran == [0, 1, 2]


def test_a_group_commit_that_raises_unexpectedly_is_logged_and_the_next_still_runs(
        caplog: pytest.LogCaptureFixture) -> None:
    committer = Committer()
    ran: list[int] = []

    def broken_group() -> None:
        raise RuntimeError("a bug in a group commit")

    committer.submit(broken_group)
    committer.submit(lambda: ran.append(1))
    committer.close()
    assert ran == [1]
    assert "a group commit failed unexpectedly" in caplog.text
    assert "a bug in a group commit" in caplog.text
