"""One enrolled device must not be able to stall everyone else at the gateway.

Each test is an attack from issue 10 (section 2, items 3 and 6) against a real Mosquitto
and the real gateway: a QoS 0 flood of bad-signature batches, a flood that mixes in one
good record per batch so the quarantine never trips (then only the fair share protects
the others), a backlog that /healthz must admit, and thousands of conflicting records for
a logged sequence number. Nothing here measures time: the tests assert on the order of
receipts, on counters and on queue bounds.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from firmware_sim.broker import MosquittoBroker
from gateway.config import load_config
from gateway.fairness import DROP_REASONS, FairQueue, IngestBudget
from gateway.service import GatewayService
from protocol.batch import records_topic
from protocol.receipt import Receipt, Status
from protocol.record import Measurement, Record, Values
from tests.gateway.conftest import RunningGateway
from tests.gateway.gwkit import (
    DeviceClient,
    TestDevice,
    batch_bytes,
    register,
    write_gateway_files,
)
from tests.harness.waiting import eventually

FLOOD_RECORDS = 1000  # records per flood batch, as in the measurement


def _bad_signatures(device: TestDevice, n: int) -> list[bytes]:
    """``n`` records of ``device`` whose signature's last byte is flipped."""
    return [raw[:-1] + bytes([raw[-1] ^ 1]) for raw in device.records(n)]


class Flooder:
    """An MQTT client that publishes QoS 0 on one device's records topic."""

    def __init__(self, port: int, device_id: bytes) -> None:
        self.topic = records_topic(device_id)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"flood-{device_id.hex()}",
                                  protocol=mqtt.MQTTv5)
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def flood(self, payloads: list[bytes]) -> None:
        infos = [self.client.publish(self.topic, p, qos=0) for p in payloads]
        for info in infos:
            info.wait_for_publish(60)
            assert info.is_published()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _stats(gateway: RunningGateway) -> dict[str, object]:
    body: dict[str, object] = httpx.get(f"{gateway.base_url}/v1/stats", timeout=10).json()
    return body


def _dropped(stats: dict[str, object], device: TestDevice) -> dict[str, int]:
    dropped = stats.get("ingest_dropped", {})
    assert isinstance(dropped, dict)
    return {reason: dropped.get(reason, {}).get(device.device_id.hex(), 0)
            for reason in DROP_REASONS}


