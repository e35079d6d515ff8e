"""``edgeproof-sim fleet``: hundreds of simulated devices in one process, for load and soak.

The devices belong to an existing fleet (``fleet.toml`` from ``edgeproof-provision init``)
whose broker and gateway are running. Devices ``PREFIX-001`` .. are taken from the fleet's
bundles (made by ``device add``, so the device key is in the bundle); if the fleet has none
by that prefix they are provisioned first (``device add PREFIX --count N``: registered over
the gateway's API, one broker credential each). Each device
(:class:`firmware_sim.fleet_device.FleetDevice`) signs real records with its own key and
publishes batches over its own MQTT connection; all connections share one thread
(:class:`osutil.mqtt.Hub`).

A sequence number is never reused across runs: each device's chain (boot, next seq, last
hash) is kept in ``<bundle>/var/lib/edgeproof/fleetsim.json``, saved every few seconds
and at the end, and checked against the gateway's log at start (a run that crashed may
have got further than its last save). Each run is a new boot.

After ``--duration`` the devices stop producing and the run drains: it waits until every
record has a receipt (or ``drain_timeout_s`` passes). It prints a line per interval and
returns the totals (one JSON line from the CLI). Receipt latency is measured per accepted
record from the moment the reading was taken to the moment its receipt arrived, so it
includes the batching delay, as a device experiences it.
"""

from __future__ import annotations

import json
import os
import random
import re
import resource
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import requests

from firmware_sim.fleet_device import Chain, DeviceSettings, FleetDevice
from firmware_sim.stack import run_provision
from osutil.brokerurl import parse_broker_url
from osutil.mqtt import ClientOptions, Hub, MqttClient
from protocol.errors import ConfigError, StorageError, TransportError
from protocol.keys import Secret, load_device_key, read_secret_file
from protocol.note import NoteVerifier
from protocol.record import GENESIS_PREV
from protocol.signed import parse_signed_record, record_hash
from provisioning.devices_store import (
    BROKER_PASSWORD,
    DEVICE_KEY,
    STATE,
    DeviceRecord,
    bundle_dir,
    load_records,
)
from provisioning.fleet import FleetConfig, load_fleet

STATE_FILE = "fleetsim.json"
SAVE_EVERY_S = 5.0
MAX_POLL_S = 0.05
LOGIN_DEADLINE_S = 20.0  # no device logged in by then: the broker is wrong, not slow


@dataclass(frozen=True)
class FleetOptions:
    fleet_dir: Path
    devices: int
    duration_s: float
    rate_hz: float = 1.0
    prefix: str = "fleetsim"
    batch_interval_s: float = 1.0
    report_every_s: float = 5.0
    receipt_timeout_s: float = 15.0
    drain_timeout_s: float = 60.0
    seed: int = 1


# --- devices and their chains -------------------------------------------------------------


def select_devices(cfg: FleetConfig, prefix: str, count: int) -> list[DeviceRecord]:
    """The first ``count`` active factory devices named ``PREFIX-NNN``; provision them if
    the fleet has none. Raises ConfigError if it has some, but fewer than ``count``."""
    pattern = re.compile(rf"{re.escape(prefix)}-\d{{3,}}")

    def matching() -> list[DeviceRecord]:
        return [r for r in load_records(cfg) if pattern.fullmatch(r.name) and r.active
                and (bundle_dir(cfg, r.name) / DEVICE_KEY).exists()]

    found = matching()
    if not found:
        run_provision(["device", "add", prefix, "--count", str(count), "--fleet",
                       str(cfg.root), "--json"])
        found = matching()
    if len(found) < count:
        raise ConfigError(f"the fleet has {len(found)} usable devices named {prefix}-NNN, "
                          f"fewer than --devices {count}; use another --prefix")
    return found[:count]


def _state_path(cfg: FleetConfig, name: str) -> Path:
    return bundle_dir(cfg, name) / STATE / STATE_FILE


