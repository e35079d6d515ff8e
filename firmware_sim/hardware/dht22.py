"""A stand-in for the ``adafruit_dht`` module that behaves like the real chip library.

What the agent's driver sees is the library's interface: ``DHT22(pin, use_pulseio=...)``
with ``.temperature``, ``.humidity`` and ``.exit()``. Like adafruit-circuitpython-dht 4.x:

- reading either property touches the chip only if this is the first call or more than
  2.0 s have passed since the last *attempt* (by the library's monotonic clock, here the
  world clock); otherwise it returns the previous values, even after a failed attempt
  (``None`` before any success). This is the cache the driver must never stamp as new.
- an attempt fails with the library's RuntimeErrors at configurable rates:
  "Checksum did not validate. Try again.", "A full buffer was not returned. Try again.",
  "DHT sensor not found, check wiring".

Values come from :class:`~firmware_sim.hardware.models.ClimateModel` at the world's time,
with one ``random.Random`` per pin seeded from the world seed, so a run with the same seed
and the same read times replays exactly. Seeded sensor faults
(:mod:`firmware_sim.hardware.faults`, keyed by quantity) change the values a chip reports:
a miscalibrated or drifting DHT22 reads wrong without any library error; one that drops
out fails with "DHT sensor not found".
"""

from __future__ import annotations

import collections
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from firmware_sim.hardware.faults import FaultySensor, SensorFault
from firmware_sim.hardware.models import ClimateModel

LIBRARY_SPACING_MS = 2000  # adafruit_dht: re-read only if more than 2.0 s since last call

CHECKSUM_MESSAGE = "Checksum did not validate. Try again."
FULL_BUFFER_MESSAGE = "A full buffer was not returned. Try again."
NOT_FOUND_MESSAGE = "DHT sensor not found, check wiring"


@dataclass(frozen=True)
class DHTFaults:
    """Probability per chip attempt of each routine failure."""

    checksum: float = 0.05
    full_buffer: float = 0.05
    not_found: float = 0.0

    def __post_init__(self) -> None:
        if min(self.checksum, self.full_buffer, self.not_found) < 0 or (
                self.checksum + self.full_buffer + self.not_found > 1):
            raise ValueError("fault rates must be >= 0 and add up to at most 1")


class SimDHT22:
    """One simulated DHT22 on one pin."""

    def __init__(self, pin: object, use_pulseio: bool, module: SimDHTModule) -> None:
        self.pin = pin
        self.use_pulseio = use_pulseio
        self._module = module
        self._rng = random.Random(f"dht:{module.seed}:{pin}")  # noqa: S311 - seeded replayable simulation
        self._last_called_ms: int | None = None
        self._temperature: float | None = None
        self._humidity: float | None = None
        # What happened at the chip, for tests: cached returns are not attempts.
        self.attempt_times_ms: list[int] = []
        self.failures: collections.Counter[str] = collections.Counter()
        self.exited = False
        fault_rng = random.Random(f"dht-fault:{module.seed}:{pin}")  # noqa: S311 - seeded
        self._faulty = {q: FaultySensor(f, fault_rng) for q, f in module.sensor_faults.items()}

    @property
    def temperature(self) -> float | None:
        self._measure()
        return self._temperature

    @property
    def humidity(self) -> float | None:
        self._measure()
        return self._humidity

    def exit(self) -> None:
        self.exited = True

    def _measure(self) -> None:
        now = self._module.mono_ms()
        if self._last_called_ms is not None and now - self._last_called_ms <= LIBRARY_SPACING_MS:
            return  # the library's cache: previous values, no chip transaction
        self._last_called_ms = now
        self.attempt_times_ms.append(now)
        draw = self._rng.random()
        # Draw the values on every attempt so a failure does not shift later values.
        sampled = self._module.climate.sample(self._module.wall_s(), self._rng)
        temperature, humidity = self._apply_faults(*sampled)
        failure = self._failure_for(draw)
        if temperature is None or humidity is None:
            failure = failure or NOT_FOUND_MESSAGE  # a dropped-out chip does not answer
        if failure is not None:
            self.failures[failure] += 1
            raise RuntimeError(failure)
        self._temperature, self._humidity = temperature, humidity

    def _apply_faults(self, temperature: float, humidity: float
                      ) -> tuple[float | None, float | None]:
        """The seeded sensor faults (bias, drift, stuck, ...) on this chip's values."""
        if not self._faulty:
            return temperature, humidity
        elapsed = self._module.wall_s() - self._module.climate.epoch_s
        t, rh = (self._faulty[q].apply(v, elapsed) if q in self._faulty else v
                 for q, v in (("temperature", temperature), ("humidity", humidity)))
        return (None if t is None else round(t, 1),
                None if rh is None else round(min(max(rh, 0.0), 100.0), 1))

    @property
    def attempts(self) -> int:
        return len(self.attempt_times_ms)

    def _failure_for(self, draw: float) -> str | None:
        faults = self._module.faults
        threshold = 0.0
        for rate, message in ((faults.not_found, NOT_FOUND_MESSAGE),
                              (faults.full_buffer, FULL_BUFFER_MESSAGE),
                              (faults.checksum, CHECKSUM_MESSAGE)):
            threshold += rate
            if draw < threshold:
                return message
        return None


class SimDHTModule:
    """Module-like object standing in for ``adafruit_dht`` (``module.DHT22(pin, ...)``)."""

    def __init__(
        self,
        seed: int,
        climate: ClimateModel,
        faults: DHTFaults,
        mono_ms: Callable[[], int],
        wall_s: Callable[[], float],
        *,
        sensor_faults: Mapping[str, tuple[SensorFault, ...]] | None = None,
    ) -> None:
        self.seed = seed
        self.sensor_faults = dict(sensor_faults or {})  # quantity -> faults, every pin
        self.climate = climate
        self.faults = faults
        self.mono_ms = mono_ms
        self.wall_s = wall_s
        self.devices: list[SimDHT22] = []

    def DHT22(self, pin: object, use_pulseio: bool = True) -> SimDHT22:  # the library's name
        """Open a simulated DHT22 on ``pin``; a pin already open raises like a busy line."""
        if any(d.pin == pin and not d.exited for d in self.devices):
            raise RuntimeError(f"pin {pin} in use")
        device = SimDHT22(pin, use_pulseio, self)
        self.devices.append(device)
        return device
