"""CPU temperature over ``gpiozero.CPUTemperature``.

The kernel exposes the SoC temperature in millidegrees Celsius in a sysfs file
(default ``/sys/class/thermal/thermal_zone0/temp``). The path is injectable: in simulation
it is a file in the state directory that the simulated thermal model writes, so the driver
and gpiozero run unchanged above it.

Reading: ``Measurement(t×10, -1, "Cel")`` (one decimal, like the DHT22). The file is read
on every call, so every value is fresh; a missing or unreadable file is ``io_error``.
"""

from __future__ import annotations

from typing import Any

from agent.sensors.base import IO_ERROR, Sensor, SensorUnavailable, scaled
from protocol.errors import SensorReadError
from protocol.record import Measurement

DEFAULT_SENSOR_FILE = "/sys/class/thermal/thermal_zone0/temp"
CPU_RANGE = (-40.0, 125.0)  # what a Pi SoC can report, °C


class CPUTemperatureSensor(Sensor):
    """The SoC temperature, one decimal, in Cel."""

    kind = "cpu_temp"

    def __init__(
        self,
        name: str,
        interval_s: float,
        pin_factory: Any,
        sensor_file: str = DEFAULT_SENSOR_FILE,
    ) -> None:
        """Open ``sensor_file`` through gpiozero with ``pin_factory`` (never auto-detected).

        Raises SensorUnavailable when the file cannot be read at start.
        """
        super().__init__(name, interval_s)
        import gpiozero  # noqa: PLC0415 - imported when this sensor is configured

        self.sensor_file = sensor_file
        try:
            # event_delay only matters if someone sets when_activated; we never do, so
            # gpiozero starts no polling thread.
            self._device = gpiozero.CPUTemperature(
                sensor_file=sensor_file, pin_factory=pin_factory
            )
        except Exception as exc:
            raise SensorUnavailable(name, f"{sensor_file} unreadable ({exc})") from exc

    def _read_raw(self, now_mono_ms: int) -> tuple[Measurement, ...]:
        try:
            celsius = self._device.temperature
        except (OSError, ValueError) as exc:
            raise SensorReadError(self.name, IO_ERROR) from exc
        value = scaled(celsius, -1, "Cel", self.name)
        if not CPU_RANGE[0] <= value.value <= CPU_RANGE[1]:
            raise SensorReadError(self.name, "implausible")
        return (value,)

    def _close(self) -> None:
        self._device.close()
