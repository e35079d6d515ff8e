"""The gateway's document desk and courier on a real SQLite store with an injected clock:
expiry, a store from before owners had keys, and the bounds of policy delivery."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from gateway.contracts import DocumentDesk, DocumentRefused
from gateway.courier import PolicyCourier
from gateway.metrics import GatewayMetrics
from gateway.sqlite_store import SQLiteLogStore
from gateway.store import NewLeaf, StoredDocument
from protocol.contract import Consent, DataRequest, Lapse, Revocation, Terms
from protocol.delivery import PolicyDelivery
from protocol.documents import sign_document
from protocol.keys import OwnerKey, RecipientKey, SigningKey
from protocol.payout_notice import PayoutNotice
from protocol.reasons import DocumentReason
from rewards.documents import PayoutEpoch, WalletBinding
from tests.harness.waiting import eventually

VECTORS = Path(__file__).resolve().parents[1] / "vectors"

HOUR = 3_600_000
T0 = 1_800_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def _setup(tmp_path: Path) -> tuple[SQLiteLogStore, Clock, DocumentDesk, OwnerKey, SigningKey,
                                    bytes, bytes]:
    store = SQLiteLogStore(tmp_path / "log.sqlite")
    owner, buyer, sealing = OwnerKey.generate(), SigningKey.generate(), RecipientKey.generate()
    device = store.register_device("d", SigningKey.generate().public_key, "o", 0, T0,
                                   owner_key=owner.public_key,
                                   owner_sealing_key=owner.sealing_public_key)
    with store.transaction() as tx:
        tx.append(NewLeaf(device.device_id, 0, bytes(32), bytes(32), b"r0", "climate", T0))
    store.register_recipient("acme", buyer.public_key, sealing.public_key, T0)
    clock = Clock()
    desk = DocumentDesk(store, GatewayMetrics(), clock)
    return store, clock, desk, owner, buyer, device.device_id, sealing.public_key


def test_consent_for_a_request_that_has_expired_is_refused(tmp_path: Path) -> None:
    store, clock, desk, owner, buyer, device_id, sealing = _setup(tmp_path)
    terms = Terms((("climate", ("Cel",)),), 60, T0, T0 + HOUR)
    request = sign_document(DataRequest(sealing, (device_id,), (), terms, "p", 0), buyer, T0)
    desk.submit(request.raw)
    consent = sign_document(Consent(request.id, sealing, (device_id,), terms), owner.signing,
                            T0)
    clock.now = T0 + HOUR  # the request's period is over
    size = store.size()
    with pytest.raises(DocumentRefused) as exc:
        desk.submit(consent.raw)
    assert exc.value.reason is DocumentReason.REQUEST_EXPIRED
    assert store.size() == size
    clock.now = T0 + 2 * HOUR
    late = sign_document(DataRequest(sealing, (device_id,), (), terms, "q", 0), buyer, T0)
    with pytest.raises(DocumentRefused) as exc:
        desk.submit(late.raw)
    assert exc.value.reason is DocumentReason.REQUEST_EXPIRED
    store.close()


def test_store_made_before_owners_had_keys_opens_and_keeps_its_devices(tmp_path: Path) -> None:
    store, *_ = _setup(tmp_path)
    store.close()
    path = tmp_path / "log.sqlite"
    with sqlite3.connect(path) as conn:  # as the previous version left it
        conn.execute("DROP INDEX devices_by_owner_key")  # the index came with the column
        conn.execute("ALTER TABLE devices DROP COLUMN owner_key")
        conn.execute("ALTER TABLE devices DROP COLUMN owner_sealing_key")
        conn.execute("DROP TABLE device_streams")
        conn.execute("DELETE FROM meta WHERE key = 'device_streams'")
    reopened = SQLiteLogStore(path)
    [device] = reopened.devices()
    assert device.owner_key is None  # nobody can consent for it until it is enrolled again
    with reopened.transaction() as tx:
        assert tx.device_streams(device.device_id) == frozenset({"climate"})
    reopened.close()


def courier_for(store: SQLiteLogStore, **options: int
                ) -> tuple[PolicyCourier, list[tuple[str, bytes]], GatewayMetrics]:
    """A courier on ``store`` whose answers land in the list it returns."""
    metrics = GatewayMetrics()
    sent: list[tuple[str, bytes]] = []
    courier = PolicyCourier(store, lambda t, p: sent.append((t, p)) is None, metrics,
                            lambda: 0.0, **options)
    return courier, sent, metrics


def test_courier_bounds_pending_syncs_and_answers_a_flood_once(tmp_path: Path) -> None:
    store, *_, device_id, _ = _setup(tmp_path)
    courier, sent, metrics = courier_for(store, max_pending=2)
    for _ in range(100):  # one device asking again and again: one pending answer
        courier.sync(device_id, 0)
    courier.sync(b"x" * 16, 0)
    courier.sync(b"y" * 16, 0)  # a third device does not fit
    dropped = metrics.registry.get_sample_value(
        "edgeproof_gateway_policy_syncs_dropped_total", {"reason": "queue_full"})
    assert dropped == 1
    courier.start()
    try:  # wait until both pending devices are answered
        eventually(lambda: len(sent) >= 2, "the courier's answers", 10, every_s=0.01)
    finally:
        courier.stop()
    assert len(sent) == 2
    assert all(PolicyDelivery.from_cbor(p).complete for _, p in sent)
    store.close()


def test_a_sync_from_past_the_log_is_answered_and_the_courier_serves_the_next_device(
        tmp_path: Path) -> None:
    # Before: PolicySync(2^64 - 1) reached SQLite as an index, raised OverflowError and
    # ended the courier's thread: no device got its documents until a restart.
    store, *_, device_id, _ = _setup(tmp_path)
    courier, sent, _ = courier_for(store)
    courier.start()
    try:
        courier.sync(b"z" * 16, 2**64 - 1)
        eventually(lambda: len(sent) >= 1, "the answer to a sync from past the log", 10,
                   every_s=0.01)
        courier.sync(device_id, 0)
        eventually(lambda: len(sent) >= 2, "the next device's answer", 10, every_s=0.01)
    finally:
        courier.stop()
    assert all(PolicyDelivery.from_cbor(p).complete for _, p in sent)
    store.close()


def test_a_fault_in_one_answer_is_counted_and_the_courier_goes_on(tmp_path: Path) -> None:
    store, *_, device_id, _ = _setup(tmp_path)
    courier, sent, metrics = courier_for(store)
    real = store.device_documents
    failing = {b"f" * 16}

    def documents(device: bytes, start: int, limit: int) -> list[StoredDocument]:
        if device in failing:
            raise OverflowError("a bug below the courier")
        return real(device, start, limit)

    store.device_documents = documents  # type: ignore[method-assign]
    courier.start()
    try:
        courier.sync(b"f" * 16, 0)
        eventually(lambda: metrics.registry.get_sample_value(
            "edgeproof_gateway_policy_syncs_dropped_total", {"reason": "error"}) == 1,
            "the fault counted", 10, every_s=0.01)
        courier.sync(device_id, 0)
        eventually(lambda: len(sent) >= 1, "the next device's answer", 10, every_s=0.01)
    finally:
        courier.stop()
    store.close()


def count_write_transactions(store: SQLiteLogStore) -> list[int]:
    """A list that grows by one each time the store's write transaction is opened."""
    opened: list[int] = []
    real = store.transaction

    def counting() -> object:
        opened.append(1)
        return real()

    store.transaction = counting  # type: ignore[method-assign]
    return opened