def save_chain(path: Path, chain: Chain) -> None:
    """Write the chain state atomically. Raises StorageError."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps({"boot": chain.boot, "next_seq": chain.next_seq,
                                   "prev": chain.prev.hex()}), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise StorageError(f"{path}: cannot save the chain state ({exc.strerror})") from None


def load_chain(path: Path, gateway_url: str, device_id: str) -> Chain:
    """The chain to continue: the saved state, moved past anything the gateway logged later.

    Returns a chain with a new boot. Raises TransportError if the gateway cannot be asked.
    """
    chain = Chain(boot=0, next_seq=0, prev=GENESIS_PREV)
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        chain = Chain(int(saved["boot"]) + 1, int(saved["next_seq"]), bytes.fromhex(saved["prev"]))
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StorageError(f"{path}: unreadable chain state ({exc})") from None
    last = _last_logged(gateway_url, device_id, chain.next_seq - 1)
    if last is not None:
        _, record = parse_signed_record(last)
        chain = Chain(max(chain.boot, record.boot + 1), record.seq + 1, record_hash(last))
    return chain


def _last_logged(gateway_url: str, device_id: str, after_seq: int) -> bytes | None:
    """The device's logged record with the highest seq above ``after_seq``, if any."""
    last: bytes | None = None
    while True:
        url = f"{gateway_url}/v1/devices/{device_id}/records"
        try:
            response = requests.get(url, params={"after_seq": after_seq, "limit": 1000},
                                    timeout=10)
            response.raise_for_status()
            leaves = response.json()["records"]
        except (requests.RequestException, ValueError, KeyError) as exc:
            raise TransportError(f"cannot read {device_id}'s records from the gateway: "
                                 f"{exc}") from None
        if not leaves:
            return last
        last = bytes.fromhex(leaves[-1]["record"])
        after_seq = int(leaves[-1]["seq"])


# --- the run ---------------------------------------------------------------------------------


