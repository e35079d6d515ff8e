"""Sensor configuration and the factory that builds drivers for a backend.

``build_sensors(configs, backend, ...)`` builds each configured sensor on its own: one
sensor whose hardware cannot be opened is reported in ``failures`` with a reason and a
one-line detail, and every other sensor still builds. The backend is named, never
guessed:

- ``"hardware"``: the pin factory named by ``pin_factory`` (default ``lgpio``) and the
  real ``adafruit_dht``. If they are missing, the sensors that need them fail with
  ``hardware_missing``; nothing falls back to mock pins. ``cpu_temp`` needs neither: it
  reads the kernel's thermal zone under ``thermal_dir`` (agent/sensors/cpu.py).
- ``"simulated"``: the ``SimulatedHardware`` passed in as ``sim`` supplies the pin factory,
  the DHT stand-in and the CPU temperature file; the same drivers run on top.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from agent.sensors.base import Sensor, SensorUnavailable
from agent.sensors.cpu import THERMAL_DIR, CPUTemperatureSensor
from agent.sensors.dht22 import (
    DATASHEET_SPACING_S,
    DEFAULT_MIN_SPACING_S,
    DHT22Sensor,
    board_pin,
    import_dht_library,
)
from agent.sensors.gpio import DIGITAL_KINDS, DigitalInputSensor, open_input_device
from agent.sensors.pin_factory import (
    DEFAULT_PIN_FACTORY,
    LazyPinFactory,
    PinFactoryLoader,
    PinFactoryUnavailable,
    check_pin_factory_name,
    load_pin_factory,
)
from agent.sensors.simulated import SimulatedHardware
from protocol.errors import ConfigError, SensorReadError
from protocol.record import MAX_STREAM_CHARS, RESERVED_STREAMS

KINDS = ("dht22", "cpu_temp", *DIGITAL_KINDS)
BACKENDS = ("hardware", "simulated")
BCM_PINS = range(28)  # GPIO0..GPIO27 on the 40-pin header
# interval_s and min_spacing_s at most a day: a longer one is a typo (and 1e308 s
# overflows the clock arithmetic of the drivers).
MAX_INTERVAL_S = 86400


@dataclass(frozen=True)
class SensorConfig:
    """One configured sensor. Validates when built; errors name the field."""

    kind: str
    stream: str
    interval_s: float
    pin: int | None = None
    recipients: tuple[str, ...] = ()
    pull_up: bool | None = None  # digital inputs only; None = the kind's default
    sensor_file: str | None = None  # cpu_temp only; None = sysfs (or the simulated file)
    min_spacing_s: float = DEFAULT_MIN_SPACING_S  # dht22 only

    def __post_init__(self) -> None:
        _check(self.kind in KINDS, "kind", f"unknown {self.kind!r}; choose one of {KINDS}")
        _check(
            isinstance(self.stream, str) and 1 <= len(self.stream) <= MAX_STREAM_CHARS
            and self.stream.isprintable() and self.stream not in RESERVED_STREAMS,
            "stream", f"{self.stream!r} must be 1..{MAX_STREAM_CHARS} printable characters "
            f"and not one of {sorted(RESERVED_STREAMS)}",
        )
        for key in ("interval_s", "min_spacing_s"):
            _check(_positive_number(getattr(self, key), MAX_INTERVAL_S), key,
                   f"must be a number > 0 and <= {MAX_INTERVAL_S} (s)")
        self._check_kind_fields()
        _check(
            isinstance(self.recipients, tuple)
            and all(isinstance(r, str) and r for r in self.recipients)
            and len(set(self.recipients)) == len(self.recipients),
            "recipients", "must be distinct non-empty names",
        )

    def _check_kind_fields(self) -> None:
        if self.kind == "cpu_temp":
            _check(self.pin is None, "pin", "cpu_temp has no pin")
        else:
            _check(
                isinstance(self.pin, int) and not isinstance(self.pin, bool)
                and self.pin in BCM_PINS, "pin", "must be a BCM GPIO number 0..27",
            )
        if self.kind == "dht22":
            _check(self.min_spacing_s >= DATASHEET_SPACING_S, "min_spacing_s",
                   f"must be at least {DATASHEET_SPACING_S} s")
            _check(self.interval_s >= self.min_spacing_s, "interval_s",
                   f"a DHT22 cannot be read more often than every {self.min_spacing_s} s "
                   "(min_spacing_s)")
        _check(self.pull_up is None or (self.kind in DIGITAL_KINDS
                                        and isinstance(self.pull_up, bool)),
               "pull_up", "is a bool and applies to motion, button and power_sense only")
        _check(self.sensor_file is None or (self.kind == "cpu_temp"
                                            and isinstance(self.sensor_file, str)),
               "sensor_file", "is a path and applies to cpu_temp only")

    @classmethod
    def from_table(cls, table: Mapping[str, object], where: str = "sensor") -> SensorConfig:
        """Build from a TOML table; ConfigError names ``where.key`` for any bad entry."""
        known = {f.name for f in fields(cls)}
        for key in table:
            if key not in known:
                raise ConfigError(f"{where}.{key}: unknown key")
        for key in ("kind", "stream", "interval_s"):
            if key not in table:
                raise ConfigError(f"{where}.{key}: required")
        values = dict(table)
        if "recipients" in values:
            recipients = values["recipients"]
            if not isinstance(recipients, list):
                raise ConfigError(f"{where}.recipients: must be a list of names")
            values["recipients"] = tuple(recipients)
        try:
            return cls(**values)  # type: ignore[arg-type]  # each field is checked above
        except ConfigError as exc:
            raise ConfigError(f"{where}.{exc}") from None


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _positive_number(x: object, high: float) -> bool:
    return (isinstance(x, int | float) and not isinstance(x, bool)
            and math.isfinite(x) and 0 < x <= high)


def validate_sensor_configs(configs: Iterable[SensorConfig]) -> None:
    """Raise ConfigError if two sensors share a stream name or a pin."""
    streams: set[str] = set()
    pins: dict[int, str] = {}
    for config in configs:
        if config.stream in streams:
            raise ConfigError(f"sensors: stream {config.stream!r} configured twice")
        streams.add(config.stream)
        if config.pin is not None:
            if config.pin in pins:
                raise ConfigError(
                    f"sensors: GPIO{config.pin} used by {pins[config.pin]!r} and "
                    f"{config.stream!r}")
            pins[config.pin] = config.stream


@dataclass(frozen=True)
class SensorFailure:
    """A configured sensor that could not be built, and why."""

    config: SensorConfig
    error: SensorReadError

    @property
    def reason(self) -> str:
        return self.error.reason

    @property
    def detail(self) -> str:
        return getattr(self.error, "detail", str(self.error))


@dataclass
class SensorSet:
    """The sensors that were built, those that failed, and what must be closed later."""

    sensors: list[Sensor]
    failures: list[SensorFailure]
    _factory: LazyPinFactory | None = field(default=None, repr=False)

    def by_stream(self, stream: str) -> Sensor:
        """Return the built sensor for ``stream``; KeyError if it was not built."""
        for sensor in self.sensors:
            if sensor.name == stream:
                return sensor
        raise KeyError(stream)

    def close(self) -> None:
        """Close every sensor, then the pin factory this set loaded (if any)."""
        for sensor in self.sensors:
            sensor.close()
        if self._factory is not None:
            self._factory.close()


def build_sensors(
    configs: Sequence[SensorConfig],
    backend: str,
    *,
    sim: SimulatedHardware | None = None,
    pin_factory: str = DEFAULT_PIN_FACTORY,
    pin_factory_loader: PinFactoryLoader = load_pin_factory,
    thermal_dir: Path = THERMAL_DIR,
) -> SensorSet:
    """Build a driver for each config on ``backend`` ("hardware" or "simulated").

    Returns a :class:`SensorSet`; sensors whose hardware could not be opened are in
    ``failures`` (reason ``hardware_missing`` with a detail), the rest in ``sensors``.
    Raises ConfigError for an unknown backend, a missing or unexpected ``sim``, a bad
    ``pin_factory`` name (``mock`` with hardware), or duplicate streams or pins.
    ``pin_factory_loader`` and ``thermal_dir`` exist for tests of the hardware path.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend: unknown {backend!r}; choose one of {BACKENDS}")
    simulated = backend == "simulated"
    if simulated and sim is None:
        raise ConfigError("backend: 'simulated' needs the simulated hardware (--simulate)")
    if not simulated and sim is not None:
        raise ConfigError("backend: simulated hardware given to the 'hardware' backend")
    validate_sensor_configs(configs)
    owned: LazyPinFactory | None = None
    if sim is not None:
        simulated_factory = sim.pin_factory()
        # The simulated hardware owns its factory and closes it; this set does not.
        factory = LazyPinFactory("mock", lambda _name: simulated_factory)
    else:
        check_pin_factory_name(pin_factory, simulated=False)
        factory = owned = LazyPinFactory(pin_factory, pin_factory_loader)
    result = SensorSet([], [], owned)
    for config in configs:
        try:
            result.sensors.append(_build_one(config, factory, sim, thermal_dir))
        except SensorReadError as exc:
            result.failures.append(SensorFailure(config, exc))
    return result


