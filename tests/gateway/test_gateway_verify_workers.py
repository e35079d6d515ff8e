"""Verification in worker processes: stale keys, bad input, and their crashes.

The pool here is the real one (forkserver worker processes) over a real SQLite store; the
sequencer commits what the workers return, as the gateway does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import cbor2
import httpx
import pytest
from prometheus_client import CollectorRegistry

from firmware_sim.broker import MosquittoBroker, free_port
from firmware_sim.procs import GatewayProcess
from gateway import verify_pool
from gateway.anchor import LocalAnchor
from gateway.checkpoints import Checkpointer
from gateway.config import CheckpointConfig, Limits
from gateway.gatewaykey import GatewayKey
from gateway.metrics import GatewayMetrics
from gateway.sqlite_store import SQLiteLogStore
from gateway.verify import PreparedBatch, prepare_batch
from gateway.verify_pool import VerifyPool
from protocol import reasons
from protocol.batch import records_topic
from protocol.receipt import Receipt, Status
from protocol.record import MAX_VALUES, Measurement, Values
from tests.gateway.crashkit import Publisher
from tests.gateway.gwkit import (
    RATE,
    START_WALL_MS,
    DeviceClient,
    TestDevice,
    batch_bytes,
    make_key,
    register,
    write_gateway_files,
)
from tests.gateway.test_gateway_crash import REPO
from tests.gateway.test_gateway_crash import _check_log as check_log
from tests.harness.waiting import eventually

KILLS = 3
BURST_BATCHES = 20  # per device and kill: 600 records
NOW_MS = START_WALL_MS + 86_400_000


@dataclasses.dataclass
class Log:
    store: SQLiteLogStore
    checkpointer: Checkpointer

    def commit(self, batches: list[PreparedBatch]) -> list[list[tuple[Status, str | None]]]:
        from gateway.sequencer import Sequencer  # noqa: PLC0415 - after the store exists

        metrics = GatewayMetrics()
        sequencer = Sequencer(self.store, self.checkpointer,
                              GatewayKey.generate("gateway.test/edgeproof"), limits=Limits(),
                              metrics=metrics, wall_ms=lambda: NOW_MS, monotonic=lambda: 0.0)
        receipts = sequencer.commit_group(batches)
        return [[(o.status, o.reason) for o in r.receipt.outcomes] if r else []
                for r in receipts]


@pytest.fixture
def log(tmp_path: Path) -> Iterator[Log]:
    store = SQLiteLogStore(tmp_path / "log.sqlite")
    key = GatewayKey.generate("gateway.test/edgeproof")
    checkpointer = Checkpointer(store, key, LocalAnchor(lambda: NOW_MS),
                                config=CheckpointConfig(), metrics=GatewayMetrics(),
                                wall_ms=lambda: NOW_MS, monotonic=lambda: 0.0)
    try:
        yield Log(store, checkpointer)
    finally:
        store.close()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def pool(registry: CollectorRegistry) -> Iterator[VerifyPool]:
    verify = VerifyPool(2, 1, Limits(), registry)
    verify.start()
    try:
        yield verify
    finally:
        verify.close()


def enrol(log: Log, dev: TestDevice) -> None:
    log.store.register_device(dev.name, dev.enrolled_key, "alice", RATE, NOW_MS)


def test_stale_key_after_rotation_never_accepted_though_the_worker_verified_it(
        log: Log, pool: VerifyPool) -> None:
    dev = TestDevice.create("rotating", 11)
    enrol(log, dev)
    snapshot = log.store.device(dev.device_id)  # what the workers get: the enrolled key only
    old_key = dev.key
    topic = records_topic(dev.device_id)
    first = [*dev.records(3), dev.rotate(make_key(random.Random(12))).raw]  # new key from seq 4
    thief = dataclasses.replace(dev, key=old_key, signed=[])  # the leaked key, same chain
    stolen = pool.submit(topic, batch_bytes(thief.records(2), 2), 0.0, snapshot).result()
    assert all(r.good_key == old_key.public_key for r in stolen.records)
    rotation = pool.submit(topic, batch_bytes(first, 1), 0.0, snapshot).result()

    outcomes = log.commit([rotation, stolen])  # one group commit, rotation first

    assert outcomes[0] == [(Status.ACCEPTED, None)] * 4
    assert outcomes[1] == [(Status.REJECTED, reasons.BAD_SIGNATURE.value)] * 2
    honest = pool.submit(topic, batch_bytes(dev.records(2), 3), 0.0, snapshot).result()
    assert all(r.bad_key == old_key.public_key for r in honest.records)  # stale snapshot
    assert log.commit([honest]) == [[(Status.ACCEPTED, None)] * 2]  # verified again, in
    assert log.store.size() == 6


def test_revocation_while_a_batch_is_in_a_worker_rejects_it(log: Log,
                                                             pool: VerifyPool) -> None:
    dev = TestDevice.create("revoked", 21)
    enrol(log, dev)
    snapshot = log.store.device(dev.device_id)
    future = pool.submit(records_topic(dev.device_id), batch_bytes(dev.records(3), 1), 0.0,
                         snapshot)
    prepared = future.result()
    assert all(r.good_key == dev.key.public_key for r in prepared.records)
    log.store.revoke_device(dev.device_id, NOW_MS)

    assert log.commit([prepared]) == [[(Status.REJECTED, reasons.REVOKED_DEVICE.value)] * 3]
    assert log.store.size() == 0


def test_malformed_and_oversized_input_in_a_worker_rejected_with_the_in_process_reasons(
        ) -> None:
    limits = Limits(max_batch_bytes=2000, max_record_bytes=64)  # every record is too large
    dev = TestDevice.create("bad-input", 31)
    topic = records_topic(dev.device_id)
    good = dev.records(2)
    cases = {
        "not cbor": b"\xff\x00garbage",
        "not a batch": cbor2.dumps({"hello": 1}),
        "a record over max_record_bytes": batch_bytes(good, 1),
        "over max_batch_bytes": batch_bytes(dev.records(20), 2),
        "truncated": batch_bytes(good, 3)[:-7],
        "wrong topic": batch_bytes(good, 4),
    }
    expected = {"not cbor": reasons.MALFORMED, "not a batch": reasons.MALFORMED,
                "over max_batch_bytes": reasons.TOO_LARGE, "truncated": reasons.MALFORMED,
                "wrong topic": reasons.WRONG_TOPIC}
    pool = VerifyPool(1, 1, limits, CollectorRegistry())
    pool.start()
    try:
        for name, payload in cases.items():
            where = "edgeproof/v1/devices/nope/records" if name == "wrong topic" else topic
            in_worker = pool.submit(where, payload, 0.0, None).result()
            in_process = prepare_batch(where, payload, 0.0, limits, lambda _kid: None)
            assert in_worker.reject is expected.get(name), name
            assert in_worker.reject == in_process.reject, name
            assert [r.reject for r in in_worker.records] == \
                [r.reject for r in in_process.records], name
            assert in_worker.payload_hash == in_process.payload_hash, name
        too_large = pool.submit(topic, cases["a record over max_record_bytes"], 0.0,
                                None).result()
        assert [r.reject for r in too_large.records] == [reasons.TOO_LARGE] * 2
    finally:
        pool.close()


def test_killed_worker_is_replaced_and_its_batches_verified_again(
        log: Log, pool: VerifyPool, registry: CollectorRegistry) -> None:
    dev = TestDevice.create("crash", 41)
    enrol(log, dev)
    snapshot = log.store.device(dev.device_id)
    topic = records_topic(dev.device_id)
    before = pool.worker_pids()
    assert len(before) == 2
    futures = [pool.submit(topic, batch_bytes(dev.records(50), i), 0.0, snapshot)
               for i in range(1, 9)]
    os.kill(before[0], signal.SIGKILL)
    batches = [f.result(timeout=60) for f in futures]  # every one answered, none lost
    later = pool.submit(topic, batch_bytes(dev.records(1), 9), 0.0, snapshot).result()

    outcomes = log.commit([*batches, later])

    assert outcomes == [[(Status.ACCEPTED, None)] * 50] * 8 + [[(Status.ACCEPTED, None)]]
    assert log.store.size() == 401
    # The batches may all be answered before the pool's reader sees the death (a loaded
    # machine): it replaces the worker whenever it does, and only that one.
    after = eventually(lambda: p if len(p := pool.worker_pids()) == 2 and before[0] not in p
                       else None, "the killed worker replaced", 60)
    assert before[1] in after
    assert all(_alive(pid) for pid in after)
    assert registry.get_sample_value("edgeproof_gateway_verify_worker_restarts_total") == 1


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended between the listing and the read

    return [p for p in found if _alive(p)]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _verify_workers(gateway_pid: int) -> set[int]:
    """The gateway's verify workers: the children of its forkserver process."""
    for child in _children(gateway_pid):
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        if b"forkserver" in cmdline:
            return set(_children(child))
    return set()


