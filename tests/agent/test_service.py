"""The agent service in-process: sampling, usage, damage, key mode, sd_notify, watchdog."""

from __future__ import annotations

import ctypes
import errno
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main as agent_main
from agent.clock import ManualClock, SystemClock
from agent.config import AgentConfig, parse_config
from agent.credits import MeterDamaged, UsageMeter
from agent.identity import create_identity
from agent.outbox import DeviceState, Outbox, OutboxSettings
from agent.outbox import durability as durability_module
from agent.outbox.durability import DurabilityLost
from agent.records import EpochPolicy, RecordFactory, RecordWriter
from agent.sensors import load_simulated_hardware
from agent.service import AgentService, ServiceOptions
from agent.status import collect_status
from agent.usage_reports import UsageReporter
from firmware_sim.broker import MosquittoBroker
from firmware_sim.hardware import DHTFaults, TvSchedule
from osutil.sdnotify import Notifier
from protocol import reasons
from protocol.errors import KeyFileError, TransportError
from protocol.keys import SigningKey, device_id_for, load_device_key
from protocol.record import Gap, Usage, Values
from protocol.signed import parse_signed_record, record_hash
from tests.agent.responder import RATE, RealGateway, Responder
from tests.harness.waiting import within

UNREACHABLE = "mqtt://127.0.0.1:9"  # discard port: nothing listens


def config(state_dir: Path, broker: str, gateway_key: str, **sections: Any) -> AgentConfig:
    data: dict[str, Any] = {
        "agent": {"state_dir": str(state_dir)},
        "mqtt": {"broker": broker},
        "gateway": {"key": gateway_key},
        "outbox": {"commit_window_s": 0.05},
        "uplink": {"batch_interval_s": 0.1, "receipt_timeout_s": 2.0, "backoff_min_s": 0.1,
                   "backoff_max_s": 0.5},
        "service": {"final_flush_s": 0.0, "status_interval_s": 0.5},
        "sensors": [{"kind": "cpu_temp", "stream": "cpu", "interval_s": 1.0}],
    }
    data.update(sections)
    cfg = parse_config(data, state_dir)
    create_identity(cfg.key_file)
    return cfg


def evening(seed: int = 1) -> float:
    """A world time at which the simulated TV is on (for a minute at least)."""
    start, _end = TvSchedule(seed).sessions_on_day(20_000)[0]
    return float(start + 60)


@pytest.fixture
def gateway_key() -> str:
    return Responder("mqtt://127.0.0.1:1").verifier_key


def outbox_records(service: AgentService) -> list[Any]:
    service.outbox.commit()
    return [parse_signed_record(raw)[1] for _, raw in service.outbox.unsent(-1, 10**6, 1 << 30)]


def test_dht22_failures_are_counted_and_produce_no_reading(tmp_path: Path,
                                                         gateway_key: str) -> None:
    cfg = config(tmp_path, UNREACHABLE, gateway_key, sensors=[
        {"kind": "dht22", "stream": "climate", "pin": 4, "interval_s": 2.5}])
    clock = ManualClock(wall_ms=int(evening() * 1000))
    sim = load_simulated_hardware(3, tmp_path, clock,
                                  dht_faults=DHTFaults(checksum=0.3, full_buffer=0.3))
    service = AgentService(cfg, clock, sim=sim)
    service.start()
    try:
        for _ in range(60):
            clock.advance(2500)
            service.step()
        sensor = service.sensors.by_stream("climate")
        climate = [r for r in outbox_records(service) if r.stream == "climate"]
        failures = sum(sensor.errors.values())
        assert failures > 5
        assert sensor.reads_ok > 5
        assert len(climate) == sensor.reads_ok  # a failed read wrote nothing
        assert service.counters["sensor_errors"] == failures
        assert len({r.mono_ms for r in climate}) == len(climate)  # no value stamped twice
        assert service.status()["sensors"][0]["errors"] == dict(sensor.errors)
    finally:
        service.shutdown()
        sim.close()