def _build_one(config: SensorConfig, factory: LazyPinFactory, sim: Any,
               thermal_dir: Path) -> Sensor:
    if config.kind == "dht22":
        assert config.pin is not None  # validated
        if sim is not None:
            module, pin = sim.dht_module(), sim.dht_pin(config.pin)
        else:
            module, pin = import_dht_library(config.stream), board_pin(config.stream, config.pin)
        return DHT22Sensor(config.stream, config.interval_s, pin, dht_module=module,
                           min_spacing_s=config.min_spacing_s)
    if config.kind == "cpu_temp":  # the kernel's thermal zone: no pins involved
        path = config.sensor_file
        if path is None and sim is not None:
            path = str(sim.cpu_temp_file())
        return CPUTemperatureSensor(config.stream, config.interval_s, path,
                                    thermal_dir=thermal_dir)
    pins = _factory_for(config, factory)
    assert config.pin is not None  # validated
    device = open_input_device(config.stream, config.kind, config.pin, pins, config.pull_up)
    return DigitalInputSensor(config.stream, config.interval_s, config.kind, device)


def _factory_for(config: SensorConfig, factory: LazyPinFactory) -> Any:
    try:
        return factory.get()
    except PinFactoryUnavailable as exc:
        raise SensorUnavailable(config.stream, exc.detail) from exc
