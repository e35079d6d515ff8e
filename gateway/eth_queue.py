"""The persisted queue of the ``ethereum`` anchor: checkpoints to anchor and their transactions.

Only the anchor's worker thread and :meth:`AnchorQueue.add` (the sequencer) write it. Its
tables (:mod:`gateway.duty_tables`) are a SQLite file in the gateway's data directory
(``anchor-ethereum.sqlite``, WAL, ``synchronous=FULL``) for a gateway alone, or the
``eth_anchor`` schema of the shared PostgreSQL database when several gateway processes
share one log, so that the next sequencer resumes exactly where the last one stopped
(docs/SCALING.md). Two tables:

``anchors``: one row per checkpoint handed to the backend, keyed by its checkpoint hash,
with its state::

    queued ──send──▶ sending ──receipt status 1──▶ confirmed
      ▲  │              │──receipt status 0 / would revert──▶ queued (retry) or failed
      │  └─newer checkpoint queued──▶ superseded
      └──── nonce used by someone else ──┘

``txs``: every transaction signed for a checkpoint, written BEFORE it is broadcast
(write-ahead), so that after a crash the gateway knows what it may have sent and never
signs a second transaction for the same checkpoint with a new nonce while an earlier one
could still be mined. Every row of a ``sending`` checkpoint shares one nonce: at most one
of them can ever be mined.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum, unique
from typing import Any

from gateway.doc_sql import Run
from gateway.duty_tables import OnTables, optional_int


@unique
class AnchorState(StrEnum):
    """Where a checkpoint's anchoring stands (the diagram above); the value is stored."""

    QUEUED = "queued"
    SENDING = "sending"
    CONFIRMED = "confirmed"
    FAILED = "failed"
    SUPERSEDED = "superseded"


QUEUED, SENDING, CONFIRMED = AnchorState.QUEUED, AnchorState.SENDING, AnchorState.CONFIRMED
FAILED, SUPERSEDED = AnchorState.FAILED, AnchorState.SUPERSEDED

_DDL = """
CREATE TABLE IF NOT EXISTS anchors (
    checkpoint_hash {blob} PRIMARY KEY, size {integer} NOT NULL, note TEXT NOT NULL,
    queued_ms {integer} NOT NULL, state TEXT NOT NULL, attempts {integer} NOT NULL DEFAULT 0,
    nonce {integer}, tx_hash TEXT, block_number {integer}, status {integer},
    chain_id {integer}, final_ms {integer}, detail TEXT);
CREATE INDEX IF NOT EXISTS anchors_by_state ON anchors (state, size);
CREATE TABLE IF NOT EXISTS txs (
    tx_hash TEXT PRIMARY KEY, checkpoint_hash {blob} NOT NULL, nonce {integer} NOT NULL,
    gas_price {integer} NOT NULL, gas {integer} NOT NULL, raw {blob} NOT NULL,
    created_ms {integer} NOT NULL);
CREATE INDEX IF NOT EXISTS txs_by_checkpoint ON txs (checkpoint_hash, nonce);
"""


_ANCHOR_COLUMNS = ("checkpoint_hash, size, note, queued_ms, state, attempts, nonce, tx_hash, "
                   "block_number, status, chain_id, final_ms, detail")


@dataclass(frozen=True)
class QueuedAnchor:
    """A checkpoint handed to the backend, and how far its anchoring got."""

    checkpoint_hash: bytes
    size: int
    note: str
    queued_ms: int
    state: AnchorState
    attempts: int  # transactions (or estimates) that reverted
    nonce: int | None  # the nonce of the transactions in flight (state sending)
    tx_hash: str | None  # the mined transaction (confirmed, or the last reverted one)
    block_number: int | None
    status: int | None  # receipt status of tx_hash: 1 success, 0 reverted
    chain_id: int | None
    final_ms: int | None
    detail: str | None  # why it failed, was superseded or re-queued


@dataclass(frozen=True)
class SentTx:
    """A signed transaction, persisted before it is broadcast."""

    tx_hash: str
    checkpoint_hash: bytes
    nonce: int
    gas_price: int
    gas: int
    raw: bytes
    created_ms: int


