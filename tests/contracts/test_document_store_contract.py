"""The log store contract for signed documents, recipients and owner keys: every
:class:`gateway.store.LogStore` (the ``STORES`` of the log store contract) must pass it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.store import LogStore, NewDocument, RecipientExists
from protocol import merkle
from protocol.errors import StorageError
from tests.contracts.test_log_store_contract import STORES, Reopenable, append, leaf


@pytest.fixture(params=STORES)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Reopenable]:
    under_test = Reopenable(request.param(request, tmp_path))
    try:
        yield under_test
    finally:
        under_test.store.close()


OWNER = b"o" * 32
DEV_A, DEV_B = b"a" * 16, b"b" * 16


def doc(n: int, doc_type: str = "consent", devices: tuple[bytes, ...] = (DEV_A,),
        ref: bytes | None = None, counter: int = 0, signer: bytes = OWNER) -> NewDocument:
    raw = f"document {n}".encode()
    return NewDocument(hashlib.sha256(raw).digest(), doc_type, signer, raw, ref, counter,
                       devices, 5000 + n)


def log_docs(store: LogStore, *docs: NewDocument) -> list[int]:
    with store.transaction() as tx:
        return [tx.append_document(d) for d in docs]


def test_documents_are_leaves_of_the_same_tree_with_their_exact_bytes(db: Reopenable) -> None:
    append(db.store, leaf(0))
    first, second = doc(1, "request", devices=()), doc(2, ref=b"r" * 32)
    assert log_docs(db.store, first, second) == [1, 2]
    append(db.store, leaf(3, seq=1))
    reopened = db.reopen()
    hashes = [merkle.leaf_hash(x) for x in (leaf(0).raw, first.raw, second.raw,
                                             leaf(3, seq=1).raw)]
    assert reopened.root(4) == merkle.root(hashes)
    got = reopened.document(second.doc_id)
    assert got is not None
    assert (got.index, got.type, got.raw, got.ref, got.signer) == (2, "consent", second.raw,
                                                                  b"r" * 32, OWNER)
    logged = reopened.leaf(1)
    assert logged is not None
    assert logged.raw == first.raw
    # A document never shows up among a device's records.
    assert [x.seq for x in reopened.device_records(b"d" * 16, -1, 10)] == [0, 1]


def test_documents_list_by_type_and_page_and_by_device(db: Reopenable) -> None:
    store = db.store
    log_docs(store, doc(0, "request", devices=(DEV_A, DEV_B)), doc(1),
             doc(2, devices=(DEV_B,)), doc(3, "revocation", counter=1))
    assert [d.index for d in store.documents(None, -1, 10)] == [0, 1, 2, 3]
    assert [d.index for d in store.documents("consent", -1, 10)] == [1, 2]
    assert [d.index for d in store.documents("consent", 1, 10)] == [2]
    assert [d.index for d in store.documents(None, 0, 2)] == [1, 2]
    # Delivery: consents and revocations only, from an index on.
    assert [d.index for d in store.device_documents(DEV_A, 0, 10)] == [1, 3]
    assert [d.index for d in store.device_documents(DEV_A, 2, 10)] == [3]
    assert [d.index for d in store.device_documents(DEV_B, 0, 10)] == [2]


def test_a_lapse_notice_is_delivered_to_the_devices_of_its_consent(db: Reopenable) -> None:
    store = db.store  # PROTOCOL.md §19.4: the gateway's notice names the consent's devices
    log_docs(store, doc(0), doc(1, "lapse", devices=(DEV_A,), signer=b"g" * 32),
             doc(2, "payout_epoch", devices=(DEV_A,), signer=b"g" * 32))
    assert [(d.index, d.type) for d in store.device_documents(DEV_A, 0, 10)] == [
        (0, "consent"), (1, "lapse")]
    assert store.device_documents(DEV_B, 0, 10) == []


def test_transaction_sees_its_documents_counters_and_streams(db: Reopenable) -> None:
    store = db.store
    with store.transaction() as tx:
        assert tx.last_counter(OWNER) == 0
        tx.append_document(doc(0, "revocation", counter=4))
        tx.append_document(doc(1, "revocation", counter=7))
        tx.append_document(doc(2, "revocation", counter=9, signer=b"x" * 32))
        assert tx.last_counter(OWNER) == 7
        assert tx.document(doc(1).doc_id) is not None
        tx.append(leaf(5, device=DEV_A))
        assert tx.device_streams(DEV_A) == frozenset({"s"})
    assert store.counts()["documents_revocation"] == 3


def test_failed_transaction_logs_no_document(db: Reopenable) -> None:
    store = db.store
    def same_document_twice() -> None:
        with store.transaction() as tx:
            tx.append_document(doc(0))
            tx.append_document(doc(0))

    with pytest.raises(StorageError):
        same_document_twice()
    assert store.size() == 0
    assert store.document(doc(0).doc_id) is None
    assert log_docs(store, doc(0)) == [0]


def test_recipients_register_once_per_name_and_key(db: Reopenable) -> None:
    store = db.store
    entry = store.register_recipient("acme", b"s" * 32, b"x" * 32, 7)
    assert store.recipients() == [entry]
    for name, signing, sealing in (("acme", b"t" * 32, b"y" * 32), ("b", b"s" * 32, b"y" * 32),
                                   ("c", b"u" * 32, b"x" * 32)):
        with pytest.raises(RecipientExists):
            store.register_recipient(name, signing, sealing, 8)
    assert store.counts()["recipients"] == 1


def test_device_pins_its_owner_keys_and_old_style_devices_have_none(db: Reopenable) -> None:
    db.store.register_device("new", b"k" * 32, "olga", 0, 1, owner_key=OWNER,
                             owner_sealing_key=b"z" * 32)
    db.store.register_device("old", b"l" * 32, "legacy", 0, 1)
    new, old = sorted(db.reopen().devices(), key=lambda d: d.name)
    assert (new.owner_key, new.owner_sealing_key) == (OWNER, b"z" * 32)
    assert (old.owner_key, old.owner_sealing_key) == (None, None)


def test_owner_devices_are_one_owners_devices_paged_by_name_bytes(db: Reopenable) -> None:
    other = b"p" * 32
    names = [f"dev-{i:02d}" for i in range(12)] + ["Zed", "alpha", "zoë"]
    for i, name in enumerate(names):
        db.store.register_device(name, bytes([i]) * 32, "olga", 0, 1, owner_key=OWNER,
                                 owner_sealing_key=b"z" * 32)
    db.store.register_device("b-other", b"\xf0" * 32, "pat", 0, 1, owner_key=other,
                             owner_sealing_key=b"z" * 32)
    db.store.register_device("c-none", b"\xf1" * 32, "legacy", 0, 1)  # no owner key
    store = db.reopen()
    seen: list[str] = []
    after = ""
    while page := store.owner_devices(OWNER, after, 4):
        assert len(page) <= 4
        assert {d.owner_key for d in page} == {OWNER}
        seen += [d.name for d in page]
        after = page[-1].name
    assert seen == sorted(names, key=lambda n: n.encode())
    assert [d.name for d in store.owner_devices(other)] == ["b-other"]
    assert store.owner_devices(b"q" * 32) == []
    assert [d.name for d in store.owner_devices(OWNER, "dev-10", 100)] == ["dev-11", "zoë"]


def test_quality_attestation_is_found_by_signer_type_and_window_slot(db: Reopenable) -> None:
    slot, other_slot = b"s" * 32, b"t" * 32
    with db.store.transaction() as tx:
        assert tx.document_by_ref(OWNER, "quality", slot) is None
        tx.append_document(doc(1, "quality", ref=slot))
        found = tx.document_by_ref(OWNER, "quality", slot)  # seen inside its transaction
        assert found is not None
        assert found.index == 0
    with db.reopen().transaction() as tx:
        assert tx.document_by_ref(OWNER, "quality", other_slot) is None
        assert tx.document_by_ref(b"x" * 32, "quality", slot) is None  # another validator
        assert tx.document_by_ref(OWNER, "consent", slot) is None
        found = tx.document_by_ref(OWNER, "quality", slot)
        assert found is not None
        assert found.doc_id == doc(1, "quality", ref=slot).doc_id
