"""The outbox: signed records committed to SQLite before anything is sent.

Guarantees (docs/AGENT.md, "Outbox"):

- **Sequence numbers** are assigned here, inside the transaction that stores the record,
  from a durable reservation in :class:`~agent.outbox.state.DeviceState`; a number is never
  reused, not after ``kill -9`` and not after a damaged outbox file is replaced.
- **Group commit**: appends go into one open transaction that commits when the window
  (``commit_window_ms``) ends or ``commit_max_records`` are pending, with
  ``synchronous=FULL``. That window is the durability window after a power cut. Only
  committed records are handed to the uplink.
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
import hashlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from agent.clock import Clock
from agent.outbox.model import OutboxSettings, OutboxStats, ReceiptResult, consecutive_runs
from agent.outbox.rows import (
    SCHEMA,
    prune_dead_letters,
    read_stats,
    seq_by_hash,
    within_bytes,
)
from agent.outbox.state import DeviceState
from osutil.sqlite import move_aside, open_or_move_aside, storage_error, translated
from protocol import reasons
from protocol.errors import StorageError
from protocol.receipt import Receipt, Status, hash_prefix
from protocol.record import GAP_STREAM, GENESIS_PREV, Gap

log = logging.getLogger(__name__)

Build = Callable[[int, bytes], bytes]
"""Builds the signed record for ``(seq, prev)``; returns its exact signed bytes."""

_GAP_DECLARE_MS = 60_000  # an open reject-new run is declared at least once a minute


class GapSigner(Protocol):
    """Signs the gap records the outbox emits itself."""

    def sign_gap(self, seq: int, prev: bytes, gap: Gap) -> bytes: ...


class Outbox:
    """The device's crash-safe outbox. Thread-safe (one connection behind a lock)."""

    def __init__(self, path: Path, settings: OutboxSettings, state: DeviceState,
                 clock: Clock) -> None:
        self.path = path
        self.settings = settings
        self._state = state
        self._clock = clock
        self._lock = threading.RLock()
        self._signer: GapSigner | None = None
        self.boot = -1
        self.generation = 0  # bumped when a damaged file is replaced while running
        self._open_file()

    # --- opening, recovery ---------------------------------------------------------------

    def _open_file(self) -> None:
        fresh = not self.path.exists()
        self._conn, replaced = open_or_move_aside(
            self.path, SCHEMA, self._clock.wall_ms, self._report_corrupt)
        self._txn_open = False
        self._txn_started = 0
        self._txn_records = 0
        self._rejected: tuple[int, int, int] | None = None  # (first, last, since mono)
        with translated(str(self.path)):
            self._load()
        issued_before = self._state.seq_reserved > 0
        self._lost: tuple[int, int] | None = None
        if replaced or (fresh and issued_before and self._head_seq < 0):
            self._mark_lost()

    def _report_corrupt(self, moved: Path, why: str) -> None:
        log.error("OUTBOX DAMAGED: %s (%s). Moved to %s; starting a new outbox. Records that "
                  "were not yet receipted are declared as a gap.", self.path, why, moved)
        self._state.count("corrupt_outboxes")

    def _load(self) -> None:
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
        self._held = self._find_held(meta)
        self._bytes = int(self._conn.execute(
            "SELECT coalesce(sum(length(raw)), 0) FROM records").fetchone()[0])
        if self.boot < 0:  # first open in this process: a new boot
            self.boot = self._state.next_boot(at_least=int(meta.get("boot", -1)) + 1)
        reserved = max(self._state.seq_reserved, int(meta.get("seq_reserved", 0)))
        if reserved > self._state.seq_reserved:  # the state file was lost; the copy wins
            self._state.set_many({"seq_reserved": reserved})
        self._reserved = reserved
        self._write_meta({"boot": self.boot, "seq_reserved": reserved}, autocommit=True)

    def _find_held(self, meta: dict[str, object]) -> int | None:
        if meta.get("held_seq") is None or meta.get("held_status") is not None:
            return None
        seq = int(str(meta["held_seq"]))
        row = self._conn.execute("SELECT 1 FROM records WHERE seq = ?", (seq,)).fetchone()
        return seq if row is not None else None

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
        with self._lock:
            self._signer = signer
            if self._lost is not None:
                first, last = self._lost
                self._lost = None
                self._append_gap(first, last, reasons.OUTBOX_CORRUPT)
                self.commit()

    def recover(self) -> None:
        """Replace a file that turned out damaged while running; declare what may be lost.

        Raises StorageError if no new file can be created.
        """
        with self._lock:
            with contextlib.suppress(sqlite3.Error):  # it is damaged; we only let go of it
                self._conn.close()
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
        with self._lock:
            try:
                self._begin()
                seq = self._next_seq()
                raw = build(seq, self._head_hash)  # both before any write: if either fails,
                values = note(seq)                 # nothing half-made joins the open group
                self._store(seq, stream, True, raw)
                self._write_meta({**values, "held_seq": seq, "held_status": None,
                                  "held_reason": None})
                self.commit()
            except sqlite3.Error as exc:
                raise storage_error(exc, str(self.path)) from None
            self._held = seq
            return seq

    def held_outcome(self, seq: int) -> tuple[str, str | None] | None:
        """What the gateway said about held record ``seq``: None while it is still held,
        else ``(status, reason)`` with status ``accepted``, ``duplicate``, ``rejected`` or
        ``unknown`` (the outbox holding it was replaced). Raises StorageError."""
        with self._lock, translated(str(self.path)):
            if self._held == seq:
                return None
            meta = dict(self._conn.execute(
                "SELECT name, value FROM meta WHERE name IN "
                "('held_seq', 'held_status', 'held_reason')").fetchall())
        if meta.get("held_seq") != seq or meta.get("held_status") is None:
            return "unknown", None
        reason = meta.get("held_reason")
        return str(meta["held_status"]), None if reason is None else str(reason)

    def read_notes(self, names: tuple[str, ...]) -> dict[str, object]:
        """Return the meta values ``names`` that are set. Raises StorageError."""
        with self._lock, translated(str(self.path)):
            rows = self._conn.execute("SELECT name, value FROM meta").fetchall()
        return {str(k): v for k, v in rows if k in names and v is not None}

    def write_notes(self, values: Mapping[str, object]) -> None:
        """Durably set meta values (commits the open group, fsync). Raises StorageError."""
        with self._lock, translated(str(self.path)):
            self._write_meta(dict(values))
            self.commit()

    def _append(self, stream: str, build: Build, protected: bool) -> int | None:
        seq = self._next_seq()
        raw = build(seq, self._head_hash)
        dropped: list[int] = []
        if not protected and self._bytes + len(raw) > self.settings.max_bytes:
            dropped = self._make_room(len(raw))
            if self._bytes + len(raw) > self.settings.max_bytes:
                self._refuse(seq)
                self._declare_dropped(dropped)
                return None
        self._store(seq, stream, protected, raw)
        self._declare_dropped(dropped)
        if not protected and self._rejected is not None:
            self._declare_rejected()
        if self._txn_records >= self.settings.commit_max_records:
            self.commit()
        return seq

    def _next_seq(self) -> int:
        seq = self._head_seq + 1
        if seq >= self._reserved:
            self._reserved = self._state.reserve(seq, self._receipted_through())
            self._write_meta({"seq_reserved": self._reserved})
        return seq

    def _receipted_through(self) -> int:
        row = self._conn.execute("SELECT min(seq) FROM records").fetchone()
        return int(row[0]) - 1 if row[0] is not None else self._committed_through

    def _begin(self) -> None:
        if not self._txn_open:
            self._conn.execute("BEGIN IMMEDIATE")
            self._txn_open = True
            self._txn_started = self._clock.mono_ms()
            self._txn_records = 0

    def _store(self, seq: int, stream: str, protected: bool, raw: bytes) -> None:
        self._begin()
        self._conn.execute("INSERT INTO records(seq, stream, protected, raw) VALUES(?,?,?,?)",
                           (seq, stream, int(protected), raw))
        self._head_seq, self._head_hash = seq, hashlib.sha256(raw).digest()
        self._bytes += len(raw)
        self._txn_records += 1

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
        if dropped:
            self._begin()
            self._conn.executemany("DELETE FROM records WHERE seq = ?", [(s,) for s in dropped])
            self._bytes -= freed
            self._bump("dropped", len(dropped))
            self._bump("drop_events")
            self._write_meta({"head_seq": self._head_seq, "head_hash": self._head_hash})
            log.warning("outbox full (%d bytes): dropped the %d oldest records (seq %d..%d)",
                        self.settings.max_bytes, len(dropped), dropped[0], dropped[-1])
        return dropped

    def _refuse(self, seq: int) -> None:
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

    def _append_gap(self, first: int, last: int, reason: str) -> None:
        if self._signer is None:
            raise StorageError("outbox has no gap signer attached")
        seq = self._next_seq()
        raw = self._signer.sign_gap(seq, self._head_hash, Gap(first, last, reason))
        self._store(seq, GAP_STREAM, True, raw)
        self._bump("gaps_declared")
        log.warning("declared gap %d..%d (%s) in record %d", first, last, reason, seq)

    # --- committing ---------------------------------------------------------------------

    def commit(self) -> None:
        """Commit the open group (fsync). Raises StorageError if the commit fails."""
        with self._lock, translated(str(self.path)):
            if self._txn_open:
                self._conn.execute("COMMIT")
                self._txn_open = False
            self._committed_through = self._head_seq

    def maybe_commit(self) -> bool:
        """Commit if the group-commit window has passed; declare an old open rejected run.

        Returns whether a commit happened. Raises StorageError like :meth:`commit`.
        """
        with self._lock:
            now = self._clock.mono_ms()
            if self._rejected is not None and now - self._rejected[2] >= _GAP_DECLARE_MS:
                with translated(str(self.path)):
                    self._declare_rejected()
            if self._txn_open and now - self._txn_started >= self.settings.commit_window_ms:
                self.commit()
                return True
            return False

    def commit_due_ms(self) -> int | None:
        """Monotonic time at which the open group must commit (None: nothing pending)."""
        with self._lock:
            if not self._txn_open:
                return None
            return self._txn_started + self.settings.commit_window_ms

    @property
    def committed_through(self) -> int:
        """Every record with a sequence number up to this one is committed (or gone)."""
        return self._committed_through

    @property
    def sendable_through(self) -> int:
        """The uplink may send records up to this one: committed, and not behind a held
        record that still waits for its receipt."""
        with self._lock:
            if self._held is None:
                return self._committed_through
            return min(self._committed_through, self._held)

    # --- what the uplink reads and what receipts remove --------------------------------

    def unsent(self, after_seq: int, max_records: int, max_bytes: int) -> list[tuple[int, bytes]]:
        """Return sendable records with seq > ``after_seq`` in order, within the limits.

        At least one record is returned if any is there, however large.
        """
        with self._lock, translated(str(self.path)):
            rows = self._conn.execute(
                "SELECT seq, raw FROM records WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                (after_seq, self.sendable_through, max_records)).fetchall()
        return within_bytes([(int(s), bytes(r)) for s, r in rows], max_bytes)

    def fetch(self, seqs: list[int]) -> list[tuple[int, bytes]]:
        """Return the sendable records among ``seqs`` that are still in the outbox."""
        with self._lock, translated(str(self.path)):
            out = []
            limit = self.sendable_through
            for seq in sorted(seqs):
                row = self._conn.execute("SELECT raw FROM records WHERE seq = ? AND seq <= ?",
                                         (seq, limit)).fetchone()
                if row is not None:
                    out.append((seq, bytes(row[0])))
        return out

    def records_of_stream(self, stream: str) -> list[tuple[int, bytes]]:
        """Return every stored record of ``stream`` (committed or not), in order."""
        with self._lock, translated(str(self.path)):
            rows = self._conn.execute("SELECT seq, raw FROM records WHERE stream = ? "
                                      "ORDER BY seq", (stream,)).fetchall()
        return [(int(s), bytes(r)) for s, r in rows]

    def apply_receipt(self, receipt: Receipt, sent: tuple[int, ...] = ()) -> ReceiptResult:
        """Apply a receipt that the caller has ALREADY verified with the gateway key.

        Accepted and duplicate records are deleted; rejected ones move to the dead-letter
        table with the gateway's reason. An outcome whose record hash does not match the
        stored record removes nothing. An outcome without a sequence number (the gateway
        could not read it) is matched by record hash among ``sent``, the batch's sequence
        numbers. Returns what happened. Raises StorageError.
        """
        result = ReceiptResult()
        with self._lock, translated(str(self.path)):
            self._begin()
            for outcome in receipt.outcomes:
                seq = outcome.seq
                if seq is None:
                    seq = seq_by_hash(self._conn, outcome.hash_prefix, sent)
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
        with self._lock, translated(str(self.path)):
            self._begin()
            row = self._conn.execute("SELECT raw FROM records WHERE seq = ?", (seq,)).fetchone()
            if row is None:
                return False
            self._apply_outcome(seq, hash_prefix(row[0]), Status.REJECTED, reason, result)
            self._bump("receipt_rejected", result.rejected)
            self._write_meta({"head_seq": self._head_seq, "head_hash": self._head_hash})
        return True

    def _apply_outcome(self, seq: int | None, prefix: bytes, status: Status,
                       reason: str | None, result: ReceiptResult) -> None:
        if seq is None:
            result.unknown += 1
            return
        row = self._conn.execute("SELECT stream, raw FROM records WHERE seq = ?",
                                 (seq,)).fetchone()
        if row is None:
            result.unknown += 1
            return
        stream, raw = row[0], bytes(row[1])
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
        self._conn.execute("DELETE FROM records WHERE seq = ?", (seq,))
        self._bytes -= len(raw)

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
        with self._lock, translated(str(self.path)):
            return read_stats(self._conn, self._state.get("corrupt_outboxes"))

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def close(self) -> None:
        """Declare an open rejected run, commit, record the receipt low-water mark, close."""
        with self._lock, translated(str(self.path)):
            if self._rejected is not None and self._signer is not None:
                self._declare_rejected()
            self.commit()
            self._state.set_many({"receipted_through": self._receipted_through()})
            self._conn.close()