def run_loop(service: AgentService, clock: ManualClock, minutes: int,
             late_ms: Callable[[], int] = lambda: 0) -> None:
    """The service's own loop on a manual clock: wake when ``step`` says (plus ``late_ms``,
    as a real ``Event.wait`` wakes a little late)."""
    end = clock.mono_ms() + minutes * 60_000
    while clock.mono_ms() < end:
        wake = service.step()
        clock.advance(max(1, wake - clock.mono_ms()) + late_ms())


def dht22_service(tmp_path: Path, gateway_key: str, interval_s: float, *, checksum: float
                  ) -> tuple[AgentService, ManualClock, Any]:
    """A started agent with one simulated DHT22 that fails ``checksum`` of its reads."""
    cfg = config(tmp_path, UNREACHABLE, gateway_key, sensors=[
        {"kind": "dht22", "stream": "climate", "pin": 4, "interval_s": interval_s}])
    clock = ManualClock(wall_ms=int(evening() * 1000))
    sim = load_simulated_hardware(3, tmp_path, clock,
                                  dht_faults=DHTFaults(checksum=checksum, full_buffer=0.0))
    service = AgentService(cfg, clock, sim=sim)
    service.start()
    return service, clock, sim


def test_a_failed_dht22_read_is_retried_at_its_back_off_not_a_whole_interval_later(
        tmp_path: Path, gateway_key: str) -> None:
    # Before: the sampler never asked at the driver's back-off time, so each checksum error
    # (routine on a Pi) cost a whole 30-s slot: 25 readings from 41 attempts in 20 minutes.
    service, clock, sim = dht22_service(tmp_path, gateway_key, 30, checksum=0.3)
    try:
        run_loop(service, clock, 20)
        sensor = service.sensors.by_stream("climate")
        assert sensor.errors["checksum"] > 5
        assert sensor.errors["too_soon"] == 0
        assert sensor.reads_ok >= 35  # of 40 slots (25 before): most read after a retry or two
        climate = [r.mono_ms for r in outbox_records(service) if r.stream == "climate"]
        assert len(climate) == sensor.reads_ok
        assert all(b - a >= 2100 for a, b in pairwise(climate))  # the chip's spacing held
    finally:
        service.shutdown()
        sim.close()


def test_a_dht22_at_its_minimum_interval_is_never_asked_too_soon_by_a_late_loop(
        tmp_path: Path, gateway_key: str) -> None:
    # Before: slots kept their cadence from the schedule, not from when the chip was read,
    # so a loop waking 0-5 ms late asked 2.1 s after a late read: too_soon, a lost reading.
    service, clock, sim = dht22_service(tmp_path, gateway_key, 2.1, checksum=0.0)
    rng = random.Random(7)
    try:
        run_loop(service, clock, 2, late_ms=lambda: rng.randrange(6))
        sensor = service.sensors.by_stream("climate")
        assert sensor.errors["too_soon"] == 0
        assert sensor.reads_ok >= 55  # 120 s at one reading every 2.1 s and a few ms
    finally:
        service.shutdown()
        sim.close()


def test_a_failing_sensor_never_stops_the_others(tmp_path: Path, gateway_key: str) -> None:
    cfg = config(tmp_path, UNREACHABLE, gateway_key, sensors=[
        {"kind": "dht22", "stream": "climate", "pin": 4, "interval_s": 2.5},
        {"kind": "cpu_temp", "stream": "cpu", "interval_s": 2.5}])
    clock = ManualClock(wall_ms=int(evening() * 1000))
    faults = DHTFaults(checksum=0.0, full_buffer=0.0, not_found=1.0)
    sim = load_simulated_hardware(3, tmp_path, clock, dht_faults=faults)
    service = AgentService(cfg, clock, sim=sim)
    service.start()
    try:
        for _ in range(10):
            clock.advance(2500)
            service.step()
        streams = [r.stream for r in outbox_records(service)]
        assert "climate" not in streams
        assert streams.count("cpu") >= 10
    finally:
        service.shutdown()
        sim.close()


