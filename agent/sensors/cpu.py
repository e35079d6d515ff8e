"""CPU temperature from the kernel's thermal zone (sysfs), no GPIO involved.

The kernel exposes each thermal zone as ``/sys/class/thermal/thermal_zone<N>/`` with a
``type`` (``cpu-thermal`` on a Raspberry Pi, ``x86_pkg_temp`` on most laptops) and a
``temp`` in millidegrees Celsius. The CPU's zone is found by its type (see
:data:`CPU_ZONE_TYPES`), else the first zone; ``sensor_file`` names a file outright. In
simulation ``sensor_file`` is a file in the state directory that the simulated thermal
model writes, so this driver runs unchanged above it. A pin factory plays no part: the CPU
thermometer works on any Linux machine, Pi or not.

Reading: ``Measurement(t×10, -1, "Cel")`` (one decimal, like the DHT22). The file is read
on every call, so every value is fresh; a missing or unreadable file is ``io_error``.
"""

from __future__ import annotations

import re
from pathlib import Path

from agent.sensors.base import IMPLAUSIBLE, IO_ERROR, Sensor, SensorUnavailable, scaled
from protocol.errors import SensorReadError
from protocol.record import Measurement

THERMAL_DIR = Path("/sys/class/thermal")
CPU_RANGE = (-40.0, 125.0)  # what a Pi SoC can report, °C
# Zone types that are the CPU package, most specific first (Pi, x86, many ARM boards).
CPU_ZONE_TYPES = ("cpu-thermal", "cpu_thermal", "x86_pkg_temp", "soc_thermal", "cpu")
MAX_FILE_BYTES = 64  # a sysfs temperature is a short integer line


def find_cpu_zone(thermal_dir: Path = THERMAL_DIR) -> Path:
    """Return the ``temp`` file of the CPU's thermal zone under ``thermal_dir``.

    Prefers a zone whose ``type`` is in :data:`CPU_ZONE_TYPES` (in that order), else the
    lowest-numbered zone. Raises FileNotFoundError when there is no zone at all.
    """
    zones = sorted((p for p in _list(thermal_dir) if re.fullmatch(r"thermal_zone\d+", p.name)),
                   key=lambda p: int(p.name.removeprefix("thermal_zone")))
    if not zones:
        raise FileNotFoundError(f"no thermal zone in {thermal_dir}")
    types = {zone: _zone_type(zone) for zone in zones}
    for wanted in CPU_ZONE_TYPES:
        for zone in zones:
            if types[zone] == wanted:
                return zone / "temp"
    return zones[0] / "temp"


def _list(directory: Path) -> list[Path]:
    try:
        return list(directory.iterdir())
    except OSError:
        return []


def _zone_type(zone: Path) -> str:
    try:
        return (zone / "type").read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return ""


class CPUTemperatureSensor(Sensor):
    """The CPU temperature, one decimal, in Cel."""

    kind = "cpu_temp"

    def __init__(self, name: str, interval_s: float, sensor_file: str | None = None,
                 *, thermal_dir: Path = THERMAL_DIR) -> None:
        """Read ``sensor_file``, or the CPU zone found under ``thermal_dir``.

        Raises SensorUnavailable when no file is found or it cannot be read at start.
        """
        super().__init__(name, interval_s)
        try:
            path = Path(sensor_file) if sensor_file else find_cpu_zone(thermal_dir)
            self.sensor_file = str(path)
            self._path = path
            self._read_celsius()
        except (OSError, ValueError) as exc:
            where = sensor_file or str(thermal_dir)
            raise SensorUnavailable(name, f"no CPU temperature at {where} ({exc})") from None

    def _read_celsius(self) -> float:
        with self._path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES)
        return int(raw.decode("ascii").strip()) / 1000

    def _read_raw(self, now_mono_ms: int) -> tuple[Measurement, ...]:
        try:
            celsius = self._read_celsius()
        except (OSError, ValueError) as exc:
            raise SensorReadError(self.name, IO_ERROR) from exc
        value = scaled(celsius, -1, "Cel", self.name)
        if not CPU_RANGE[0] <= value.value <= CPU_RANGE[1]:
            raise SensorReadError(self.name, IMPLAUSIBLE)
        return (value,)
