"""kill -9 of the gateway process under load: nothing duplicated, nothing lost, no fork."""

from __future__ import annotations

import random
import signal
import sqlite3
import time
from pathlib import Path

import httpx

from firmware_sim.broker import MosquittoBroker, free_port
from firmware_sim.procs import GatewayProcess
from protocol.note import NoteVerifier
from tests.gateway.crashkit import Publisher, check_receipts, resend_unanswered
from tests.gateway.gwkit import (
    DeviceClient,
    TestDevice,
    check_checkpoints,
    register,
    write_gateway_files,
)

REPO = Path(__file__).resolve().parents[2]
KILLS = 10
BURST_BATCHES = 20  # per device and kill: 600 records


def test_kill9_loses_nothing_and_never_forks(broker: MosquittoBroker, tmp_path: Path) -> None:
    rng = random.Random(9)
    t0 = time.monotonic()
    http_port = free_port()
    files = write_gateway_files(tmp_path / "gw", broker.port, http_port=http_port,
                                every_leaves=400, interval_s=0.3)
    gateway = GatewayProcess(files.config, f"http://127.0.0.1:{http_port}",
                             tmp_path / "gateway.log", cwd=REPO)
    gateway.start()
    fleet = [TestDevice.create(f"crash-{i}", 100 + i) for i in range(3)]
    for dev in fleet:
        register(gateway.url, dev)
    client = DeviceClient(broker.port, files.key.verifier_text())
    publisher = Publisher(client, fleet)
    notes: set[str] = set()
    for _ in range(KILLS):
        # A burst queues up, then the gateway dies somewhere in the middle of draining it.
        publisher.burst(BURST_BATCHES)
        time.sleep(rng.uniform(0.02, 0.3))
        notes.update(c["note"] for c in httpx.get(f"{gateway.url}/v1/checkpoints",
                                                  params={"limit": 1000}).json())
        assert gateway.kill() == -signal.SIGKILL
        gateway.start()
    print(f"t={time.monotonic() - t0:.1f} kills done")

    # Devices resend every batch they have no receipt for (a receipt may die with the
    # gateway); the resend must be answered with the original leaves.
    resent = resend_unanswered(client, publisher)
    print(f"t={time.monotonic() - t0:.1f} resent {resent}")
    for key in sorted(publisher.sent):
        client.wait_for(*key, timeout=60)
    leaf_of = check_receipts(client, publisher, notes)
    print(f"t={time.monotonic() - t0:.1f} receipts checked")

    assert gateway.stop(timeout_s=30) == 0  # graceful stop: final checkpoint, exit 0
    client.close()
    gateway.start()
    try:
        _check_log(files.data_dir / "gateway.sqlite", publisher.sent, leaf_of)
        print(f"t={time.monotonic() - t0:.1f} {len(leaf_of)} records, {len(notes)} checkpoints")
        notes.update(c["note"] for c in httpx.get(f"{gateway.url}/v1/checkpoints",
                                                  params={"limit": 1000}).json())
        check_checkpoints(gateway.url, NoteVerifier.from_text(files.key.verifier_text()),
                           notes)
        print(f"t={time.monotonic() - t0:.1f} checkpoints checked")
    finally:
        gateway.stop(timeout_s=30)


def _check_log(db: Path, sent: dict[tuple[bytes, int], list[bytes]],
               leaf_of: dict[bytes, int]) -> None:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT idx, raw FROM leaves ORDER BY idx").fetchall()
        latest = conn.execute("SELECT size FROM checkpoints ORDER BY number DESC").fetchone()
    logged = [bytes(raw) for _, raw in rows]
    assert [idx for idx, _ in rows] == list(range(len(rows)))  # no hole
    assert len(set(logged)) == len(logged)  # no duplicate leaf
    every_record = [raw for records in sent.values() for raw in records]
    assert sorted(logged) == sorted(every_record)  # nothing lost, nothing extra
    assert all(logged[index] == raw for raw, index in leaf_of.items())  # receipts were true
    assert latest[0] == len(rows)  # the SIGTERM checkpoint covers the whole log