class AnchorQueue(OnTables):
    """The anchor queue over :class:`gateway.duty_tables.Tables`; every method raises
    StorageError on failure (NotSequencer for a write of a process that does not sequence)."""

    NAMESPACE = "eth_anchor"  # the PostgreSQL schema of its tables in a shared store
    DDL = _DDL

    def _one(self, sql: str, params: tuple[object, ...]) -> QueuedAnchor | None:
        rows = self._tables.read("read", lambda run: run(
            f"SELECT {_ANCHOR_COLUMNS} FROM anchors {sql} LIMIT 1", params))  # noqa: S608
        return _entry(rows[0]) if rows else None

    # --- writes -----------------------------------------------------------------------------

    def add(self, checkpoint_hash: bytes, size: int, note: str, now_ms: int) -> bool:
        """Queue a checkpoint; return False if it was handed over before (idempotent)."""
        return bool(self._tables.write("queue checkpoint", lambda run: run(
            "INSERT INTO anchors (checkpoint_hash, size, note, queued_ms, state) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING 1",
            (checkpoint_hash, size, note, now_ms, QUEUED.value))))

    def supersede_older(self, size: int, now_ms: int) -> int:
        """Mark queued checkpoints smaller than ``size`` superseded; return how many."""
        return len(self._tables.write("supersede", lambda run: run(
            "UPDATE anchors SET state = ?, final_ms = ?, detail = ? "
            "WHERE state = ? AND size < ? RETURNING 1",
            (SUPERSEDED.value, now_ms, f"covered by the checkpoint of size {size}",
             QUEUED.value, size))))

    def record_tx(self, tx: SentTx) -> None:
        """Persist a signed transaction and mark its checkpoint ``sending`` with its nonce."""
        def change(run: Run) -> None:
            run("INSERT INTO txs VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (tx.tx_hash, tx.checkpoint_hash, tx.nonce, tx.gas_price, tx.gas, tx.raw,
                 tx.created_ms))
            run("UPDATE anchors SET state = ?, nonce = ? WHERE checkpoint_hash = ?",
                (SENDING.value, tx.nonce, tx.checkpoint_hash))
        self._tables.write("record transaction", change)

    def finish(self, checkpoint_hash: bytes, state: AnchorState, *, tx_hash: str | None,
               block_number: int | None, status: int | None, chain_id: int, now_ms: int,
               attempts: int, detail: str | None = None) -> None:
        """Record the final outcome of a checkpoint (``confirmed`` or ``failed``)."""
        self._tables.write("finish anchor", lambda run: run(
            "UPDATE anchors SET state = ?, tx_hash = ?, block_number = ?, status = ?, "
            "chain_id = ?, final_ms = ?, attempts = ?, detail = ? WHERE checkpoint_hash = ?",
            (state.value, tx_hash, block_number, status, chain_id, now_ms, attempts, detail,
             checkpoint_hash)))

    def requeue(self, checkpoint_hash: bytes, attempts: int, detail: str,
                tx_hash: str | None = None) -> None:
        """Put a checkpoint back in the queue (its next transaction takes a new nonce)."""
        self._tables.write("requeue anchor", lambda run: run(
            "UPDATE anchors SET state = ?, nonce = NULL, attempts = ?, detail = ?, "
            "tx_hash = COALESCE(?, tx_hash) WHERE checkpoint_hash = ?",
            (QUEUED.value, attempts, detail, tx_hash, checkpoint_hash)))

    # --- reads ------------------------------------------------------------------------------

    def in_flight(self) -> QueuedAnchor | None:
        """The checkpoint whose transaction is out (at most one at a time)."""
        return self._one("WHERE state = ? ORDER BY size", (SENDING.value,))

    def newest_queued(self) -> QueuedAnchor | None:
        """The largest checkpoint waiting to be sent."""
        return self._one("WHERE state = ? ORDER BY size DESC", (QUEUED.value,))

    def get(self, checkpoint_hash: bytes) -> QueuedAnchor | None:
        """One checkpoint's entry."""
        return self._one("WHERE checkpoint_hash = ?", (checkpoint_hash,))

    def confirmed(self, min_size: int | None) -> QueuedAnchor | None:
        """The latest confirmed anchor, or the earliest one covering ``min_size`` leaves."""
        if min_size is None:
            return self._one("WHERE state = ? ORDER BY size DESC", (CONFIRMED.value,))
        return self._one("WHERE state = ? AND size >= ? ORDER BY size",
                         (CONFIRMED.value, min_size))

    def confirmed_after(self, after_size: int, limit: int) -> list[QueuedAnchor]:
        """Up to ``limit`` confirmed anchors with tree size > ``after_size``, smallest first."""
        rows = self._tables.read("list", lambda run: run(
            f"SELECT {_ANCHOR_COLUMNS} FROM anchors "  # noqa: S608
            "WHERE state = ? AND size > ? ORDER BY size LIMIT ?",
            (CONFIRMED.value, after_size, limit)))
        return [_entry(row) for row in rows]

    def txs(self, checkpoint_hash: bytes, nonce: int) -> list[SentTx]:
        """The transactions signed for a checkpoint with ``nonce``, oldest first.

        Oldest first is by gas price: each transaction of one nonce after the first pays
        more (a stuck one's replacement), or is the same signed bytes (a dropped one sent
        again, which has the same hash and so no row of its own).
        """
        rows = self._tables.read("read transactions", lambda run: run(
            "SELECT tx_hash, checkpoint_hash, nonce, gas_price, gas, raw, created_ms "
            "FROM txs WHERE checkpoint_hash = ? AND nonce = ? ORDER BY gas_price",
            (checkpoint_hash, nonce)))
        return [SentTx(str(h), bytes(c), int(n), int(p), int(g), bytes(r), int(ms))
                for h, c, n, p, g, r, ms in rows]

    def counts(self) -> dict[str, int]:
        """The number of checkpoints in each state."""
        rows = self._tables.read("count", lambda run: run(
            "SELECT state, COUNT(*) FROM anchors GROUP BY state", ()))
        found = {str(state): int(n) for state, n in rows}
        return {s.value: int(found.get(s.value, 0)) for s in AnchorState}



def _entry(row: Any) -> QueuedAnchor:  # a database row: its values are untyped
    """A row of ``_ANCHOR_COLUMNS`` as a typed entry (the state as its enum)."""
    (digest, size, note, queued_ms, state, attempts, nonce, tx_hash, block_number, status,
     chain_id, final_ms, detail) = row
    return QueuedAnchor(bytes(digest), int(size), str(note), int(queued_ms),
                        AnchorState(state), int(attempts), optional_int(nonce), tx_hash,
                        optional_int(block_number), optional_int(status),
                        optional_int(chain_id), optional_int(final_ms), detail)
