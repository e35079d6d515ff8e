"""The consent gating state persisted with each epoch (gateway/payout_gating.py): a
restarted worker reads only the leaves logged after its snapshot and pays exactly what an
uninterrupted one (and the rule from scratch) pays; a snapshot of other settings, of another
log, or that does not decode is never trusted: it is counted and the state is built again
from the whole log. The books are each kind of tables in turn (tests/duty_tables.py); the log
is a real SQLite store whose leaves are appended straight (gating only parses them: they
were verified when logged)."""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from firmware_sim.chain import GanacheNode
from firmware_sim.solidity import Deployment, address_of
from gateway.config import PayoutConfig
from gateway.payout import PayoutWorker
from gateway.payout_book import FAILED, PayoutBook
from gateway.payout_gating import (
    GatingSettings,
    IncrementalGating,
    SnapshotIgnored,
    gate_log,
    restore,
)
from gateway.sqlite_store import SQLiteLogStore
from gateway.store import LogStore, NewDocument, NewLeaf, StoredCheckpoint
from protocol import cbor
from protocol.contract import Consent, Revocation, Terms
from protocol.documents import Document, sign_document
from protocol.errors import MalformedRecord
from protocol.keys import SigningKey, signer_id, write_secret_file
from rewards.documents import BASE_UNITS_PER_MICRO, owner_name
from rewards.gating import UsageLeaf
from rewards.quality import QualityJudge, VerdictLeaf, dump_judge, load_judge
from rewards.tree import DistributionTree
from tests.duty_tables import DutyTables
from tests.gateway.gwkit import TestDevice
from tests.rewards.conftest import KEYS
from tests.rewards.test_consent_gating import random_log
from tests.rewards.test_payout_worker import Clock, bind, checkpoint, owner_key, worker_store

OWNER_A = address_of(KEYS["owner_a"])
VALIDATOR, OTHER_VALIDATOR = b"\x51" * 16, b"\x52" * 16
SETTINGS = GatingSettings(True, (VALIDATOR,), b"\xd1" * 20, 1337)


class GatedLog:
    """An owner's devices, consents to requests and revocations, and the devices' usage
    records, appended to a real store as the gateway logs them."""

    def __init__(self, store: LogStore, owner: SigningKey, devices: int = 2) -> None:
        self.store, self.owner = store, owner
        self.devices = [TestDevice.create(f"tv-{n}", 700 + n) for n in range(devices)]
        for device in self.devices:
            store.register_device(device.name, device.key.public_key,
                                  owner_name(signer_id(owner.public_key)), 3600, 1)
        self.revocations = 0

    def use(self, device: int = 0, used_ms: int = 60_000) -> None:
        tv = self.devices[device]
        prev = tv.prev
        signed = tv.usage(tv.mono_ms, tv.mono_ms + used_ms, used_ms)
        tv.mono_ms += used_ms
        with self.store.transaction() as tx:
            tx.append(NewLeaf(tv.device_id, signed.record.seq, hashlib.sha256(signed.raw).digest(),
                              prev, signed.raw, "usage", 0))

    def consent(self, request: bytes, devices: tuple[int, ...] = (0,)) -> bytes:
        ids = tuple(sorted(self.devices[d].device_id for d in devices))
        doc = sign_document(Consent(request, b"\x0e" * 32, ids,
                                    Terms((("climate", ("Cel",)),), 60, 0, 10**15)),
                            self.owner, len(self.devices) + self.store.size())
        self._log(doc, request, ids)
        return doc.id

    def revoke(self, consent: bytes) -> None:
        self.revocations += 1
        doc = sign_document(Revocation(consent, self.revocations, "done"), self.owner, 1)
        self._log(doc, consent, ())

    def _log(self, doc: Document, ref: bytes, devices: tuple[bytes, ...]) -> None:
        with self.store.transaction() as tx:
            tx.append_document(NewDocument(doc.id, doc.type, doc.signer, doc.raw, ref, 0,
                                           devices, 0))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteLogStore]:
    opened = SQLiteLogStore(tmp_path / "gateway.sqlite")
    yield opened
    opened.close()


def fake_checkpoint(store: LogStore, size: int) -> StoredCheckpoint:
    return StoredCheckpoint(1, size, store.root(size), f"note {size}", 0, b"")


def stored(gating: IncrementalGating, book: PayoutBook, store: LogStore, epoch: int,
           settings: GatingSettings = SETTINGS) -> None:
    """Record an epoch at ``gating``'s size with its snapshot, as the worker does."""
    book.add_epoch(epoch, fake_checkpoint(store, gating.size), b"doc", "{}", 0,
                   gating=gating.snapshot(settings, store))


