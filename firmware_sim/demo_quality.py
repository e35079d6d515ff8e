"""The demo's site: three DHT22s in one room, one miscalibrated, caught by the owner's hub.

:meth:`QualityStory.prepare` provisions ``room-001`` .. ``room-003`` with the owner's keys
pinned (every stream sealed to the owner), the third with a fixed bias of
:data:`BIAS_C` °C (``agent.sim_faults``, firmware_sim/hardware/faults.py), all three in one
simulated world (one room, one climate, an evening when all three TVs are on, so they earn
credit); it registers the owner's hub as a validator (a recipient whose X25519 key is the
owner's sealing key, so it reads the full streams, with an Ed25519 key of its own) and
declares the site. The three agents run beside the demo's other devices while
:meth:`QualityStory.watch` runs the validator every few seconds over what they logged, in
:data:`WINDOW_S`-second windows (the algorithm of docs/QUALITY.md, on a short clock),
logging one attestation per window as each window closes. A sensor turns faulty after 3 bad
windows of 4. The demo's gateway trusts the hub's verdicts for payouts
(``[payout] quality_validators``), so once the verdict FAULTY is logged, the usage records
the miscalibrated device logs after it earn nothing (PROTOCOL.md §19.4 rule 5):
:meth:`QualityStory.withholding` says when the room has run that far.
:meth:`QualityStory.judge` reports each sensor's state at the end: the miscalibrated one
FAULTY (bias), its neighbours not.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware_sim.demo_devices import DemoDevice, write_demo_config
from firmware_sim.hardware import TvSchedule
from firmware_sim.hardware.models import DAY_S
from firmware_sim.stack import Stack
from protocol.keys import (
    OwnerKey,
    OwnerPublic,
    SigningKey,
    load_recipient_key,
    save_signing_key,
    signer_id,
)
from protocol.signed import parse_signed_record
from provisioning.fleet import load_fleet
from provisioning.recipients import add_recipient
from provisioning.sites import Site, SiteSensor, render
from validator.model import Thresholds
from validator.run import Outcome, run_once
from validator.sites import load_site
from verifier.client import DocumentClient, GatewayClient

SITE, VALIDATOR, PREFIX = "living-room", "hub", "room"
BIAS_C = 2.0
ACCURACY_C = 0.5  # a DHT22's stated accuracy
# A bucket keeps one reading (its last) and a window needs min_readings (3) of them, or it
# counts as missing; 4 missing windows in a row make a sensor faulty ("dropout"). The room's
# DHT22s are read as often as the chip allows (ROOM_DHT22_S), so each 6-second bucket sees
# two or three attempts (a tenth of them fail), and a window of four buckets needs three:
# a healthy sensor keeps that with its agent running at a third of its pace (on a loaded
# machine). With 12-second windows of 4-second buckets read every 3 s, a window needed all
# three buckets filled, which a loaded machine's agents did not always manage.
ROOM_DHT22_S = 2.1  # the driver's min_spacing_s (docs/AGENT.md)
WINDOW_S, BUCKET_S = 24, 6
WATCH_S = BUCKET_S / 2  # how often the hub looks for closed windows
TV_LEAD_S = 4  # the room's TVs are on from this many seconds into the run ...
TV_SPAN_S = 900  # ... for at least this long (all three at once)


@dataclass
class QualityResult:
    states: dict[str, str] = field(default_factory=dict)  # device name -> state
    reasons: dict[str, list[str]] = field(default_factory=dict)
    logged: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)  # readings not used, per reason
    readings: dict[str, list[int]] = field(default_factory=dict)  # per window
    committed: int = 0  # records the room's devices committed (all logged: leaves)

    @property
    def caught(self) -> bool:
        """The miscalibrated sensor is faulty and no honest one is."""
        faulty = {n for n, s in self.states.items() if s == "faulty"}
        return faulty == {f"{PREFIX}-003"} and not self.refused

    def as_json(self) -> dict[str, Any]:
        return {"site": SITE, "miscalibrated": f"{PREFIX}-003", "bias_c": BIAS_C,
                "window_s": WINDOW_S, "states": self.states, "reasons": self.reasons,
                "attestations_logged": self.logged, "refused": self.refused,
                "skipped_readings": self.skipped, "readings_per_window": self.readings,
                "caught": self.caught, "committed": self.committed}


class QualityStory:
    """Provision the room, then judge it (module docstring)."""

    def __init__(self, workdir: Path, note: Callable[[str], None]) -> None:
        self.workdir, self.note = workdir, note
        self.signing = SigningKey.generate()  # the hub's attestation key, made on the hub
        self.devices: list[DemoDevice] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.faulty_before = 0  # the log size once the verdict FAULTY was logged (0: not yet)
        self._started = 0.0
        self.watch_error = ""

    @property
    def validator_id(self) -> bytes:
        """The hub's signer id (what ``[payout] quality_validators`` names)."""
        return signer_id(self.signing.public_key)

    def prepare(self, stack: Stack, owner: OwnerKey, first_index: int, seed: int
                ) -> list[DemoDevice]:
        """Register the hub, provision the room's three devices, declare the site; return
        the devices (not started). Raises StackError, ConfigError."""
        add_recipient(load_fleet(stack.fleet_dir), VALIDATOR, key=owner.sealing)
        stack.provision("recipient", "register", VALIDATOR, "--signing-key",
                        self.signing.public_key.hex(), "--fleet", str(stack.fleet_dir))
        faults = self.workdir / "room-faults.toml"
        faults.write_text(f'[[temperature]]\nkind = "bias"\nmagnitude = {BIAS_C}\n',
                          encoding="utf-8")
        made = stack.add_devices(PREFIX, 3, owner_key=OwnerPublic.of(owner).text())
        offset = shared_evening_offset([seed + first_index + i for i in range(len(made))],
                                       time.time())
        for i, device in enumerate(made):
            write_demo_config(device, {"sim_faults": str(faults)} if i == 2 else None,
                              intervals={"dht22": ROOM_DHT22_S})
            self.devices.append(DemoDevice(device, first_index + i, world_offset_s=offset))
        (self.workdir / "site.toml").write_text(render(Site(SITE, "climate", "Cel", VALIDATOR,
            tuple(SiteSensor(d.name, d.device.device_id, ACCURACY_C)
                  for d in self.devices))), encoding="utf-8")
        self.note(f"quality: site '{SITE}': {', '.join(d.name for d in self.devices)} in one "
                  f"room, {self.devices[2].name} miscalibrated (+{BIAS_C} °C); the owner's "
                  f"hub '{VALIDATOR}' validates them")
        return self.devices

    # --- the hub at work while the room runs -------------------------------------------------

    def watch(self, stack: Stack) -> None:
        """Start the hub: every :data:`WATCH_S` it judges and attests the windows closed
        since (on its own thread, until :meth:`stop_watching`)."""
        save_signing_key(self.workdir / "hub.sign", self.signing)
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._watch, args=(stack,), name="demo-hub",
                                        daemon=True)
        self._thread.start()

    def stop_watching(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _watch(self, stack: Stack) -> None:
        while not self._stop.wait(WATCH_S):
            try:
                outcome = self._run_once(stack, self._complete_ms(stack))
                faulty = any(v.state == "faulty" and v.sensor == self._miscalibrated
                             for w in outcome.verdicts for v in w.sensors)
                if faulty and not self.faulty_before:
                    self.faulty_before = int(stack.stats()["log_size"])
                    self.note(f"quality: the hub judged {PREFIX}-003 FAULTY and logged it "
                              f"(below leaf {self.faulty_before}, "
                              f"{time.monotonic() - self._started:.0f} s after the room "
                              "started): from here its credit is withheld")
            except Exception as exc:  # noqa: BLE001 - the thread must not die silently
                self.watch_error = str(exc) or type(exc).__name__  # the demo raises it
                return

    @property
    def _miscalibrated(self) -> str:
        return self.devices[2].device.device_id

    def withholding(self, stack: Stack) -> bool:
        """Whether the verdict FAULTY is logged and the miscalibrated device has logged a
        usage record after it (one that earns nothing). Raises TransportError."""
        if not self.faulty_before:
            return False
        records = GatewayClient(stack.gateway_url).all_device_records(
            bytes.fromhex(self._miscalibrated))
        return any(r.stream == "usage" and r.index >= self.faulty_before for r in records)

    def _complete_ms(self, stack: Stack) -> int:
        """Until when every sensor of the room has logged its records: the earliest of their
        newest records' times. A window that ended by then has all its readings on the log
        (a device sends its records in order), so its verdict is final: judging a window
        whose last readings are still in flight would give a verdict that the window's
        complete readings contradict later, and the gateway refuses the second one
        (``conflicting``)."""
        client = GatewayClient(stack.gateway_url)
        newest = []
        for d in self.devices:
            records = client.all_device_records(bytes.fromhex(d.device.device_id))
            if not records:
                return 0
            newest.append(parse_signed_record(records[-1].record)[1].wall_ms)
        return min([*newest, time.time_ns() // 1_000_000])

    def _run_once(self, stack: Stack, now_ms: int | None = None) -> Outcome:
        owner_sealing = stack.fleet_dir / "recipients" / f"{VALIDATOR}.key"
        return run_once(DocumentClient(stack.gateway_url),
                        load_site(self.workdir / "site.toml"), self.signing,
                        load_recipient_key(owner_sealing),
                        time.time_ns() // 1_000_000 if now_ms is None else now_ms,
                        th=Thresholds(window_s=WINDOW_S, bucket_s=BUCKET_S))

    def judge(self, stack: Stack, room: list[DemoDevice]) -> QualityResult:
        """Run the hub's validator once over the site (its devices stopped, their records
        logged); report the sensors' states. Raises TransportError, ConfigError."""
        self.stop_watching()
        names = {d.device.device_id: d.name for d in self.devices}
        outcome = self._run_once(stack)
        result = QualityResult(logged=outcome.logged + outcome.already_logged,
                               refused=dict(outcome.refused), skipped=dict(outcome.skipped),
                               committed=sum(d.row().committed for d in room))
        last = outcome.verdicts[-1] if outcome.verdicts else None
        for verdict in last.sensors if last is not None else ():
            name = names.get(verdict.sensor, verdict.sensor)
            result.states[name] = verdict.state
            bad = [v for w in outcome.verdicts for v in w.sensors
                   if v.sensor == verdict.sensor and v.reasons]
            result.reasons[name] = sorted({r for v in bad for r in v.reasons})
            result.readings[name] = [v.readings for w in outcome.verdicts for v in w.sensors
                                     if v.sensor == verdict.sensor]
        for name, state in sorted(result.states.items()):
            why = f" ({', '.join(result.reasons[name])})" if state != "healthy" else ""
            self.note(f"quality: {name}: {state.upper()}{why}")
        self.note(f"quality: {result.logged} attestations on the log ({len(outcome.verdicts)} "
                  f"windows of {WINDOW_S} s); "
                  + (f"{PREFIX}-003 caught" if result.caught else "NOT as expected"))
        return result


def shared_evening_offset(seeds: list[int], now_s: float) -> float:
    """How far the room's world runs ahead of ``now_s`` so that the TVs of all ``seeds``
    (one household each) are on from :data:`TV_LEAD_S` seconds into the run for at least
    :data:`TV_SPAN_S` seconds: the first such moment of an evening, today or later."""
    day = int(now_s // DAY_S)
    for d in range(day, day + 366):
        starts = sorted({a for seed in seeds for a, _ in TvSchedule(seed).sessions_on_day(d)})
        for start in starts:
            if all(TvSchedule(seed).on_seconds(start, start + TV_SPAN_S) >= TV_SPAN_S
                   for seed in seeds):
                return start - TV_LEAD_S - now_s
    raise ValueError("no evening in a year when these households' TVs are on together")
