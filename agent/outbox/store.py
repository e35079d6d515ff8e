"""The outbox: signed records committed to SQLite before anything is sent.

Guarantees (docs/AGENT.md, "Outbox"):

- **Sequence numbers** are assigned here, inside the transaction that stores the record,
  from a durable reservation in :class:`~agent.outbox.state.DeviceState`; a number is never
  reused, not after ``kill -9`` and not after a damaged outbox file is replaced.
- **Journal, then group commit**: every change is first handed to the kernel in the
  journal (:mod:`agent.outbox.journal`, one ``write``, no fsync), so a ``kill -9`` of the
  agent loses nothing: the next start replays it. SQLite gets the changes in one
  transaction when the window (``commit_window_ms``) ends or ``commit_max_records`` are
  pending; records receipted before that never touch SQLite. Such a group commit is made
  durable by one fsync of the WAL on a background thread
  (:mod:`agent.outbox.durability`), so sampling never waits for the disk; every other
  commit (start-up, a held record, a usage claim, notes, close) fsyncs before it returns.
  The window, and the fsync after it, is what a power cut can lose.
- **Sending before the fsync, never reusing a number**: a record may be sent once it is in
  the journal and its number is at most ``send_limit``, a bound written with each group
  commit and raised only once that commit's fsync has returned. After a reboot that
  followed an unclean stop (a power cut or a kernel crash: the kernel's boot id changed)
  the journal may have lost its tail: numbering resumes above ``send_limit`` and a ``gap``
  record (reason ``unclean_reboot``) declares the numbers the device can no longer
  account for.
- **Bounded in bytes** with a full policy: ``drop-oldest`` deletes the oldest unprotected
  records (about a tenth of the cap at a time), ``reject-new`` refuses the new record and
  burns its number. Either way the drop is counted and declared to the gateway with a
  ``gap`` record (reason ``outbox_full``). Key-epoch, gap and usage records are
  *protected*: never dropped and never refused, so sealed records stay decryptable, drops
  stay declared and earned credit is not thrown away.
- **Removal only by a verified receipt** (:meth:`Outbox.apply_receipt`); accepted and
  duplicate records are deleted, rejected ones move to ``dead_letters`` with the reason.
- **A damaged file** is moved aside with a loud error, counted, and a new outbox started; the
  range that may be lost is declared with a gap record (reason ``outbox_corrupt``).
- **A held record** (:meth:`Outbox.append_held`, the key rotation's) holds back every later
  record from the uplink until a receipt settles it; its outcome is kept in ``meta`` in the
  transaction that applies the receipt (:meth:`Outbox.held_outcome`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Protocol

from agent.clock import Clock
from agent.outbox.durability import Committer, Durability, Token, fsync_path
from agent.outbox.journal import Dropped, Journals, Op, Refused, Stored, kernel_boot_id
from agent.outbox.model import (
    UNCLEAN_REBOOT,
    HeldOutcome,
    OutboxSettings,
    OutboxStats,
    ReceiptResult,
    consecutive_runs,
)
from agent.outbox.rows import (
    SCHEMA,
    prune_dead_letters,
    read_stats,
    seq_by_hash,
    within_bytes,
)
from agent.outbox.state import DeviceState
from osutil.sqlite import Pragmas, move_aside, open_or_move_aside, storage_error, translated
from protocol import reasons
from protocol.errors import StorageError
from protocol.reasons import DropReason
from protocol.receipt import Receipt, Status, hash_prefix
from protocol.record import GAP_STREAM, GENESIS_PREV, Body, Gap

log = logging.getLogger(__name__)

Build = Callable[[int, bytes], bytes]
"""Builds the signed record for ``(seq, prev)``; returns its exact signed bytes."""

_GAP_DECLARE_MS = 60_000  # an open reject-new run is declared at least once a minute
# NORMAL: a COMMIT does not wait for the disk; agent.outbox.durability fsyncs the WAL.
OUTBOX_PRAGMAS = Pragmas(synchronous="NORMAL")


class GapSigner(Protocol):
    """Signs the gap records the outbox emits itself."""

    def sign_gap(self, seq: int, prev: bytes, gap: Gap) -> bytes: ...

    def sign_body(self, seq: int, prev: bytes, stream: str, body: Body, *,
                  mono_ms: int | None = None, boot: int | None = None) -> bytes: ...


Pending = tuple[str, bool, bytes]  # stream, protected, signed bytes
_INSERT_ROWS = 256  # records per INSERT statement of a group commit (1,024 parameters)


@functools.lru_cache(maxsize=64)
def _insert_sql(rows: int) -> str:
    # One statement for many rows: the committing thread gives up the GIL (and must get it
    # back from the sampling thread) once per statement, not once per record as
    # executemany does; on a busy machine each such exchange can cost milliseconds.
    return ("INSERT INTO records(seq, stream, protected, raw) VALUES "  # noqa: S608 - placeholders only
            + ",".join(("(?,?,?,?)",) * rows))


@functools.lru_cache(maxsize=16)
def _meta_sql(rows: int) -> str:
    return ("INSERT INTO meta(name, value) VALUES "  # noqa: S608 - placeholders only
            + ",".join(("(?,?)",) * rows)
            + " ON CONFLICT(name) DO UPDATE SET value = excluded.value")


class _Group:
    """A group commit handed to the committing thread: what it writes, what it proves."""

    def __init__(self, rows: dict[int, Pending], meta: dict[str, object], token: Token,
                 head: int) -> None:
        self.rows = rows
        self.meta = meta
        self.token = token
        self.head = head


class Outbox:
    """The device's crash-safe outbox. Thread-safe (one connection behind a lock)."""

    def __init__(self, path: Path, settings: OutboxSettings, state: DeviceState,
                 clock: Clock, *, kernel_boot: Callable[[], str] = kernel_boot_id,
                 on_durable: Callable[[], None] | None = None,
                 background_fsync: bool = True,
                 fsync: Callable[[Path], None] = fsync_path) -> None:
        """``kernel_boot`` names the running kernel (tests simulate a reboot with it);
        ``on_durable`` is called right after each fsync (the power-cut model in the tests
        snapshots the files there, with ``background_fsync=False`` so that group commits
        are fsynced at a known moment); ``fsync`` flushes one file (tests block or fail
        it)."""
        self.path = path
        self.settings = settings
        self._state = state
        self._clock = clock
        self._kernel_boot = kernel_boot
        self._on_durable = on_durable
        self._lock = threading.RLock()
        self._signer: GapSigner | None = None
        self.boot = -1
        self.generation = 0  # bumped when a damaged file is replaced while running
        self._journal = Journals(path.with_name(path.name + ".journal"))
        self._send_ahead = max(64, 2 * settings.commit_max_records)
        self._durable_lock = threading.Lock()  # the send limit, raised by the fsync thread
        self._durability = Durability(path, self._made_durable, background=background_fsync,
                                      fsync=fsync)
        # The connection lock (after self._lock): held by whoever uses the connection, and
        # by a group commit from the moment it is handed to the committing thread until
        # its COMMIT is done (released there, so a Lock, with its owner noted by hand).
        self._db = threading.Lock()
        self._db_owner: int | None = None
        self._committer = Committer(background=background_fsync)
        self._failed: tuple[Exception, dict[int, Pending]] | None = None  # a failed group
        self._commit_error: Exception | None = None  # raised by the next commit
        self._other_clean = True  # the journal file not appended to holds nothing uncommitted
        self._file_epoch = 0  # a new file (recover) ignores fsyncs of the one before
        self._undurable: Token | None = None  # the last commit not yet known durable
        self._open_file()

    # --- opening, recovery ---------------------------------------------------------------

    def _open_file(self) -> None:
        fresh = not self.path.exists()
        self._file_epoch += 1
        self._undurable = None
        self._conn, replaced = open_or_move_aside(
            self.path, SCHEMA, self._clock.wall_ms, self._report_corrupt, OUTBOX_PRAGMAS)
        self._window_open = False  # changes wait for the next group commit
        self._failed = None
        self._commit_error = None
        self._other_clean = True
        self._txn_started = 0
        self._txn_records = 0
        self._rejected: tuple[int, int, int] | None = None  # (first, last, since mono)
        self._pending: dict[int, Pending] = {}  # journaled, not yet in SQLite (seq order)
        # Gaps owed for unclean reboots: (first, last, boot, mono), kept in meta until signed.
        self._unclean: list[tuple[int, int, int, int]] = []
        with translated(str(self.path)):
            self._load(replay=not (fresh or replaced))
        issued_before = self._state.seq_reserved > 0
        self._lost: tuple[int, int] | None = None
        if replaced or (fresh and issued_before and self._head_seq < 0):
            self._mark_lost()

    def _report_corrupt(self, moved: Path, why: str) -> None:
        log.error("OUTBOX DAMAGED: %s (%s). Moved to %s; starting a new outbox. Records that "
                  "were not yet receipted are declared as a gap.", self.path, why, moved)
        self._state.count("corrupt_outboxes")

    def _load(self, replay: bool) -> None:
        meta = dict(self._conn.execute("SELECT name, value FROM meta").fetchall())
        self._counters = {k[2:]: int(v) for k, v in meta.items() if k.startswith("c_")}
        self._head_seq = int(meta.get("head_seq", -1))
        self._head_hash = bytes(meta.get("head_hash", GENESIS_PREV))
        last = self._conn.execute(
            "SELECT seq, raw FROM records ORDER BY seq DESC LIMIT 1").fetchone()
        if last is not None and int(last[0]) > self._head_seq:
            self._head_seq, self._head_hash = int(last[0]), hashlib.sha256(last[1]).digest()
        if "rej_first" in meta:
            mono = self._clock.mono_ms()
            self._rejected = (int(meta["rej_first"]), int(meta["rej_last"]), mono)
        self._committed_through = self._head_seq
        self._bytes = int(self._conn.execute(
            "SELECT coalesce(sum(length(raw)), 0) FROM records").fetchone()[0])
        self._generation = int(meta.get("journal_gen", 0))
        self._send_limit = int(meta.get("send_limit", self._head_seq))
        if replay:
            self._replay()
        self._held = self._find_held(meta)
        if self.boot < 0:  # first open in this process: a new boot
            self.boot = self._state.next_boot(at_least=int(meta.get("boot", -1)) + 1)
        kernel = self._kernel_boot()
        previous = meta.get("running_kernel")
        owed = str(meta.get("unclean_gaps") or "")  # a crash before they were signed
        self._unclean = [(a, b, c, d) for a, b, c, d in
                         (map(int, item.split(",")) for item in owed.split(";") if item)]
        if previous is not None and (not kernel or previous != kernel):
            self._resume_after_reboot(int(meta.get("boot", -1)),
                                      int(meta.get("commit_mono_ms", 0)))
        reserved = max(self._state.seq_reserved, int(meta.get("seq_reserved", 0)))
        if reserved > self._state.seq_reserved:  # the state file was lost; the copy wins
            self._state.set_many({"seq_reserved": reserved})
        self._reserved = reserved
        # Durable before anything is sent: this run is under way (unclean until close()).
        self._write_meta({"boot": self.boot, "seq_reserved": reserved,
                          "running_kernel": kernel})
        self.commit()

    def _replay(self) -> None:
        """Apply what the journals hold beyond the last commit (a crash of the process).

        Files of an older generation are already in SQLite (the commit was durable, the
        reset was not). Replay stops at a record whose number does not follow the one
        before: a power cut emptied the older file and kept the newer one.
        """
        applied = 0
        for generation, ops in self._journal.read():
            if generation < self._generation:
                continue
            for op in ops:
                seq = op.seq if isinstance(op, Stored | Refused) else self._head_seq + 1
                if seq != self._head_seq + 1:
                    log.error("outbox: the journal skips from seq %d to %d (lost by a power "
                              "cut); nothing after the hole is replayed", self._head_seq, seq)
                    break
                self._apply(op)
                applied += 1
            else:
                continue
            break
        if not applied:
            return  # none, or already in SQLite
        self._bump("journal_replays")
        log.warning("outbox: replayed %d changes a crash left in the journal (through seq "
                    "%d)", applied, self._head_seq)

    def _apply(self, op: Op) -> None:
        self._begin()
        if isinstance(op, Stored):
            self._pending[op.seq] = (op.stream, op.protected, op.raw)
            self._head_seq, self._head_hash = op.seq, hashlib.sha256(op.raw).digest()
            self._bytes += len(op.raw)
            self._txn_records += 1
            if op.stream == GAP_STREAM:
                self._bump("gaps_declared")
        elif isinstance(op, Dropped):
            self._bytes -= self._delete(op.seqs)
            self._bump("dropped", len(op.seqs))
            self._bump("drop_events")
            self._write_meta({"head_seq": self._head_seq, "head_hash": self._head_hash})
        else:
            self._refused(op.seq)

    def _resume_after_reboot(self, boot: int, mono_ms: int) -> None:
        """The last run stopped uncleanly and the kernel rebooted since: the journal's tail
        may be gone, and any number up to ``send_limit`` may have been sent. Resume above
        it (never reusing a number) and declare what cannot be accounted for."""
        if self._send_limit <= self._head_seq:
            return  # nothing beyond what survived was allowed out
        first, high = self._head_seq + 1, self._send_limit + 1
        # `high` was never sent (above the limit): the gap record after it has no logged
        # neighbour to contradict its zero `prev`.
        self._begin()
        self._bump("unclean_reboots")
        self._unclean.append((first, high, boot, mono_ms))
        self._write_meta({"unclean_gaps": ";".join(",".join(map(str, gap))
                                                   for gap in self._unclean)})
        self._head_seq, self._head_hash = high, GENESIS_PREV
        log.error("outbox: the last run (boot %d) stopped without closing and the device "
                  "rebooted since; records %d..%d may be lost (unsynced at the power cut) and "
                  "are declared as a gap", boot, first, high)

    def _find_held(self, meta: dict[str, object]) -> int | None:
        if meta.get("held_seq") is None or meta.get("held_status") is not None:
            return None
        seq = int(str(meta["held_seq"]))
        return seq if self._row(seq) is not None else None

    def _mark_lost(self) -> None:
        low = self._state.get("receipted_through", -1) + 1
        high = self._state.seq_reserved
        # Restart the chain above every number that may have been issued: seq `high` itself
        # was never used, so the gap record at high + 1 has no neighbour to contradict.
        self._head_seq, self._head_hash = high, GENESIS_PREV
        self._committed_through = high
        self._lost = (min(low, high), high)
        self._write_meta({"head_seq": high, "head_hash": GENESIS_PREV}, autocommit=True)

    def attach(self, signer: GapSigner) -> None:
        """Give the outbox its gap signer; declares a lost range found at open, if any."""
        with self._lock, self._hold_db():
            self._signer = signer
            if self._lost is not None:
                first, last = self._lost
                self._lost = None
                self._append_gap(first, last, reasons.OUTBOX_CORRUPT)
                self.commit()
            if self._unclean:
                # Signed as the boot that lost them, at its last durable moment: the gap
                # names that boot, and its time span starts at this record's mono_ms.
                for first, last, boot, mono in self._unclean:
                    self._append_gap(first, last, UNCLEAN_REBOOT,
                                     boot=boot if boot >= 0 else None, mono_ms=mono)
                self._unclean = []
                self._conn.execute("DELETE FROM meta WHERE name = 'unclean_gaps'")
                self.commit()

    def recover(self) -> None:
        """Replace a file that turned out damaged while running; declare what may be lost.

        Raises StorageError if no new file can be created.
        """
        with self._lock, self._hold_db():
            with contextlib.suppress(sqlite3.Error):  # it is damaged; we only let go of it
                self._conn.close()
            self._journal.close()
            moved = move_aside(self.path, self._clock.wall_ms())
            self._report_corrupt(moved, "error while running")
            self._open_file()  # a fresh file after issued numbers: marks the lost range
            self.generation += 1
            if self._signer is not None:
                self.attach(self._signer)

    # --- appending ----------------------------------------------------------------------

    def append(self, stream: str, build: Build, *, protected: bool = False) -> int | None:
        """Assign the next sequence number, build the record, store it (group commit).

        Returns the sequence number, or None if the full policy refused the record (counted
        and declared later as a gap). Raises StorageError (DatabaseCorrupt for a damaged
        file) if the database fails; nothing is stored then.
        """
        with self._lock:
            try:
                return self._append(stream, build, protected)
            except sqlite3.Error as exc:  # inline, not translated(): this is the hot path
                raise storage_error(exc, str(self.path)) from None

    def append_held(self, stream: str, build: Build,
                    note: Callable[[int], Mapping[str, object]]) -> int:
        """Append a protected record that holds back every later one; commit (fsync) it.

        ``note(seq)`` returns meta values stored in the same transaction as the record, so
        the caller's intent and the record become durable together or not at all. Records
        after it are not handed to the uplink until a receipt settles it (accepted,
        duplicate or rejected; see :meth:`held_outcome`). Returns its sequence number.
        Raises StorageError; nothing is stored then.
        """
        with self._lock, self._hold_db():
            try:
                self._begin()
                seq = self._next_seq()
                raw = build(seq, self._head_hash)  # both before any write: if either fails,
                values = note(seq)                 # nothing half-made joins the open group
                # Not journaled: the record and its notes become durable together in the
                # commit below or not at all (a replayed record without its notes would
                # be sent as an announcement nobody follows). Nobody sees it before: the
                # lock is held throughout.
                self._store(seq, stream, True, raw, journal=False)
                self._write_meta({**values, "held_seq": seq, "held_status": None,
                                  "held_reason": None})
                self.commit()
            except sqlite3.Error as exc:
                raise storage_error(exc, str(self.path)) from None
            self._held = seq
            return seq

    def held_outcome(self, seq: int) -> HeldOutcome | None:
        """What the gateway said about held record ``seq``: None while it is still held,
        else its receipt's status and reason, or status None when unknown (the outbox
        holding it was replaced). Raises StorageError."""
        with self._lock, self._hold_db(), translated(str(self.path)):
            if self._held == seq:
                return None
            meta = dict(self._conn.execute(
                "SELECT name, value FROM meta WHERE name IN "
                "('held_seq', 'held_status', 'held_reason')").fetchall())
        status = Status.__members__.get(str(meta.get("held_status")).upper())
        if meta.get("held_seq") != seq or status is None:
            return HeldOutcome(None)
        reason = meta.get("held_reason")
        return HeldOutcome(status, None if reason is None else str(reason))

    def read_notes(self, names: tuple[str, ...]) -> dict[str, object]:
        """Return the meta values ``names`` that are set. Raises StorageError."""
        with self._lock, self._hold_db(), translated(str(self.path)):
            rows = self._conn.execute("SELECT name, value FROM meta").fetchall()
        return {str(k): v for k, v in rows if k in names and v is not None}

    def write_notes(self, values: Mapping[str, object]) -> None:
        """Durably set meta values (commits the open group, fsync). Raises StorageError."""
        with self._lock, self._hold_db(), translated(str(self.path)):
            self._write_meta(dict(values))
            self.commit()

    def _append(self, stream: str, build: Build, protected: bool) -> int | None:
        # The hot path touches only the journal and memory; anything that needs the
        # connection (a new block of numbers, a full outbox) takes its lock first.
        seq = self._head_seq + 1
        if seq >= self._reserved:
            with self._hold_db():
                self._next_seq()
        raw = build(seq, self._head_hash)
        if protected or (self._rejected is None
                         and self._bytes + len(raw) <= self.settings.max_bytes):
            self._store(seq, stream, protected, raw)
        else:
            with self._hold_db():
                if not self._store_when_full(seq, stream, protected, raw):
                    return None
        if self._txn_records >= self.settings.commit_max_records:
            self._commit(durable=False)
        return seq

    def _store_when_full(self, seq: int, stream: str, protected: bool, raw: bytes) -> bool:
        """Store a record the full policy or an open rejected run concerns; return whether
        it was stored (False: refused and burned)."""
        dropped: list[int] = []
        if not protected and self._bytes + len(raw) > self.settings.max_bytes:
            dropped = self._make_room(len(raw))
            if self._bytes + len(raw) > self.settings.max_bytes:
                self._refuse(seq)
                self._declare_dropped(dropped)
                return False
        self._store(seq, stream, protected, raw)
        self._declare_dropped(dropped)
        if not protected and self._rejected is not None:
            self._declare_rejected()
        return True

    def _next_seq(self) -> int:
        seq = self._head_seq + 1
        if seq >= self._reserved:  # with the connection lock held
            self._reserved = self._state.reserve(seq, self._receipted_through())
            self._write_meta({"seq_reserved": self._reserved})
        return seq

    def _receipted_through(self) -> int:
        row = self._conn.execute("SELECT min(seq) FROM records").fetchone()
        if row[0] is not None:
            return int(row[0]) - 1
        return next(iter(self._pending)) - 1 if self._pending else self._head_seq

    def _window(self) -> None:
        """A change waits for the next group commit: open its window if none is open."""
        if not self._window_open:
            self._window_open = True
            self._txn_started = self._clock.mono_ms()
            self._txn_records = 0

    def _begin(self) -> None:
        """A change to SQLite (connection lock held): in the open transaction, committed
        with the next group commit."""
        self._window()
        if not self._conn.in_transaction:
            self._conn.execute("BEGIN IMMEDIATE")

    @contextlib.contextmanager
    def _hold_db(self) -> Iterator[None]:
        """Hold the connection lock (waiting for a group commit in flight); nested holds
        by the same thread pass through. A group that failed on the committing thread
        comes back here into ``_pending`` (its error is raised by the next commit)."""
        me = threading.get_ident()
        if self._db_owner == me:
            yield
            return
        self._db.acquire()
        self._db_owner = me
        try:
            if self._failed is not None:
                error, rows = self._failed
                self._failed = None
                self._commit_error = error
                self._pending = {**rows, **self._pending}  # the older numbers first
                self._window()
                self._txn_records += len(rows)
            yield
        finally:
            self._db_owner = None
            self._db.release()

    def _store(self, seq: int, stream: str, protected: bool, raw: bytes, *,
               journal: bool = True) -> None:
        if journal:
            self._journal.append_record(seq, stream, protected, raw)  # raises before change
            self._window()
            self._pending[seq] = (stream, protected, raw)
        else:
            self._begin()
            self._conn.execute("INSERT INTO records(seq, stream, protected, raw) "
                               "VALUES(?,?,?,?)", (seq, stream, int(protected), raw))
        self._head_seq, self._head_hash = seq, hashlib.sha256(raw).digest()
        self._bytes += len(raw)
        self._txn_records += 1

    def _delete(self, seqs: tuple[int, ...]) -> int:
        """Delete stored records (pending or in SQLite); return the bytes freed."""
        freed = 0
        for seq in seqs:
            item = self._pending.pop(seq, None)
            if item is not None:
                freed += len(item[2])
                continue
            row = self._conn.execute("SELECT length(raw) FROM records WHERE seq = ?",
                                     (seq,)).fetchone()
            if row is not None:
                freed += int(row[0])
                self._conn.execute("DELETE FROM records WHERE seq = ?", (seq,))
        return freed

    def _row(self, seq: int) -> tuple[str, bytes] | None:
        item = self._pending.get(seq)
        if item is not None:
            return item[0], item[2]
        row = self._conn.execute("SELECT stream, raw FROM records WHERE seq = ?",
                                 (seq,)).fetchone()
        return None if row is None else (str(row[0]), bytes(row[1]))

    def _make_room(self, need: int) -> list[int]:
        if self.settings.full_policy != "drop-oldest":
            return []
        target = self.settings.max_bytes - need - self.settings.max_bytes // 10
        dropped: list[int] = []
        freed = 0
        rows = self._conn.execute(
            "SELECT seq, length(raw) FROM records WHERE protected = 0 ORDER BY seq")
        while self._bytes - freed > target:
            chunk = rows.fetchmany(256)
            for seq, size in chunk:
                if self._bytes - freed <= target:
                    break
                dropped.append(int(seq))
                freed += int(size)
            if not chunk:
                break
        rows.close()
        for seq, (_, protected, raw) in self._pending.items():  # the newest come last
            if self._bytes - freed <= target:
                break
            if not protected:
                dropped.append(seq)
                freed += len(raw)
        if dropped:
            self._journal.append(Dropped(tuple(dropped)))
            self._begin()
            self._bytes -= self._delete(tuple(dropped))
            self._bump("dropped", len(dropped))
            self._bump("drop_events")
            self._write_meta({"head_seq": self._head_seq, "head_hash": self._head_hash})
            log.warning("outbox full (%d bytes): dropped the %d oldest records (seq %d..%d)",
                        self.settings.max_bytes, len(dropped), dropped[0], dropped[-1])
        return dropped

    def _refuse(self, seq: int) -> None:
        self._journal.append(Refused(seq))
        self._refused(seq)

    def _refused(self, seq: int) -> None:
        # The number is burned (never reused); the chain continues from the last kept record.
        self._begin()
        self._head_seq = seq
        first = self._rejected[0] if self._rejected else seq
        since = self._rejected[2] if self._rejected else self._clock.mono_ms()
        self._rejected = (first, seq, since)
        self._bump("dropped")
        self._bump("rejected_new")
        self._write_meta({"head_seq": seq, "head_hash": self._head_hash,
                          "rej_first": first, "rej_last": seq})
        if first == seq:
            log.warning("outbox full (%d bytes): refusing new records from seq %d",
                        self.settings.max_bytes, seq)

    def _declare_dropped(self, dropped: list[int]) -> None:
        for first, last in consecutive_runs(dropped):
            self._append_gap(first, last, reasons.OUTBOX_FULL)

    def _declare_rejected(self) -> None:
        assert self._rejected is not None
        first, last, _ = self._rejected
        self._rejected = None
        self._conn.execute("DELETE FROM meta WHERE name IN ('rej_first', 'rej_last')")
        self._append_gap(first, last, reasons.OUTBOX_FULL)

    def _append_gap(self, first: int, last: int, reason: DropReason, *, boot: int | None = None,
                    mono_ms: int | None = None) -> None:
        if self._signer is None:
            raise StorageError("outbox has no gap signer attached")
        seq = self._next_seq()
        gap = Gap(first, last, reason)
        if boot is None and mono_ms is None:
            raw = self._signer.sign_gap(seq, self._head_hash, gap)
        else:
            raw = self._signer.sign_body(seq, self._head_hash, GAP_STREAM, gap, mono_ms=mono_ms,
                                         boot=boot)
        self._store(seq, GAP_STREAM, True, raw)
        self._bump("gaps_declared")
        log.warning("declared gap %d..%d (%s) in record %d", first, last, reason, seq)

    # --- committing ---------------------------------------------------------------------

    def commit(self) -> None:
        """Commit the open group, start the journal anew and fsync before returning.

        Records still pending go into SQLite (those receipted meanwhile never do), with the
        deferred deletions and the new ``send_limit``; an earlier group commit still in
        flight on the committing thread, or whose background fsync is still under way, is
        committed and durable too when this returns. Raises StorageError if the commit or
        the fsync fails, or an earlier group commit failed (its records are pending again;
        the journal is kept, so a crash then still replays it).
        """
        self._commit(durable=True)

    def _commit(self, *, durable: bool) -> None:
        # A group commit (durable=False) is handed to the committing thread, and its fsync
        # left to the background fsync thread: the send limit it writes is used only once
        # that fsync has returned (_made_durable). Every other commit happens here.
        with self._lock:
            if (not durable and self._committer.background
                    and self._db_owner != threading.get_ident()):
                self._db.acquire()  # one group in flight: wait for the one before
                self._db_owner = threading.get_ident()
                group = None
                try:
                    if self._failed is None and self._other_clean:
                        self._durability.check()
                        group = self._hand_over()
                finally:
                    if group is None:
                        self._db_owner = None
                        self._db.release()
                if group is not None:
                    self._db_owner = None  # the committing thread releases it
                    self._committer.submit(functools.partial(self._commit_group, group))
                    return
            with self._hold_db(), translated(str(self.path)):
                self._commit_inline(durable=durable)

    def _hand_over(self) -> _Group | None:
        """Close the window for the committing thread (both locks held): its records move
        to the group, later changes go to the other journal file. None if nothing waits."""
        if not (self._window_open or self._pending or self._conn.in_transaction):
            return None
        generation = self._generation + 1
        self._journal.switch(generation)  # raises before anything changed
        limit = max(self._send_limit, self._head_seq + self._send_ahead)
        group = _Group(self._pending, {"journal_gen": generation, "send_limit": limit,
                                       "head_seq": self._head_seq,
                                       "head_hash": self._head_hash,
                                       "commit_mono_ms": self._clock.mono_ms()},
                       (self._file_epoch, limit), self._head_seq)
        self._pending = {}
        self._generation = generation
        self._window_open = False
        self._txn_records = 0
        self._other_clean = False
        return group

    def _commit_group(self, group: _Group) -> None:
        """On the committing thread, with the connection lock the hand-over took: INSERT,
        COMMIT, empty the journal file it covers, ask for the fsync, release the lock. A
        failure is kept with the group's records for the next holder of both locks."""
        try:
            try:
                with translated(str(self.path)):
                    if not self._conn.in_transaction:
                        self._conn.execute("BEGIN IMMEDIATE")
                    self._insert(group.rows)
                    self._conn.execute(_meta_sql(len(group.meta)),
                                       [v for item in group.meta.items() for v in item])
                    self._conn.execute("COMMIT")
            except Exception as exc:  # noqa: BLE001 - whatever it is: kept, raised by the next commit, records kept
                with contextlib.suppress(sqlite3.Error):
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                self._failed = (exc, group.rows)
                return
            self._committed_through = max(self._committed_through, group.head)
            self._undurable = group.token
            self._other_clean = True  # committed: the file may be emptied and used again
            with contextlib.suppress(StorageError):  # switch() empties it again, or raises
                self._journal.truncate_other()
            with contextlib.suppress(StorageError):  # the fsync thread's failure: kept
                self._durability.request(group.token)  # there, raised by the next commit
        finally:
            self._db.release()

    def _insert(self, rows: dict[int, Pending]) -> None:
        values = [(s, st, int(p), raw) for s, (st, p, raw) in rows.items()]
        for at in range(0, len(values), _INSERT_ROWS):
            chunk = values[at:at + _INSERT_ROWS]
            self._conn.execute(_insert_sql(len(chunk)), [v for row in chunk for v in row])

    def _commit_inline(self, *, durable: bool) -> None:
        """Commit on this thread (both locks held); fsync before returning if ``durable``."""
        error, self._commit_error = self._commit_error, None
        if error is not None:
            raise error  # an earlier group commit failed; its records are pending again
        self._durability.check()
        committed = False
        if self._window_open or self._pending or self._conn.in_transaction:
            committed = True
            self._begin()
            self._insert(self._pending)
            generation = self._generation + 1
            limit = max(self._send_limit, self._head_seq + self._send_ahead)
            self._write_meta({"journal_gen": generation, "send_limit": limit,
                              "head_seq": self._head_seq, "head_hash": self._head_hash,
                              "commit_mono_ms": self._clock.mono_ms()})
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            self._window_open = False
            self._pending.clear()
            self._generation = generation
            self._undurable = (self._file_epoch, limit)
            if not durable:
                self._durability.request(self._undurable)
                self._journal.start(generation)
                self._other_clean = True
        if durable and self._undurable is not None:
            self._durability.sync_now(self._undurable)
        if durable and committed:
            self._journal.start(self._generation)
            self._other_clean = True
        self._committed_through = self._head_seq

    def _made_durable(self, token: Token) -> None:
        """The fsync of a commit returned (on the committing or the fsync thread)."""
        epoch, limit = token
        with self._durable_lock:
            if epoch != self._file_epoch:
                return  # a commit of a file recover() has since replaced
            self._send_limit = max(self._send_limit, limit)
            if self._undurable == token:
                self._undurable = None
        if self._on_durable is not None:
            self._on_durable()

    def maybe_commit(self) -> bool:
        """Commit if the group-commit window has passed; declare an old open rejected run.

        Returns whether a commit happened. Raises StorageError like :meth:`commit`.
        """
        now = self._clock.mono_ms()
        if (self._window_open and self._rejected is None
                and now - self._txn_started < self.settings.commit_window_ms):
            return False  # a young window (read without the lock: called once a reading)
        with self._lock:
            if self._rejected is not None and now - self._rejected[2] >= _GAP_DECLARE_MS:
                with self._hold_db(), translated(str(self.path)):
                    self._declare_rejected()
            if ((self._window_open or self._pending or self._commit_error is not None
                 or self._failed is not None)
                    and now - self._txn_started >= self.settings.commit_window_ms):
                self._commit(durable=False)
                return True
            return False

    def commit_due_ms(self) -> int | None:
        """Monotonic time at which the open group must commit (None: nothing pending)."""
        with self._lock:
            if not (self._window_open or self._failed is not None):
                return None
            return self._txn_started + self.settings.commit_window_ms

    @property
    def committed_through(self) -> int:
        """Every record with a sequence number up to this one is committed (or gone); waits
        for a group commit in flight."""
        with self._lock, self._hold_db():
            return self._committed_through

    @property
    def send_limit(self) -> int:
        """The highest number the last durable commit allows out (see the module doc)."""
        return self._send_limit

    @property
    def sendable_through(self) -> int:
        """The uplink may send records up to this one: in the journal (a crash of the
        process keeps them), within the durable ``send_limit`` (a power cut can never make
        a sent number reused), and not behind a held record awaiting its receipt."""
        with self._lock:
            limit = min(self._head_seq, self._send_limit)
            return limit if self._held is None else min(limit, self._held)

    # --- what the uplink reads and what receipts remove --------------------------------

    def unsent(self, after_seq: int, max_records: int, max_bytes: int) -> list[tuple[int, bytes]]:
        """Return sendable records with seq > ``after_seq`` in order, within the limits.

        At least one record is returned if any is there, however large.
        """
        with self._lock, self._hold_db(), translated(str(self.path)):
            limit = self.sendable_through
            rows = [(int(s), bytes(r)) for s, r in self._conn.execute(
                "SELECT seq, raw FROM records WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                (after_seq, limit, max_records)).fetchall()]
            for seq, (_, _, raw) in self._pending.items():  # all above the committed ones
                if len(rows) >= max_records or seq > limit:
                    break
                if seq > after_seq:
                    rows.append((seq, raw))
        return within_bytes(rows, max_bytes)

    def fetch(self, seqs: list[int]) -> list[tuple[int, bytes]]:
        """Return the sendable records among ``seqs`` that are still in the outbox."""
        with self._lock, self._hold_db(), translated(str(self.path)):
            out = []
            limit = self.sendable_through
            for seq in sorted(seqs):
                row = self._row(seq) if seq <= limit else None
                if row is not None:
                    out.append((seq, row[1]))
        return out

    def withdraw(self, streams: tuple[str, ...], reason: DropReason) -> list[int]:
        """Delete every stored record of ``streams`` and declare them with gap records.

        For a revoked grant (its derived streams): what was sealed to the recipient and is
        still here never leaves the device. A record already handed to the broker cannot
        be called back; its receipt then finds nothing (counted as unknown). Returns the
        withdrawn sequence numbers. Raises StorageError.
        """
        if not streams:
            return []
        with self._lock, self._hold_db(), translated(str(self.path)):
            marks = ",".join("?" * len(streams))
            stored = [int(s) for (s,) in self._conn.execute(
                f"SELECT seq FROM records WHERE stream IN ({marks}) AND protected = 0",  # noqa: S608 - placeholders only
                streams).fetchall()]
            pending = [s for s, (st, p, _) in self._pending.items() if st in streams and not p]
            gone = sorted(stored + pending)
            if not gone:
                return []
            self._journal.append(Dropped(tuple(gone)))
            self._begin()
            self._bytes -= self._delete(tuple(gone))
            self._bump("withdrawn", len(gone))
            self._write_meta({"head_seq": self._head_seq, "head_hash": self._head_hash})
            for first, last in consecutive_runs(gone):
                self._append_gap(first, last, reason)
            self.commit()
            log.warning("withdrew %d unsent records of %s (%s)", len(gone),
                        ", ".join(streams), reason)
            return gone

    def records_of_stream(self, stream: str) -> list[tuple[int, bytes]]:
        """Return every stored record of ``stream`` (committed or not), in order."""
        with self._lock, self._hold_db(), translated(str(self.path)):
            rows = self._conn.execute("SELECT seq, raw FROM records WHERE stream = ? "
                                      "ORDER BY seq", (stream,)).fetchall()
            pending = [(s, raw) for s, (st, _, raw) in self._pending.items() if st == stream]
        return [(int(s), bytes(r)) for s, r in rows] + pending

    def apply_receipt(self, receipt: Receipt, sent: tuple[int, ...] = ()) -> ReceiptResult:
        """Apply a receipt that the caller has ALREADY verified with the gateway key.

        Accepted and duplicate records are deleted; rejected ones move to the dead-letter
        table with the gateway's reason. An outcome whose record hash does not match the
        stored record removes nothing. An outcome without a sequence number (the gateway
        could not read it) is matched by record hash among ``sent``, the batch's sequence
        numbers. Returns what happened. Raises StorageError.
        """
        result = ReceiptResult()
        with self._lock, self._hold_db(), translated(str(self.path)):
            self._begin()
            for outcome in receipt.outcomes:
                seq = outcome.seq
                if seq is None:
                    seq = self._seq_by_hash(outcome.hash_prefix, sent)
                self._apply_outcome(seq, outcome.hash_prefix, outcome.status,
                                    outcome.reason, result)
            settled = max(receipt.settled_micro, self._counters.get("settled_micro", 0))
            self._write_meta({"c_last_receipt_ms": self._clock.wall_ms(),
                              "c_last_receipt_batch": receipt.batch_id,
                              "c_settled_micro": settled,
                              "head_seq": self._head_seq, "head_hash": self._head_hash})
            self._counters.update(last_receipt_ms=self._clock.wall_ms(),
                                  last_receipt_batch=receipt.batch_id, settled_micro=settled)
            for name in ("delivered", "duplicates", "rejected", "mismatched", "unknown"):
                self._bump(f"receipt_{name}", getattr(result, name))
            self._prune_dead_letters()
        return result

    def dead_letter(self, seq: int, reason: str) -> bool:
        """Move one record to the dead letters (the gateway refused the batch holding only
        it). Returns whether it was there. Raises StorageError."""
        result = ReceiptResult()
        with self._lock, self._hold_db(), translated(str(self.path)):
            self._begin()
            row = self._row(seq)
            if row is None:
                return False
            self._apply_outcome(seq, hash_prefix(row[1]), Status.REJECTED, reason, result)
            self._bump("receipt_rejected", result.rejected)
            self._write_meta({"head_seq": self._head_seq, "head_hash": self._head_hash})
        return True

    def _apply_outcome(self, seq: int | None, prefix: bytes, status: Status,
                       reason: str | None, result: ReceiptResult) -> None:
        if seq is None:
            result.unknown += 1
            return
        row = self._row(seq)
        if row is None:
            result.unknown += 1
            return
        stream, raw = row
        if hash_prefix(raw) != prefix:
            result.mismatched += 1
            log.error("receipt names seq %d with another record hash; record kept", seq)
            return
        if status is Status.REJECTED:
            self._conn.execute(
                "INSERT OR REPLACE INTO dead_letters(seq, stream, reason, at_ms, raw) "
                "VALUES(?,?,?,?,?)", (seq, stream, reason or "unknown", self._clock.wall_ms(), raw))
            result.rejected += 1
            log.warning("gateway rejected record %d (%s): moved to dead letters", seq, reason)
        elif status is Status.DUPLICATE:
            result.duplicates += 1
        else:
            result.delivered += 1
        if seq == self._held:  # settled: the records behind it may go (same transaction)
            self._held = None
            self._write_meta({"held_status": status.name.lower(), "held_reason": reason})
        self._bytes -= self._delete((seq,))

    def _seq_by_hash(self, prefix: bytes, candidates: tuple[int, ...]) -> int | None:
        for seq in candidates:
            item = self._pending.get(seq)
            if item is not None and hash_prefix(item[2]) == prefix:
                return seq
        return seq_by_hash(self._conn, prefix, candidates)

    def _prune_dead_letters(self) -> None:
        self._bump("dead_letters_pruned",
                   prune_dead_letters(self._conn, self.settings.dead_letter_max))

    # --- counters and status ------------------------------------------------------------

    def _bump(self, name: str, by: int = 1) -> None:
        if by:
            value = self._counters.get(name, 0) + by
            self._counters[name] = value
            self._write_meta({f"c_{name}": value})

    def _write_meta(self, values: dict[str, object], *, autocommit: bool = False) -> None:
        if not autocommit:
            self._begin()
        self._conn.executemany(
            "INSERT INTO meta(name, value) VALUES(?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value", list(values.items()))

    def stats(self) -> OutboxStats:
        """Return the outbox's depth, size, dead letters and counters."""
        with self._lock, self._hold_db(), translated(str(self.path)):
            stats = read_stats(self._conn, self._state.get("corrupt_outboxes"))
            pending = sum(len(raw) for _, _, raw in self._pending.values())
            return dataclasses.replace(stats, depth=stats.depth + len(self._pending),
                                       bytes=stats.bytes + pending,
                                       head_seq=max(stats.head_seq, self._head_seq))

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def close(self) -> None:
        """Declare an open rejected run, commit, record the receipt low-water mark, close.

        The final commit also marks the stop as clean (no ``running_kernel``), so the next
        start declares nothing."""
        with self._lock, self._hold_db(), translated(str(self.path)):
            try:
                if self._rejected is not None and self._signer is not None:
                    self._declare_rejected()
                self._begin()
                self._conn.execute("DELETE FROM meta WHERE name = 'running_kernel'")
                self.commit()
            except BaseException:
                # Not a clean stop (an fsync failed, the disk is full): what was not
                # committed stays in the journal for the next start; close the files.
                with contextlib.suppress(sqlite3.Error):
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                self._committer.close()
                self._durability.close()
                self._conn.close()
                self._journal.close()
                raise
            self._committer.close()
            self._durability.close()
            self._state.set_many({"receipted_through": self._receipted_through()})
            self._conn.close()
            self._journal.close()
