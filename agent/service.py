"""The agent service: sampler, usage meter, outbox and uplink, in one main loop.

:meth:`AgentService.start` opens everything (refusing a device key that others can read),
:meth:`AgentService.step` does one iteration and returns when it next has work,
:meth:`AgentService.run` loops until asked to stop, and :meth:`AgentService.shutdown`
stops sampling, does one bounded final flush and closes everything. Tests drive ``step``
with a manual clock; the CLI calls ``run``.

One iteration: move the simulated world (``--simulate`` only), read every sensor that is
due (a failing sensor is counted and skipped; it never stops another), feed the usage
meter, emit a usage record when one is due, close the outbox's group commit when its
window has passed, finish a key rotation the gateway has answered, watch the uplink thread
and whether receipts still arrive, refresh ``status.json`` and ping systemd's watchdog (only
here, so a hung loop is noticed).
"""

from __future__ import annotations

import logging
import os
import random
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from agent.clock import Clock
from agent.config import AgentConfig, broker_settings
from agent.credits import MeterDamaged, UsageMeter
from agent.grants import GRANTS_FILE, GrantBook
from agent.identity import Identity, KeyFiles, load_identity
from agent.local_mqtt import DeviceInfo, LocalPublisher, device_entities
from agent.local_mqtt.discovery import reading_states, status_states
from agent.local_mqtt.payout import PayoutWatcher
from agent.outbox import DatabaseCorrupt, DeviceState, Outbox
from agent.outbox.durability import DurabilityLost
from agent.policy import PolicyInbox
from agent.quality import QUALITY_FILE, QualityNotes
from agent.records import RecordFactory, RecordWriter
from agent.rotation import KeyRotator, RotationState, Step
from agent.sensors import (
    DigitalInputSensor,
    Reading,
    Sensor,
    SensorSet,
    SimulatedHardware,
    build_sensors,
)
from agent.status import CREDITS_FILE, OUTBOX_FILE, STATE_FILE, status_document, write_status
from agent.uplink import BrokerSettings, MqttTransport, Uplink
from agent.uplink.uplink import TransportFactory
from agent.usage_reports import UsageReporter
from osutil.cli import package_version
from osutil.sdnotify import Notifier
from protocol.errors import ConfigError, SensorReadError, StorageError
from protocol.keys import SigningKey, load_device_key

log = logging.getLogger(__name__)

IDLE_WAKE_MS = 1000  # the loop runs at least this often (meter polling, watchdogs)


@dataclass
class _Schedule:
    sensor: Sensor
    next_ms: int  # the next regular slot (the cadence)
    retry_ms: int | None = None  # a failed slot's read, tried again when the driver allows

    @property
    def due_ms(self) -> int:
        return self.next_ms if self.retry_ms is None else min(self.next_ms, self.retry_ms)


@dataclass
class ServiceOptions:
    """Things tests and the CLI inject."""

    environ: dict[str, str] = field(default_factory=dict)
    rng: random.Random | None = None
    random_bytes: Callable[[int], bytes] = os.urandom
    transport_factory: TransportFactory = MqttTransport
    broker: BrokerSettings | None = None  # resolved from config (password file) if None
    # The simulated world's true time (default: the agent's wall clock). Tests that step the
    # device's wall clock keep the world on its own time, as a real TV would be.
    world_wall_s: Callable[[], float] | None = None
    # Called at each step of a key rotation (agent/rotation.py); crash tests stop there.
    rotation_step: Step | None = None
    # Called with every reading a sensor hands over, before it is written (the kill test
    # notes them outside the agent: tests/agent/handover_agent.py).
    on_reading: Callable[[Reading], None] | None = None


class NoWorkingSensors(ConfigError):
    """No configured sensor could be opened: an agent measuring nothing must not run."""


def _no_sensors_message(sensors: SensorSet) -> str:
    failed = "; ".join(f"{f.config.stream} ({f.config.kind}): {f.detail}"
                       for f in sensors.failures)
    return (f"no sensor could be opened, nothing to measure ({failed}); on a machine "
            f"without this hardware run with --simulate")


