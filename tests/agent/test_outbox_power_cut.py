"""A power cut, modelled: every write after the last fsync is discarded (docs/TESTING.md).

The outbox and the device state call a hook right after each fsynced commit; the model
copies the database files there (their durable image). A power cut closes everything
without another write, puts the durable image back, deletes SQLite's shared-memory index
and treats the journal, which is never fsynced, as the kernel may leave it: gone, or cut at
any byte (write-back had reached part of it). The restarted outbox then sees a new kernel
boot id, as after a real reboot.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from agent.outbox import DeviceState, Outbox, OutboxSettings
from agent.outbox.model import UNCLEAN_REBOOT
from agent.records import EpochPolicy, RecordFactory, RecordWriter
from protocol.record import GENESIS_PREV, Gap
from tests.agent.test_outbox import Box, gaps_of

DURABLE_FILES = ("outbox.sqlite", "outbox.sqlite-wal", "state.sqlite", "state.sqlite-wal")


class PowerCutBox(Box):
    """A :class:`Box` whose files can lose everything written after their last fsync."""

    def __init__(self, tmp: Path, settings: OutboxSettings) -> None:
        self.kernel = "kernel-1"
        self.image = tmp / "durable-image"
        self.image.mkdir()
        (tmp / "dev").mkdir()
        super().__init__(tmp / "dev", settings)

    def open(self) -> None:
        self.state = DeviceState.open(self.dir / "state.sqlite", self.clock.wall_ms,
                                      on_durable=self.snapshot)
        self.outbox = Outbox(self.dir / "outbox.sqlite", self.settings, self.state, self.clock,
                             kernel_boot=lambda: self.kernel, on_durable=self.snapshot,
                             background_fsync=False)
        self.factory = RecordFactory(self.device_id, self.key, self.outbox.boot, self.clock)
        self.outbox.attach(self.factory)
        self.writer = RecordWriter(self.factory, self.outbox, self.recipients,
                                   policy=EpochPolicy(), clock=self.clock)

    def snapshot(self) -> None:
        """Right after an fsync: what is on the files now survives a power cut."""
        for name in DURABLE_FILES:
            source, copy = self.dir / name, self.image / name
            if source.exists():
                shutil.copyfile(source, copy)
            else:
                copy.unlink(missing_ok=True)

    def power_cut(self, journal_kept: float) -> None:
        """Cut the power and boot again; ``journal_kept`` is the fraction of the journal's
        bytes the kernel had written back (0: none)."""
        self.crash()
        journal = self.dir / "outbox.sqlite.journal"
        data = journal.read_bytes() if journal.exists() else b""
        for name in DURABLE_FILES:
            target = self.dir / name
            target.unlink(missing_ok=True)
            if (self.image / name).exists():
                shutil.copyfile(self.image / name, target)
        for name in ("outbox.sqlite-shm", "state.sqlite-shm"):
            (self.dir / name).unlink(missing_ok=True)
        journal.write_bytes(data[:int(len(data) * journal_kept)])
        self.kernel += "+"  # every power cut is followed by a new kernel boot
        self.open()


@pytest.mark.parametrize("journal_kept", [0.0, 0.3, 0.7, 1.0])
def test_power_cut_declares_the_unsynced_numbers_and_never_reuses_a_sent_one(
        tmp_path: Path, journal_kept: float) -> None:
    box = PowerCutBox(tmp_path, OutboxSettings(commit_window_ms=60_000,
                                               commit_max_records=10_000))
    for i in range(5):
        box.reading(i)
    box.outbox.commit()  # 0..4 fsynced
    durable_mono = box.clock.mono_ms()
    box.clock.advance(1000)
    for i in range(5, 12):
        box.reading(i)  # 5..11 only handed to the kernel
    sent = dict(box.outbox.unsent(-1, 100, 1 << 30))  # the uplink may send all of them
    assert sorted(sent) == list(range(12))
    limit = box.outbox.send_limit
    old_boot = box.outbox.boot

    box.power_cut(journal_kept)
    box.reading(99)
    records = box.stored()
    after = dict(box.outbox.unsent(-1, 100_000, 1 << 30))
    for seq, raw in after.items():  # no number that may have left carries other bytes
        assert seq not in sent or sent[seq] == raw
    kept = [s for s in sent if s in after]
    assert kept == list(range(len(kept)))
    assert len(kept) >= 5
    gaps = [(seq, r) for seq, r in records if isinstance(r.body, Gap)]
    assert len(gaps) == 1
    gap_seq, gap = gaps[0]
    assert gap.body == Gap(len(kept), limit + 1, UNCLEAN_REBOOT)
    assert gap_seq == limit + 2
    assert gap.prev == GENESIS_PREV
    assert (gap.boot, gap.mono_ms) == (old_boot, durable_mono)  # names the boot and when
    assert records[-1][1].boot == old_boot + 1
    assert records[-1][0] == limit + 3
    stats = box.outbox.stats()
    assert stats.counter("gaps_declared") == stats.counter("unclean_reboots") == 1


def test_power_cut_after_a_clean_stop_declares_nothing(tmp_path: Path) -> None:
    box = PowerCutBox(tmp_path, OutboxSettings())
    for i in range(5):
        box.reading(i)
    box.close()  # SIGTERM: the final commit marks the stop clean
    box.power_cut(journal_kept=0.0)  # the power goes while the agent is stopped
    box.reading(5)
    records = box.stored()
    assert [s for s, _ in records] == list(range(6))
    assert gaps_of(records) == []


def test_power_cuts_at_random_moments_never_reuse_a_sent_number(tmp_path: Path) -> None:
    rng = random.Random(20_261_205)
    box = PowerCutBox(tmp_path, OutboxSettings(commit_window_ms=500, commit_max_records=16))
    sent: dict[int, bytes] = {}
    for _ in range(8):
        for _ in range(rng.randrange(1, 60)):
            box.reading(rng.randrange(1000))
            box.clock.advance(rng.randrange(0, 120))
            box.outbox.maybe_commit()
            for seq, raw in box.outbox.unsent(-1, 1000, 1 << 30):
                assert sent.setdefault(seq, raw) == raw
        box.power_cut(journal_kept=rng.random())
    box.reading(1)
    records = box.stored()
    stored = dict(box.outbox.unsent(-1, 100_000, 1 << 30))
    for seq, raw in stored.items():
        assert seq not in sent or sent[seq] == raw
    declared = {s for g in gaps_of(records) for s in range(g.first_seq, g.last_seq + 1)}
    assert set(sent) <= set(stored) | declared  # whatever is missing is declared


def test_crash_before_the_unclean_reboot_gap_is_signed_still_declares_it(
        tmp_path: Path) -> None:
    box = PowerCutBox(tmp_path, OutboxSettings())
    for i in range(3):
        box.reading(i)
    box.outbox.commit()
    box.reading(3)
    original_open = box.open
    box.open = lambda: None  # type: ignore[method-assign]
    box.power_cut(journal_kept=0.0)  # the durable image is back, nothing opened yet
    box.open = original_open  # type: ignore[method-assign]
    box.state = DeviceState.open(box.dir / "state.sqlite", box.clock.wall_ms)
    killed = Outbox(box.dir / "outbox.sqlite", box.settings, box.state, box.clock,
                    kernel_boot=lambda: box.kernel)  # opened after the reboot ...
    # ... and killed before attach() signed the gap (private: no public call closes the
    # outbox without committing)
    killed._conn.close()  # noqa: SLF001
    killed._journal.close()  # noqa: SLF001
    box.state.close()
    box.open()  # same kernel: a process crash, but the owed gap is still declared
    gaps = gaps_of(box.stored())
    assert [(g.first_seq, g.reason) for g in gaps] == [(3, UNCLEAN_REBOOT)]
