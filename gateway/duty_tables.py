"""Where the sequencer's chain duties keep their state: one SQLite file, or the shared store.

The Ethereum anchor's queue (:mod:`gateway.eth_queue`) and the payout book
(:mod:`gateway.payout_book`) each write their SQL once, with ``?`` placeholders and standard
SQL both SQLite (3.35+: ``ON CONFLICT``, ``RETURNING``) and PostgreSQL accept, and run it
through :class:`Tables`:

- :class:`FileTables`: a SQLite file in the gateway's data directory (WAL,
  ``synchronous=FULL``, mode 0600), for a gateway that runs alone, as before;
- :class:`StoreTables`: tables of the shared PostgreSQL database, in a PostgreSQL schema of
  their own (``eth_anchor``, ``payout``) so their names never meet the log's (both have an
  ``anchors`` table). Writes run on the log's writer session and are fenced like the log's
  (:class:`gateway.store.NotSequencer` unless this process holds the sequencer lock), so a
  deposed sequencer can neither persist nor, therefore, broadcast a transaction (both
  duties persist a signed transaction before they broadcast it). Reads run on any process,
  so every process's API serves anchors, epochs and wallets (docs/SCALING.md).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, TypeVar, runtime_checkable

from gateway.doc_sql import Run
from gateway.sqlite_store import GATEWAY_PRAGMAS
from osutil.sqlite import connect, transaction, translated
from protocol.errors import ConfigError, StorageError

_T = TypeVar("_T")


class Tables(Protocol):
    """A duty's tables; every method raises StorageError (NotSequencer: not the sequencer)."""

    def read(self, what: str, query: Callable[[Run], _T]) -> _T:
        """Run ``query`` (reads only) and return what it returns."""
        ...

    def write(self, what: str, change: Callable[[Run], _T]) -> _T:
        """Run ``change`` in one transaction (rolled back if it raises); return its result."""
        ...

    def close(self) -> None:
        """Let go of the tables (a file is closed; the shared store stays open)."""
        ...


class FileTables:
    """A duty's tables in one SQLite file (a gateway alone)."""

    def __init__(self, path: Path, schema: str) -> None:
        """Open (creating if needed) ``path`` with ``schema``; raise StorageError."""
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"{path}: open failed: {exc.strerror or exc}") from None
        # FULL: a transaction we signed must never be forgotten (PITFALLS.md, SQLite).
        self._conn = connect(path, schema, GATEWAY_PRAGMAS)
        self._lock = threading.Lock()

    def _run(self, sql: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
        return list(self._conn.execute(sql, params).fetchall())

    def read(self, what: str, query: Callable[[Run], _T]) -> _T:
        with self._lock, translated(f"{self.path}: {what} failed"):
            return query(self._run)

    def write(self, what: str, change: Callable[[Run], _T]) -> _T:
        with self._lock, transaction(self._conn, f"{self.path}: {what} failed"):
            return change(self._run)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


@runtime_checkable
class NamespacedStore(Protocol):
    """A log store that keeps other tables beside the log (gateway.pg_store)."""

    def create_namespace(self, namespace: str, schema: str) -> None: ...

    def read_in(self, namespace: str, what: str, query: Callable[[Run], _T]) -> _T: ...

    def write_in(self, namespace: str, what: str, change: Callable[[Run], _T]) -> _T: ...


def shared_store(store: object) -> NamespacedStore:
    """``store`` as the home of a shared log's duty tables; ConfigError if it cannot be one
    (only PostgreSQL can, and the configuration refuses ``shared`` with SQLite already)."""
    if not isinstance(store, NamespacedStore):
        raise ConfigError("store.shared needs backend = \"postgresql\"")
    return store


class StoreTables:
    """A duty's tables in the shared PostgreSQL store, in their own PostgreSQL schema."""

    def __init__(self, store: NamespacedStore, namespace: str, schema: str) -> None:
        """Create the tables if needed (any process may); raise StorageError."""
        self._store, self.namespace = store, namespace
        store.create_namespace(namespace, schema)

    def read(self, what: str, query: Callable[[Run], _T]) -> _T:
        return self._store.read_in(self.namespace, what, query)

    def write(self, what: str, change: Callable[[Run], _T]) -> _T:
        return self._store.write_in(self.namespace, what, change)

    def close(self) -> None:
        """Nothing: the store is the gateway's, closed with it."""


class OnTables:
    """A duty's state (the anchor queue, the payout book) over :class:`Tables`, opened in
    a file of its own or in the shared store; subclasses name their PostgreSQL schema and
    give their tables' DDL, with ``{blob}`` and ``{integer}`` for the column types."""

    NAMESPACE: ClassVar[str]
    DDL: ClassVar[str]

    def __init__(self, tables: Tables) -> None:
        self._tables = tables

    @classmethod
    def schema(cls, blob: str, integer: str) -> str:
        """The tables, with the database's names for byte strings and 64-bit integers."""
        return cls.DDL.format(blob=blob, integer=integer)

    @classmethod
    def in_file(cls, path: Path) -> Self:
        """For a gateway alone: one SQLite file at ``path`` (created if needed)."""
        return cls(FileTables(path, cls.schema("BLOB", "INTEGER")))

    @classmethod
    def in_store(cls, store: NamespacedStore) -> Self:
        """For a shared log: tables of its PostgreSQL database (created if needed)."""
        return cls(StoreTables(store, cls.NAMESPACE, cls.schema("bytea", "bigint")))

    def close(self) -> None:
        """Let go of the tables (a file is closed; the shared store stays open)."""
        self._tables.close()


def optional_int(value: Any) -> int | None:
    """A nullable integer column's value (both databases' rows are untyped)."""
    return None if value is None else int(value)