def _wait_for_workers(gateway_pid: int, seen: set[int], fresh: int) -> list[int]:
    """The gateway's two verify workers, once ``fresh`` of them were not there before."""
    def ready() -> set[int] | None:
        now = _verify_workers(gateway_pid)
        return now if len(now) == 2 and len(now - seen) >= fresh else None
    now = eventually(ready, f"the gateway running two verify workers, {fresh} of them new",
                     60, every_s=0.05)
    seen.update(now)
    return sorted(now)


def test_a_worker_killed_while_it_sends_a_result_stalls_nothing(
        log: Log, pool: VerifyPool, registry: CollectorRegistry,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker killed half-way through writing an answer: ProcessPoolExecutor, which read
    every worker's answers from one shared pipe, waited for the rest of that message for
    ever and never saw the death (a bare executor, kill -9 under 4 MB results: 3 hangs in
    10). Made here for real: answers larger than a socket's buffer, the pool's reader held
    after its first answer so a worker blocks mid-answer, then that worker killed. Every
    batch must still be answered, once, and the pool be whole again."""
    dev = TestDevice.create("stalled", 43)
    enrol(log, dev)
    snapshot = log.store.device(dev.device_id)
    topic = records_topic(dev.device_id)
    body = Values(tuple(Measurement(215 + i, -1, "Cel") for i in range(MAX_VALUES)))
    payloads = [batch_bytes([dev.next(body).raw for _ in range(1000)], i) for i in (1, 2)]
    # One each (a worker reads a job while idle): bigger than a socket's buffer, and each
    # answer is bigger still.
    assert min(map(len, payloads)) > 256 * 1024
    deliver, first, go_on = pool._deliver, threading.Event(), threading.Event()  # noqa: SLF001

    def held_after_the_first(*args: Any) -> None:  # the reader, stopped in its tracks
        deliver(*args)
        if not first.is_set():
            first.set()
            go_on.wait()
    monkeypatch.setattr(pool, "_deliver", held_after_the_first)
    futures = [pool.submit(topic, p, 0.0, snapshot) for p in payloads]
    try:
        assert first.wait(60), "no answer came"
        # Nobody reads now: bytes on a worker's pipe start an answer it cannot finish.
        stuck = eventually(lambda: next((w for w in pool._workers  # noqa: SLF001
                                         if w.conn.poll(0)), None), "an answer half-written", 60)
        os.kill(stuck.process.pid or 0, signal.SIGKILL)
        stuck.process.join(60)
    finally:
        go_on.set()  # else the pool's close would wait for its reader for ever

    batches = [f.result(timeout=60) for f in futures]  # answered, each once
    outcomes = log.commit(batches)

    assert outcomes == [[(Status.ACCEPTED, None)] * 1000] * 2
    assert log.store.size() == 2000
    assert registry.get_sample_value("edgeproof_gateway_verify_worker_restarts_total") == 1
    pids = eventually(lambda: p if len(p := pool.worker_pids()) == 2 else None,
                      "the pool to have two workers again", 60)
    assert stuck.process.pid not in pids
    later = pool.submit(topic, batch_bytes(dev.records(1), 9), 0.0, snapshot).result(60)
    assert log.commit([later]) == [[(Status.ACCEPTED, None)]]


def _big_batch(dev: TestDevice, batch_id: int) -> bytes:
    """1,000 records of 16 values: more than a socket buffers (a batch may be 512 KiB)."""
    body = Values(tuple(Measurement(215 + i, -1, "Cel") for i in range(MAX_VALUES)))
    payload = batch_bytes([dev.next(body).raw for _ in range(1000)], batch_id)
    assert len(payload) > int(Path("/proc/sys/net/core/wmem_default").read_text())
    return payload


def test_a_batch_bigger_than_the_pipe_never_holds_the_sequencer_while_its_worker_is_busy(
        log: Log, registry: CollectorRegistry) -> None:
    """A job went down its worker's pipe from the thread that submits it (the gateway's
    sequencer), so a batch bigger than the socket's buffer held that thread until the
    worker had finished the jobs before it: one device sending big batches slowed every
    other's commits. Here the only worker reads nothing (stopped) while a big batch and a
    small one are submitted: both calls must return at once, and once the worker goes on,
    both be answered, in order."""
    dev = TestDevice.create("busy", 44)
    enrol(log, dev)
    snapshot = log.store.device(dev.device_id)
    topic = records_topic(dev.device_id)
    payloads = [_big_batch(dev, 1), batch_bytes(dev.records(1), 2)]
    pool = VerifyPool(1, 1, Limits(), registry)
    pool.start()
    try:
        (pid,) = pool.worker_pids()
        futures: list[Future[PreparedBatch]] = []
        submitted = threading.Event()

        def submit_all() -> None:
            futures.extend(pool.submit(topic, p, 0.0, snapshot) for p in payloads)
            submitted.set()
        os.kill(pid, signal.SIGSTOP)
        try:
            threading.Thread(target=submit_all, daemon=True).start()
            assert submitted.wait(60), "submit waited for a worker that reads nothing"
        finally:
            os.kill(pid, signal.SIGCONT)
        batches = [f.result(timeout=60) for f in futures]
    finally:
        pool.close()

    assert log.commit(batches) == [[(Status.ACCEPTED, None)] * 1000, [(Status.ACCEPTED, None)]]
    assert registry.get_sample_value("edgeproof_gateway_verify_worker_restarts_total") == 0


def test_a_worker_killed_while_a_big_batch_is_sent_to_it_loses_nothing(
        log: Log, registry: CollectorRegistry) -> None:
    """Both workers stopped, each with a big batch half-sent by the pool's sending thread;
    one is killed. Its write fails, the reader buries it and sends its batch to the
    other, and every batch is answered once, in full."""
    dev = TestDevice.create("sent-to-the-dead", 46)
    enrol(log, dev)
    snapshot = log.store.device(dev.device_id)
    topic = records_topic(dev.device_id)
    payloads = [_big_batch(dev, 1), _big_batch(dev, 2)]
    pool = VerifyPool(2, 1, Limits(), registry)
    pool.start()
    try:
        victim, survivor = pool.worker_pids()
        for pid in (victim, survivor):
            os.kill(pid, signal.SIGSTOP)
        try:
            futures = [pool.submit(topic, p, 0.0, snapshot) for p in payloads]
            os.kill(victim, signal.SIGKILL)
        finally:
            os.kill(survivor, signal.SIGCONT)
        batches = [f.result(timeout=60) for f in futures]
        pids = eventually(lambda: p if len(p := pool.worker_pids()) == 2 else None,
                          "the pool to have two workers again", 60)
    finally:
        pool.close()

    assert [b.batch_id for b in batches] == [1, 2]
    assert log.commit(batches) == [[(Status.ACCEPTED, None)] * 1000] * 2
    assert registry.get_sample_value("edgeproof_gateway_verify_worker_restarts_total") == 1
    assert victim not in pids
    assert survivor in pids


def test_closing_the_pool_never_hangs_on_a_worker_that_reads_nothing(
        log: Log, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hung worker (stopped here) with half a big batch on its full pipe: the gateway's
    shutdown must still end (the worker is killed), and what it held be cancelled, not
    answered (its messages stay unacknowledged; the broker sends them again)."""
    monkeypatch.setattr(verify_pool, "_STOP_TIMEOUT_S", 0.2)
    dev = TestDevice.create("hung", 45)
    enrol(log, dev)
    pool = VerifyPool(1, 1, Limits(), registry)
    pool.start()
    (pid,) = pool.worker_pids()
    payload, snapshot = _big_batch(dev, 1), log.store.device(dev.device_id)
    futures: list[Future[PreparedBatch]] = []
    submitted = threading.Event()

    def submit() -> None:
        futures.append(pool.submit(records_topic(dev.device_id), payload, 0.0, snapshot))
        submitted.set()
    os.kill(pid, signal.SIGSTOP)
    try:
        threading.Thread(target=submit, daemon=True).start()
        assert submitted.wait(60), "submit waited for a worker that reads nothing"
        pool.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)

    assert futures[0].cancelled()
    assert not _alive(pid)


