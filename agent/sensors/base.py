"""The one driver interface every sensor sits behind.

A driver subclasses :class:`Sensor` and implements the private hook ``_read_raw``. The
public :meth:`Sensor.read` guarantees what escapes: a :class:`Reading` or a
:class:`~protocol.errors.SensorReadError` with a stable reason code, never a library
exception. Every outcome is counted (``reads_ok``, ``errors`` by reason), so a status
command can show how a sensor is doing without reading logs.

Reason codes (agent-local; they never travel to the gateway):

``checksum``          the chip answered but the checksum failed (DHT22, routine)
``timeout``           the chip's answer was incomplete ("full buffer was not returned")
``not_found``         the chip did not answer at all ("DHT sensor not found, check wiring")
``implausible``       the chip answered with a value outside its physical range
``too_soon``          asked again before the chip may be read (DHT22: 2 s minimum spacing)
``no_fresh_value``    the library had no new value (a cached or missing one is never stamped)
``hardware_missing``  the device, its library or its pin factory could not be opened
``io_error``          reading the device file or pin failed
``closed``            the sensor was closed
``driver_error``      anything else the driver or library raised (a bug to look at)
"""

from __future__ import annotations

import abc
import collections
import threading
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from protocol.errors import SensorReadError
from protocol.record import Measurement

CHECKSUM = "checksum"
TIMEOUT = "timeout"
NOT_FOUND = "not_found"
IMPLAUSIBLE = "implausible"
TOO_SOON = "too_soon"
NO_FRESH_VALUE = "no_fresh_value"
HARDWARE_MISSING = "hardware_missing"
IO_ERROR = "io_error"
CLOSED = "closed"
DRIVER_ERROR = "driver_error"


class SensorUnavailable(SensorReadError):
    """A sensor's hardware, library or pin factory could not be opened.

    ``reason`` is always ``hardware_missing``; ``detail`` says what was missing in one line.
    """

    def __init__(self, sensor: str, detail: str) -> None:
        super().__init__(sensor, HARDWARE_MISSING)
        self.detail = detail
        self.args = (f"{sensor}: {HARDWARE_MISSING} ({detail})",)


@dataclass(frozen=True)
class Reading:
    """A fresh reading of one stream, taken at ``mono_ms`` on the agent's monotonic clock."""

    stream: str
    values: tuple[Measurement, ...]
    mono_ms: int


class Sensor(abc.ABC):
    """A sensor producing readings of one stream.

    Subclasses implement :meth:`_read_raw` (and :meth:`_close` if they hold a device).
    ``read`` and ``close`` are safe to call from several threads.
    """

    kind: str = "sensor"

    def __init__(self, name: str, interval_s: float) -> None:
        self.name = name
        self.interval_s = float(interval_s)
        self.reads_ok = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self._closed = False
        self._lock = threading.RLock()

    def read(self, now_mono_ms: int) -> Reading:
        """Read the sensor now.

        Returns a :class:`Reading` stamped ``now_mono_ms`` holding values the hardware
        produced during this call. Raises :class:`SensorReadError` (counted in
        ``errors`` under its reason) when it could not; any foreign exception is
        converted to reason ``driver_error``.
        """
        with self._lock:
            if self._closed:
                self.errors[CLOSED] += 1
                raise SensorReadError(self.name, CLOSED)
            try:
                values = self._read_raw(now_mono_ms)
            except SensorReadError as exc:
                self.errors[exc.reason] += 1
                raise
            except Exception as exc:  # the one place foreign errors are converted
                self.errors[DRIVER_ERROR] += 1
                raise SensorReadError(self.name, DRIVER_ERROR) from exc
            self.reads_ok += 1
            return Reading(self.name, values, now_mono_ms)

    @abc.abstractmethod
    def _read_raw(self, now_mono_ms: int) -> tuple[Measurement, ...]:
        """Return fresh values, or raise SensorReadError(self.name, reason)."""

    def close(self) -> None:
        """Release the device. Idempotent; never raises."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._close()
            except Exception:  # noqa: BLE001 - closing a broken device must not stop shutdown; counted
                self.errors["close_failed"] += 1

    def _close(self) -> None:  # noqa: B027 - optional hook; most drivers hold nothing
        """Release driver resources (override when the driver holds a device)."""

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def next_attempt_mono_ms(self) -> int | None:
        """The earliest monotonic ms at which :meth:`read` may touch the hardware again
        (None: any time). The sampler never asks sooner, and after a failure asks again
        then rather than wait for the next interval (the DHT22's back-off)."""
        return None

    def status(self) -> dict[str, object]:
        """A JSON-ready summary: stream, kind, interval, reads_ok and errors by reason."""
        with self._lock:
            return {
                "stream": self.name,
                "kind": self.kind,
                "interval_s": self.interval_s,
                "reads_ok": self.reads_ok,
                "errors": dict(sorted(self.errors.items())),
            }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} stream={self.name!r} interval_s={self.interval_s}>"


def scaled(value: object, exponent: int, unit: str, sensor: str) -> Measurement:
    """Return ``value`` (a library's float) as an exact scaled integer ``Measurement``.

    The float is read through its shortest decimal form (``repr``), so 21.4 becomes
    ``Measurement(214, -1, unit)`` with no binary rounding noise; halves round up.
    Raises SensorReadError ``no_fresh_value`` for None and ``implausible`` for a
    non-finite or non-numeric value.
    """
    if value is None:
        raise SensorReadError(sensor, NO_FRESH_VALUE)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SensorReadError(sensor, IMPLAUSIBLE)
    exact = Decimal(repr(value))
    if not exact.is_finite():
        raise SensorReadError(sensor, IMPLAUSIBLE)
    mantissa = int(exact.scaleb(-exponent).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return Measurement(mantissa, exponent, unit)