def loaded(book: PayoutBook, store: LogStore,
           settings: GatingSettings = SETTINGS) -> IncrementalGating:
    held = book.gating_snapshot()
    assert held is not None
    return restore(held[2], settings, store)


# --- the state, stopped and restarted ------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_stopped_and_restarted_at_random_epochs_pays_exactly_the_uninterrupted_epochs(
        seed: int, duty_tables: DutyTables, store: SQLiteLogStore) -> None:
    rng = random.Random(seed)
    log = GatedLog(store, owner_key(seed), devices=3)
    requests = [bytes([r]) * 32 for r in range(1, 4)]
    consents: list[bytes] = []
    funded = dict.fromkeys(requests, 0)
    uninterrupted = IncrementalGating((VALIDATOR,))
    gating = IncrementalGating((VALIDATOR,))
    book = duty_tables.payout_book()
    restarts = 0
    try:
        for epoch in range(1, 13):
            for _ in range(rng.randrange(1, 25)):
                roll = rng.random()
                if roll < 0.15:
                    consents.append(log.consent(rng.choice(requests), tuple(
                        sorted(rng.sample(range(3), rng.randint(1, 3))))))
                elif roll < 0.22 and consents:
                    log.revoke(rng.choice(consents))
                else:
                    log.use(rng.randrange(3), rng.randrange(1, 600_000))
            size = store.size()
            funded = {r: f + rng.choice((0, 0, rng.randrange(200_000))) for r, f in funded.items()}
            if rng.random() < 0.4:  # the gateway stops and starts: the book's snapshot
                book.close()
                book = duty_tables.payout_book()
                held = book.gating_snapshot()  # none before the first epoch
                gating = IncrementalGating((VALIDATOR,)) if held is None else loaded(book, store)
                restarts += 1
            gating.advance(store, size)
            uninterrupted.advance(store, size)
            got = gating.settle(funded)
            assert got == uninterrupted.settle(funded) == gate_log(store, size, funded,
                                                                  (VALIDATOR,))
            stored(gating, book, store, epoch)
            # One state, one byte string: the resumed state is the uninterrupted one.
            assert gating.snapshot(SETTINGS, store) == uninterrupted.snapshot(SETTINGS, store)
        assert restarts > 0
        assert gating.leaves_read < uninterrupted.leaves_read + store.size()
    finally:
        book.close()


@pytest.mark.parametrize("seed", range(5))
def test_trusted_verdicts_survive_a_snapshot_and_withhold_the_same_records(seed: int) -> None:
    rng = random.Random(seed)
    devices = [bytes([d]) * 16 for d in range(3)]
    verdicts = [VerdictLeaf(leaf, rng.choice((VALIDATOR, OTHER_VALIDATOR)),
                            rng.choice(devices), rng.random() < 0.5, rng.randrange(500),
                            rng.randrange(500, 1000))
                for leaf in sorted(rng.sample(range(200), 40))]
    judge = QualityJudge(verdicts, (VALIDATOR,))
    raw = cbor.encode(dump_judge(judge))
    again = load_judge(cbor.decode(raw), (VALIDATOR,), 200)
    assert cbor.encode(dump_judge(again)) == raw
    for event in random_log(rng, 300):
        if isinstance(event, UsageLeaf):
            assert again.withheld(event) == judge.withheld(event)
    with pytest.raises(MalformedRecord, match="bad_snapshot"):
        load_judge(cbor.decode(raw), (OTHER_VALIDATOR,), 200)  # not that validator's


# --- the worker at start ---------------------------------------------------------------------


REGISTRIES: dict[int, CollectorRegistry] = {}


def ignored(worker: PayoutWorker, reason: str) -> float:
    found = REGISTRIES[id(worker)].get_sample_value(
        "edgeproof_gateway_payout_gating_snapshots_ignored_total", {"reason": reason})
    return found or 0.0


def gated_worker(tables: DutyTables, node: GanacheNode, deployed: Deployment,
                 store: SQLiteLogStore, validators: tuple[bytes, ...] = (VALIDATOR,)
                 ) -> PayoutWorker:
    """A consent-gated worker whose book is in ``tables``, stepped by hand."""
    key_file = tables.workdir / "payout-eth.key"
    if not key_file.exists():  # a restarted worker reads the same key
        write_secret_file(key_file, KEYS["gateway"].value.hex().encode())
    config = PayoutConfig(rpc_url=node.url, key_file=key_file, chain_id=node.chain_id,
                          distributor=deployed.distributor, interval_s=0.0,
                          quality_validators=validators)
    registry = CollectorRegistry()
    worker = PayoutWorker(config, store, tables.payout_book(), owner_key(99),
                          wall_ms=Clock().wall_ms, monotonic=Clock().monotonic,
                          registry=registry)
    REGISTRIES[id(worker)] = registry
    worker_store[id(worker)] = store  # where bind() registers a device
    return worker


