"""DHT22 temperature and humidity driver over adafruit-circuitpython-dht.

The chip library is imported only when a DHT22 is configured, and it is injectable
(``dht_module``): on a Pi it is ``adafruit_dht``; in simulation it is the stand-in from
``firmware_sim.hardware``, which fails and caches like the real one. Our driver code is
the same in both.

Two facts about the library shape this driver (see docs/AGENT.md):

- **Cache.** ``adafruit_dht`` touches the chip only when more than 2.0 s have passed since
  its last attempt (by its own ``time.monotonic()``); otherwise ``.temperature`` returns
  the previous value, even after a failed attempt. So the driver keeps its own record of
  when it last touched the chip and never touches it again sooner than ``min_spacing_s``
  (default 2.1 s: the datasheet's 2 s plus a margin for the library's strict ``>``
  comparison on its own clock; both clocks are CLOCK_MONOTONIC on Linux). A value is
  stamped as a :class:`Reading` only when this call made the chip attempt, so a cached
  value is never presented as new.
- **Routine failures.** Checksum and "full buffer" errors are normal (over 10 % of reads on
  some Pis). The driver does not retry or sleep inside :meth:`read`: one call is at most one
  chip attempt. A failure is counted by reason and raised as ``SensorReadError``; the driver
  then sets ``next_attempt_mono_ms`` with exponential back-off (``min_spacing``, 2×, 4×, …,
  capped at ``max(interval, min_spacing)``), and the sampler asks again at or after that
  time. A call before ``next_attempt_mono_ms`` raises ``too_soon`` without touching the
  chip. A successful read resets the back-off.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

from agent.sensors.base import (
    CHECKSUM,
    DRIVER_ERROR,
    IMPLAUSIBLE,
    IO_ERROR,
    NOT_FOUND,
    TIMEOUT,
    TOO_SOON,
    Sensor,
    SensorUnavailable,
    scaled,
)
from protocol.errors import ConfigError, SensorReadError
from protocol.record import Measurement

DATASHEET_SPACING_S = 2.0
DEFAULT_MIN_SPACING_S = 2.1
TEMPERATURE_RANGE = (-40.0, 80.0)  # DHT22 datasheet operating range, °C
HUMIDITY_RANGE = (0.0, 100.0)

# Messages adafruit_dht raises as RuntimeError, mapped to our reason codes.
_MESSAGE_REASONS = (
    ("checksum", CHECKSUM),
    ("full buffer", TIMEOUT),
    ("timed out", TIMEOUT),
    ("not found", NOT_FOUND),
    ("unplausible", IMPLAUSIBLE),
)


class DHTDevice(Protocol):
    """What the driver uses of ``adafruit_dht.DHT22`` (and of the simulated stand-in)."""

    @property
    def temperature(self) -> float | None: ...

    @property
    def humidity(self) -> float | None: ...

    def exit(self) -> None: ...


def classify_chip_error(exc: BaseException) -> str:
    """Return the reason code for an exception the chip library raised."""
    if isinstance(exc, RuntimeError):
        message = str(exc).lower()
        for fragment, reason in _MESSAGE_REASONS:
            if fragment in message:
                return reason
        return DRIVER_ERROR
    if isinstance(exc, OSError):
        return IO_ERROR
    return DRIVER_ERROR


def import_dht_library(sensor: str) -> Any:
    """Import ``adafruit_dht`` (only now that a DHT22 is configured).

    Raises SensorUnavailable when it is not installed (it is in the ``pi`` extra).
    """
    try:
        return importlib.import_module("adafruit_dht")
    except Exception as exc:
        raise SensorUnavailable(
            sensor, f"adafruit_dht not importable ({exc}); install edgeproof[pi]"
        ) from exc


def board_pin(sensor: str, bcm: int) -> object:
    """Return Blinka's ``board.D<bcm>`` pin object for the real library.

    Raises SensorUnavailable when ``board`` cannot be imported or has no such pin.
    """
    try:
        board = importlib.import_module("board")
        return getattr(board, f"D{bcm}")
    except Exception as exc:
        raise SensorUnavailable(sensor, f"board pin D{bcm} unavailable ({exc})") from exc


class DHT22Sensor(Sensor):
    """A DHT22 on one GPIO pin; readings are (temperature Cel ×10⁻¹, humidity %RH ×10⁻¹)."""

    kind = "dht22"

    def __init__(
        self,
        name: str,
        interval_s: float,
        pin: object,
        *,
        dht_module: Any = None,
        min_spacing_s: float = DEFAULT_MIN_SPACING_S,
    ) -> None:
        """Open the chip on ``pin`` (``board.D4`` for the real library).

        ``dht_module`` defaults to ``adafruit_dht``, imported here. Raises ConfigError for
        a spacing under the datasheet's 2 s and SensorUnavailable when the library or the
        chip's pin cannot be opened.
        """
        if min_spacing_s < DATASHEET_SPACING_S:
            raise ConfigError(f"min_spacing_s: a DHT22 needs at least {DATASHEET_SPACING_S} s")
        super().__init__(name, interval_s)
        module = dht_module if dht_module is not None else import_dht_library(name)
        try:
            # use_pulseio=False: bit-banged read, the mode that works on a Pi under Linux.
            self._device: DHTDevice = module.DHT22(pin, use_pulseio=False)
        except Exception as exc:
            raise SensorUnavailable(name, f"DHT22 on {pin} could not be opened ({exc})") from exc
        self._min_spacing_ms = round(min_spacing_s * 1000)
        self._max_backoff_ms = max(round(self.interval_s * 1000), self._min_spacing_ms)
        self._last_touch_ms: int | None = None
        self._backoff_ms = 0
        self.consecutive_failures = 0
        self.chip_reads = 0

    @property
    def next_attempt_mono_ms(self) -> int | None:
        """The earliest monotonic ms at which :meth:`read` will touch the chip (None: now)."""
        if self._last_touch_ms is None:
            return None
        return self._last_touch_ms + max(self._backoff_ms, self._min_spacing_ms)

    @property
    def retry_after_s(self) -> float:
        """Seconds between the last chip attempt and the next allowed one."""
        if self._last_touch_ms is None:
            return 0.0
        return max(self._backoff_ms, self._min_spacing_ms) / 1000

    def _read_raw(self, now_mono_ms: int) -> tuple[Measurement, ...]:
        due = self.next_attempt_mono_ms
        if due is not None and now_mono_ms < due:
            raise SensorReadError(self.name, TOO_SOON)
        self._last_touch_ms = now_mono_ms
        self.chip_reads += 1
        try:
            # One chip transaction: the first property reads the chip, the second returns
            # the same measurement (the library caches it for 2 s).
            temperature = self._device.temperature
            humidity = self._device.humidity
            values = self._to_values(temperature, humidity)
        except Exception as exc:
            self._failed()
            if isinstance(exc, SensorReadError):
                raise
            raise SensorReadError(self.name, classify_chip_error(exc)) from exc
        self.consecutive_failures = 0
        self._backoff_ms = 0
        return values

    def _to_values(self, temperature: object, humidity: object) -> tuple[Measurement, ...]:
        t = scaled(temperature, -1, "Cel", self.name)
        h = scaled(humidity, -1, "%RH", self.name)
        if not _within(t, TEMPERATURE_RANGE) or not _within(h, HUMIDITY_RANGE):
            raise SensorReadError(self.name, IMPLAUSIBLE)
        return (t, h)

    def _failed(self) -> None:
        self.consecutive_failures += 1
        step = self._min_spacing_ms << min(self.consecutive_failures - 1, 20)
        self._backoff_ms = min(step, self._max_backoff_ms)

    def _close(self) -> None:
        self._device.exit()

    def status(self) -> dict[str, object]:
        status = super().status()
        status.update(
            chip_reads=self.chip_reads,
            consecutive_failures=self.consecutive_failures,
            retry_after_s=self.retry_after_s,
        )
        return status


def _within(m: Measurement, bounds: tuple[float, float]) -> bool:
    return bounds[0] <= m.value <= bounds[1]