class AgentService:
    """One agent: owns the outbox, sensors, meter and uplink between start and shutdown."""

    def __init__(self, config: AgentConfig, clock: Clock, *,
                 sim: SimulatedHardware | None = None,
                 options: ServiceOptions | None = None) -> None:
        self.config = config
        self.clock = clock
        self.sim = sim
        self.options = options or ServiceOptions()
        self.notifier = Notifier(self.options.environ)
        self.counters: Counter[str] = Counter()
        self._warned: set[tuple[str, str]] = set()
        self._next_usage_ms = 0
        self._next_status_ms = 0
        self.uplink: Uplink | None = None
        self.reporter: UsageReporter | None = None
        self._input: DigitalInputSensor | None = None
        self._schedule: list[_Schedule] = []
        self._overdue_since_ms: int | None = None  # receipts overdue since (mono ms)
        self._unanswered_from_ms = 0
        self.local: LocalPublisher | None = None  # the owner's broker ([local_mqtt])
        self.payout: PayoutWatcher | None = None  # the owner's payout notice (payout_url)
        self._local_streams: frozenset[str] = frozenset()
        self._next_local_ms = 0
        self._local_interval_ms = 0
        # Set when the outbox lost durability (a failed fsync): the loop ends, and run()
        # raises it after the shutdown, so the process exits 1 and systemd restarts it.
        self.fatal: DurabilityLost | None = None

    # --- start --------------------------------------------------------------------------

    def start(self) -> None:
        """Open state, outbox, sensors, meter; start a key epoch and the uplink.

        Finishes a key rotation a crash interrupted and announces ``device.next.key`` if
        one is waiting (agent/rotation.py). Raises ConfigError (KeyFileError for a key file
        others can read) or StorageError.
        """
        cfg = self.config
        load_device_key(cfg.key_file)  # refuse a key others can read before opening anything
        broker = self.options.broker or broker_settings(cfg.mqtt)
        # The owner's broker's password file too, before anything is opened.
        local_broker = broker_settings(cfg.local_mqtt.connection) if cfg.local_mqtt else None
        self.sensors = self._build_sensors()  # before any state: refusing to start opens none
        self.state = DeviceState.open(cfg.state_dir / STATE_FILE, self.clock.wall_ms)
        self.outbox = Outbox(cfg.state_dir / OUTBOX_FILE, cfg.outbox, self.state, self.clock)
        self.rotation = KeyRotator(KeyFiles(cfg.key_file), self.outbox,
                                   step=self.options.rotation_step)
        self.rotation.reconcile()  # before anything is signed: the right key in device.key
        self.identity = load_identity(cfg.key_file, self.rotation.device_id)
        self.boot = self.outbox.boot
        self.factory = RecordFactory(self.identity.device_id, self.identity.key, self.boot,
                                     self.clock)
        self.rotation.attach(self.factory, self._use_key)
        self.outbox.attach(self.factory)
        self.grants = GrantBook(cfg.state_dir / GRANTS_FILE)
        self.policy = None if cfg.owner is None else PolicyInbox(
            self.grants, self.outbox, device_id=self.identity.device_id,
            owner=cfg.owner.public_key, streams={s.stream for s in cfg.sensors},
            clock=self.clock, quality=QualityNotes(cfg.state_dir / QUALITY_FILE),
            gateway=cfg.gateway.public_key)
        self.writer = RecordWriter(self.factory, self.outbox, cfg.stream_recipients(),
                                   policy=cfg.epoch, clock=self.clock,
                                   random_bytes=self.options.random_bytes,
                                   grants=self.grants if cfg.owner is not None else None)
        self._open_meter()
        self.writer.start_epoch()
        self._guarded(self.rotation.begin_if_requested)
        self.outbox.commit()
        self.uplink = self._new_uplink(broker)
        self._broker = broker
        log.info("uplink: connecting to %s", self.uplink.broker_text)
        self.uplink.start()
        if local_broker is not None:
            self._start_local(local_broker)
        log.info("agent started: device %s, boot %d, %d sensors, outbox %s",
                 self.identity.device_id.hex(), self.boot, len(self.sensors.sensors),
                 self.outbox.path)
        self._say_what_earns_and_seals()
        self.notifier.ready(self._status_line())

    def _start_local(self, broker: BrokerSettings) -> None:
        """Start the publisher for the owner's broker (``[local_mqtt]``).

        It gets the entity list and its broker only: nothing it receives can reach the
        record writer or the outbox (agent/local_mqtt/publisher.py)."""
        local = self.config.local_mqtt
        assert local is not None
        self._local_interval_ms = round(local.status_interval_s * 1000)
        owners = self.owner_streams()
        self._local_streams = frozenset(owners if local.streams is None else local.streams)
        device_hex = self.identity.device_id.hex()
        device = DeviceInfo(device_hex, local.device_name or f"edgeproof {device_hex[:8]}",
                            package_version(), local.topic_prefix, local.discovery_prefix)
        entities = device_entities(
            [(s.kind, s.stream) for s in self.config.sensors if s.stream in self._local_streams],
            credit=self.config.usage is not None, payout=local.payout_url is not None)
        client_id = (local.client_id or local.connection.username
                     or f"edgeproof-{device_hex[:16]}")
        self.local = LocalPublisher(device, entities, broker, client_id)
        log.info("local broker: publishing %d entities (streams: %s) to %s", len(entities),
                 ", ".join(sorted(self._local_streams)) or "none", local.connection.url)
        self.local.start()
        owner = self.config.owner
        if local.payout_url is not None and owner is not None:
            self.payout = PayoutWatcher(local.payout_url, local.payout_interval_s,
                                        gateway_key=self.config.gateway.public_key,
                                        owner_key=owner.public_key, offer=self.local.offer)
            log.info("payout notices: asking %s every %.0f s", self.payout.url,
                     local.payout_interval_s)
            self.payout.start()

    def _say_what_earns_and_seals(self) -> None:
        """One info line each when nothing earns credit or a stream is not sealed."""
        usage = self.config.usage
        if usage is None:
            log.info("credit: no [usage] section; this agent earns no credit")
        elif usage.rate_micro_per_hour == 0:
            log.info("credit: usage.rate_micro_per_hour is 0; usage of %s is measured but "
                     "earns no credit (device add/enroll --rate sets it)", usage.input)
        ignored = self.config.ignored_recipients()
        if ignored:
            log.warning("sealing: the owner is pinned, so the recipients configured for %s "
                        "are NOT sealed to; only the owner's signed consents grant access",
                        "; ".join(f"{s} ({', '.join(r)})" for s, r in sorted(ignored.items())))
        plain = self.plaintext_streams()
        if plain:
            log.info("sealing: stream%s %s sent in plaintext (no recipients); device "
                     "add/enroll --recipient NAME seals them", "s" if len(plain) > 1 else "",
                     ", ".join(plain))

    def owner_streams(self) -> list[str]:
        """Configured streams that are the owner's alone: every stream when an owner is
        pinned (each is sealed to the owner's key only; who else reads what goes by derived
        streams, never these), else the plaintext ones. The local broker gets their values
        as read, before sealing; a stream sealed for recipients without an owner never."""
        if self.config.owner is not None:
            return [s.stream for s in self.config.sensors]
        return self.plaintext_streams()

    def plaintext_streams(self) -> list[str]:
        """Configured streams whose values go unsealed (no recipients)."""
        sealed = self.config.stream_recipients()
        return [s.stream for s in self.config.sensors if s.stream not in sealed]

    def _use_key(self, key: SigningKey) -> None:
        self.identity = Identity(key, self.identity.device_id)

    def _build_sensors(self) -> SensorSet:
        cfg = self.config
        # Simulated hardware is passed in only for --simulate (never a fallback).
        backend = "simulated" if self.sim is not None else "hardware"
        sensors = build_sensors(cfg.sensors, backend, sim=self.sim, pin_factory=cfg.pin_factory)
        for failure in sensors.failures:
            self.counters["sensor_build_failures"] += 1
            log.error("sensor %s (%s) unavailable: %s", failure.config.stream,
                      failure.config.kind, failure.detail)
        if not cfg.sensors:
            log.warning("no sensors configured ([[sensors]]): this agent measures nothing")
        elif not sensors.sensors:
            sensors.close()
            message = _no_sensors_message(sensors)
            self.notifier.status(f"not started: {message}")  # systemctl status shows why
            raise NoWorkingSensors(message)
        now = self.clock.mono_ms()
        self._schedule = [_Schedule(s, now) for s in sensors.sensors]
        return sensors

    def _open_meter(self) -> None:
        usage = self.config.usage
        if usage is None:
            return
        meter = UsageMeter(self.config.state_dir / CREDITS_FILE, usage.input,
                           usage.rate_micro_per_hour, usage.checkpoint_interval_s, self.boot,
                           wall_ms=self.clock.wall_ms, on_damaged=self._credits_damaged)
        self.reporter = UsageReporter(meter, self.writer, self.outbox)
        self.reporter.resolve_pending()
        try:
            sensor = self.sensors.by_stream(usage.input)
        except KeyError:
            log.error("usage input %s is unavailable; no usage is measured", usage.input)
            return
        if isinstance(sensor, DigitalInputSensor):
            self._input = sensor
            sensor.watch(lambda on: meter.observe(on, self.clock.mono_ms()))
        self._next_usage_ms = self.clock.mono_ms() + round(usage.report_interval_s * 1000)

    def _credits_damaged(self, moved: Path, why: str) -> None:
        # Declared like a damaged outbox: a loud line, a durable count, shown by `status`.
        log.error("CREDITS DAMAGED: %s (%s). Moved to %s; starting a new usage meter. Usage "
                  "not yet in a usage record (pending claims, the open window) is lost.",
                  self.config.state_dir / CREDITS_FILE, why, moved)
        self.state.count("corrupt_credits")

    def _new_uplink(self, broker: BrokerSettings) -> Uplink:
        return Uplink(self.config.uplink, broker, self.config.gateway,
                      device_id=self.identity.device_id, boot=self.boot, outbox=self.outbox,
                      clock=self.clock, rng=self.options.rng,
                      transport_factory=self.options.transport_factory, policy=self.policy)

    # --- one iteration ------------------------------------------------------------------

    def step(self) -> int:
        """Do whatever is due now; return the monotonic time (ms) of the next work."""
        now = self.clock.mono_ms()
        if self.sim is not None:
            world = self.options.world_wall_s
            self.sim.advance(world() if world else self.clock.wall_ms() / 1000, now)
        self._sample(now)
        self._meter(now)
        self._apply_grants()
        self._guarded(self.outbox.maybe_commit)
        self._guarded(self.rotation.poll)
        self._watch_uplink(now)
        self._watch_receipts(now)
        if now >= self._next_status_ms:
            self._next_status_ms = now + round(self.config.service.status_interval_s * 1000)
            self.write_status()
        if self.local is not None and now >= self._next_local_ms:
            self._next_local_ms = now + self._local_interval_ms
            self._guarded(self._offer_local_status)
        self.counters["loops"] += 1
        self.notifier.watchdog(now, progressed=self.fatal is None)
        return self._next_wake(now)

    def _sample(self, now: int) -> None:
        for item in self._schedule:
            if now < item.due_ms:
                continue
            if now >= item.next_ms:
                interval = round(item.sensor.interval_s * 1000)
                # Keep the cadence; after a long stall, skip missed slots, never burst.
                item.next_ms = max(item.next_ms + interval, now + interval // 2)
            item.retry_ms = None
            try:
                reading = item.sensor.read(now)
            except SensorReadError as exc:
                self._sensor_error(item.sensor, exc)
                # The slot's read is tried again as soon as the driver allows (a DHT22's
                # back-off: 2.1 s after a checksum error), not a whole interval later.
                # A back-off past the next slot moves that slot: never ask too soon.
                due = item.sensor.next_attempt_mono_ms
                if due is not None and due < item.next_ms:
                    item.retry_ms = max(due, now + 1)
                elif due is not None:
                    item.next_ms = due
                continue
            # Never before the hardware allows: a loop that woke late read the chip late,
            # and an interval equal to the chip's spacing would otherwise ask too soon.
            due = item.sensor.next_attempt_mono_ms
            if due is not None:
                item.next_ms = max(item.next_ms, due)
            self.counters["readings"] += 1
            if self.options.on_reading is not None:
                self.options.on_reading(reading)
            self._guarded(partial(self.writer.write_values, reading.stream, reading.values,
                                  reading.mono_ms))
            if self.local is not None and reading.stream in self._local_streams:
                self.local.offer(reading_states(self.local.entities.values(), reading.stream,
                                                reading.values))

    def _apply_grants(self) -> None:
        """A consent or revocation applied, or a grant that began, ended or lost its
        proof (clock): start the key epoch that applies the change now, not at the next
        reading."""
        if self.policy is None:
            return
        self._guarded(lambda: self.grants.forget_ended(self.clock.wall_ms(),
                                                       self.clock.wall_synced()))
        self._guarded(self.writer.refresh_epoch)

    def _sensor_error(self, sensor: Sensor, exc: SensorReadError) -> None:
        self.counters["sensor_errors"] += 1
        key = (sensor.name, exc.reason)
        level = logging.DEBUG if key in self._warned else logging.WARNING
        self._warned.add(key)
        log.log(level, "sensor %s: no reading (%s); counted", sensor.name, exc.reason)

    def _meter(self, now: int) -> None:
        if self.reporter is None:
            return
        meter = self.reporter.meter
        if self._input is not None:
            try:
                active = self._input.is_active()
            except SensorReadError as exc:
                self._sensor_error(self._input, exc)
            else:
                self._guarded(lambda: meter.observe(active, now))
        self._guarded(lambda: meter.tick(now))
        if now >= self._next_usage_ms and self.config.usage is not None:
            self._next_usage_ms = now + round(self.config.usage.report_interval_s * 1000)
            self._guarded(lambda: self.reporter.report(now) if self.reporter else None)

    def _guarded(self, action: Callable[[], object]) -> None:
        """Run a storage action; a damaged outbox or usage meter file is replaced, other
        failures are counted."""
        try:
            action()
        except MeterDamaged as exc:
            self.counters["credits_replaced"] += 1
            log.error("usage meter damaged while running (%s); replacing it", exc)
            try:
                if self.reporter is not None:
                    self.reporter.meter.recover(self.clock.mono_ms())
            except StorageError as again:
                self.counters["storage_errors"] += 1
                log.error("cannot replace the usage meter: %s", again)
        except DurabilityLost as exc:
            self.counters["durability_lost"] += 1
            if self.fatal is None:
                self.fatal = exc
                log.critical("%s; the outbox cannot vouch for what it stores any more, so "
                             "the agent stops: its restart (systemd: Restart=on-failure) "
                             "replays the journal and checks the files", exc)
        except DatabaseCorrupt as exc:
            self.counters["outbox_replaced"] += 1
            log.error("outbox damaged while running (%s); replacing it", exc)
            try:
                self.outbox.recover()
            except StorageError as again:
                self.counters["storage_errors"] += 1
                log.error("cannot replace the outbox: %s", again)
        except StorageError as exc:
            self.counters["storage_errors"] += 1
            log.error("storage error (record not stored, counted): %s", exc)

    def _watch_uplink(self, now: int) -> None:
        uplink = self.uplink
        if uplink is None or uplink.failed:
            return
        stuck_ms = now - uplink.heartbeat_ms
        if uplink.alive() and stuck_ms <= self.config.service.uplink_watchdog_s * 1000:
            return
        self.counters["uplink_restarts"] += 1
        log.error("uplink thread %s; starting a new one",
                  "died" if not uplink.alive() else f"made no progress for {stuck_ms} ms")
        uplink.stop(timeout_s=0)
        self.uplink = self._new_uplink(self._broker)
        self.uplink.start()

    def _watch_receipts(self, now: int) -> None:
        """Say once when sent records go unanswered too long, and once when that ends."""
        if self.uplink is None:
            return
        health = self.uplink.receipt_health(now)
        limit = self.config.uplink.overdue_after_ms
        if self._overdue_since_ms is None:
            if health.waiting_ms is None or health.waiting_ms < limit:
                return
            self._overdue_since_ms = now
            self._unanswered_from_ms = now - health.waiting_ms
            self.counters["receipts_overdue"] += 1
            log.warning("no verified receipt for %d s; %s", health.waiting_ms // 1000,
                        health.problem)
            self.write_status()
            return
        verified = health.last_verified_mono_ms
        if verified is not None and verified >= self._overdue_since_ms:
            log.info("receipts: verified receipts arrive again (none for %d s before)",
                     (verified - self._unanswered_from_ms) // 1000)
            self._overdue_since_ms = None
            self.write_status()

    def receipts_status(self) -> dict[str, object]:
        """Whether receipts are overdue, for how long, and the likely reason."""
        now = self.clock.mono_ms()
        health = self.uplink.receipt_health(now) if self.uplink is not None else None
        waiting = None if health is None or health.waiting_ms is None else health.waiting_ms
        return {
            "overdue": self._overdue_since_ms is not None,
            "waiting_s": None if waiting is None else waiting // 1000,
            "overdue_after_s": self.config.uplink.overdue_after_ms / 1000,
            "problem": health.problem if health is not None and waiting is not None else None,
        }

    def _next_wake(self, now: int) -> int:
        wake = now + IDLE_WAKE_MS
        for item in self._schedule:
            wake = min(wake, item.due_ms)
        if self.reporter is not None:
            wake = min(wake, self._next_usage_ms)
        due = self.outbox.commit_due_ms()
        if due is not None:
            wake = min(wake, due)
        return max(wake, now + 1)

    # --- run, stop ----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop`` is set, then shut down (bounded final flush).

        Raises DurabilityLost, after the shutdown, if an fsync of the outbox failed."""
        while not stop.is_set() and self.fatal is None:
            wake = self.step()
            delay_ms = max(0, wake - self.clock.mono_ms())
            stop.wait(min(delay_ms, IDLE_WAKE_MS) / 1000)
        self.shutdown()
        if self.fatal is not None:
            raise self.fatal

    def shutdown(self) -> None:
        """Stop sampling, emit the usage so far, flush for at most ``final_flush_s``, close."""
        self.notifier.stopping()
        now = self.clock.mono_ms()
        if self.reporter is not None:
            self._guarded(lambda: self.reporter.report(now) if self.reporter else None)
        self._guarded(self.outbox.commit)
        if self.uplink is not None:
            if not self.uplink.failed and self.config.service.final_flush_s > 0:
                done = self.uplink.flush(self.config.service.final_flush_s)
                log.info("final flush %s", "complete" if done else "timed out; records kept")
            self.uplink.stop()
        if self.payout is not None:
            self.payout.stop(0.5)  # a daemon thread; a request in flight is abandoned
        if self.local is not None:
            self._guarded(self._offer_local_status)
            self.local.stop()  # "offline" on the availability topic, then DISCONNECT
        self.write_status()
        if self.reporter is not None:
            self.reporter.meter.close(self.clock.mono_ms())
        self.sensors.close()
        self._guarded(self.outbox.close)
        self.state.close()
        log.info("agent stopped")

    # --- status -------------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        """A JSON-ready snapshot of the running agent (what ``status.json`` holds)."""
        uplink = self.uplink.status() if self.uplink is not None else None
        return {
            "pid": os.getpid(),
            "updated_wall_ms": self.clock.wall_ms(),
            "device_id": self.identity.device_id.hex(),
            "public_key": self.identity.public_key_hex,
            "boot": self.boot,
            # Why the clock's sync state cannot be read (records then say unsynchronised).
            "clock_sync_unknown": getattr(self.clock, "sync_unknown", None),
            "uplink": None if uplink is None or self.uplink is None else {
                "state": uplink.state.value, "error": uplink.error,
                "broker": self.uplink.broker_text,
                "inflight_batches": uplink.inflight_batches, "counters": uplink.counters},
            "receipts": self.receipts_status(),
            "plaintext_streams": self.plaintext_streams(),
            "ignored_recipients": {s: list(r) for s, r in
                                   self.config.ignored_recipients().items()},
            "credit_rate_micro_per_hour": (None if self.config.usage is None
                                           else self.config.usage.rate_micro_per_hour),
            "sensors": [s.status() for s in self.sensors.sensors],
            "sensor_failures": [{"stream": f.config.stream, "reason": f.reason,
                                 "detail": f.detail} for f in self.sensors.failures],
            "usage": self.reporter.meter.status() if self.reporter else None,
            "rotation": self.rotation.status(),
            "grants": self.grants_status(),
            "service": dict(self.counters),
            "local_mqtt": None if self.local is None else {
                **self.local.status(),
                "payout": self.payout.status() if self.payout is not None else None},
        }

    def grants_status(self) -> dict[str, object] | None:
        """The owner's grants as the device applies them, refusals by reason, and what the
        writer made of them (None: this device pins no owner)."""
        if self.policy is None:
            return None
        out = self.grants.status(self.clock.wall_ms(), self.clock.wall_synced())
        out["owner"] = self.config.owner.public_key.hex() if self.config.owner else None
        out["writer"] = dict(self.writer.counters)
        return out

    def _offer_local_status(self) -> None:
        """Usage, credit, outbox and health to the local broker (raises StorageError)."""
        if self.local is not None:
            self.local.offer(status_states(self.status(), self.outbox.stats().as_dict(),
                                           credit=self.config.usage is not None))

    def write_status(self) -> None:
        status = self.status()
        try:
            write_status(self.config.state_dir, status)
        except StorageError as exc:
            self.counters["status_write_errors"] += 1
            log.warning("%s", exc)
        if self.config.metrics is not None:
            self._guarded(partial(self._write_metrics, self.config.metrics.textfile, status))
        self.notifier.status(self._status_line())

    def _write_metrics(self, path: Path, status: dict[str, object]) -> None:
        """The metrics file for node_exporter (agent/metrics.py); prometheus_client is
        imported only by agents that write one (it costs RSS: docs/AGENT.md, "Metrics")."""
        from agent.metrics import write_textfile  # noqa: PLC0415 - only with [metrics]
        outbox = self.outbox.stats().as_dict()
        state = {"boot": self.boot, "corrupt_credits": self.state.get("corrupt_credits")}
        try:
            write_textfile(path, status_document(status, outbox, state))
        except StorageError as exc:
            self.counters["metrics_write_errors"] += 1
            log.warning("%s", exc)

    def _status_line(self) -> str:
        uplink = self.uplink.status() if self.uplink is not None else None
        state = uplink.state.value if uplink else "starting"
        if uplink and uplink.error:
            state = f"FAILED: {uplink.error}"
        if self.rotation.state is RotationState.REJECTED and self.rotation.error:
            state += "; KEY ROTATION REJECTED"
        if self._overdue_since_ms is not None and self.uplink is not None:
            health = self.uplink.receipt_health(self.clock.mono_ms())
            waiting = (health.waiting_ms or 0) // 1000
            state += f"; NO RECEIPTS for {waiting} s: {health.problem}"
        return (f"uplink {state}; outbox {self.outbox.bytes_used} bytes; "
                f"{self.counters['readings']} readings, "
                f"{self.counters['sensor_errors']} sensor errors")
