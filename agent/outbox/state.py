"""Device state that must outlive the outbox: boot counter and sequence high-water mark.

``state.sqlite`` is a small separate database so that losing the outbox (a damaged file
moved aside, a deleted file) can never make the device reuse a sequence number:

- ``boot`` increments durably on every agent start (records carry it).
- ``seq_reserved``: every sequence number the outbox has ever assigned is below it. The
  outbox reserves numbers in blocks (:data:`SEQ_BLOCK`) and the reservation is committed
  with ``synchronous=FULL`` *before* any number of the block is used, so one fsync here
  covers a thousand records.
- ``receipted_through``: a lower bound of what the gateway has receipted, refreshed with each
  reservation and at shutdown; after a lost outbox the declared gap starts just above it.
- ``corrupt_outboxes``: how many damaged outbox files were moved aside (kept here because
  the outbox's own counters went with the file).

The outbox keeps a copy of ``boot`` and ``seq_reserved`` too; at start the larger value of
each wins, so either file alone is enough.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

from osutil.sqlite import open_or_move_aside, transaction, translated

log = logging.getLogger(__name__)

SEQ_BLOCK = 1024
_SCHEMA = "CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value INTEGER NOT NULL);"


class DeviceState:
    """The device's durable counters (see the module docstring)."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    @classmethod
    def open(cls, path: Path, wall_ms: Callable[[], int]) -> DeviceState:
        """Open or create the state file; a damaged one is moved aside with a loud error.

        Raises StorageError if no usable file can be opened.
        """
        def corrupt(moved: Path, why: str) -> None:
            log.error("device state file %s is damaged (%s); moved to %s and started anew",
                      path, why, moved)

        conn, _ = open_or_move_aside(path, _SCHEMA, wall_ms, corrupt)
        return cls(conn, path)

    def get(self, name: str, default: int = 0) -> int:
        """Return counter ``name`` (``default`` if it was never set)."""
        with translated(str(self.path)):
            row = self._conn.execute("SELECT value FROM state WHERE name = ?",
                                     (name,)).fetchone()
        return int(row[0]) if row else default

    def set_many(self, values: dict[str, int]) -> None:
        """Durably set several counters in one transaction (fsynced before returning)."""
        with transaction(self._conn, str(self.path)):
            self._conn.executemany(
                "INSERT INTO state(name, value) VALUES(?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                list(values.items()))

    def next_boot(self, at_least: int = 0) -> int:
        """Increment and durably store the boot counter; return the new value.

        ``at_least`` is the boot counter found elsewhere (the outbox's copy): the result is
        greater than both.
        """
        boot = max(self.get("boot", -1), at_least - 1) + 1
        self.set_many({"boot": boot})
        return boot

    @property
    def seq_reserved(self) -> int:
        return self.get("seq_reserved")

    def reserve(self, seq: int, receipted_through: int) -> int:
        """Make sure ``seq`` is reserved; return the new (exclusive) high-water mark."""
        high = max(self.seq_reserved, seq + 1 + SEQ_BLOCK)
        self.set_many({"seq_reserved": high, "receipted_through": receipted_through})
        return high

    def count(self, name: str, by: int = 1) -> None:
        """Add ``by`` to counter ``name`` (durably)."""
        self.set_many({name: self.get(name) + by})

    def close(self) -> None:
        with translated(str(self.path)):
            self._conn.close()