class _Stop:
    """SIGINT: stop producing and drain; a second one (or SIGTERM): stop now."""

    def __init__(self) -> None:
        self.drain = False
        self.now = False
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGINT and not self.drain:
            self.drain = True
        else:
            self.now = True


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        new = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def build_devices(cfg: FleetConfig, options: FleetOptions, hub: Hub) -> list[FleetDevice]:
    """Load keys, credentials and chains; make one device (and MQTT link) per record."""
    host, port, tls = parse_broker_url(cfg.broker_url, "fleet.broker_url")
    if tls:
        raise ConfigError("edgeproof-sim fleet speaks plain mqtt:// only")
    verifier = NoteVerifier.from_text(cfg.gateway_verifier_key)
    settings = DeviceSettings(rate_hz=options.rate_hz, batch_interval_s=options.batch_interval_s,
                              receipt_timeout_s=options.receipt_timeout_s)
    records = select_devices(cfg, options.prefix, options.devices)
    _raise_fd_limit(len(records) + 256)
    devices = []
    for i, rec in enumerate(records):
        bundle = bundle_dir(cfg, rec.name)
        password = read_secret_file(bundle / BROKER_PASSWORD).decode("utf-8").strip()
        # The broker binds client ids to user names: the user name is the session.
        link = MqttClient(ClientOptions(
            host=host, port=port, client_id=rec.broker_user, username=rec.broker_user,
            password=Secret(password.encode("utf-8")), session_expiry_s=3600), hub)
        chain = load_chain(_state_path(cfg, rec.name), cfg.gateway_url, rec.device_id)
        devices.append(FleetDevice(
            rec.name, bytes.fromhex(rec.device_id), load_device_key(bundle / DEVICE_KEY),
            chain=chain, link=link, gateway=verifier, settings=settings,
            rng=random.Random(f"fleet:{options.seed}:{i}"),  # noqa: S311 - a seeded simulation
            wall_ms=lambda: time.time_ns() // 1_000_000))
    return devices


def run_fleet(options: FleetOptions, progress: TextIO) -> dict[str, Any]:
    """Run the fleet; return the totals. Raises EdgeproofError if it cannot start."""
    cfg = load_fleet(options.fleet_dir)
    hub = Hub()
    devices: list[FleetDevice] = []
    try:
        devices = build_devices(cfg, options, hub)
        print(f"fleet: {len(devices)} devices of {cfg.name} at {options.rate_hz:g} Hz for "
              f"{options.duration_s:g} s against {cfg.broker_url}", file=progress, flush=True)
        with _Stop() as stop:
            timing = _loop(devices, hub, options, stop=stop, progress=progress, cfg=cfg)
    finally:
        for d in devices:
            d.link.close()
        hub.close()
        for d in devices:
            save_chain(_state_path(cfg, d.name), d.chain)
    return _result(devices, timing)


def _loop(devices: list[FleetDevice], hub: Hub, options: FleetOptions, *, stop: _Stop,
          progress: TextIO, cfg: FleetConfig) -> dict[str, float]:
    start = time.monotonic()
    for d in devices:
        d.start(start)
    produce_until = start + options.duration_s
    drain_from: float | None = None
    report = _Reporter(devices, start, options.report_every_s, progress)
    next_save = start + SAVE_EVERY_S
    while not stop.now:
        now = time.monotonic()
        if drain_from is None and (now >= produce_until or stop.drain):
            drain_from = now
            for d in devices:
                d.stop_producing()
        wake = min(d.step(now) for d in devices)
        if drain_from is not None and (now - drain_from > options.drain_timeout_s or all(
                d.outstanding == 0 or d.state == "failed" for d in devices)):
            break
        report.maybe(now)
        _check_logins(devices, now - start)
        if now >= next_save:
            next_save = now + SAVE_EVERY_S
            for d in devices:
                save_chain(_state_path(cfg, d.name), d.chain)
        hub.poll(min(max(0.0, wake - time.monotonic()), MAX_POLL_S))
    end = time.monotonic()
    report.line(end)
    drain_from = drain_from if drain_from is not None else end
    return {"produce_s": drain_from - start, "drain_s": end - drain_from, "total_s": end - start}


def _check_logins(devices: list[FleetDevice], elapsed_s: float) -> None:
    if elapsed_s > LOGIN_DEADLINE_S and not any(d.ever_ready for d in devices):
        why = next((d.error for d in devices if d.error), "no answer")
        raise TransportError(f"no device could log in to the broker within "
                             f"{LOGIN_DEADLINE_S:.0f} s (first error: {why})")


class _Reporter:
    """One throughput line per interval."""

    def __init__(self, devices: list[FleetDevice], start: float, every_s: float,
                 out: TextIO) -> None:
        self.devices, self.start, self.every_s, self.out = devices, start, every_s, out
        self.next = start + every_s
        self.last_t, self.last_sent, self.last_done, self.last_lat = start, 0, 0, 0

    def maybe(self, now: float) -> None:
        if now >= self.next:
            self.next += self.every_s
            self.line(now)

    def line(self, now: float) -> None:
        sent = sum(d.counters.sent for d in self.devices)
        done = sum(d.counters.accepted + d.counters.duplicates + sum(d.counters.rejected.values())
                   for d in self.devices)
        latencies = [x for d in self.devices for x in d.latencies_ms]
        fresh = sorted(latencies[self.last_lat:]) if len(latencies) > self.last_lat else []
        dt = max(now - self.last_t, 1e-9)
        ready = sum(d.state == "ready" for d in self.devices)
        print(f"[{now - self.start:6.1f}s] {ready}/{len(self.devices)} connected, sent "
              f"{sent - self.last_sent} ({(sent - self.last_sent) / dt:.0f}/s), receipted "
              f"{done - self.last_done} ({(done - self.last_done) / dt:.0f}/s), outstanding "
              f"{sum(d.outstanding for d in self.devices)}, latency p50 "
              f"{_pct(fresh, 0.5):.0f} ms p99 {_pct(fresh, 0.99):.0f} ms",
              file=self.out, flush=True)
        self.last_t, self.last_sent, self.last_done = now, sent, done
        self.last_lat = len(latencies)


def _pct(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values (0 for none)."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def _result(devices: list[FleetDevice], timing: dict[str, float]) -> dict[str, Any]:
    c = [d.counters for d in devices]
    rejected: Counter[str] = Counter()
    for x in c:
        rejected.update(x.rejected)
    latencies = sorted(x for d in devices for x in d.latencies_ms)
    accepted = sum(x.accepted for x in c)
    failed = [f"{d.name}: {d.error}" for d in devices if d.state == "failed"]
    return {
        "devices": len(devices), "records_sent": sum(x.sent for x in c),
        "records_created": sum(x.created for x in c),
        "receipted": accepted + sum(x.duplicates for x in c) + sum(rejected.values()),
        "accepted": accepted, "duplicates": sum(x.duplicates for x in c),
        "rejected": sum(rejected.values()), "rejected_by_reason": dict(rejected),
        "unreceipted": sum(d.outstanding for d in devices),
        "resent": sum(x.resent for x in c), "batches": sum(x.batches for x in c),
        "receipts": sum(x.receipts for x in c), "bad_receipts": sum(x.bad_receipts for x in c),
        "puback_failures": sum(x.puback_failures for x in c),
        "puback_timeouts": sum(x.puback_timeouts for x in c),
        "connection_losses": sum(x.connection_losses for x in c),
        "failed_devices": len(failed), "failures": failed[:5],
        "p50_latency_ms": round(_pct(latencies, 0.5), 1),
        "p99_latency_ms": round(_pct(latencies, 0.99), 1),
        "max_latency_ms": round(latencies[-1], 1) if latencies else 0.0,
        "accepted_per_s": round(accepted / max(timing["total_s"], 1e-9), 1),
        "produce_s": round(timing["produce_s"], 1), "drain_s": round(timing["drain_s"], 1),
    }


