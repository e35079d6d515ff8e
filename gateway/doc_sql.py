"""The SQL of documents, recipients and device streams, shared by both log stores.

Statements are written once with ``?`` placeholders and standard SQL both SQLite (3.24+)
and PostgreSQL accept (``ON CONFLICT DO NOTHING``); each store runs them through a
:data:`Run` function over its own connection (PostgreSQL's turns ``?`` into ``%s``).

A document is a leaf like a record (``leaves`` holds its exact bytes, under the signer id
with seq ``-1 - index`` and stream ``document/<type>``); ``documents`` indexes it by id,
type, signer, reference and counter, and ``document_devices`` by the devices it concerns
(consents, revocations, quality attestations and lapse notices, for delivery).
``device_streams`` is every (device, stream) that has a logged record, kept up to date as
leaves are flushed: a consent may only grant streams a device has.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

from gateway.store import NewDocument, NewLeaf, RecipientEntry, StoredDocument
from protocol import merkle
from protocol.keys import signer_id

Run = Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]
DOCUMENT_STREAM_PREFIX = "document/"
DELIVERED_TYPES = ("consent", "revocation", "quality", "lapse")


def schema(blob: str, integer: str) -> str:
    """The CREATE statements, with the store's byte-string and 64-bit integer type names."""
    return f"""
CREATE TABLE IF NOT EXISTS documents (
    idx {integer} PRIMARY KEY, doc_id {blob} NOT NULL UNIQUE, type text NOT NULL,
    signer {blob} NOT NULL, ref {blob}, counter {integer} NOT NULL,
    received_ms {integer} NOT NULL);
CREATE INDEX IF NOT EXISTS documents_by_type ON documents (type, idx);
CREATE INDEX IF NOT EXISTS documents_by_signer ON documents (signer, type, counter);
CREATE INDEX IF NOT EXISTS documents_by_ref ON documents (signer, type, ref);
CREATE TABLE IF NOT EXISTS document_devices (
    device_id {blob} NOT NULL, idx {integer} NOT NULL, PRIMARY KEY (device_id, idx));
CREATE TABLE IF NOT EXISTS device_streams (
    device_id {blob} NOT NULL, stream text NOT NULL, PRIMARY KEY (device_id, stream));
CREATE TABLE IF NOT EXISTS recipients (
    signing_key {blob} PRIMARY KEY, name text NOT NULL UNIQUE,
    sealing_key {blob} NOT NULL UNIQUE, registered_ms {integer} NOT NULL);
"""


# Fill device_streams from the leaves logged before it existed (once: see fill_streams).
_FILL_STREAMS = ("INSERT INTO device_streams SELECT DISTINCT device_id, stream FROM leaves "
                 "WHERE seq >= 0 ON CONFLICT DO NOTHING")


def fill_streams_once(run: Run) -> None:
    """Index the streams of leaves logged before this gateway version (first open only)."""
    if run("SELECT 1 FROM meta WHERE key = 'device_streams'", ()):
        return
    run(_FILL_STREAMS, ())
    run("INSERT INTO meta VALUES ('device_streams', '1') ON CONFLICT DO NOTHING", ())


def note_streams(run: Run, leaf_rows: Iterable[tuple[object, ...]]) -> None:
    """Record the (device, stream) pairs of flushed leaf rows (records only)."""
    pairs = {(row[1], row[6]) for row in leaf_rows if isinstance(row[2], int) and row[2] >= 0}
    for device_id, stream in pairs:
        run("INSERT INTO device_streams VALUES (?, ?) ON CONFLICT DO NOTHING",
            (device_id, stream))


def document_leaf(doc: NewDocument, index: int) -> NewLeaf:
    """The leaves-table row of a document appended at ``index``."""
    return NewLeaf(device_id=signer_id(doc.signer), seq=-1 - index, record_hash=doc.doc_id,
                   prev=bytes(32), raw=doc.raw, stream=DOCUMENT_STREAM_PREFIX + doc.type,
                   received_ms=doc.received_ms)


def index_document(run: Run, doc: NewDocument, index: int) -> None:
    """Insert the document's index rows (its leaf is appended by the caller)."""
    run("INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?, ?)",
        (index, doc.doc_id, doc.type, doc.signer, doc.ref, doc.counter, doc.received_ms))
    for device_id in sorted(set(doc.devices)):
        run("INSERT INTO document_devices VALUES (?, ?) ON CONFLICT DO NOTHING",
            (device_id, index))


