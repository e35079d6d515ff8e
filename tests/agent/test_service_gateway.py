"""End to end with the real gateway: agent -> Mosquitto -> gateway -> receipts -> outbox.

The gateway (gateway/) runs in this process on its own threads (``RealGateway``); the agent
reaches it only over MQTT and is configured with its verifier key.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.clock import SystemClock
from agent.config import parse_config
from agent.identity import create_identity
from agent.outbox import OutboxSettings
from agent.sensors import load_simulated_hardware
from agent.service import AgentService, ServiceOptions
from agent.status import collect_status
from firmware_sim.broker import MosquittoBroker
from protocol import reasons
from protocol.keys import RecipientKey
from protocol.record import Gap, KeyEpoch, Measurement, Sealed
from protocol.sealing import open_values, unwrap_stream_key
from protocol.signed import parse_signed_record
from tests.agent.responder import RATE, RealGateway
from tests.agent.test_service import evening
from tests.agent.uplinkkit import Device
from tests.harness.waiting import within


@pytest.fixture
def gateway(tmp_path: Path, broker: MosquittoBroker) -> Iterator[RealGateway]:
    gw = RealGateway(tmp_path / "gw", broker)
    yield gw
    gw.stop()


def wait(predicate: Any, timeout: float = 30.0) -> bool:
    return within(predicate, timeout, every_s=0.05)


def test_the_gateway_accepts_sealed_plain_usage_and_key_records_and_receipts_empty_the_outbox(
        tmp_path: Path, broker: MosquittoBroker, gateway: RealGateway) -> None:
    state = tmp_path / "agent"
    recipient = RecipientKey.generate()
    cfg = parse_config({
        "agent": {"state_dir": str(state)},
        "mqtt": {"broker": broker.url},
        "gateway": {"key": gateway.verifier},
        "outbox": {"commit_window_s": 0.1},
        "uplink": {"batch_interval_s": 0.1},
        "recipients": {"acme": recipient.public_key.hex()},
        "sensors": [
            {"kind": "power_sense", "stream": "tv", "pin": 17, "interval_s": 0.1},
            {"kind": "cpu_temp", "stream": "cpu", "interval_s": 0.1, "recipients": ["acme"]}],
        "usage": {"input": "tv", "rate_micro_per_hour": RATE, "checkpoint_interval_s": 0.2,
                  "report_interval_s": 0.5},
        "service": {"final_flush_s": 60.0},  # a bound: the flush ends when all is receipted
    }, state)
    identity = create_identity(cfg.key_file)
    device_id = gateway.register("e2e-agent", identity.key.public_key)
    clock = SystemClock()
    sim = load_simulated_hardware(1, state, clock)
    # The simulated TV follows the world's time, an evening when it is on.
    offset = evening() - time.time()
    service = AgentService(cfg, clock, sim=sim, options=ServiceOptions(
        world_wall_s=lambda: time.time() + offset))
    stop = threading.Event()
    runner = threading.Thread(target=service.run, args=(stop,))
    service.start()
    runner.start()

    def enough_logged() -> bool:  # a condition, not a fixed time: the assertions' inputs
        logged = gateway.records(device_id)
        streams = [r["stream"] for r in logged]
        return {"keys", "tv", "usage"} <= set(streams) and streams.count("cpu") > 5
    assert wait(enough_logged, timeout=60.0)
    stop.set()
    runner.join(30)
    sim.close()
    status = collect_status(state)
    outbox = status["outbox"]
    assert isinstance(outbox, dict)
    assert outbox["depth"] == 0, outbox
    assert outbox["dead_letters"] == {}, outbox
    logged = gateway.records(device_id)
    streams = {r["stream"] for r in logged}
    assert {"keys", "tv", "cpu", "usage"} <= streams
    assert [r["seq"] for r in logged] == list(range(len(logged)))
    credit = status["credit"]
    assert isinstance(credit, dict)
    assert credit["settled_micro"] > 0
    assert credit["settled_micro"] == credit["sent_micro"]
    opened = 0  # the recipient opens the sealed values from what the gateway logged
    epoch = None
    for entry in logged:
        record = parse_signed_record(bytes.fromhex(entry["record"]))[1]
        if isinstance(record.body, KeyEpoch):
            epoch = (record.seq, record.body)
        elif record.stream == "cpu":
            assert epoch is not None
            assert isinstance(record.body, Sealed)
            key = unwrap_stream_key(identity.device_id, epoch[0], epoch[1], "cpu", recipient)
            (value,) = open_values(identity.device_id, record, key)
            assert value.unit == "Cel"
            opened += 1
    assert opened > 5


@pytest.mark.parametrize("policy", ["drop-oldest", "reject-new"])
def test_a_full_outbox_declares_its_drops_and_the_gateway_accepts_the_gap(
        tmp_path: Path, broker: MosquittoBroker, gateway: RealGateway, policy: Any) -> None:
    device = Device(tmp_path / "dev", broker.url, gateway.verifier)
    device.outbox.settings = OutboxSettings(max_bytes=64 * 1024, full_policy=policy,
                                            commit_window_ms=50)
    device_id = gateway.register("full-outbox", device.public_key)
    try:
        for i in range(700):  # no uplink yet: the outbox fills and applies its policy
            device.writer.write_values("cpu", (Measurement(i, -1, "Cel"),),
                                       device.clock.mono_ms())
        dropped = device.outbox.stats().counter("dropped")
        assert dropped > 0
        device.uplink.start()
        assert wait(lambda: device.depth() == 0)
        device.write(1)  # room again: a refused run is declared now
        assert wait(lambda: device.depth() == 0)
        assert device.outbox.stats().dead_letters == {}
    finally:
        device.close()
    logged = gateway.records(device_id)
    seqs = {r["seq"] for r in logged}
    gaps = [r for r in logged if r["stream"] == "gap"]
    assert gaps
    declared: set[int] = set()
    for g in gaps:
        record = parse_signed_record(bytes.fromhex(g["record"]))[1]
        assert isinstance(record.body, Gap)
        assert record.body.reason == reasons.OUTBOX_FULL
        declared |= set(range(record.body.first_seq, record.body.last_seq + 1))
    assert len(declared) == dropped
    assert seqs.isdisjoint(declared)
    assert seqs | declared == set(range(max(seqs) + 1))  # every number logged or declared


def test_after_a_damaged_outbox_the_gateway_accepts_the_declared_loss_and_the_new_chain(
        tmp_path: Path, broker: MosquittoBroker, gateway: RealGateway) -> None:
    device = Device(tmp_path / "dev", broker.url, gateway.verifier)
    device_id = gateway.register("damaged", device.public_key)
    device.uplink.start()
    device.write(10)
    assert wait(lambda: device.depth() == 0)
    device.uplink.stop()
    device.write(5)  # committed, never sent: these are lost with the file
    device.close()
    for name in ("outbox.sqlite-wal", "outbox.sqlite-shm"):
        (tmp_path / "dev" / name).unlink(missing_ok=True)
    (tmp_path / "dev" / "outbox.sqlite").write_bytes(b"\x00" * 8192)
    device = Device(tmp_path / "dev", broker.url, gateway.verifier, key=device.key)
    try:
        device.write(10)
        device.uplink.start()
        assert wait(lambda: device.depth() == 0)
        assert device.outbox.stats().dead_letters == {}
    finally:
        device.close()
    logged = gateway.records(device_id)
    assert len(logged) == 10 + 1 + 10
    gap = parse_signed_record(bytes.fromhex(logged[10]["record"]))[1]
    assert isinstance(gap.body, Gap)
    assert gap.body.reason == reasons.OUTBOX_CORRUPT
    assert gap.body.first_seq <= 10
    assert gap.body.last_seq >= 14
