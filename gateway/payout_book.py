"""The payout book: owners' wallet bindings and distribution epochs.

Its tables (:mod:`gateway.duty_tables`) are ``payout.sqlite`` in the data directory
(``synchronous=FULL``, mode 0600) for a gateway alone, or the ``payout`` schema of the
shared PostgreSQL database when several gateway processes share one log: there only the
sequencer writes (fenced like the log: NotSequencer elsewhere), every process reads, and
the next sequencer resumes an epoch's root post where the last one stopped
(docs/SCALING.md). A wallet
binding is stored with its exact signed bytes (served to anyone who recomputes an epoch);
the first binding of an owner is final (a second one is refused: an owner's cumulative
amount moving to another address would pay it twice). Bindings and epoch documents are
also leaves of the log (the book notes where); an epoch computed at a checkpoint of size N
uses exactly the bindings logged below N. An epoch is stored with its signed
document, the JSON dump of its tree, and the state of the transaction that posts its root:
the raw signed transaction is written BEFORE it is broadcast, so a restart resumes it.
A consent-gated epoch is stored in one transaction with the snapshot of the gating state it
was computed from (gateway/payout_gating.py; one row, the latest), so a crash never leaves
a snapshot of an epoch the book does not hold, nor the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.doc_sql import Run
from gateway.duty_tables import OnTables, optional_int
from gateway.store import MAX_PAGE, StoredCheckpoint

PENDING, POSTED, FAILED = "pending", "posted", "failed"

_DDL = """
CREATE TABLE IF NOT EXISTS wallets (
    owner TEXT PRIMARY KEY, address TEXT NOT NULL, document {blob} NOT NULL,
    leaf_index {integer} NOT NULL, received_ms {integer} NOT NULL);
CREATE TABLE IF NOT EXISTS epochs (
    epoch {integer} PRIMARY KEY, checkpoint_size {integer} NOT NULL, document {blob} NOT NULL,
    tree TEXT NOT NULL, note TEXT NOT NULL, balances {blob} NOT NULL, status TEXT NOT NULL,
    leaf_index {integer}, attempts {integer} NOT NULL DEFAULT 0,
    tx_hash TEXT, raw_tx {blob}, nonce {integer}, block_number {integer}, detail TEXT,
    created_ms {integer} NOT NULL, final_ms {integer});
CREATE TABLE IF NOT EXISTS funding_cursor (
    id {integer} PRIMARY KEY CHECK (id = 0), distributor TEXT NOT NULL,
    next_block {integer} NOT NULL, last_hash TEXT);