class DocumentMethods:
    """The document methods of a store's transaction (:class:`gateway.store.LogTransaction`),
    written once for both stores; a store's transaction provides the four hooks."""

    _tree: merkle.CompactRange

    def flush(self) -> None:
        raise NotImplementedError

    def append(self, leaf: NewLeaf) -> int:
        raise NotImplementedError

    def _run(self) -> Run:
        raise NotImplementedError

    def _errors(self, what: str) -> AbstractContextManager[None]:
        raise NotImplementedError

    def document(self, doc_id: bytes) -> StoredDocument | None:
        self.flush()  # it may have been appended in this transaction
        with self._errors("read document"):
            return document(self._run(), doc_id)

    def last_counter(self, signer: bytes) -> int:
        with self._errors("read counter"):
            return last_counter(self._run(), signer)

    def document_by_ref(self, signer: bytes, doc_type: str, ref: bytes
                        ) -> StoredDocument | None:
        self.flush()  # it may have been appended in this transaction
        with self._errors("read document"):
            return document_by_ref(self._run(), signer, doc_type, ref)

    def device_streams(self, device_id: bytes) -> frozenset[str]:
        self.flush()
        with self._errors("read streams"):
            return device_streams(self._run(), device_id)

    def append_document(self, doc: NewDocument) -> int:
        index = self.append(document_leaf(doc, self._tree.size))
        with self._errors("index document"):
            index_document(self._run(), doc, index)
        return index


_SELECT = ("SELECT d.idx, d.doc_id, d.type, d.signer, l.raw, d.ref, d.counter, d.received_ms "
           "FROM documents d JOIN leaves l ON l.idx = d.idx ")


def _stored(row: tuple[Any, ...]) -> StoredDocument:
    idx, doc_id, doc_type, signer, raw, ref, counter, received = row
    return StoredDocument(int(idx), bytes(doc_id), str(doc_type), bytes(signer), bytes(raw),
                          None if ref is None else bytes(ref), int(counter), int(received))


def document(run: Run, doc_id: bytes) -> StoredDocument | None:
    rows = run(_SELECT + "WHERE d.doc_id = ?", (doc_id,))
    return _stored(rows[0]) if rows else None


def documents(run: Run, doc_type: str | None, after_index: int,
              limit: int) -> list[StoredDocument]:
    if doc_type is None:
        rows = run(_SELECT + "WHERE d.idx > ? ORDER BY d.idx LIMIT ?", (after_index, limit))
    else:
        rows = run(_SELECT + "WHERE d.type = ? AND d.idx > ? ORDER BY d.idx LIMIT ?",
                   (doc_type, after_index, limit))
    return [_stored(r) for r in rows]


def device_documents(run: Run, device_id: bytes, from_index: int,
                     limit: int) -> list[StoredDocument]:
    rows = run(_SELECT + "JOIN document_devices dd ON dd.idx = d.idx "
               "WHERE dd.device_id = ? AND dd.idx >= ? AND d.type IN (?, ?, ?, ?) "
               "ORDER BY d.idx LIMIT ?", (device_id, from_index, *DELIVERED_TYPES, limit))
    return [_stored(r) for r in rows]


def document_by_ref(run: Run, signer: bytes, doc_type: str, ref: bytes
                    ) -> StoredDocument | None:
    rows = run(_SELECT + "WHERE d.signer = ? AND d.type = ? AND d.ref = ? ORDER BY d.idx "
               "LIMIT 1", (signer, doc_type, ref))
    return _stored(rows[0]) if rows else None


def last_counter(run: Run, signer: bytes) -> int:
    rows = run("SELECT MAX(counter) FROM documents WHERE signer = ? AND type = 'revocation'",
               (signer,))
    return int(rows[0][0]) if rows and rows[0][0] is not None else 0


def device_streams(run: Run, device_id: bytes) -> frozenset[str]:
    return frozenset(str(r[0]) for r in
                     run("SELECT stream FROM device_streams WHERE device_id = ?", (device_id,)))


def _recipient(row: tuple[Any, ...]) -> RecipientEntry:
    return RecipientEntry(str(row[0]), bytes(row[1]), bytes(row[2]), int(row[3]))


def recipient_clash(run: Run, name: str, signing_key: bytes, sealing_key: bytes) -> str | None:
    """Why a recipient cannot be registered (name or a key taken), or None."""
    rows = run("SELECT name FROM recipients WHERE name = ? OR signing_key = ? OR "
               "sealing_key = ?", (name, signing_key, sealing_key))
    return None if not rows else f"recipient {rows[0][0]!r} holds this name or a key"


def add_recipient(run: Run, entry: RecipientEntry) -> None:
    run("INSERT INTO recipients (name, signing_key, sealing_key, registered_ms) "
        "VALUES (?, ?, ?, ?)",
        (entry.name, entry.signing_key, entry.sealing_key, entry.registered_ms))


def recipients(run: Run) -> list[RecipientEntry]:
    return [_recipient(r) for r in
            run("SELECT name, signing_key, sealing_key, registered_ms FROM recipients "
                "ORDER BY name", ())]


def document_counts(run: Run) -> dict[str, int]:
    """Counts for /v1/stats: logged documents by type, and registered recipients."""
    out = {f"documents_{t}": 0 for t in ("request", "consent", "revocation", "quality")}
    for doc_type, n in run("SELECT type, COUNT(*) FROM documents GROUP BY type", ()):
        out[f"documents_{doc_type}"] = int(n)
    out["recipients"] = int(run("SELECT COUNT(*) FROM recipients", ())[0][0])
    return out
