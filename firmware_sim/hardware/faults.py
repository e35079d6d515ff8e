"""Seeded sensor faults: what goes wrong with a measuring sensor, as opposed to the chip
library's routine read errors (:class:`~firmware_sim.hardware.dht22.DHTFaults`).

A :class:`SensorFault` changes the value a sensor reports during ``[start_s, end_s)``
(seconds since the simulation's epoch):

- ``bias``: a fixed offset of ``magnitude`` (miscalibration);
- ``drift``: an offset growing by ``magnitude`` per day since ``start_s``;
- ``stuck``: the value read at ``start_s``, repeated;
- ``noise``: extra Gaussian noise of standard deviation ``magnitude``;
- ``spike``: with probability ``rate`` per reading, ± ``magnitude`` added;
- ``dropout``: no value at all;
- ``replay``: the values of sensor ``source`` from ``delay_s`` earlier (a forged device
  that copies another's readings instead of measuring), plus Gaussian noise of standard
  deviation ``magnitude`` (0: an exact copy) so that the copy does not match exactly;
  ``delay_s`` 0 copies the value the source reports at the same moment (a live copy).

The same types are read from config (:func:`faults_from_config`), so the demo, the tests
and ``bench/quality_bench.py`` inject faults the same way. Randomness comes from the
``random.Random`` the caller passes, so a run replays from its seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from osutil.toml_table import read_toml
from protocol.errors import ConfigError

FaultKind = Literal["bias", "drift", "stuck", "noise", "spike", "dropout", "replay"]
FAULT_KINDS: tuple[FaultKind, ...] = get_args(FaultKind)
DAY_S = 86_400.0

# A replaying sensor asks for the value another sensor reported at a past time.
History = Callable[[str, float], float | None]


@dataclass(frozen=True)
class SensorFault:
    """One fault of one sensor over ``[start_s, end_s)`` (``end_s`` None: to the end)."""

    kind: FaultKind
    start_s: float = 0.0
    end_s: float | None = None
    magnitude: float = 0.0
    rate: float = 0.0
    source: str = ""
    delay_s: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {', '.join(FAULT_KINDS)}")
        if self.end_s is not None and self.end_s <= self.start_s:
            raise ValueError("fault end_s must be after start_s")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError("fault rate must be within 0..1")
        if self.kind == "replay" and (not self.source or self.delay_s < 0
                                      or self.magnitude < 0):
            raise ValueError("a replay fault needs a source sensor, delay_s >= 0 and "
                             "magnitude (its added noise) >= 0")

    def active(self, elapsed_s: float) -> bool:
        """Whether the fault acts at ``elapsed_s`` seconds since the epoch."""
        return self.start_s <= elapsed_s and (self.end_s is None or elapsed_s < self.end_s)


class FaultySensor:
    """Applies a sensor's faults to its honest values, remembering what stuck sensors hold."""

    def __init__(self, faults: tuple[SensorFault, ...], rng: random.Random) -> None:
        self.faults = faults
        self._rng = rng
        self._stuck: dict[int, float] = {}

    def apply(self, value: float | None, elapsed_s: float, history: History | None = None
              ) -> float | None:
        """The value reported at ``elapsed_s`` given the honest ``value`` (None: no reading).

        Faults apply in their configured order; a dropout wins over everything.
        """
        for index, fault in enumerate(self.faults):
            if not fault.active(elapsed_s):
                self._stuck.pop(index, None)
                continue
            value = self._one(index, fault, value, elapsed_s, history)
        return value

    def _one(self, index: int, fault: SensorFault, value: float | None, elapsed_s: float,
             history: History | None) -> float | None:
        # Draw on every call so that a fault's randomness does not shift with dropouts.
        draw, gauss = self._rng.random(), self._rng.gauss(0.0, 1.0)
        if fault.kind == "dropout":
            return None
        if fault.kind == "replay":
            copied = None if history is None else history(fault.source,
                                                          elapsed_s - fault.delay_s)
            return None if copied is None else copied + fault.magnitude * gauss
        if value is None:
            return None
        if fault.kind == "stuck":
            return self._stuck.setdefault(index, value)
        if fault.kind == "bias":
            return value + fault.magnitude
        if fault.kind == "drift":
            return value + fault.magnitude * (elapsed_s - fault.start_s) / DAY_S
        if fault.kind == "noise":
            return value + fault.magnitude * gauss
        # spike
        return value + (fault.magnitude if gauss >= 0 else -fault.magnitude) \
            if draw < fault.rate else value


def faults_from_config(items: object, where: str) -> tuple[SensorFault, ...]:
    """Parse a TOML array of fault tables (``[[...fault]]``); ConfigError naming the key.

    Each table: ``kind``, ``start_h`` (default 0), ``end_h`` (absent: forever),
    ``magnitude``, ``rate``, ``source``, ``delay_s``.
    """
    if items is None:
        return ()
    if not isinstance(items, list):
        raise ConfigError(f"{where}: must be an array of tables")
    return tuple(_fault_from_table(item, f"{where}[{i}]") for i, item in enumerate(items))


def load_sensor_faults(path: Path) -> dict[str, tuple[SensorFault, ...]]:
    """A simulated device's sensor faults by quantity: ``[[temperature]]`` and
    ``[[humidity]]`` tables of the fields above (the agent's ``agent.sim_faults``).

    Raises ConfigError naming the file and key.
    """
    data = read_toml(path)
    unknown = set(data) - {"temperature", "humidity"}
    if unknown:
        raise ConfigError(f"{path}: {sorted(unknown)[0]}: unknown key (temperature, humidity)")
    return {q: faults_from_config(items, f"{path}: {q}") for q, items in data.items()}


def _fault_from_table(item: object, where: str) -> SensorFault:
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: must be a table")
    known = {"kind", "start_h", "end_h", "magnitude", "rate", "source", "delay_s"}
    for key in item:
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown key")
    kind = item.get("kind")
    if kind not in FAULT_KINDS:
        raise ConfigError(f"{where}.kind: must be one of {', '.join(FAULT_KINDS)}")
    end_h = item.get("end_h")
    try:
        return SensorFault(
            kind=kind, start_s=_number(item, "start_h", where) * 3600,
            end_s=None if end_h is None else _number(item, "end_h", where) * 3600,
            magnitude=_number(item, "magnitude", where), rate=_number(item, "rate", where),
            source=str(item.get("source", "")), delay_s=_number(item, "delay_s", where))
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _number(item: Mapping[str, object], key: str, where: str) -> float:
    value = item.get(key, 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}.{key}: must be a number")
    return float(value)
