"""The demo's site: three DHT22s in one room, one miscalibrated, caught by the owner's hub.

:meth:`QualityStory.prepare` provisions ``room-001`` .. ``room-003`` with the owner's keys
pinned (every stream sealed to the owner), the third with a fixed bias of
:data:`BIAS_C` °C (``agent.sim_faults``, firmware_sim/hardware/faults.py), all three in one
simulated world (one room, one climate); it registers the owner's hub as a validator (a
recipient whose X25519 key is the owner's sealing key, so it reads the full streams, with an
Ed25519 key of its own) and declares the site. The three agents run beside the demo's other
devices; :meth:`QualityStory.judge` then runs the validator over what they logged in
:data:`WINDOW_S`-second windows (the algorithm of docs/QUALITY.md, on a short clock), logs
one attestation per window and reports each sensor's state: the miscalibrated one FAULTY
(bias), its neighbours not. A sensor turns faulty after 3 bad windows of 4, so the room's
agents need :data:`MIN_RUN_S` seconds of readings (the demo waits for that, if its run was
shorter).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware_sim.demo_devices import DemoDevice, write_demo_config
from firmware_sim.stack import Stack
from protocol.keys import (
    OwnerKey,
    OwnerPublic,
    SigningKey,
    load_recipient_key,
    save_signing_key,
)
from provisioning.fleet import load_fleet
from provisioning.recipients import add_recipient
from provisioning.sites import Site, SiteSensor, render
from validator.model import Thresholds
from validator.run import run_once
from validator.sites import load_site
from verifier.client import DocumentClient

SITE, VALIDATOR, PREFIX = "living-room", "hub", "room"
BIAS_C = 2.0
ACCURACY_C = 0.5  # a DHT22's stated accuracy
WINDOW_S, BUCKET_S = 18, 6  # three buckets; the demo's DHT22s give a reading about every 6 s
MIN_RUN_S = 6 * WINDOW_S  # a partial first window, 3 bad of 4, one missed to spare


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
        self.started_mono = 0.0

    def prepare(self, stack: Stack, owner: OwnerKey, first_index: int) -> list[DemoDevice]:
        """Register the hub, provision the room's three devices, declare the site; return
        the devices (not started). Raises StackError, ConfigError."""
        add_recipient(load_fleet(stack.fleet_dir), VALIDATOR, key=owner.sealing)
        stack.provision("recipient", "register", VALIDATOR, "--signing-key",
                        self.signing.public_key.hex(), "--fleet", str(stack.fleet_dir))
        faults = self.workdir / "room-faults.toml"
        faults.write_text(f'[[temperature]]\nkind = "bias"\nmagnitude = {BIAS_C}\n',
                          encoding="utf-8")
        made = stack.add_devices(PREFIX, 3, owner_key=OwnerPublic.of(owner).text())
        for i, device in enumerate(made):
            write_demo_config(device, {"sim_faults": str(faults)} if i == 2 else None)
            self.devices.append(DemoDevice(device, first_index + i, world_offset_s=0.0))
        (self.workdir / "site.toml").write_text(render(Site(SITE, "climate", "Cel", VALIDATOR,
            tuple(SiteSensor(d.name, d.device.device_id, ACCURACY_C)
                  for d in self.devices))), encoding="utf-8")
        self.note(f"quality: site '{SITE}': {', '.join(d.name for d in self.devices)} in one "
                  f"room, {self.devices[2].name} miscalibrated (+{BIAS_C} °C); the owner's "
                  f"hub '{VALIDATOR}' validates them")
        self.started_mono = time.monotonic()
        return self.devices

    def remaining_s(self) -> float:
        """How long the room's agents must still run for the validator to conclude."""
        return max(0.0, MIN_RUN_S - (time.monotonic() - self.started_mono))

    def judge(self, stack: Stack, room: list[DemoDevice]) -> QualityResult:
        """Run the hub's validator once over the site (its devices stopped, their records
        logged); report the sensors' states. Raises TransportError, ConfigError."""
        names = {d.device.device_id: d.name for d in self.devices}
        save_signing_key(self.workdir / "hub.sign", self.signing)
        owner_sealing = stack.fleet_dir / "recipients" / f"{VALIDATOR}.key"
        outcome = run_once(DocumentClient(stack.gateway_url),
                           load_site(self.workdir / "site.toml"), self.signing,
                           load_recipient_key(owner_sealing), time.time_ns() // 1_000_000,
                           th=Thresholds(window_s=WINDOW_S, bucket_s=BUCKET_S))
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