def first_epoch(tables: DutyTables, chain: GanacheNode, deployed: Deployment,
                store: SQLiteLogStore) -> tuple[GatedLog, bytes, str]:
    """A worker records a consent-gated epoch (and its snapshot) over a funded consent and
    six usage records, then stops; returns the log, the request and the owner's name."""
    owner = owner_key(7)
    log, request = GatedLog(store, owner), b"\x0c" * 32
    company = address_of(KEYS["company"])
    deployed.give(company, 10**24)
    deployed.fund(KEYS["company"], 10**9 * BASE_UNITS_PER_MICRO, request)
    worker = gated_worker(tables, chain, deployed, store)
    name = bind(worker, owner, OWNER_A, chain.chain_id)
    log.consent(request)
    for _ in range(6):
        log.use()
    checkpoint(store, store.size(), {name: 10**9})
    worker.step()
    epoch = worker.book.latest()
    assert epoch is not None
    held = worker.book.gating_snapshot()
    assert held is not None
    assert held[:2] == (epoch.epoch, store.size())  # stored with the epoch it paid
    worker.close()
    return log, request, name


def test_a_restarted_gateway_reads_only_the_leaves_after_its_snapshot(
        duty_tables: DutyTables, chain: GanacheNode, deployed: Deployment,
        store: SQLiteLogStore) -> None:
    log, request, name = first_epoch(duty_tables, chain, deployed, store)
    for _ in range(3):
        log.use()
    size = store.size()
    checkpoint(store, size, {name: 10**9})
    worker = gated_worker(duty_tables, chain, deployed, store)  # the gateway restarted
    worker.start()  # the node is up and the block stated is 0: nothing refuted
    worker.stop()  # stepped by hand below
    for _ in range(3):
        worker.step()
    gating = worker._gating  # noqa: SLF001 - what the worker carries is what is tested
    assert gating is not None
    assert gating.leaves_read == 3  # the three usage records since, not the whole log
    assert ignored(worker, "malformed") == 0
    epoch = worker.book.latest()
    assert epoch is not None
    assert epoch.checkpoint_size == size
    scratch = gate_log(store, size, {request: 10**9}, (VALIDATOR,))
    owner = signer_id(owner_key(7).public_key)
    assert DistributionTree.load(epoch.tree).leaf(OWNER_A).amount == (
        scratch.owners[owner] * BASE_UNITS_PER_MICRO)
    worker.close()


def test_a_snapshot_from_other_trusted_validators_is_rebuilt_not_trusted(
        duty_tables: DutyTables, chain: GanacheNode, deployed: Deployment,
        store: SQLiteLogStore, caplog: pytest.LogCaptureFixture) -> None:
    log, _, name = first_epoch(duty_tables, chain, deployed, store)
    log.use()
    checkpoint(store, store.size(), {name: 10**9})
    worker = gated_worker(duty_tables, chain, deployed, store, validators=(OTHER_VALIDATOR,))
    with caplog.at_level(logging.WARNING, logger="gateway.payout"):
        for _ in range(3):  # posts the pending epoch, then computes the next
            worker.step()
    gating = worker._gating  # noqa: SLF001
    assert gating is not None
    assert gating.leaves_read == 1 + 7  # the whole log: the consent and seven records
    assert ignored(worker, "other_validators") == 1
    warnings = [r.getMessage() for r in caplog.records if "gating snapshot" in r.getMessage()]
    assert len(warnings) == 1  # one warning line
    assert "other_validators" in warnings[0]
    worker.close()


def test_a_corrupt_snapshot_is_rebuilt_and_counted(
        duty_tables: DutyTables, chain: GanacheNode, deployed: Deployment,
        store: SQLiteLogStore) -> None:
    log, _, name = first_epoch(duty_tables, chain, deployed, store)
    book = duty_tables.payout_book()
    held = book.gating_snapshot()
    assert held is not None
    # One bit of an amount flipped: the CBOR still decodes, the stored SHA-256 differs.
    flipped = bytearray(held[2])
    flipped[len(flipped) - 40] ^= 1
    book.add_epoch(held[0] + 1, fake_checkpoint(store, held[1]), b"doc", "{}", 0,
                   gating=bytes(flipped))  # the pending one is superseded
    book.finish(held[0] + 1, FAILED, 0, detail="a test's")
    book.close()
    log.use()
    checkpoint(store, store.size(), {name: 10**9})
    worker = gated_worker(duty_tables, chain, deployed, store)
    worker.step()  # nothing pending: computes an epoch
    gating = worker._gating  # noqa: SLF001
    assert gating is not None
    assert gating.leaves_read == 1 + 7
    assert ignored(worker, "malformed") == 1
    worker.close()