class JumpClock(SystemClock):
    """The real clocks, except that the wall clock can be stepped."""

    def __init__(self, wall_start_s: float) -> None:
        super().__init__()
        self._mono0 = time.monotonic_ns() // 1_000_000
        self._wall0 = int(wall_start_s * 1000)
        self.offset_ms = 0

    def wall_ms(self) -> int:
        return self._wall0 + (self.mono_ms() - self._mono0) + self.offset_ms

    def world_s(self) -> float:
        return (self._wall0 + self.mono_ms() - self._mono0) / 1000


def test_wall_clock_jump_backwards_keeps_order_and_usage(
        tmp_path: Path, broker: MosquittoBroker) -> None:
    gateway = RealGateway(tmp_path / "gw", broker)
    state = tmp_path / "agent"
    cfg = config(state, broker.url, gateway.verifier,
                 sensors=[{"kind": "power_sense", "stream": "tv", "pin": 17, "interval_s": 0.1},
                          {"kind": "cpu_temp", "stream": "cpu", "interval_s": 0.1}],
                 usage={"input": "tv", "rate_micro_per_hour": RATE,
                        "checkpoint_interval_s": 0.2, "report_interval_s": 0.4},
                 service={"final_flush_s": 60.0, "status_interval_s": 1.0})
    clock = JumpClock(evening())
    sim = load_simulated_hardware(1, state, clock)
    service = AgentService(cfg, clock, sim=sim,
                           options=ServiceOptions(world_wall_s=clock.world_s))
    device_id = gateway.register("jumper", create_or_load_public(cfg))
    stop = threading.Event()
    runner = threading.Thread(target=service.run, args=(stop,))
    try:
        service.start()
        runner.start()

        def usage_logged() -> int:
            return sum(r["stream"] == "usage" for r in gateway.records(device_id))
        # Conditions, not a fixed time: usage logged before the jump, and more after it.
        assert wait_until(lambda: usage_logged() >= 2)
        clock.offset_ms = -3_600_000  # NTP-less Pi after a power cut: an hour back
        before = usage_logged()
        assert wait_until(lambda: usage_logged() >= before + 2)
        stop.set()
        runner.join(20)
        sim.close()
        logged = gateway.records(device_id)
        registry = gateway.device(device_id)
    finally:
        gateway.stop()
    status = collect_status(state)
    assert status["outbox"] == {**status["outbox"], "depth": 0, "dead_letters": {}}  # type: ignore[dict-item]
    raws = [bytes.fromhex(r["record"]) for r in logged]
    records = [parse_signed_record(raw)[1] for raw in raws]
    assert [r.seq for r in records] == list(range(len(records)))  # order is the sequence
    for (raw, before), (_, after) in pairwise(zip(raws, records, strict=True)):
        assert after.prev == record_hash(raw)
        assert after.mono_ms >= before.mono_ms
    walls = [r.wall_ms for r in records]
    assert any(b < a for a, b in pairwise(walls))  # the jump is visible, and accepted
    usage = [r.body for r in records if isinstance(r.body, Usage)]
    assert len(usage) >= 3
    for a, b in pairwise(usage):
        assert b.start_mono_ms == a.end_mono_ms  # contiguous, no overlap, nothing twice
    assert all(u.usage_ms == u.end_mono_ms - u.start_mono_ms for u in usage)  # TV was on
    assert registry["settled_micro"] == sum(u.credit_micro for u in usage) > 0


def wait_until(predicate: Callable[[], bool], timeout_s: float = 60.0) -> bool:
    """Poll ``predicate`` until it holds; the bound is generous (a slow, loaded machine)."""
    return within(predicate, timeout_s, every_s=0.05)


def create_or_load_public(cfg: AgentConfig) -> bytes:
    return load_device_key(cfg.key_file).public_key


