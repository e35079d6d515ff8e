"""Simulated sites: several sensors in one place measuring the same quantity.

A :class:`SimSite` is one room (a :class:`~firmware_sim.hardware.models.ClimateModel`
gives the true value) and its sensors; each :class:`SimSensor` has its own calibration
offset (within its stated accuracy), its own noise and its seeded faults
(:mod:`firmware_sim.hardware.faults`). :class:`SiteRun` reads every sensor at a time and
remembers what each reported, which a replaying (forged) sensor copies.

Sites come from config (:func:`load_sites`; the reference is
``examples/quality-sites.toml``) or are built in code (``bench/quality_bench.py``).
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from firmware_sim.hardware.faults import FaultySensor, SensorFault, faults_from_config
from firmware_sim.hardware.models import ClimateModel
from osutil.toml_table import Table, read_toml
from protocol.errors import ConfigError

Quantity = Literal["temperature", "humidity"]
QUANTITIES: tuple[Quantity, ...] = ("temperature", "humidity")
HISTORY_S = 6 * 3600.0  # how far back a replaying sensor may copy


@dataclass(frozen=True)
class SimSensor:
    """One simulated sensor: stated accuracy, true calibration offset, noise, faults."""

    name: str
    accuracy: float
    offset: float = 0.0
    noise: float = 0.1
    faults: tuple[SensorFault, ...] = ()


@dataclass(frozen=True)
class SimSite:
    """Co-located sensors of one quantity in one simulated room."""

    name: str
    quantity: Quantity
    sensors: tuple[SimSensor, ...]
    climate: ClimateModel = field(default_factory=ClimateModel)

    def truth(self, elapsed_s: float) -> float:
        """The quantity's true value ``elapsed_s`` seconds after the climate's epoch."""
        t, rh = self.climate.true_values(self.climate.epoch_s + elapsed_s)
        return t if self.quantity == "temperature" else rh


class SiteRun:
    """Reads a site's sensors over time, seeded; keeps the history replays copy from."""

    def __init__(self, site: SimSite, seed: int) -> None:
        self.site = site
        self._noise = {s.name: random.Random(f"noise:{seed}:{site.name}:{s.name}")  # noqa: S311
                       for s in site.sensors}
        self._faulty = {s.name: FaultySensor(s.faults, random.Random(  # noqa: S311
            f"fault:{seed}:{site.name}:{s.name}")) for s in site.sensors}
        self._times: dict[str, list[float]] = {s.name: [] for s in site.sensors}
        self._values: dict[str, list[float]] = {s.name: [] for s in site.sensors}

    def read(self, elapsed_s: float) -> dict[str, float | None]:
        """Every sensor's reported value at ``elapsed_s`` (None: no reading), rounded to 0.1
        like a DHT22. Call with increasing times."""
        truth = self.site.truth(elapsed_s)
        out: dict[str, float | None] = {}
        # Copiers last, so that a live copy (delay 0) sees what its source reports now.
        order = sorted(self.site.sensors, key=lambda s: any(
            f.kind == "replay" and f.active(elapsed_s) for f in s.faults))
        for sensor in order:
            honest = truth + sensor.offset + self._noise[sensor.name].gauss(0.0, sensor.noise)
            value = self._faulty[sensor.name].apply(honest, elapsed_s, self._history)
            out[sensor.name] = None if value is None else round(value, 1)
            if value is not None:
                self._remember(sensor.name, elapsed_s, round(value, 1))
        return {s.name: out[s.name] for s in self.site.sensors}

    def _remember(self, name: str, elapsed_s: float, value: float) -> None:
        times, values = self._times[name], self._values[name]
        times.append(elapsed_s)
        values.append(value)
        if times[0] < elapsed_s - 2 * HISTORY_S:  # trim in bulk: memory stays bounded
            cut = bisect.bisect_left(times, elapsed_s - HISTORY_S)
            del times[:cut], values[:cut]

    def _history(self, name: str, at_s: float) -> float | None:
        times = self._times.get(name)
        if not times:
            return None
        i = bisect.bisect_right(times, at_s) - 1
        return None if i < 0 else self._values[name][i]


def load_sites(path: Path) -> tuple[SimSite, ...]:
    """The ``[[site]]`` tables of the TOML file ``path``; ConfigError naming the key."""
    data = read_toml(path)
    items = data.get("site")
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{path}: site: must be a non-empty array of tables")
    return tuple(_site(item, f"site[{i}]", path.parent) for i, item in enumerate(items))


def _site(item: object, where: str, base: Path) -> SimSite:
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: must be a table")
    table = Table(item, where, base)
    name = table.required_string("name")
    quantity = table.choice("quantity", QUANTITIES, "temperature")
    sensors_raw = item.get("sensor")
    table.finish(allowed=("sensor",))
    if not isinstance(sensors_raw, list) or len(sensors_raw) < 3:
        raise ConfigError(f"{where}.sensor: a site needs at least 3 sensors")
    sensors = tuple(_sensor(s, f"{where}.sensor[{i}]", base) for i, s in enumerate(sensors_raw))
    if len({s.name for s in sensors}) != len(sensors):
        raise ConfigError(f"{where}.sensor: sensor names must be unique")
    return SimSite(name, quantity, sensors)


def _sensor(item: object, where: str, base: Path) -> SimSensor:
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: must be a table")
    table = Table(item, where, base)
    sensor = SimSensor(
        name=table.required_string("name"),
        accuracy=table.number("accuracy", 0.5, low=0.001),
        offset=table.number("offset", 0.0),
        noise=table.number("noise", 0.1, low=0.0),
        faults=faults_from_config(item.get("fault"), f"{where}.fault"))
    table.finish(allowed=("fault",))
    return sensor
