"""End-to-end benchmark: agent components, a real Mosquitto and a real gateway process.

Everything runs on a provisioned testbed (tests.harness.testbed: ``edgeproof-provision``
fleet, Mosquitto with its generated config and ACL, ``python -m gateway.cli run``). Prints
one line per figure and ends with ONE line of JSON. Never asserts.

  backlog_drain_records_per_s   a day at 1 Hz (86,400 DHT22 readings) is committed to a
                                device's outbox while the broker is down (the agent's own
                                RecordWriter and Outbox, with a fast manual clock); the
                                broker comes back, the agent's Uplink (default settings)
                                drains it; readings / seconds until the last receipt emptied
                                the outbox (goal >= 10,000)
  bare_verify_per_s             bare PyNaCl Ed25519 verifications per second, one thread,
                                same run
  ratio_to_bare_verify          backlog_drain_records_per_s / bare_verify_per_s (goal >= 0.5)
  receipt_latency_p50_ms/p99_ms 50 devices (RecordWriter + Outbox + Uplink each, in this
                                process, default batch and commit settings) reading once a
                                second; time from a reading's write to the receipt removing
                                it from the outbox (goal p99 < 2,000). Records are sent once
                                in the outbox's journal, so the group-commit window (5 s) is
                                not on this path; the batch interval (1 s) is most of it
  receipt_latency_p99_ms_batch_0_5s   the same with 0.5 s batches and a 0.25 s commit window
  wire_bytes_per_reading        MQTT payload bytes per reading as they travelled in that run
                                (counted by a subscriber on every records topic)
  wire_bytes_per_reading_full_batch   the same readings in full default batches (256)
  jws_bytes_per_reading         the same readings as one JSON message each with a compact
                                JWS (EdDSA, Ed25519 via PyNaCl)

    python bench/e2e_bench.py [--readings 86400] [--devices 50] [--latency-s 40]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nacl.signing
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.clock import ManualClock, SystemClock
from agent.outbox import DeviceState, Outbox, OutboxSettings
from agent.records import EpochPolicy, RecordFactory, RecordWriter
from agent.uplink import BrokerSettings, GatewayKey, MqttConfig, Uplink, UplinkSettings
from firmware_sim.stack import SimDevice
from protocol.batch import Batch
from protocol.keys import Secret, SigningKey, load_device_key
from protocol.receipt import Receipt
from protocol.record import Measurement
from protocol.signed import parse_signed_record
from tests.harness.testbed import Testbed

CLIMATE = (Measurement(214, -1, "Cel"), Measurement(473, -1, "%RH"))
DAY_MS = 86_400_000


def log(text: str) -> None:
    print(text, flush=True)


class BenchClock(ManualClock):
    """A manual clock for making the backlog fast, then real time from :meth:`go_live` on
    (continuing from where the manual time stopped, so time never runs backwards)."""

    def __init__(self, wall_ms: int, mono_ms: int) -> None:
        super().__init__(wall_ms=wall_ms, mono_ms=mono_ms, synced=True)
        self._live: tuple[int, int] | None = None
        self._real = SystemClock()  # one, made once: the agent holds one clock too

    def go_live(self) -> None:
        real = self._real
        self._live = (super().wall_ms() - real.wall_ms(), super().mono_ms() - real.mono_ms())

    def wall_ms(self) -> int:
        if self._live is None:
            return super().wall_ms()
        return self._real.wall_ms() + self._live[0]

    def mono_ms(self) -> int:
        if self._live is None:
            return super().mono_ms()
        return self._real.mono_ms() + self._live[1]


class Device:
    """One device's agent pipeline minus sensors: writer, outbox, uplink."""

    def __init__(self, tb: Testbed, creds: SimDevice, workdir: Path, *,
                 clock: SystemClock | BenchClock, outbox_settings: OutboxSettings) -> None:
        workdir.mkdir(parents=True)
        self.tb, self.creds = tb, creds
        self.key: SigningKey = load_device_key(creds.key_file)
        self.device_id = bytes.fromhex(creds.device_id)
        self.state = DeviceState.open(workdir / "state.sqlite", clock.wall_ms)
        self.outbox = TimedOutbox(workdir / "outbox.sqlite", outbox_settings, self.state, clock)
        self.factory = RecordFactory(self.device_id, self.key, self.outbox.boot, clock)
        self.outbox.attach(self.factory)
        self.writer = RecordWriter(self.factory, self.outbox, {}, policy=EpochPolicy(),
                                   clock=clock)
        self.uplink: Uplink | None = None

    def start_uplink(self, verifier_key: str, settings: UplinkSettings | None = None) -> None:
        broker = BrokerSettings(MqttConfig(url=f"mqtt://127.0.0.1:{self.tb.broker_port}",
                                           host="127.0.0.1", port=self.tb.broker_port,
                                           tls=False, username=self.creds.username),
                                password=Secret(self.creds.password.encode()))
        self.uplink = Uplink(settings or UplinkSettings(), broker,
                             GatewayKey.from_text(verifier_key), device_id=self.device_id,
                             boot=self.outbox.boot, outbox=self.outbox, clock=SystemClock())
        self.uplink.start()

    def close(self) -> None:
        if self.uplink is not None:
            self.uplink.stop()
        self.outbox.close()
        self.state.close()