def test_corrupt_outbox_is_moved_aside_and_the_agent_keeps_running(
        tmp_path: Path, gateway_key: str) -> None:
    cfg = config(tmp_path, UNREACHABLE, gateway_key)
    (tmp_path / "outbox.sqlite").write_bytes(b"\x00garbage" * 1000)
    clock = ManualClock()
    sim = load_simulated_hardware(1, tmp_path, clock)
    service = AgentService(cfg, clock, sim=sim)
    service.start()
    try:
        for _ in range(3):
            clock.advance(1000)
            service.step()
        assert list(tmp_path.glob("outbox.sqlite.corrupt-*"))
        records = outbox_records(service)
        assert isinstance(records[0].body, Gap)
        assert records[0].body.reason == reasons.OUTBOX_CORRUPT
        assert [r.stream for r in records[1:]] == ["cpu"] * 3
        assert service.outbox.stats().corrupt_outboxes == 1
    finally:
        service.shutdown()
        sim.close()


class FsyncFailsOnce:
    """``os`` as the outbox's fsync sees it: once armed, one fsync fails with EIO (an SD
    card's transient write error; Linux reports a failed write-back once)."""

    def __init__(self) -> None:
        self.armed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def fsync(self, fd: int) -> None:
        if self.armed:
            self.armed = False
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        os.fsync(fd)