def test_documents_from_strangers_never_take_the_logs_write_lock(tmp_path: Path) -> None:
    store, _, desk, _, buyer, device_id, sealing = _setup(tmp_path)
    opened = count_write_transactions(store)
    stranger = SigningKey.generate()
    terms = Terms((("climate", ("Cel",)),), 60, T0, T0 + HOUR)
    request = sign_document(DataRequest(sealing, (device_id,), (), terms, "p", 0), buyer, T0)
    desk.submit(request.raw)
    assert len(opened) == 1
    floods = [
        sign_document(DataRequest(sealing, (device_id,), (), terms, "p", 0), stranger, T0),
        sign_document(Consent(request.id, sealing, (device_id,), terms), stranger, T0),
    ]
    for doc in floods * 20:
        with pytest.raises(DocumentRefused):
            desk.submit(doc.raw)
    assert len(opened) == 1  # refused from committed state, before the write lock
    desk.submit(request.raw)  # the same bytes again: a duplicate, also without the lock
    assert len(opened) == 1
    store.close()


def test_documents_of_types_not_submitted_here_or_from_unknown_validators_never_take_the_lock(
        tmp_path: Path) -> None:
    # Before: only requests, consents and revocations were checked before the write lock;
    # a stranger's quality attestation, lapse, payout notice, wallet or epoch took it.
    store, _, desk, owner, buyer, device_id, sealing = _setup(tmp_path)
    terms = Terms((("climate", ("Cel",)),), 60, T0, T0 + HOUR)
    request = sign_document(DataRequest(sealing, (device_id,), (), terms, "p", 0), buyer, T0)
    consent = sign_document(Consent(request.id, sealing, (device_id,), terms), owner.signing, T0)
    desk.submit(request.raw)
    desk.submit(consent.raw)
    opened = count_write_transactions(store)
    stranger = SigningKey.generate()
    address = bytes(range(20))
    quality = json.loads((VECTORS / "quality.json").read_text())["cose_sign1"]
    cases = [
        (bytes.fromhex(quality), DocumentReason.UNKNOWN_SIGNER),
        (sign_document(Lapse(consent.raw, request.id, 41, 7, 1337, address), stranger,
                       T0).raw, DocumentReason.WRONG_TYPE),
        (sign_document(PayoutNotice(owner.owner_id, 1, address, 5, None, 1337, address,
                                    bytes(32)), stranger, T0).raw, DocumentReason.WRONG_TYPE),
        (sign_document(WalletBinding(owner.owner_id, address, 1337), owner.signing, T0).raw,
         DocumentReason.WRONG_TYPE),
        (sign_document(PayoutEpoch(1, 2, bytes(32), bytes(32), 5, 1, 0, 1337, address, 1, 1),
                       stranger, T0).raw, DocumentReason.WRONG_TYPE),
        # the owner's own revocation, with a uint64 counter the log's columns cannot hold
        # (a 500 on SQLite, a 503 on PostgreSQL before)
        (sign_document(Revocation(consent.id, 2**64 - 1, "owner"), owner.signing, T0).raw,
         DocumentReason.MALFORMED),
    ]
    size = store.size()
    for raw, reason in cases:
        with pytest.raises(DocumentRefused) as refused:
            desk.submit(raw)
        assert refused.value.reason == reason
    assert opened == []
    assert store.size() == size
    store.close()


def test_consent_for_a_device_enrolled_without_an_owner_key_is_refused(tmp_path: Path) -> None:
    store, _, desk, owner, buyer, device_id, sealing = _setup(tmp_path)
    legacy = store.register_device("old", SigningKey.generate().public_key, "o", 0, T0)
    with store.transaction() as tx:
        tx.append(NewLeaf(legacy.device_id, 0, bytes(32), bytes(32), b"l0", "climate", T0))
    terms = Terms((("climate", ("Cel",)),), 60, T0, T0 + HOUR)
    devices = tuple(sorted((device_id, legacy.device_id)))
    request = sign_document(DataRequest(sealing, devices, (), terms, "p", 0), buyer, T0)
    desk.submit(request.raw)
    consent = sign_document(Consent(request.id, sealing, (legacy.device_id,), terms),
                            owner.signing, T0)
    with pytest.raises(DocumentRefused) as exc:
        desk.submit(consent.raw)
    assert exc.value.reason is DocumentReason.NOT_OWNER
    assert "pins no owner key" in exc.value.detail
    store.close()