class TimedOutbox(Outbox):
    """The agent's outbox, noting when each record was committed-for and receipted."""

    made: dict[int, float]
    receipted: dict[int, float]

    def note_made(self, seq: int | None) -> None:
        if seq is not None:
            self.made[seq] = time.monotonic()

    def apply_receipt(self, receipt: Receipt, sent: tuple[int, ...] = ()) -> object:  # type: ignore[override]
        result = super().apply_receipt(receipt, sent)
        now = time.monotonic()
        for outcome in receipt.outcomes:
            if outcome.seq is not None:
                self.receipted.setdefault(outcome.seq, now)
        return result


def _timed(outbox: Outbox) -> TimedOutbox:
    assert isinstance(outbox, TimedOutbox)
    if not hasattr(outbox, "made"):
        outbox.made, outbox.receipted = {}, {}
    return outbox


# --- backlog ---------------------------------------------------------------------------------


def backlog_drain(tb: Testbed, work: Path, readings: int) -> dict[str, float]:
    creds = tb.add_device("backlog")
    tb.broker.stop()  # the device's broker is down for the day
    start = int(time.time() * 1000) - readings * 1000
    clock = BenchClock(wall_ms=start, mono_ms=10_000)
    settings = OutboxSettings(max_bytes=1 << 30, commit_max_records=4096)
    device = Device(tb, creds, work / "backlog", clock=clock, outbox_settings=settings)
    _timed(device.outbox)
    t0 = time.perf_counter()
    for _ in range(readings):
        device.writer.write_values("climate", CLIMATE, clock.mono_ms())
        clock.advance(1000)
    device.outbox.commit()
    made_s = time.perf_counter() - t0
    depth = device.outbox.stats().depth
    log(f"backlog: {depth} records committed in {made_s:.1f} s with the broker down "
        f"({device.outbox.bytes_used / 1e6:.1f} MB)")
    tb.start_broker()
    tb.gateway.wait_healthy(60)  # until it is connected to the broker again
    clock.go_live()  # from here on receipts commit on the real group-commit window
    t0 = time.perf_counter()
    device.start_uplink(tb.verifier_key())
    assert device.uplink is not None
    done = device.uplink.flush(600)
    device.outbox.commit()
    took = time.perf_counter() - t0
    left = device.outbox.stats().depth
    counters = dict(device.uplink.counters)
    device.close()
    rate = depth / took
    log(f"backlog: drained {depth - left} of {depth} records in {took:.2f} s "
        f"({rate:,.0f} records/s; flush complete: {done}; uplink {counters})")
    return {"backlog_records": depth, "backlog_drain_s": round(took, 2),
            "backlog_drain_records_per_s": round(rate), "backlog_left": left}


def bare_verify_rate(n: int = 20_000) -> float:
    key = nacl.signing.SigningKey.generate()
    signed = key.sign(b"x" * 120)
    verify = key.verify_key
    t0 = time.perf_counter()
    for _ in range(n):
        verify.verify(signed)
    return n / (time.perf_counter() - t0)


# --- latency ---------------------------------------------------------------------------------


