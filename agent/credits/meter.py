"""Usage meter: on-time of an input (a TV's power line, say), measured and claimed safely.

**Clock.** Usage is measured only on the monotonic clock (ms), within one boot. The wall
clock never enters: a wall clock that jumps (a Pi without RTC before NTP syncs) cannot
change usage. Mono times from different boots are never compared.

**Accounting window.** Within a boot the meter keeps one open window
``[window_start, now]`` and the input's on-time inside it. ``observe(is_on, now)`` is
called on each edge or poll; ``tick(now)`` checkpoints when due.

**Checkpoints.** Every ``checkpoint_interval_s`` the window (start, checkpoint time,
on-time up to it, rate) is written to the meter's own SQLite file (WAL,
``synchronous=FULL``: a committed checkpoint survives a power cut). After a crash, a new
boot closes the previous boot's window *at its last checkpoint*: the on-time up to the
checkpoint becomes a claim for that boot; the on-time after it is lost. So a crash loses at
most the usage since the last checkpoint (≤ ``checkpoint_interval_s`` plus the caller's
tick period) and never counts any of it twice.

**Two-phase claims.** ``take_usage(now)`` closes the window into a *claim*
``Usage(start, end, usage_ms, rate)`` and stores it as pending in the same transaction
that opens the next window at ``end``, so the claimed time can never be claimed again. The
caller puts a record carrying the claim in the outbox, then calls
``commit_emitted(usage)``, which marks it emitted and adds it to the totals. A claim stays
pending until committed: ``take_usage`` returns the same pending claim again (it never
issues a second one for this boot), and after a crash ``pending_claims()`` lists every
unresolved claim, including those of earlier boots. The caller resolves each: if the
outbox already holds a usage record with that (boot, start, end), commit it; otherwise
emit it, then commit. Either way each interval is emitted once; should a duplicate slip
out anyway, it is the identical interval, which the gateway rejects as ``usage_overlap``.

A claim's times are on the monotonic clock of ``claim.boot``: the record that carries it
must declare that boot.

**Credit** is ``protocol.record.credit_micro(usage_ms, rate)``: integers, floor, per
usage record; the gateway recomputes it per record with the same function. What the
gateway settled comes from its receipts (the outbox keeps it), not from the meter.

**A damaged file** (not a healthy SQLite database at open, or SQLite reporting corruption
while running) is moved aside to ``<name>.corrupt-<UTC time>`` and a new file started, as
the outbox does (:mod:`osutil.sqlite`); the caller's ``on_damaged`` hook counts and reports
it. The pending claims and the open window in the damaged file are lost: usage since the
last claim that reached the outbox is not credited.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from osutil.sqlite import DatabaseCorrupt, move_aside, open_or_move_aside, transaction, translated
from protocol.errors import ConfigError, StorageError
from protocol.record import Usage, credit_micro

OnDamaged = Callable[[Path, str], None]
"""Called with where a damaged meter file was moved and why."""


class MeterDamaged(DatabaseCorrupt):
    """The meter's file turned out damaged while running; :meth:`UsageMeter.recover` it."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meter (
    stream TEXT PRIMARY KEY,
    boot INTEGER NOT NULL,
    window_start_mono_ms INTEGER,        -- NULL until the first observation of this boot
    checkpoint_mono_ms INTEGER,
    window_usage_ms INTEGER NOT NULL,    -- on-time in [window_start, checkpoint]
    rate_micro_per_hour INTEGER NOT NULL,
    emitted_ms INTEGER NOT NULL,
    emitted_micro INTEGER NOT NULL,
    settled_micro INTEGER NOT NULL,      -- unused (0); kept so older files still open
    last_emitted_boot INTEGER NOT NULL,
    last_emitted_end_mono_ms INTEGER NOT NULL,
    recoveries INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS claims (
    stream TEXT NOT NULL,
    boot INTEGER NOT NULL,
    start_mono_ms INTEGER NOT NULL,
    end_mono_ms INTEGER NOT NULL,
    usage_ms INTEGER NOT NULL,
    rate_micro_per_hour INTEGER NOT NULL,
    PRIMARY KEY (stream, boot, start_mono_ms)
);
"""


@dataclass(frozen=True)
class UsageClaim:
    """A pending usage claim; its times are on the monotonic clock of ``boot``."""

    boot: int
    usage: Usage

    @property
    def credit_micro(self) -> int:
        return self.usage.credit_micro


class UsageMeter:
    """Measures one input's on-time and hands it out as usage claims. Thread-safe."""

    def __init__(
        self,
        path: Path,
        stream: str,
        rate_micro_per_hour: int,
        checkpoint_interval_s: float,
        boot: int,
        *,
        wall_ms: Callable[[], int] | None = None,
        on_damaged: OnDamaged | None = None,
    ) -> None:
        """Open (or create) the meter state in ``path`` for ``stream`` at boot ``boot``.

        If the file holds an earlier boot, that boot's window is closed at its last
        checkpoint into a pending claim. A damaged file is moved aside (named with
        ``wall_ms``, default the system clock), ``on_damaged`` is called and a new file
        started. Raises ConfigError for bad arguments and StorageError if no usable file
        can be opened or it holds a later boot.
        """
        _check_args(rate_micro_per_hour, checkpoint_interval_s, boot)
        self.path = path
        self.stream = stream
        self.boot = boot
        self.rate_micro_per_hour = rate_micro_per_hour
        self.checkpoint_interval_ms = round(checkpoint_interval_s * 1000)
        self.late_observations = 0
        self._lock = threading.RLock()
        self._window_start: int | None = None
        self._closed_ms = 0
        self._on_since: int | None = None
        self._last_ms: int | None = None
        self._last_checkpoint_ms: int | None = None
        self._wall_ms = wall_ms or _system_wall_ms
        self._on_damaged = on_damaged
        self.damaged_files = 0  # moved aside by this meter (the caller keeps the durable count)
        self._db = self._open_file()
        with self._lock, self._transaction():
            self._open_boot()

    def _open_file(self) -> sqlite3.Connection:
        conn, _ = open_or_move_aside(self.path, _SCHEMA, self._wall_ms, self._damaged)
        return conn

    def _damaged(self, moved: Path, why: str) -> None:
        self.damaged_files += 1
        if self._on_damaged is not None:
            self._on_damaged(moved, why)

    def recover(self, now_mono_ms: int) -> None:
        """Replace a file that turned out damaged while running; start a new window.

        The damaged file's pending claims and window are lost (reported through
        ``on_damaged``). Raises StorageError if no new file can be created.
        """
        with self._lock:
            with contextlib.suppress(sqlite3.Error):  # it is damaged; we only let go of it
                self._db.close()
            self._damaged(move_aside(self.path, self._wall_ms()), "error while running")
            self._db = self._open_file()
            self._window_start, self._closed_ms = None, 0
            self._on_since = None
            self._last_checkpoint_ms = None
            with self._transaction():
                self._open_boot()
            self._write_checkpoint(self._advance(now_mono_ms))

    # --- observing -----------------------------------------------------------------------

    def observe(self, is_on: bool, now_mono_ms: int) -> None:
        """Record the input's state at ``now_mono_ms`` (an edge or a poll); checkpoint if due."""
        with self._lock:
            now = self._advance(now_mono_ms)
            if is_on and self._on_since is None:
                self._on_since = now
            elif not is_on and self._on_since is not None:
                self._closed_ms += now - self._on_since
                self._on_since = None
            self._checkpoint_if_due(now)

    def tick(self, now_mono_ms: int) -> None:
        """Checkpoint if ``checkpoint_interval_s`` has passed since the last one."""
        with self._lock:
            self._checkpoint_if_due(self._advance(now_mono_ms))

    def checkpoint(self, now_mono_ms: int) -> None:
        """Persist the window as of ``now_mono_ms`` now (durable when this returns)."""
        with self._lock:
            self._write_checkpoint(self._advance(now_mono_ms))

    # --- claiming ------------------------------------------------------------------------

    def take_usage(self, now_mono_ms: int) -> Usage | None:
        """Close the window at ``now_mono_ms`` into a claim for this boot.

        Returns the claim's Usage (start = the previous claim's end in this boot, end =
        now), the still-pending claim of this boot if there is one, or None when no usage
        accrued. The claim is durable when this returns; call :meth:`commit_emitted` once
        a record carrying it is in the outbox.
        """
        with self._lock:
            pending = [c for c in self._pending() if c.boot == self.boot]
            if pending:
                return pending[0].usage
            now = self._advance(now_mono_ms)
            used = self._usage_at(now)
            if self._window_start is None or used == 0:
                return None
            usage = Usage(self._window_start, now, used, self.rate_micro_per_hour)
            with self._transaction():
                self._db.execute(
                    "INSERT INTO claims VALUES (?, ?, ?, ?, ?, ?)",
                    (self.stream, self.boot, usage.start_mono_ms, usage.end_mono_ms,
                     usage.usage_ms, usage.rate_micro_per_hour),
                )
                self._write_window(now, start=now, used=0)
            # Memory follows the database only once the claim is committed.
            self._window_start, self._closed_ms = now, 0
            if self._on_since is not None:
                self._on_since = now
            self._last_checkpoint_ms = now
            return usage

    def commit_emitted(self, usage: Usage, boot: int | None = None) -> bool:
        """Mark the claim ``usage`` of ``boot`` (default: this boot) as emitted.

        Returns True when it was pending and is now counted, False when it had already
        been committed (idempotent). Raises ValueError for a usage this meter never
        claimed, StorageError if the file fails.
        """
        claim_boot = self.boot if boot is None else boot
        with self._lock, self._transaction():
            deleted = self._db.execute(
                "DELETE FROM claims WHERE stream = ? AND boot = ? AND start_mono_ms = ? "
                "AND end_mono_ms = ? AND usage_ms = ? AND rate_micro_per_hour = ?",
                (self.stream, claim_boot, usage.start_mono_ms, usage.end_mono_ms,
                 usage.usage_ms, usage.rate_micro_per_hour),
            ).rowcount
            if deleted == 0:
                last = self._row("last_emitted_boot", "last_emitted_end_mono_ms")
                if (claim_boot, usage.end_mono_ms) <= (last[0], last[1]):
                    return False
                raise ValueError(f"{self.stream}: {usage} is not a claim of this meter")
            self._db.execute(
                "UPDATE meter SET emitted_ms = emitted_ms + ?, "
                "emitted_micro = emitted_micro + ?, last_emitted_boot = ?, "
                "last_emitted_end_mono_ms = ? WHERE stream = ?",
                (usage.usage_ms, usage.credit_micro, claim_boot, usage.end_mono_ms,
                 self.stream),
            )
            return True

    def pending_claims(self) -> list[UsageClaim]:
        """Every claim taken but not committed, oldest first (earlier boots included)."""
        with self._lock:
            return self._pending()

    # --- counters --------------------------------------------------------------------------

    @property
    def emitted_ms(self) -> int:
        return int(self._row("emitted_ms")[0])

    @property
    def emitted_micro(self) -> int:
        """Credit of every committed claim, each floored on its own (as the gateway does)."""
        return int(self._row("emitted_micro")[0])

    @property
    def pending_micro(self) -> int:
        return sum(c.credit_micro for c in self.pending_claims())

    @property
    def accrued_micro(self) -> int:
        """Emitted + pending + the open window's credit so far (the window not yet floored)."""
        with self._lock:
            window = self._usage_at(self._last_ms) if self._last_ms is not None else 0
            return (self.emitted_micro + self.pending_micro
                    + credit_micro(window, self.rate_micro_per_hour))

    @property
    def recoveries(self) -> int:
        """How many times a new boot found an earlier boot's window to close."""
        return int(self._row("recoveries")[0])

    @property
    def last_checkpoint_mono_ms(self) -> int | None:
        return self._last_checkpoint_ms

    def unclaimed_ms(self, now_mono_ms: int) -> int:
        """On-time in the open window up to ``now_mono_ms`` (not yet claimed)."""
        with self._lock:
            return self._usage_at(max(now_mono_ms, self._last_ms or now_mono_ms))

    def status(self) -> dict[str, object]:
        """A JSON-ready summary of the meter's counters."""
        with self._lock:
            return {
                "stream": self.stream, "boot": self.boot,
                "rate_micro_per_hour": self.rate_micro_per_hour,
                "emitted_ms": self.emitted_ms, "emitted_micro": self.emitted_micro,
                "pending_claims": len(self._pending()), "pending_micro": self.pending_micro,
                "accrued_micro": self.accrued_micro,
                "recoveries": self.recoveries, "late_observations": self.late_observations,
                "damaged_files": self.damaged_files,
                "last_checkpoint_mono_ms": self._last_checkpoint_ms,
            }

    def close(self, now_mono_ms: int | None = None) -> None:
        """Checkpoint at ``now_mono_ms`` (if given) and close the file."""
        with self._lock:
            if now_mono_ms is not None:
                self.checkpoint(now_mono_ms)
            self._db.close()

    # --- internals -------------------------------------------------------------------------

    def _open_boot(self) -> None:
        row = self._db.execute(
            "SELECT boot, window_start_mono_ms, checkpoint_mono_ms, window_usage_ms, "
            "rate_micro_per_hour FROM meter WHERE stream = ?", (self.stream,)).fetchone()
        if row is None:
            self._db.execute(
                "INSERT INTO meter VALUES (?, ?, NULL, NULL, 0, ?, 0, 0, 0, -1, -1, 0)",
                (self.stream, self.boot, self.rate_micro_per_hour))
            return
        stored_boot, start, checkpoint, used, rate = row
        if stored_boot > self.boot:
            raise StorageError(f"{self.stream}: meter state is from boot {stored_boot}, "
                               f"later than this boot {self.boot}")
        if stored_boot == self.boot:
            # Same boot (the meter was reopened): the mono clock is comparable. Resume the
            # window at its checkpoint; time since the checkpoint is not counted.
            self._window_start, self._closed_ms = start, used
            self._last_ms = self._last_checkpoint_ms = checkpoint
            return
        if start is not None and used > 0:
            # Close the earlier boot's window at its last checkpoint (module docstring).
            self._db.execute("INSERT INTO claims VALUES (?, ?, ?, ?, ?, ?)",
                             (self.stream, stored_boot, start, checkpoint, used, rate))
        self._db.execute(
            "UPDATE meter SET boot = ?, window_start_mono_ms = NULL, checkpoint_mono_ms = NULL,"
            " window_usage_ms = 0, recoveries = recoveries + ? WHERE stream = ?",
            (self.boot, 1 if start is not None else 0, self.stream))

    def _advance(self, now: int) -> int:
        """Return ``now`` clamped to the latest time seen, counting late observations.

        An edge stamped on gpiozero's thread and a poll stamped at the top of the main loop
        can arrive out of order by a few ms; neither may make usage negative or double.
        """
        if self._last_ms is not None and now < self._last_ms:
            self.late_observations += 1
            now = self._last_ms
        self._last_ms = now
        if self._window_start is None:
            self._window_start = now
        return now

    def _usage_at(self, now: int) -> int:
        running = now - self._on_since if self._on_since is not None else 0
        return self._closed_ms + running

    def _checkpoint_if_due(self, now: int) -> None:
        last = self._last_checkpoint_ms
        if last is None or now - last >= self.checkpoint_interval_ms:
            self._write_checkpoint(now)

    def _write_checkpoint(self, now: int) -> None:
        with self._transaction():
            self._write_window(now, start=self._window_start, used=self._usage_at(now))
        self._last_checkpoint_ms = now

    def _write_window(self, now: int, *, start: int | None, used: int) -> None:
        self._db.execute(
            "UPDATE meter SET window_start_mono_ms = ?, checkpoint_mono_ms = ?, "
            "window_usage_ms = ?, rate_micro_per_hour = ? WHERE stream = ?",
            (start, now, used, self.rate_micro_per_hour, self.stream))

    def _pending(self) -> list[UsageClaim]:
        with self._translated():
            rows = self._db.execute(
                "SELECT boot, start_mono_ms, end_mono_ms, usage_ms, rate_micro_per_hour "
                "FROM claims WHERE stream = ? ORDER BY boot, start_mono_ms",
                (self.stream,)).fetchall()
        return [UsageClaim(b, Usage(s, e, u, r)) for b, s, e, u, r in rows]

    def _row(self, *columns: str) -> tuple[int, ...]:
        with self._lock, self._translated():
            row = self._db.execute(
                f"SELECT {', '.join(columns)} FROM meter WHERE stream = ?",  # noqa: S608 - fixed names
                (self.stream,)).fetchone()
        return tuple(row)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._damage_marked(), transaction(self._db, self._what):
            yield

    @contextmanager
    def _translated(self) -> Iterator[None]:
        with self._damage_marked(), translated(self._what):
            yield

    @property
    def _what(self) -> str:
        return f"usage meter {self.stream} ({self.path})"

    @staticmethod
    @contextmanager
    def _damage_marked() -> Iterator[None]:
        """Tell the meter's damage apart from the outbox's (the service recovers each)."""
        try:
            yield
        except MeterDamaged:
            raise
        except DatabaseCorrupt as exc:
            raise MeterDamaged(str(exc)) from None


def _system_wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _check_args(rate: int, interval_s: float, boot: int) -> None:
    if isinstance(rate, bool) or not isinstance(rate, int) or rate < 0:
        raise ConfigError("rate_micro_per_hour: must be an integer >= 0")
    if isinstance(interval_s, bool) or not isinstance(interval_s, int | float) or not (
            0 < interval_s <= 86_400):
        raise ConfigError("checkpoint_interval_s: must be a number in (0, 86400]")
    if isinstance(boot, bool) or not isinstance(boot, int) or boot < 0:
        raise ConfigError("boot: must be an integer >= 0")