def _wait(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    eventually(condition, what, timeout, every_s=0.05)


def _receipts_of(devices: DeviceClient, device: TestDevice) -> list[Receipt]:
    return [r for r in list(devices.receipts) if r.device_id == device.device_id]


def test_bad_signature_flood_does_not_stall_an_honest_device(gateway, devices, broker) -> None:
    """The flood mixes one good record into every batch, so only the fair share helps."""
    honest, flooder = TestDevice.create("honest", 31), TestDevice.create("flooder", 32)
    register(gateway.base_url, honest)
    register(gateway.base_url, flooder)
    devices.send(flooder, flooder.records(1), 1)  # seq 0 logged: a good record to replay
    assert devices.wait_for(flooder.device_id, 1).outcomes[0].status is Status.ACCEPTED
    good = flooder.signed[0].raw
    bad = _bad_signatures(flooder, FLOOD_RECORDS - 1)
    payloads = [batch_bytes([*bad, good], 1000 + n) for n in range(100)]
    attacker = Flooder(broker.port, flooder.device_id)
    try:
        attacker.flood(payloads)  # all written before the honest device sends anything
        for batch_id in (1, 2, 3):
            devices.send(honest, honest.records(2), batch_id)
        answers = [devices.wait_for(honest.device_id, b, timeout=300) for b in (1, 2, 3)]
        assert [[o.status for o in r.outcomes] for r in answers] == [[Status.ACCEPTED] * 2] * 3

        def accounted() -> bool:  # every flood message answered or counted as dropped
            dropped = sum(_dropped(_stats(gateway), flooder).values())
            return len(_receipts_of(devices, flooder)) - 1 + dropped == len(payloads)

        _wait(accounted, "every flood message answered or counted")
    finally:
        attacker.close()
    order = [r.device_id for r in list(devices.receipts)]
    last_honest = max(i for i, d in enumerate(order) if d == honest.device_id)
    flood_after = sum(1 for d in order[last_honest:] if d == flooder.device_id)
    # The honest batches overtook flood batches that had arrived before them (FIFO: none).
    assert flood_after > 0, order
    dropped = _dropped(_stats(gateway), flooder)
    assert dropped["over_share"] > 0  # the flooder was over its share, counted per device
    assert dropped["signature_quarantine"] == 0  # one good record per batch: no quarantine
    assert not any(_dropped(_stats(gateway), honest).values())  # the honest one: nothing


def test_qos0_flood_keeps_ingest_memory_bounded_and_is_rejected_cheaply(
        gateway, devices, broker) -> None:
    honest, flooder = TestDevice.create("honest", 41), TestDevice.create("flooder", 42)
    register(gateway.base_url, honest)
    register(gateway.base_url, flooder)
    bad = _bad_signatures(flooder, FLOOD_RECORDS)
    payloads = [batch_bytes(bad, 2000 + n) for n in range(300)]
    attacker = Flooder(broker.port, flooder.device_id)
    try:
        attacker.flood(payloads)
        devices.send(honest, honest.records(3), 1)
        receipt = devices.wait_for(honest.device_id, 1, timeout=300)
        assert [o.status for o in receipt.outcomes] == [Status.ACCEPTED] * 3

        def accounted() -> bool:
            dropped = sum(_dropped(_stats(gateway), flooder).values())
            return len(_receipts_of(devices, flooder)) + dropped == len(payloads)

        _wait(accounted, "every flood message answered or counted")
    finally:
        attacker.close()
    stats = _stats(gateway)
    # Cheap rejections: most flood batches were never verified, and each drop is counted.
    answered = len(_receipts_of(devices, flooder))
    assert answered < len(payloads) // 4, answered
    budget = gateway.service.budget
    queue = stats["ingest_queue"]
    assert isinstance(queue, dict)
    # Memory held between paho and the verify pool: the flooder's share at most.
    assert 0 < queue["peak_messages"] <= budget.device_messages + 1
    assert queue["peak_bytes"] <= budget.device_bytes + budget.cost(2000)
    dropped = _dropped(stats, flooder)
    assert dropped["signature_quarantine"] > 0
    assert stats["quarantines"] >= 1
    rejected = stats["rejections"]
    assert isinstance(rejected, dict)
    assert rejected["bad_signature"] == answered * FLOOD_RECORDS
    metrics = httpx.get(f"{gateway.base_url}/metrics", timeout=10).text
    line = (f'edgeproof_gateway_ingest_dropped_total{{device="{flooder.device_id.hex()}",'
            f'reason="signature_quarantine"}}')
    assert line in metrics


class SteppedClock:
    """time.monotonic plus an offset a test advances."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


@pytest.fixture
def paused_gateway(broker: MosquittoBroker, tmp_path: Path) -> Iterator[
        tuple[GatewayService, SteppedClock, Callable[[], None]]]:
    """A gateway whose ingest runs but whose sequencer loop starts only when asked."""
    files = write_gateway_files(tmp_path / "gw", broker.port)
    clock = SteppedClock()
    service = GatewayService(load_config(files.config), monotonic=clock)
    service.start()
    thread = threading.Thread(target=service.run, name="gateway-sequencer", daemon=True)
    try:
        yield service, clock, thread.start
    finally:
        service.request_stop()
        if thread.is_alive():
            thread.join(timeout=20)
        service.close()


def test_healthz_reports_a_backlog_instead_of_ok(paused_gateway, broker) -> None:
    service, clock, run = paused_gateway
    base = f"http://127.0.0.1:{service.http.port}"
    dev = TestDevice.create("queued", 51)
    register(base, dev)
    devices = DeviceClient(broker.port, service.key.verifier_text())
    try:
        devices.send(dev, dev.records(2), 1)

        def queued() -> bool:
            backlog = httpx.get(f"{base}/healthz", timeout=10).json().get("backlog", {})
            return bool(backlog.get("messages") == 1)

        _wait(queued, "the batch to wait in the ingest queue")
        clock.offset += 60.0  # the sequencer has not taken it for a minute
        response = httpx.get(f"{base}/healthz", timeout=10)
        body = response.json()
        assert response.status_code == 503
        assert body["ok"] is False
        assert body["status"] == "backlog"
        assert body["backlog"]["messages"] == 1
        assert body["backlog"]["oldest_age_s"] >= 60
        run()
        assert [o.status for o in devices.wait_for(dev.device_id, 1).outcomes] == \
            [Status.ACCEPTED] * 2

        def healthy() -> bool:
            return httpx.get(f"{base}/healthz", timeout=10).status_code == 200

        _wait(healthy, "/healthz to recover")
        body = httpx.get(f"{base}/healthz", timeout=10).json()
        assert body["status"] == "ok"
        assert body["backlog"]["messages"] == 0
    finally:
        devices.close()


def test_conflicting_records_keep_bounded_evidence_and_log_once(
        gateway, devices, caplog) -> None:
    caplog.set_level(logging.WARNING)
    dev = TestDevice.create("equivocator", 61)
    register(gateway.base_url, dev)
    devices.send(dev, dev.records(2), 1)
    devices.wait_for(dev.device_id, 1)
    logged = dev.signed[1].record
    conflicting = [dev.sign_raw(Record(logged.boot, 1, logged.prev, logged.wall_ms, True,
                                       logged.mono_ms, "climate",
                                       Values((Measurement(1000 + n, 0, "Cel"),))))
                   for n in range(500)]
    for start in range(0, len(conflicting), 100):
        devices.send(dev, conflicting[start:start + 100], 10 + start)
        receipt = devices.wait_for(dev.device_id, 10 + start)
        assert {o.reason for o in receipt.outcomes} == {"equivocation"}
    stats = _stats(gateway)
    assert stats["rejections"]["equivocation"] == 500  # type: ignore[index]
    assert stats["equivocations"] == 500  # counted, every one
    with sqlite3.connect(f"file:{gateway.files.data_dir / 'gateway.sqlite'}?mode=ro",
                         uri=True) as db:
        kept = db.execute("SELECT COUNT(*) FROM equivocations").fetchone()[0]
    assert 1 <= kept <= 16  # rows of evidence: bounded per device
    assert stats["equivocation_evidence_skipped"] == 500 - kept
    listed = httpx.get(f"{gateway.base_url}/v1/devices",
                       headers={"Authorization": "Bearer test-admin-token-0123456789"}).json()
    assert [d["equivocated"] for d in listed] == [True]
    warnings = [r for r in caplog.records if "equivocation" in r.getMessage()]
    assert 1 <= len(warnings) <= 2, [r.getMessage() for r in warnings]


# --- the queue alone -------------------------------------------------------------------


def test_flooding_device_is_served_in_turn_with_a_quiet_one() -> None:
    queue: FairQueue[str] = FairQueue(IngestBudget(quantum_bytes=10_000, message_overhead=0))
    for n in range(10):
        assert queue.offer(b"flood", f"f{n}", 10_000, 0.0) == []
    assert queue.offer(b"quiet", "q0", 100, 1.0) == []
    assert queue.offer(b"quiet", "q1", 100, 2.0) == []
    order = [queue.pop() for _ in range(5)]
    assert [item for _, item in order if item is not None] == ["f0", "q0", "q1", "f1", "f2"]


def test_full_queue_pushes_out_the_longest_device_not_the_quiet_one() -> None:
    budget = IngestBudget(max_messages=4, device_messages=4, message_overhead=0)
    queue: FairQueue[str] = FairQueue(budget)
    for n in range(4):
        assert queue.offer(b"flood", f"f{n}", 100, 0.0) == []
    assert queue.offer(b"flood", "f4", 100, 0.0) == [(b"flood", "f4")]  # its own share
    assert queue.offer(b"quiet", "q0", 100, 0.0) == [(b"flood", "f3")]  # pushed out
    assert queue.messages == 4
    assert queue.held_by(b"quiet") == 1