def test_a_clock_whose_sync_state_cannot_be_read_says_why_once(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = SystemClock()

    def refused(buf: object) -> int:  # adjtimex under a seccomp filter (ProtectClock=)
        ctypes.set_errno(errno.EPERM)
        return -1

    clock._adjtimex = refused  # noqa: SLF001 - below our code: the C library's answer
    assert clock._ask_kernel() is False  # noqa: SLF001
    assert clock._ask_kernel() is False  # noqa: SLF001
    assert clock.sync_unknown == "adjtimex: Operation not permitted"
    said = [r for r in caplog.records if "cannot read whether the clock" in r.getMessage()]
    assert len(said) == 1


def test_a_failed_fsync_stops_the_agent_with_an_error_and_its_restart_loses_nothing(
        tmp_path: Path, gateway_key: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # Before: the outbox failed every commit from then on while the agent sampled on,
    # fed the watchdog and held records in memory past max_bytes, never restarted.
    cfg = config(tmp_path, UNREACHABLE, gateway_key)
    clock = ManualClock()
    sim = load_simulated_hardware(1, tmp_path, clock)
    service = AgentService(cfg, clock, sim=sim)
    disk = FsyncFailsOnce()
    monkeypatch.setattr(durability_module, "os", disk)
    service.start()
    disk.armed = True  # the next fsync, a group commit's in the background, fails

    def stopping() -> bool:
        clock.advance(1000)
        service.step()
        return service.fatal is not None

    try:
        assert within(stopping), "the agent went on after a failed fsync"
        assert not disk.armed
        with pytest.raises(DurabilityLost, match="fsync failed: Input/output error"):
            service.run(threading.Event())  # ends at once: shuts down, then raises
        assert service.counters["durability_lost"] >= 1
        assert "the agent stops" in caplog.text
        readings = service.counters["readings"]
        assert readings >= 2
    finally:
        sim.close()
    # What systemd does next (Restart=on-failure): a new process on the same files.
    again = AgentService(cfg, clock, sim=(sim := load_simulated_hardware(1, tmp_path, clock)))
    again.start()
    try:
        streams = [r.stream for r in outbox_records(again)]
        assert streams.count("cpu") == readings  # every reading stored before the stop
    finally:
        again.shutdown()
        sim.close()


def test_corrupt_credits_file_is_moved_aside_counted_shown_and_the_agent_keeps_running(
        tmp_path: Path, gateway_key: str, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(tmp_path, UNREACHABLE, gateway_key,
                 sensors=[{"kind": "power_sense", "stream": "tv", "pin": 17, "interval_s": 1.0}],
                 usage={"input": "tv", "rate_micro_per_hour": RATE,
                        "checkpoint_interval_s": 1.0, "report_interval_s": 2.0})
    (tmp_path / "credits.sqlite").write_bytes(b"\x00garbage" * 1000)
    clock = ManualClock(wall_ms=int(evening() * 1000))
    sim = load_simulated_hardware(1, tmp_path, clock)
    service = AgentService(cfg, clock, sim=sim)
    service.start()  # before: StorageError at every start, a restart loop under systemd
    try:
        for _ in range(5):
            clock.advance(1000)
            service.step()
        moved = list(tmp_path.glob("credits.sqlite.corrupt-*"))
        assert len(moved) == 1
        assert moved[0].read_bytes().startswith(b"\x00garbage")
        assert "CREDITS DAMAGED" in caplog.text
        usage = [r.body for r in outbox_records(service) if isinstance(r.body, Usage)]
        assert usage
        assert usage[0].usage_ms > 0
    finally:
        service.shutdown()
        sim.close()
    status = collect_status(tmp_path)
    assert status["credit"]["corrupt_credits"] == 1  # type: ignore[index]
    capsys.readouterr()
    assert agent_main(["status", "--state-dir", str(tmp_path)]) == 0
    assert "1 damaged credits files replaced" in capsys.readouterr().out


def test_credits_file_damaged_while_running_is_replaced_not_the_outbox(
        tmp_path: Path, gateway_key: str) -> None:
    cfg = config(tmp_path, UNREACHABLE, gateway_key,
                 sensors=[{"kind": "power_sense", "stream": "tv", "pin": 17, "interval_s": 1.0}],
                 usage={"input": "tv", "rate_micro_per_hour": RATE,
                        "checkpoint_interval_s": 1.0, "report_interval_s": 2.0})
    clock = ManualClock(wall_ms=int(evening() * 1000))
    sim = load_simulated_hardware(1, tmp_path, clock)
    service = AgentService(cfg, clock, sim=sim)
    service.start()
    try:
        clock.advance(1000)
        service.step()
        assert service.reporter is not None
        meter = service.reporter.meter

        def damaged(now_mono_ms: int) -> None:
            raise MeterDamaged("usage meter tv: database disk image is malformed")
        meter.tick = damaged  # type: ignore[method-assign]  # what SQLITE_CORRUPT raises
        clock.advance(1000)
        service.step()
        del meter.tick
        assert service.counters["credits_replaced"] == 1
        assert service.counters["outbox_replaced"] == 0
        assert list(tmp_path.glob("credits.sqlite.corrupt-*"))
        assert not list(tmp_path.glob("outbox.sqlite.corrupt-*"))
        for _ in range(4):
            clock.advance(1000)
            service.step()
        assert any(isinstance(r.body, Usage) for r in outbox_records(service))
    finally:
        service.shutdown()
        sim.close()
    assert collect_status(tmp_path)["credit"]["corrupt_credits"] == 1  # type: ignore[index]


def test_key_file_readable_by_others_refuses_to_start(tmp_path: Path, gateway_key: str) -> None:
    cfg = config(tmp_path, UNREACHABLE, gateway_key)
    cfg.key_file.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        AgentService(cfg, ManualClock()).start()


def test_sd_notify_ready_status_and_watchdog_only_after_progress(
        tmp_path: Path, gateway_key: str) -> None:
    path = tmp_path / "notify"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(2)
    cfg = config(tmp_path, UNREACHABLE, gateway_key)
    clock = ManualClock()
    sim = load_simulated_hardware(1, tmp_path, clock)
    environ = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"}
    service = AgentService(cfg, clock, sim=sim, options=ServiceOptions(environ=environ))
    service.start()

    def pings() -> int:
        server.settimeout(0.2)
        got = []
        try:
            while True:
                got.append(server.recv(4096))
        except TimeoutError:
            pass
        return got.count(b"WATCHDOG=1")

    try:
        assert server.recv(4096).startswith(b"READY=1\nSTATUS=")
        service.step()
        assert pings() == 1  # the first loop made progress
        service.step()
        assert pings() == 0  # less than half the interval since the last ping
        clock.advance(1000)
        service.step()
        assert pings() == 1
    finally:
        service.shutdown()
        sim.close()
        server.close()


def test_sd_notify_reaches_an_abstract_socket() -> None:
    name = f"edgeproof-test-{time.monotonic_ns()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    server.settimeout(2)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        notifier.status("hello")
        assert server.recv(100) == b"STATUS=hello"
        assert not Notifier({}).notify("READY=1")  # outside systemd: a no-op
    finally:
        server.close()


class HungTransport:
    """A network layer whose connect never returns (what the watchdog is for)."""

    def __init__(self, *_args: object) -> None:
        self.released = threading.Event()
        self.up = False

    def connect(self) -> None:
        self.released.wait(30)
        raise TransportError("released")

    def close(self) -> None:
        self.released.set()


def test_stuck_uplink_thread_is_replaced_by_the_watchdog(tmp_path: Path,
                                                        gateway_key: str) -> None:
    cfg = config(tmp_path, UNREACHABLE, gateway_key, service={"final_flush_s": 0.0,
                                                              "uplink_watchdog_s": 5.0})
    clock = ManualClock()
    sim = load_simulated_hardware(1, tmp_path, clock)
    made: list[HungTransport] = []

    def factory(*args: object) -> Any:
        made.append(HungTransport(*args))
        return made[-1]

    service = AgentService(cfg, clock, sim=sim,
                           options=ServiceOptions(transport_factory=factory))
    service.start()
    try:
        time.sleep(0.2)
        service.step()
        assert service.counters["uplink_restarts"] == 0
        clock.advance(6000)
        service.step()
        assert service.counters["uplink_restarts"] == 1
    finally:
        for t in made:
            t.released.set()
        service.shutdown()
        sim.close()


def _reporter(tmp_path: Path, boot_meter: UsageMeter | None = None) -> tuple[UsageReporter,
                                                                              Outbox]:
    clock = ManualClock()
    state = DeviceState.open(tmp_path / "state.sqlite", clock.wall_ms)
    outbox = Outbox(tmp_path / "outbox.sqlite", OutboxSettings(), state, clock)
    key = SigningKey.generate()
    factory = RecordFactory(device_id_for(key.public_key), key, outbox.boot, clock)
    outbox.attach(factory)
    writer = RecordWriter(factory, outbox, {}, policy=EpochPolicy(), clock=clock)
    meter = boot_meter or UsageMeter(tmp_path / "credits.sqlite", "tv", 3_600_000, 60.0,
                                     outbox.boot)
    return UsageReporter(meter, writer, outbox), outbox


def test_usage_claim_left_by_a_crash_is_emitted_exactly_once(tmp_path: Path) -> None:
    reporter, outbox = _reporter(tmp_path)
    meter = reporter.meter
    meter.observe(True, 1000)
    claim = meter.take_usage(5000)
    assert claim is not None  # claimed, then "crash" before the record was written
    assert reporter.resolve_pending() == 1
    assert reporter.resolve_pending() == 0
    usage = [r for r in outbox.records_of_stream("usage")]
    assert len(usage) == 1
    body = parse_signed_record(usage[0][1])[1].body
    assert body == claim
    assert meter.emitted_micro == claim.credit_micro


def test_usage_record_already_in_the_outbox_is_not_written_again(tmp_path: Path) -> None:
    reporter, outbox = _reporter(tmp_path)
    meter = reporter.meter
    meter.observe(True, 1000)
    claim = meter.take_usage(5000)
    assert claim is not None
    # Written, then "crash" before commit: the reporter's own writer, as in the crash.
    reporter._writer.write_usage(claim, meter.boot)  # noqa: SLF001
    outbox.commit()
    assert reporter.resolve_pending() == 0
    assert len(outbox.records_of_stream("usage")) == 1
    assert meter.pending_claims() == []


def test_values_of_streams_without_recipients_are_plaintext(tmp_path: Path,
                                                            gateway_key: str) -> None:
    cfg = config(tmp_path, UNREACHABLE, gateway_key)
    clock = ManualClock()
    sim = load_simulated_hardware(1, tmp_path, clock)
    service = AgentService(cfg, clock, sim=sim)
    service.start()
    try:
        service.step()
        (record,) = outbox_records(service)
        assert isinstance(record.body, Values)
    finally:
        service.shutdown()
        sim.close()
