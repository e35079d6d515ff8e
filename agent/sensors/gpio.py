"""Digital inputs over gpiozero: a motion (PIR) sensor, a button, a power-sense line.

Each reads the input's level now and reports ``Measurement(1 or 0, 0, "/")``: SenML's
unit "/" (ratio, dimensionless), here 1 = active, 0 = inactive.

Every device gets the pin factory passed in explicitly (see :mod:`agent.sensors.pin_factory`);
gpiozero's own auto-detection is never used.

Choices, and why:

- **motion** uses ``gpiozero.DigitalInputDevice`` (pull-down, active high), not
  ``gpiozero.MotionSensor``. A PIR module (HC-SR501 and kin) already holds a clean high
  level for its hold time; MotionSensor adds a background sampling thread (10 Hz, queue of
  one by default) whose value lags the pin by a thread-scheduling-dependent delay, which
  buys no smoothing and makes the reading depend on timing.
- **button** uses ``gpiozero.Button`` (pull-up, active low: a switch to ground).
- **power_sense** uses ``gpiozero.DigitalInputDevice`` (pull-down, active high: an
  optocoupler or a 3.3 V logic "TV on" line). ``pull_up`` can be set per sensor.

For the usage meter, :meth:`DigitalInputSensor.is_active` reads the level (poll it on the
agent's monotonic clock), and :meth:`DigitalInputSensor.watch` delivers edges as they
happen (gpiozero ``when_activated`` / ``when_deactivated``, called on gpiozero's event
thread; the callback should stamp the edge with the agent's monotonic clock itself).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.sensors.base import CLOSED, IO_ERROR, Sensor, SensorUnavailable
from protocol.errors import SensorReadError
from protocol.record import Measurement

ON_OFF_UNIT = "/"

# kind -> (gpiozero class name, default pull_up)
DIGITAL_KINDS: dict[str, tuple[str, bool]] = {
    "motion": ("DigitalInputDevice", False),
    "button": ("Button", True),
    "power_sense": ("DigitalInputDevice", False),
}


def open_input_device(
    sensor: str, kind: str, pin: int, pin_factory: Any, pull_up: bool | None = None
) -> Any:
    """Open the gpiozero device for a digital input ``kind`` on BCM ``pin``.

    Returns the gpiozero device. Raises SensorUnavailable when gpiozero cannot open the
    pin (pin in use, invalid, or the factory refuses it).
    """
    import gpiozero  # noqa: PLC0415 - imported when a GPIO sensor is configured, not at agent start

    class_name, default_pull_up = DIGITAL_KINDS[kind]
    device_class = getattr(gpiozero, class_name)
    pull = default_pull_up if pull_up is None else pull_up
    try:
        return device_class(pin, pull_up=pull, pin_factory=pin_factory)
    except Exception as exc:
        raise SensorUnavailable(sensor, f"GPIO{pin} could not be opened ({exc})") from exc


class DigitalInputSensor(Sensor):
    """A digital input read as 1 (active) or 0 (inactive)."""

    def __init__(self, name: str, interval_s: float, kind: str, device: Any) -> None:
        super().__init__(name, interval_s)
        self.kind = kind  # per instance: motion, button or power_sense
        self._device = device
        self._watchers: list[Callable[[bool], None]] = []

    def is_active(self) -> bool:
        """Return the input's level now (for polling the usage meter).

        Raises SensorReadError (``io_error``, ``closed``), counted in ``errors``.
        """
        with self._lock:
            try:
                return self._level()
            except SensorReadError as exc:
                self.errors[exc.reason] += 1
                raise

    def watch(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(is_active)`` on every edge of the input.

        Callbacks run on gpiozero's event thread (in simulation: inside
        ``SimulatedHardware.advance``); keep them short and thread-safe.
        """
        self._watchers.append(callback)
        self._device.when_activated = self._rising
        self._device.when_deactivated = self._falling

    def _rising(self) -> None:
        for callback in list(self._watchers):
            callback(True)

    def _falling(self) -> None:
        for callback in list(self._watchers):
            callback(False)

    def _read_raw(self, now_mono_ms: int) -> tuple[Measurement, ...]:
        return (Measurement(1 if self._level() else 0, 0, ON_OFF_UNIT),)

    def _level(self) -> bool:
        if self.closed:
            raise SensorReadError(self.name, CLOSED)
        try:
            return bool(self._device.is_active)
        except Exception as exc:
            raise SensorReadError(self.name, IO_ERROR) from exc

    def _close(self) -> None:
        self._watchers.clear()
        self._device.close()