def test_kill9_of_a_verify_worker_under_load_loses_and_duplicates_nothing(
        broker: MosquittoBroker, tmp_path: Path) -> None:
    rng = random.Random(17)
    http_port = free_port()
    files = write_gateway_files(tmp_path / "gw", broker.port, http_port=http_port,
                                every_leaves=400, interval_s=0.3, verify_workers=2)
    gateway = GatewayProcess(files.config, f"http://127.0.0.1:{http_port}",
                             tmp_path / "gateway.log", cwd=REPO)
    gateway.start()
    fleet = [TestDevice.create(f"worker-kill-{i}", 300 + i) for i in range(3)]
    for dev in fleet:
        register(gateway.url, dev)
    client = DeviceClient(broker.port, files.key.verifier_text())
    publisher = Publisher(client, fleet)
    try:
        seen: set[int] = set()
        workers = _wait_for_workers(gateway.pid, seen, fresh=2)
        for _ in range(KILLS):
            publisher.burst(BURST_BATCHES)  # queued up; a worker dies while they drain
            time.sleep(rng.uniform(0.02, 0.2))
            os.kill(rng.choice(workers), signal.SIGKILL)
            publisher.burst(1)  # and more work after the death
            workers = _wait_for_workers(gateway.pid, seen, fresh=1)
        for key in sorted(publisher.sent):  # no resend: every message answered once
            client.wait_for(*key, timeout=60)
        metrics = httpx.get(f"{gateway.url}/metrics").text
        restarts = _sample(metrics, "edgeproof_gateway_verify_worker_restarts_total")
        assert restarts == KILLS
        receipts: dict[tuple[bytes, int], Receipt] = {}
        for receipt in list(client.receipts):
            assert receipts.setdefault((receipt.device_id, receipt.batch_id), receipt) \
                is receipt, "a batch answered twice"
        leaf_of = {raw: o.leaf_index for key, records in publisher.sent.items()
                   for raw, o in zip(records, receipts[key].outcomes, strict=True)
                   if o.status is Status.ACCEPTED}
        assert len(leaf_of) == sum(len(r) for r in publisher.sent.values())
        assert gateway.stop(timeout_s=30) == 0
        check_log(files.data_dir / "gateway.sqlite", publisher.sent, leaf_of)
    finally:
        client.close()
        gateway.stop(timeout_s=30)


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        children = _children(todo.pop())
        found.update(children)
        todo += children
    return found