CREATE TABLE IF NOT EXISTS funding (terms {blob} PRIMARY KEY, amount TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS gating_snapshot (
    id {integer} PRIMARY KEY CHECK (id = 0), epoch {integer} NOT NULL,
    checkpoint_size {integer} NOT NULL, snapshot {blob} NOT NULL);
"""


_EPOCH_COLUMNS = ("epoch, checkpoint_size, document, tree, note, balances, status, leaf_index, "
                  "attempts, tx_hash, raw_tx, nonce, block_number, detail")


@dataclass(frozen=True)
class StoredEpoch:
    """One epoch as the book holds it."""

    epoch: int
    checkpoint_size: int
    document: bytes
    tree: str  # the StandardMerkleTree JSON dump
    note: str  # the signed checkpoint the epoch was computed at
    balances: bytes  # that checkpoint's canonical balances table
    status: str
    leaf_index: int | None  # where its document was logged (None: not yet)
    attempts: int
    tx_hash: str | None
    raw_tx: bytes | None
    nonce: int | None
    block_number: int | None
    detail: str | None


@dataclass(frozen=True)
class FundingState:
    """How far the distributor's Funded events were read, and their sums (base units)."""

    next_block: int  # the first block not read yet
    last_hash: str | None  # hash of block next_block - 1 when it was read (None: none read)
    totals: dict[bytes, int]  # terms -> sum of Funded amounts


class WalletTaken(ValueError):
    """The owner already has a wallet binding."""


class PayoutBook(OnTables):
    """Wallet bindings and epochs; safe to use from the API and the payout worker threads.

    Every method raises StorageError (NotSequencer: a write of a process that does not
    sequence a shared log)."""

    NAMESPACE = "payout"  # the PostgreSQL schema of its tables in a shared store
    DDL = _DDL

    def wallet_of(self, owner: str) -> bytes | None:
        """The signed bytes of the owner's binding, or None."""
        rows = self._tables.read("read wallet", lambda run: run(
            "SELECT document FROM wallets WHERE owner = ?", (owner,)))
        return bytes(rows[0][0]) if rows else None

    def add_wallet(self, owner: str, address: str, document: bytes, leaf_index: int,
                   now_ms: int) -> None:
        """Record an owner's binding, logged at ``leaf_index``.

        Raises WalletTaken if the owner already has one, StorageError.
        """
        def change(run: Run) -> None:
            if run("SELECT 1 FROM wallets WHERE owner = ?", (owner,)):
                raise WalletTaken(owner)
            run("INSERT INTO wallets VALUES (?, ?, ?, ?, ?)",
                (owner, address, document, leaf_index, now_ms))
        self._tables.write("add wallet binding", change)

    def wallets(self, before_size: int | None = None) -> dict[str, str]:
        """Bindings logged below ``before_size`` (None: all) as owner -> checksum address."""
        limit = 2**63 - 1 if before_size is None else before_size
        rows = self._tables.read("read wallets", lambda run: run(
            "SELECT owner, address FROM wallets WHERE leaf_index < ? ORDER BY leaf_index",
            (limit,)))
        return {str(owner): str(address) for owner, address in rows}

    def wallet_documents(self, after_index: int = -1, limit: int = MAX_PAGE
                         ) -> list[tuple[int, bytes]]:
        """(leaf index, signed bytes) of the bindings logged after leaf ``after_index``, in
        log order, at most ``limit`` (and MAX_PAGE)."""
        rows = self._tables.read("read wallets", lambda run: run(
            "SELECT leaf_index, document FROM wallets WHERE leaf_index > ? "
            "ORDER BY leaf_index LIMIT ?", (after_index, min(limit, MAX_PAGE))))
        return [(int(r[0]), bytes(r[1])) for r in rows]

    def add_epoch(self, epoch: int, checkpoint: StoredCheckpoint, document: bytes, tree: str,
                  now_ms: int, *, gating: bytes | None = None) -> None:
        """Record a new epoch, pending its root post; older pending ones are superseded.
        ``gating``: the snapshot of the gating state it was computed from, which replaces the
        one held (None: the one held stays)."""
        def change(run: Run) -> None:
            if gating is not None:
                run("INSERT INTO gating_snapshot VALUES (0, ?, ?, ?) ON CONFLICT (id) DO "
                    "UPDATE SET epoch = excluded.epoch, checkpoint_size = "
                    "excluded.checkpoint_size, snapshot = excluded.snapshot",
                    (epoch, checkpoint.size, gating))
            run("UPDATE epochs SET status = ?, detail = 'superseded', final_ms = ? "
                "WHERE status = ?", (FAILED, now_ms, PENDING))
            run("INSERT INTO epochs (epoch, checkpoint_size, document, tree, note, balances, "
                "status, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (epoch, checkpoint.size, document, tree, checkpoint.note,
                 checkpoint.balances, PENDING, now_ms))
        self._tables.write("add epoch", change)

    def set_leaf(self, epoch: int, leaf_index: int) -> None:
        """Record where the epoch's document was logged."""
        self._tables.write("set epoch leaf", lambda run: run(
            "UPDATE epochs SET leaf_index = ? WHERE epoch = ?", (leaf_index, epoch)))

    def record_tx(self, epoch: int, tx_hash: str, raw: bytes, nonce: int) -> None:
        """Persist a signed root post before it is broadcast."""
        self._tables.write("record payout tx", lambda run: run(
            "UPDATE epochs SET tx_hash = ?, raw_tx = ?, nonce = ? WHERE epoch = ?",
            (tx_hash, raw, nonce, epoch)))

    def clear_tx(self, epoch: int, detail: str, *, reverted: bool) -> None:
        """Forget an epoch's transaction (it reverted or its nonce went): sign a new one.

        ``reverted`` counts an attempt (``attempts`` is the number of reverted posts).
        """
        self._tables.write("clear payout tx", lambda run: run(
            "UPDATE epochs SET tx_hash = NULL, raw_tx = NULL, nonce = NULL, detail = ?, "
            "attempts = attempts + ? WHERE epoch = ?", (detail, int(reverted), epoch)))

    def finish(self, epoch: int, status: str, now_ms: int, *, block_number: int | None = None,
               detail: str | None = None) -> None:
        """Mark an epoch posted (with its block) or failed (with why)."""
        self._tables.write("finish epoch", lambda run: run(
            "UPDATE epochs SET status = ?, block_number = ?, detail = ?, final_ms = ? "
            "WHERE epoch = ?", (status, block_number, detail, now_ms, epoch)))

    def latest(self, status: str | None = None) -> StoredEpoch | None:
        """The newest epoch (of ``status`` if given)."""
        where, args = ("WHERE status = ?", (status,)) if status else ("", ())
        rows = self._tables.read("read epoch", lambda run: run(
            f"SELECT {_EPOCH_COLUMNS} FROM epochs {where} "  # noqa: S608
            "ORDER BY epoch DESC LIMIT 1", args))
        return _epoch(rows[0]) if rows else None

    def get(self, epoch: int) -> StoredEpoch | None:
        """One epoch by number."""
        rows = self._tables.read("read epoch", lambda run: run(
            f"SELECT {_EPOCH_COLUMNS} FROM epochs WHERE epoch = ?", (epoch,)))  # noqa: S608
        return _epoch(rows[0]) if rows else None

    def gating_snapshot(self) -> tuple[int, int, bytes] | None:
        """(epoch, checkpoint size, snapshot) of the latest gating state stored, or None."""
        rows = self._tables.read("read gating snapshot", lambda run: run(
            "SELECT epoch, checkpoint_size, snapshot FROM gating_snapshot WHERE id = 0", ()))
        if not rows:
            return None
        epoch, size, snapshot = rows[0]
        return int(str(epoch)), int(str(size)), bytes(snapshot)

    def drop_gating_snapshot(self) -> None:
        """Forget the stored gating state (it cannot go on: built again from the log)."""
        self._tables.write("drop gating snapshot", lambda run: run(
            "DELETE FROM gating_snapshot", ()))

    def funding(self, distributor: str) -> FundingState | None:
        """What was read of ``distributor``'s Funded events (None: nothing, or another
        distributor's)."""
        def query(run: Run) -> FundingState | None:
            rows = run("SELECT distributor, next_block, last_hash FROM funding_cursor "
                       "WHERE id = 0", ())
            if not rows or str(rows[0][0]).lower() != distributor.lower():
                return None
            totals = {bytes(t): int(str(a)) for t, a in run(
                "SELECT terms, amount FROM funding", ())}
            row = rows[0]
            return FundingState(int(str(row[1])), None if row[2] is None else str(row[2]),
                                totals)
        return self._tables.read("read funding", query)

    def add_funding(self, distributor: str, next_block: int, last_hash: str,
                    added: dict[bytes, int], *, reset: bool = False) -> None:
        """Add the sums of a window of Funded events read up to ``next_block - 1`` (whose
        hash is ``last_hash``); ``reset`` first forgets everything read before."""
        def change(run: Run) -> None:
            if reset:
                run("DELETE FROM funding", ())
            for terms, amount in added.items():
                rows = run("SELECT amount FROM funding WHERE terms = ?", (terms,))
                before = int(str(rows[0][0])) if rows else 0
                run("INSERT INTO funding VALUES (?, ?) ON CONFLICT (terms) "
                    "DO UPDATE SET amount = excluded.amount", (terms, str(before + amount)))
            run("INSERT INTO funding_cursor VALUES (0, ?, ?, ?) ON CONFLICT (id) DO UPDATE "
                "SET distributor = excluded.distributor, next_block = excluded.next_block, "
                "last_hash = excluded.last_hash", (distributor, next_block, last_hash))
        self._tables.write("add funding", change)



def _epoch(row: tuple[Any, ...]) -> StoredEpoch:  # a database row: its values are untyped
    (epoch, size, document, tree, note, balances, status, leaf, attempts, tx_hash, raw, nonce,
     block, detail) = row
    return StoredEpoch(int(epoch), int(size), bytes(document), str(tree), str(note),
                       bytes(balances), str(status), optional_int(leaf), int(attempts),
                       None if tx_hash is None else str(tx_hash),
                       None if raw is None else bytes(raw), optional_int(nonce),
                       optional_int(block),
                       None if detail is None else str(detail))
