"""Ingest flood benchmark: one enrolled device floods, an honest one keeps sending.

Everything on loopback: a private Mosquitto and the real gateway (``python -m gateway.cli
run``, a child process, ``firmware_sim.procs.GatewayProcess``). Two registered devices:

- *honest* sends one record per second (QoS 1, a batch of one record) and, like the agent,
  sends a record again (new batch id) when no receipt arrived within ``--receipt-timeout``
  seconds (the testbed agents' 3 s); its latency is first send to receipt;
- *flooder* publishes QoS 0 batches of 1,000 records whose signatures do not verify.

Phases, in one run against the same gateway:

1. ``baseline``: the honest device alone (``--baseline`` seconds);
2. ``paced``: the flooder sends 300 batches per second for ``--flood`` seconds;
3. ``burst``: the flooder sends ``--burst`` batches as fast as it can.

Each flood phase lasts until every flood message is answered by a receipt or counted as
dropped by the gateway (``ingest_dropped``), plus the honest records' receipts; the time
from the first flood message to that point is ``busy_s``. For each phase: the gateway's
peak RSS (``VmHWM`` from /proc; the peak is reset between phases through
``/proc/<pid>/clear_refs``), honest receipt latency median/p99/max, honest resends, flood
batches verified and dropped, and the ratios of the flood phases' latency to the baseline.
Prints progress to stderr and ends with ONE line of JSON on stdout. Never asserts.

Run: ``python bench/ingest_flood_bench.py [--baseline 15] [--flood 5] [--burst 1500]``.
``--gateway-repo DIR`` runs the gateway from another checkout (to compare with an older
commit); the devices, broker and measurements stay the same.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from firmware_sim.broker import MosquittoBroker, free_port  # noqa: E402
from firmware_sim.procs import GatewayProcess  # noqa: E402
from protocol import cbor  # noqa: E402
from protocol.batch import BATCH_VERSION, Batch, receipts_topic, records_topic  # noqa: E402
from protocol.cose import decode_sign1  # noqa: E402
from protocol.receipt import Receipt  # noqa: E402
from tests.gateway.gwkit import TestDevice, register, write_gateway_files  # noqa: E402

FLOOD_RECORDS = 1000
PACED_PER_S = 300
MAX_PHASE_S = 300.0  # no phase waits longer than this for its last answer


def log(message: str) -> None:
    print(f"[ingest_flood_bench] {message}", file=sys.stderr, flush=True)


def proc_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def reset_peak(pid: int) -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0, our own child)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@dataclass
class _Pending:
    seq: int
    first_sent: float
    batch_ids: list[int] = field(default_factory=list)
    deadline: float = 0.0


class HonestDevice:
    """Sends one record per second, resends on a receipt time-out, measures latency."""

    def __init__(self, port: int, device: TestDevice, receipt_timeout_s: float) -> None:
        self.device, self.timeout = device, receipt_timeout_s
        self.latencies: list[tuple[float, float]] = []  # (first sent, latency)
        self.resends: list[float] = []  # when a resend happened
        self._pending: dict[int, _Pending] = {}  # by batch id
        self._lock = threading.Lock()
        self._batch = 0
        self._stop = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-honest",
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(receipts_topic(device.device_id), qos=1)
        self.client.loop_start()
        subscribed.wait(10)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _send(self, entry: _Pending, raw: bytes, now: float) -> None:
        self._batch += 1
        entry.batch_ids.append(self._batch)
        entry.deadline = now + self.timeout
        self._pending[self._batch] = entry
        self.client.publish(records_topic(self.device.device_id),
                            Batch(self._batch, (raw,)).to_cbor(), qos=1)

    def _run(self) -> None:
        raws: dict[int, bytes] = {}
        next_send = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            with self._lock:
                if now >= next_send:
                    signed = self.device.next()
                    raws[signed.record.seq] = signed.raw
                    self._send(_Pending(signed.record.seq, now), signed.raw, now)
                    next_send += 1.0
                for entry in {id(e): e for e in self._pending.values()}.values():
                    if now >= entry.deadline:
                        self.resends.append(now)
                        self._send(entry, raws[entry.seq], now)
            self._stop.wait(0.05)

    def _on_message(self, client: object, userdata: object, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        receipt = Receipt.from_cbor(decode_sign1(bytes(msg.payload)).payload)
        with self._lock:
            entry = self._pending.get(receipt.batch_id)
            if entry is None:
                return  # a late receipt for a record already answered
            for batch_id in entry.batch_ids:
                self._pending.pop(batch_id, None)
            self.latencies.append((entry.first_sent, now - entry.first_sent))

    def outstanding(self) -> int:
        with self._lock:
            return len({id(e) for e in self._pending.values()})

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.loop_stop()
        self.client.disconnect()


class Flooder:
    """QoS 0 publisher of bad-signature batches; counts its receipts (verified floods)."""

    def __init__(self, port: int, device: TestDevice, evade: bytes | None) -> None:
        good = [device.next().raw for _ in range(FLOOD_RECORDS - (evade is not None))]
        bad = [raw[:-1] + bytes([raw[-1] ^ 1]) for raw in good]
        # With ``evade``, every batch ends with a logged good record (answered "duplicate"),
        # so the device never sends 256 bad signatures in a row: only the fair share helps.
        self.records = tuple(bad + ([evade] if evade is not None else []))
        self.topic = records_topic(device.device_id)
        self.answered = 0
        self._batch = 1 << 40
        self._tail: bytes | None = None
        payload = self.payload()
        assert payload == Batch(self._batch, self.records).to_cbor()  # the shortcut is exact
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-flooder",
                                  protocol=mqtt.MQTTv5)
        self.client.max_queued_messages_set(0)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(receipts_topic(device.device_id), qos=1)
        self.client.loop_start()
        subscribed.wait(10)

    def _on_message(self, client: object, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self.answered += 1

    def payload(self) -> bytes:
        """The next flood batch: only the batch id changes, so encode the records once."""
        self._batch += 1
        if self._tail is None:
            self._tail = cbor.encode(list(self.records))
        head = cbor.encode({1: BATCH_VERSION, 2: self._batch, 3: []})[:-1]  # without "[]"
        return head + self._tail

    def send(self, n: int, per_s: float | None) -> None:
        start = time.monotonic()
        infos = []
        for i in range(n):
            if per_s is not None:
                delay = start + i / per_s - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            infos.append(self.client.publish(self.topic, self.payload(), qos=0))
        for info in infos:
            info.wait_for_publish(60)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _publish_once(port: int, device: TestDevice, raw: bytes) -> None:
    """Log one good record of ``device`` (QoS 1) and wait for its receipt."""
    answered = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-flooder-setup",
                         protocol=mqtt.MQTTv5)
    client.on_message = lambda *a: answered.set()
    subscribed = threading.Event()
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect("127.0.0.1", port)
    client.subscribe(receipts_topic(device.device_id), qos=1)
    client.loop_start()
    subscribed.wait(10)
    client.publish(records_topic(device.device_id), Batch(1, (raw,)).to_cbor(), qos=1)
    answered.wait(60)
    client.loop_stop()
    client.disconnect()


def _dropped(url: str, device_hex: str) -> int:
    try:
        stats = httpx.get(f"{url}/v1/stats", timeout=5).json()
    except httpx.HTTPError:
        return 0
    dropped = stats.get("ingest_dropped", {})  # absent before the fair queue existed
    return sum(int(by_device.get(device_hex, 0)) for by_device in dropped.values())


def _latency_figures(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"median_s": float("nan"), "p99_s": float("nan"), "max_s": float("nan")}
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"median_s": statistics.median(ordered), "p99_s": p99, "max_s": ordered[-1]}


def wait_quarantine_over(url: str) -> None:
    """Let a quarantine from the previous phase end, so each phase starts afresh."""
    deadline = time.monotonic() + MAX_PHASE_S
    while time.monotonic() < deadline:
        try:
            if not httpx.get(f"{url}/healthz", timeout=5).json().get("devices_quarantined"):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)


def run_phase(name: str, gateway: GatewayProcess, honest: HonestDevice,
              flooder: Flooder, flooder_hex: str, *, seconds: float, observe: float,
              messages: int, per_s: float | None) -> dict[str, float]:
    pid = gateway.pid
    assert pid is not None
    wait_quarantine_over(gateway.url)
    reset_peak(pid)
    rss_before = proc_kib(pid, "VmRSS")
    answered0, dropped0 = flooder.answered, _dropped(gateway.url, flooder_hex)
    resends0 = len(honest.resends)
    started = time.monotonic()
    log(f"{name}: {messages} flood messages over {seconds:.0f} s")
    if messages:
        flooder.send(messages, per_s)
    else:
        time.sleep(seconds)
    deadline = started + MAX_PHASE_S
    busy = float("nan")
    while time.monotonic() < deadline:
        done = (flooder.answered - answered0) + (_dropped(gateway.url, flooder_hex) - dropped0)
        if done >= messages and honest.outstanding() == 0:
            busy = time.monotonic() - started
            time.sleep(max(0.0, started + observe - time.monotonic()))
            break
        time.sleep(0.05)
    ended = time.monotonic()
    samples = [lat for sent, lat in honest.latencies if started <= sent < ended]
    verified = flooder.answered - answered0
    result = {"rss_before_mib": rss_before / 1024, "peak_rss_mib": proc_kib(pid, "VmHWM") / 1024,
              "honest_records": len(samples), "honest_resends": len(honest.resends) - resends0,
              "flood_messages": messages, "flood_verified": verified,
              "flood_dropped": _dropped(gateway.url, flooder_hex) - dropped0,
              "busy_s": busy if messages else float("nan"), **_latency_figures(samples)}
    log(f"{name}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                for k, v in result.items()))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=float, default=15.0, help="seconds without flood")
    parser.add_argument("--flood", type=float, default=5.0, help="seconds of 300 batches/s")
    parser.add_argument("--burst", type=int, default=1500, help="batches sent at once")
    parser.add_argument("--observe", type=float, default=10.0,
                        help="a flood phase lasts at least this long (honest samples)")
    parser.add_argument("--receipt-timeout", type=float, default=3.0)
    parser.add_argument("--gateway-repo", type=Path, default=REPO)
    parser.add_argument("--evade", action="store_true",
                        help="end every flood batch with one good record (no quarantine)")
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="ingest-flood-bench-") as tmp:
        work = Path(tmp)
        broker = MosquittoBroker(work / "broker", max_queued_messages=1_000_000)
        broker.start()
        http_port = free_port()
        files = write_gateway_files(work / "gw", broker.port, http_port=http_port,
                                    client_id="edgeproof-gateway-flood-bench")
        gateway = GatewayProcess(files.config, f"http://127.0.0.1:{http_port}",
                                 work / "gateway.log", extra_args=("--log-level", "WARNING"),
                                 cwd=args.gateway_repo.resolve())
        honest_dev, flood_dev = TestDevice.create("honest", 1), TestDevice.create("flooder", 2)
        honest: HonestDevice | None = None
        flooder: Flooder | None = None
        try:
            gateway.start()
            register(gateway.url, honest_dev)
            register(gateway.url, flood_dev)
            evade = None
            if args.evade:
                evade = flood_dev.next().raw
                _publish_once(broker.port, flood_dev, evade)
            flooder = Flooder(broker.port, flood_dev, evade)
            honest = HonestDevice(broker.port, honest_dev, args.receipt_timeout)
            honest.start()
            flood_hex = flood_dev.device_id.hex()
            results["baseline"] = run_phase("baseline", gateway, honest, flooder, flood_hex,
                                            seconds=args.baseline, observe=0,
                                            messages=0, per_s=None)
            results["paced"] = run_phase("paced", gateway, honest, flooder, flood_hex,
                                         seconds=args.flood, observe=args.observe,
                                         messages=int(PACED_PER_S * args.flood),
                                         per_s=PACED_PER_S)
            results["burst"] = run_phase("burst", gateway, honest, flooder, flood_hex,
                                         seconds=0, observe=args.observe,
                                         messages=args.burst, per_s=None)
        finally:
            if honest is not None:
                honest.stop()
            if flooder is not None:
                flooder.close()
            gateway.stop()
            broker.kill()
    base = results["baseline"]["median_s"]
    summary: dict[str, object] = {
        "gateway_repo": str(args.gateway_repo), "evade": args.evade,
        **{f"{phase}_{k}": v for phase, r in results.items() for k, v in r.items()},
        "paced_median_ratio_to_baseline": results["paced"]["median_s"] / base,
        "burst_median_ratio_to_baseline": results["burst"]["median_s"] / base,
    }
    print(json.dumps({k: _json_number(v) for k, v in summary.items()}, sort_keys=True))
    return 0


def _json_number(value: object) -> object:
    if isinstance(value, float):
        return None if value != value else round(value, 3)  # NaN (no sample) as null
    return value


if __name__ == "__main__":
    sys.exit(main())
