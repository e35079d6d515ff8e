"""Simulated hardware below the agent's drivers.

:class:`SimulatedHardware` implements ``agent.sensors.simulated.SimulatedHardware``. The
agent loads it by name (``importlib.import_module("firmware_sim.hardware")``) only when
simulation is asked for. It supplies:

- a gpiozero ``MockFactory`` whose pins the models drive (``drive_high``/``drive_low``):
  the TV's power-sense line (:class:`~firmware_sim.hardware.models.TvSchedule`), a PIR
  motion sensor correlated with the TV (:class:`~firmware_sim.hardware.models.PresenceModel`)
  and a push button (active low);
- a stand-in for the ``adafruit_dht`` module (:mod:`firmware_sim.hardware.dht22`) reading a
  :class:`~firmware_sim.hardware.models.ClimateModel`, with seeded sensor faults
  (:mod:`firmware_sim.hardware.faults`: bias, drift, stuck, noise, spikes, dropout);
- a CPU temperature file in millidegrees, like sysfs, written by a thermal model.

**Time.** The world's time is anchored by :meth:`SimulatedHardware.advance` (wall seconds,
monotonic ms) and runs on with the monotonic clock between calls: world wall time =
anchor wall + (clock mono - anchor mono). Pins change only in ``advance``; the DHT stand-in
reads the world time when touched. Pass the world's true time to ``advance``: a device
wall clock that jumps does not move the TV.

Everything random is seeded from ``seed``: the same seed and the same calls replay exactly.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gpiozero.pins.mock import MockFactory

from agent.sensors.simulated import HardwareClock
from firmware_sim.hardware.dht22 import DHTFaults, SimDHTModule
from firmware_sim.hardware.faults import SensorFault, load_sensor_faults
from firmware_sim.hardware.models import (
    ButtonModel,
    ClimateModel,
    CpuThermalModel,
    PresenceModel,
    TvSchedule,
)

__all__ = [
    "ButtonModel",
    "ClimateModel",
    "CpuThermalModel",
    "DHTFaults",
    "PresenceModel",
    "SensorFault",
    "SimulatedHardware",
    "TvSchedule",
    "Wiring",
]


CPU_FILE_PERIOD_S = 30.0


@dataclass(frozen=True)
class Wiring:
    """BCM pin numbers of the simulated devices (match them in the agent's config)."""

    dht22: int = 4
    power_sense: int = 17
    motion: int = 27
    button: int = 22


class SimulatedHardware:
    """The simulated world: models, mock pins, DHT stand-in and CPU temperature file."""

    def __init__(
        self,
        seed: int,
        state_dir: Path,
        clock: HardwareClock,
        *,
        wiring: Wiring | None = None,
        dht_faults: DHTFaults | None = None,
        sensor_faults: Mapping[str, tuple[SensorFault, ...]] | None = None,
        sensor_faults_file: Path | None = None,
        climate: ClimateModel | None = None,
        tv: TvSchedule | None = None,
        thermal: CpuThermalModel | None = None,
    ) -> None:
        self.seed = seed
        self.clock = clock
        self.wiring = wiring or Wiring()
        self.tv = tv or TvSchedule(seed)
        self.presence = PresenceModel(seed, self.tv)
        self.button = ButtonModel()
        self.thermal = thermal or CpuThermalModel()
        self._anchor_wall_s = clock.wall_ms() / 1000
        self._anchor_mono_ms = clock.mono_ms()
        self.climate = climate or ClimateModel(epoch_s=self._anchor_wall_s)
        # A climate made here starts at the world's first step (see advance).
        self._epoch_pending = climate is None
        self._cpu_rng = random.Random(f"cpu:{seed}")  # noqa: S311 - seeded replayable simulation
        self._factory = MockFactory()
        self._pins: dict[int, Any] = {}
        if sensor_faults_file is not None:
            sensor_faults = {**load_sensor_faults(sensor_faults_file), **(sensor_faults or {})}
        self._dht = SimDHTModule(seed, self.climate, dht_faults or DHTFaults(),
                                 clock.mono_ms, self.world_wall_s,
                                 sensor_faults=sensor_faults)
        self._cpu_file = Path(state_dir) / "sim" / "cpu_temp"
        self._cpu_file.parent.mkdir(parents=True, exist_ok=True)
        self._cpu_written_s: float | None = None
        self._write_cpu_temp(self._anchor_wall_s)

    # --- the agent.sensors.SimulatedHardware interface -------------------------------------

    def pin_factory(self) -> MockFactory:
        return self._factory

    def dht_module(self) -> SimDHTModule:
        return self._dht

    def dht_pin(self, bcm: int) -> object:
        return bcm

    def cpu_temp_file(self) -> Path:
        return self._cpu_file

    def advance(self, now_wall_s: float, now_mono_ms: int) -> None:
        """Move the world to ``now_wall_s`` (its true time) at ``now_mono_ms``.

        Drives every simulated input pin to its model's level (gpiozero edge callbacks
        fire here, in the caller's thread) and rewrites the CPU temperature file (at most
        every ``CPU_FILE_PERIOD_S`` of world time).
        """
        if self._epoch_pending:
            # The world may run hours behind or ahead of the real clock (the demo sets it
            # to an evening: firmware_sim.demo_agent). Seeded faults and calibration drift
            # count from the world's start, not from the real time this was built at: a
            # world running behind would otherwise begin before its faults' epoch, and a
            # bias "from the start" would never act.
            self._epoch_pending = False
            self.climate = replace(self.climate, epoch_s=now_wall_s)
            self._dht.climate = self.climate
        self._anchor_wall_s, self._anchor_mono_ms = now_wall_s, now_mono_ms
        self._drive(self.wiring.power_sense, self.tv.is_on(now_wall_s))
        self._drive(self.wiring.motion, self.presence.is_active(now_wall_s))
        self._drive(self.wiring.button, not self.button.is_pressed(now_wall_s))  # active low
        self._write_cpu_temp(now_wall_s)

    def close(self) -> None:
        """Release every mock pin (MockFactory keeps them otherwise)."""
        self._pins.clear()
        self._factory.reset()
        self._factory.close()

    # --- helpers -----------------------------------------------------------------------------

    def world_wall_s(self) -> float:
        """The world's wall time now: the last anchor plus monotonic time since."""
        return self._anchor_wall_s + (self.clock.mono_ms() - self._anchor_mono_ms) / 1000

    def pin_level(self, bcm: int) -> bool:
        """The electrical level of a simulated pin (for tests)."""
        return bool(self._pin(bcm).state)

    def _pin(self, bcm: int) -> Any:
        pin = self._pins.get(bcm)
        if pin is None:  # MockFactory.pin() searches the board's header each time
            pin = self._pins[bcm] = self._factory.pin(bcm)
        return pin

    def _drive(self, bcm: int, high: bool) -> None:
        pin = self._pin(bcm)
        if pin.function != "input":
            return  # something configured it as an output; an input model cannot drive it
        if high:
            pin.drive_high()
        else:
            pin.drive_low()

    def _write_cpu_temp(self, wall_s: float) -> None:
        last = self._cpu_written_s
        if last is not None and 0 <= wall_s - last < CPU_FILE_PERIOD_S:
            return  # a SoC's temperature moves slowly; spare the disk
        self._cpu_written_s = wall_s
        value = self.thermal.millidegrees(wall_s, self.tv.is_on(wall_s), self._cpu_rng)
        tmp = self._cpu_file.with_name(self._cpu_file.name + ".tmp")
        tmp.write_text(f"{value}\n")
        os.replace(tmp, self._cpu_file)  # atomic: a reader never sees a half-written file