def test_a_snapshot_of_a_replaced_log_is_rebuilt_and_counted(
        duty_tables: DutyTables, store: SQLiteLogStore, tmp_path: Path) -> None:
    log = GatedLog(store, owner_key(8))
    log.consent(b"\x0c" * 32)
    for _ in range(4):
        log.use()
    gating = IncrementalGating((VALIDATOR,))
    gating.advance(store, store.size())
    gating.settle({})
    book = duty_tables.payout_book()
    try:
        stored(gating, book, store, 1)
        other = SQLiteLogStore(tmp_path / "other.sqlite")  # the store was replaced
        try:
            replaced = GatedLog(other, owner_key(9))
            replaced.consent(b"\x0d" * 32)
            for _ in range(6):
                replaced.use(used_ms=1000)
            with pytest.raises(SnapshotIgnored) as refused:
                loaded(book, other)
            assert refused.value.reason == "other_log"
        finally:
            other.close()
    finally:
        book.close()


@pytest.mark.parametrize(("settings", "reason"), [
    (GatingSettings(False, (VALIDATOR,), b"\xd1" * 20, 1337), "other_mode"),
    (GatingSettings(True, (), b"\xd1" * 20, 1337), "other_validators"),
    (GatingSettings(True, (VALIDATOR,), b"\xd2" * 20, 1337), "other_distributor"),
    (GatingSettings(True, (VALIDATOR,), b"\xd1" * 20, 1), "other_distributor"),
])
def test_a_snapshot_built_for_other_settings_is_not_this_workers_state(
        settings: GatingSettings, reason: str, store: SQLiteLogStore) -> None:
    GatedLog(store, owner_key(10)).use()
    gating = IncrementalGating((VALIDATOR,))
    gating.advance(store, store.size())
    raw = gating.snapshot(SETTINGS, store)
    assert restore(raw, SETTINGS, store).size == store.size()
    with pytest.raises(SnapshotIgnored) as refused:
        restore(raw, settings, store)
    assert refused.value.reason == reason


def test_a_snapshot_of_another_version_or_shape_is_refused_with_a_reason(
        store: SQLiteLogStore) -> None:
    GatedLog(store, owner_key(11)).use()
    gating = IncrementalGating(())
    gating.advance(store, store.size())
    raw = gating.snapshot(SETTINGS, store)
    value = cbor.decode(raw[:-32])
    assert isinstance(value, dict)
    for broken, code in [({**value, 0: 2}, "bad_version"), ({**value, 0: True}, "bad_version"),
                         ({**value, 2: -1}, "bad_snapshot"), ({**value, 4: [1]}, "bad_snapshot"),
                         ({**value, 6: 0}, "bad_snapshot")]:
        body = cbor.encode(broken)
        with pytest.raises(MalformedRecord) as refused:
            restore(body + hashlib.sha256(body).digest(), SETTINGS, store)
        assert refused.value.reason == code
    for garbage in (b"", raw[:31], raw[:-1], raw[:-33] + raw[-32:], b"\xff" * 64):
        with pytest.raises(MalformedRecord):
            restore(garbage, SETTINGS, store)


def test_a_reorganisation_below_what_was_paid_drops_the_snapshot(
        duty_tables: DutyTables, chain: GanacheNode, deployed: Deployment,
        store: SQLiteLogStore) -> None:
    owner = owner_key(12)
    log, request = GatedLog(store, owner), b"\x0f" * 32
    company = address_of(KEYS["company"])
    deployed.give(company, 10**24)
    fork = chain.rpc("evm_snapshot")
    deployed.fund(KEYS["company"], 10**9 * BASE_UNITS_PER_MICRO, request)  # to be dropped
    worker = gated_worker(duty_tables, chain, deployed, store)
    name = bind(worker, owner, OWNER_A, chain.chain_id)
    log.consent(request)
    log.use()
    checkpoint(store, store.size(), {name: 10**9})
    worker.step()  # an epoch paid out of that funding, stored with its snapshot
    first = worker.book.latest()
    assert first is not None
    assert worker.book.gating_snapshot() is not None
    worker.book.finish(first.epoch, FAILED, 0, detail="a test's: not posted")
    assert chain.rpc("evm_revert", fork) is True
    deployed.fund(KEYS["company"], 7, b"\x0e" * 32)  # the blocks read are replaced
    log.use()
    checkpoint(store, store.size(), {name: 10**9})
    worker.step()  # the request's funding is gone: less than it paid
    assert REGISTRIES[id(worker)].get_sample_value(
        "edgeproof_gateway_payout_gating_rebuilds_total") == 1
    assert worker.book.gating_snapshot() is None  # a restart must not load it again
    worker.close()