def test_kill9_of_the_gateway_leaves_no_forkserver_worker_or_tracker_behind(
        broker: MosquittoBroker, tmp_path: Path) -> None:
    http_port = free_port()
    files = write_gateway_files(tmp_path / "gw", broker.port, http_port=http_port,
                                verify_workers=2)
    gateway = GatewayProcess(files.config, f"http://127.0.0.1:{http_port}",
                             tmp_path / "gateway.log", cwd=REPO)
    gateway.start()
    assert gateway.child is not None
    pid = gateway.child.pid
    left: set[int] = set()
    try:
        workers = eventually(lambda: _verify_workers(pid) if len(_verify_workers(pid)) == 2
                             else None, "two verify workers")
        # forkserver, resource tracker, the two workers (recorded before the kill: once
        # orphaned they are no longer the gateway's descendants)
        left = eventually(lambda: d if len(d := _descendants(pid)) >= 4 else None,
                          "the pool's processes")
        assert workers <= left

        os.kill(pid, signal.SIGKILL)  # the gateway alone, not its process group
        gateway.child.process.wait(timeout=30)

        eventually(lambda: not [p for p in left if _alive(p)],
                   "every process the gateway started to have ended")
    finally:
        for orphan in left:
            if _alive(orphan):
                os.kill(orphan, signal.SIGKILL)
        gateway.stop(timeout_s=30)


def _sample(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")
