"""Both log stores behind one fixture: the same tests run against SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.pg_store import PostgresLogStore
from gateway.sqlite_store import SQLiteLogStore
from gateway.store import LogStore
from tests.pg import PostgresCluster

STORE_KINDS = ("sqlite", "postgresql")


@dataclass
class StoreFactory:
    """Opens (and reopens) one store of one kind; lets a test rewrite it behind its back."""

    kind: str
    sqlite_path: Path | None = None
    cluster: PostgresCluster | None = None
    dbname: str = ""

    def open(self) -> LogStore:
        """Open the store (the same database each time)."""
        if self.sqlite_path is not None:
            return SQLiteLogStore(self.sqlite_path)
        assert self.cluster is not None
        return PostgresLogStore(self.cluster.dsn(self.dbname), self.cluster.password)

    def set_node_hash(self, level: int, index: int, value: bytes) -> None:
        """Overwrite a stored tree node, as someone rewriting history under the gateway."""
        if self.sqlite_path is not None:
            with sqlite3.connect(self.sqlite_path) as conn:
                conn.execute("UPDATE nodes SET hash = ? WHERE level = ? AND idx = ?",
                             (value, level, index))
            return
        assert self.cluster is not None
        self.cluster.execute_as_admin(
            self.dbname, "UPDATE nodes SET hash = %s WHERE level = %s AND idx = %s",
            (value, level, index))


    def run(self, query: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        """Run one SQL statement on the store's database behind its back (``?`` placeholders
        on SQLite, ``%s`` on PostgreSQL: write the query with ``?``); return its rows."""
        if self.sqlite_path is not None:
            with sqlite3.connect(self.sqlite_path) as conn:
                return conn.execute(query, params).fetchall()
        assert self.cluster is not None
        return self.cluster.execute_as_admin(self.dbname, query.replace("?", "%s"), params)


def store_factory_for(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> StoreFactory:
    """A factory for ``kind``; PostgreSQL gets a fresh database of the session's cluster."""
    if kind == "sqlite":
        return StoreFactory(kind, sqlite_path=tmp_path / "log.sqlite")
    cluster: PostgresCluster = request.getfixturevalue("postgres")
    return StoreFactory(kind, cluster=cluster, dbname=request.getfixturevalue("pg_database"))
