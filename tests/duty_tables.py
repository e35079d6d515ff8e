"""Both homes of the chain duties' tables behind one fixture (gateway/duty_tables.py): the
anchor queue and the payout book run the same tests on a SQLite file and on the shared
PostgreSQL store (opened ``shared``, holding the sequencer lock, as a sequencer does)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.eth_queue import AnchorQueue
from gateway.payout_book import PayoutBook
from gateway.pg_store import PostgresLogStore
from tests.pg import PostgresCluster

TABLE_KINDS = ("file", "postgresql")


@dataclass
class DutyTables:
    """Opens (and reopens) a duty's tables of one kind; the same data each time."""

    kind: str
    workdir: Path
    cluster: PostgresCluster | None = None
    dbname: str = ""
    _stores: list[PostgresLogStore] = field(default_factory=list)

    def sequencer_store(self) -> PostgresLogStore:
        """A new shared store of the database that holds the sequencer lock."""
        assert self.cluster is not None
        store = PostgresLogStore(self.cluster.dsn(self.dbname), self.cluster.password,
                                 shared=True)
        self._stores.append(store)
        assert store.lead(), "another store of this test holds the sequencer lock"
        return store

    def anchor_queue(self) -> AnchorQueue:
        """The anchor queue; on PostgreSQL through a new session (the old one closed), as a
        restarted or new sequencer opens it."""
        if self.kind == "file":
            return AnchorQueue.in_file(self.workdir / "anchor-ethereum.sqlite")
        self.close()
        return AnchorQueue.in_store(self.sequencer_store())

    def payout_book(self) -> PayoutBook:
        """The payout book, opened like :meth:`anchor_queue`."""
        if self.kind == "file":
            return PayoutBook.in_file(self.workdir / "payout.sqlite")
        self.close()
        return PayoutBook.in_store(self.sequencer_store())

    def close(self) -> None:
        """Close the stores opened so far (their sessions end, and the lock with them)."""
        for store in self._stores:
            store.close()
        self._stores.clear()


def duty_tables_for(request: pytest.FixtureRequest, kind: str, workdir: Path) -> DutyTables:
    """The tables of ``kind``; PostgreSQL gets a fresh database of the session's cluster."""
    if kind == "file":
        return DutyTables(kind, workdir)
    return DutyTables(kind, workdir, request.getfixturevalue("postgres"),
                      request.getfixturevalue("pg_database"))