class WireCounter:
    """Counts payload bytes and records on every records topic (a login with the gateway's ACL)."""

    def __init__(self, tb: Testbed) -> None:
        self.bytes = self.records = self.messages = 0
        self.counting = False
        self.sample: list[bytes] = []
        user, password = tb.observer_broker_login()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user,
                             protocol=mqtt.MQTTv5)
        client.username_pw_set(user, password)
        client.on_connect = lambda c, *_: c.subscribe("edgeproof/v1/devices/+/records", qos=0)
        client.on_message = self._on_message
        client.connect("127.0.0.1", tb.broker_port)
        client.loop_start()
        self.client = client

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        if self.counting:
            self.messages += 1
            self.bytes += len(msg.payload)
            records = Batch.from_cbor(bytes(msg.payload)).records
            self.records += len(records)
            if len(self.sample) < 20:
                self.sample += [r for r in records if parse_signed_record(r)[1].stream
                                == "climate"][:20 - len(self.sample)]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def receipt_latency(tb: Testbed, work: Path, devices: int, seconds: float, *,
                    prefix: str = "lat", uplink: UplinkSettings | None = None,
                    outbox: OutboxSettings | None = None
                    ) -> tuple[dict[str, float], list[bytes]]:
    creds = tb.stack.add_devices(prefix, devices)
    clock = SystemClock()
    fleet = [Device(tb, c, work / f"{prefix}{n}", clock=clock,
                    outbox_settings=outbox or OutboxSettings()) for n, c in enumerate(creds)]
    verifier = tb.verifier_key()
    for device in fleet:
        _timed(device.outbox)
        device.start_uplink(verifier, uplink)
    wire = WireCounter(tb)
    stop = threading.Event()
    warmup = 5.0
    began = time.monotonic()

    def read_every_second(device: Device, offset: float) -> None:
        tick = began + offset
        while not stop.is_set():
            stop.wait(max(0.0, tick - time.monotonic()))
            seq = device.writer.write_values("climate", CLIMATE, clock.mono_ms())
            if time.monotonic() - began >= warmup:
                device.outbox.note_made(seq)
            device.outbox.maybe_commit()
            tick += 1.0

    threads = [threading.Thread(target=read_every_second, args=(d, n / devices), daemon=True)
               for n, d in enumerate(fleet)]
    for t in threads:
        t.start()
    time.sleep(warmup)
    wire.counting = True
    time.sleep(seconds)
    wire.counting = False
    stop.set()
    for t in threads:
        t.join()
    time.sleep(6.0)  # the last receipts
    latencies = []
    for device in fleet:
        box = _timed(device.outbox)
        latencies += [(box.receipted[s] - t) * 1000 for s, t in box.made.items()
                      if s in box.receipted]
        missing = [s for s in box.made if s not in box.receipted]
        if missing:
            log(f"latency: device {device.creds.name}: {len(missing)} readings not receipted")
    for device in fleet:
        device.close()
    wire.close()
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[int(len(latencies) * 0.99)]
    log(f"latency ({prefix}): {len(latencies)} readings from {devices} devices at 1 Hz, batch "
        f"interval {(uplink or UplinkSettings()).batch_interval_ms} ms: p50 {p50:.0f} ms, "
        f"p99 {p99:.0f} ms, max {latencies[-1]:.0f} ms")
    per_reading = wire.bytes / max(1, wire.records)
    log(f"wire: {wire.messages} messages, {wire.records} records, {wire.bytes} bytes: "
        f"{per_reading:.0f} bytes per reading")
    return ({"latency_devices": devices, "latency_readings": len(latencies),
             "receipt_latency_p50_ms": round(p50), "receipt_latency_p99_ms": round(p99),
             "wire_bytes_per_reading": round(per_reading, 1)}, wire.sample)


# --- wire size -------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jws_reading(raw: bytes, key: nacl.signing.SigningKey) -> bytes:
    """The reading of signed record ``raw`` as one JSON message with a compact JWS."""
    sign1, record = parse_signed_record(raw)
    header = {"alg": "EdDSA", "kid": sign1.kid.hex()}
    values = record.body.values  # type: ignore[union-attr]
    payload = {"device_id": sign1.kid.hex(), "boot": record.boot, "seq": record.seq,
               "prev": _b64url(record.prev), "wall_ms": record.wall_ms,
               "clock_synced": record.clock_synced, "mono_ms": record.mono_ms,
               "stream": record.stream,
               "values": [{"v": float(m.value), "u": m.unit} for m in values]}
    signing_input = (_b64url(json.dumps(header, separators=(",", ":")).encode()) + "."
                     + _b64url(json.dumps(payload, separators=(",", ":")).encode()))
    signature = key.sign(signing_input.encode()).signature
    return (signing_input + "." + _b64url(signature)).encode()


def wire_sizes(sample: list[bytes]) -> dict[str, float]:
    key = nacl.signing.SigningKey.generate()
    full = (sample * (256 // len(sample) + 1))[:256]
    batch = len(Batch(1, tuple(full)).to_cbor()) / len(full)
    jws = statistics.mean(len(jws_reading(raw, key)) for raw in sample)
    example = jws_reading(sample[0], key)[:72]
    log(f"wire: a full default batch costs {batch:.0f} bytes per reading; one JWS JSON "
        f"message per reading costs {jws:.0f} bytes (it starts {example!r})")
    return {"wire_bytes_per_reading_full_batch": round(batch, 1),
            "jws_bytes_per_reading": round(jws, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readings", type=int, default=86_400)
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--latency-s", type=float, default=40.0)
    args = parser.parse_args(argv)
    result: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="edgeproof-e2e-") as tmp:
        work = Path(tmp)
        with Testbed(work / "tb", checkpoint_interval_s=5.0) as tb:
            bare = bare_verify_rate()
            log(f"bare verify: {bare:,.0f}/s (PyNaCl Ed25519, one thread)")
            result.update(backlog_drain(tb, work, args.readings))
            result["bare_verify_per_s"] = round(bare)
            result["ratio_to_bare_verify"] = round(
                float(result["backlog_drain_records_per_s"]) / bare, 3)  # type: ignore[arg-type]
            latency, sample = receipt_latency(tb, work, args.devices, args.latency_s)
            result.update(latency)
            # What the 2 s default batch interval costs: the same fleet with 0.5 s batches
            # and a 0.25 s group-commit window.
            fast, _ = receipt_latency(
                tb, work, args.devices, args.latency_s, prefix="fast",
                uplink=UplinkSettings(batch_interval_ms=500),
                outbox=OutboxSettings(commit_window_ms=250))
            result["receipt_latency_p99_ms_batch_0_5s"] = fast["receipt_latency_p99_ms"]
            if sample:
                result.update(wire_sizes(sample))
    result["loadavg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
