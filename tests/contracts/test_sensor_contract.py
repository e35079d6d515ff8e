"""The sensor contract: what every driver behind :class:`agent.sensors.base.Sensor` promises,
on every backend.

One suite, run against every (backend, kind) in ``RIGS``:

- ``simulated``: the sensors ``build_sensors(..., "simulated")`` makes over
  ``firmware_sim``'s SimulatedHardware (MockFactory pins driven by models, the DHT22
  stand-in, the thermal file), as ``--simulate`` runs them;
- ``hardware``: the same real drivers over fakes below our code only: gpiozero's
  MockFactory handed in as the pin factory, a chip library that answers like
  adafruit_dht, and a millidegree file like the kernel's.

A rig builds one sensor and knows how to move the world below it to a time and how to
break the layer below the driver (with the reason code the driver must turn that into).
A new backend or sensor kind is tested by adding its rig to ``RIGS``. What only one driver
does (the DHT22's cache and back-off, edge watchers) stays in tests/agent/test_sensors_*.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from agent.clock import ManualClock
from agent.sensors import SensorConfig, build_sensors, load_simulated_hardware
from agent.sensors.base import Sensor
from agent.sensors.dht22 import DHT22Sensor
from firmware_sim.hardware import DHTFaults
from protocol.errors import SensorReadError
from protocol.record import Measurement

STEP_MS = 60_000  # between reads: past any driver's minimum spacing (DHT22: 2 s)
PINS = {"power_sense": 17, "motion": 27, "button": 22, "dht22": 4}


@dataclass
class Rig:
    """One sensor on one backend, and handles on the world below its driver."""

    sensor: Sensor
    advance: Callable[[int], None]  # move the world below to this monotonic time (ms)
    break_below: Callable[[], None]  # make the layer below the driver fail from now on
    broken_reason: str  # the reason code the driver must report for that failure
    release: Callable[[], None]


def _config(kind: str, **extra: Any) -> SensorConfig:
    return SensorConfig(kind, f"s-{kind}", 30, pin=PINS.get(kind), **extra)


def _failing_pin(pin: Any) -> Callable[[], None]:
    def unreadable() -> bool:
        raise OSError(5, "EIO")  # a pin that stops answering (a bad GPIO line)

    def fail() -> None:
        # MockPin reads its level through _get_state: the fake pin below our code fails.
        # The factory is reset and closed after the test, so the patch dies with the pin.
        pytest.MonkeyPatch().setattr(pin, "_get_state", unreadable)
    return fail


# --- the simulated backend ----------------------------------------------------------------


def simulated(tmp_path: Path, kind: str) -> Rig:
    clock = ManualClock()
    hw = load_simulated_hardware(3, tmp_path / "world", clock, dht_faults=DHTFaults(0, 0, 0))
    built = build_sensors([_config(kind)], "simulated", sim=hw)
    assert built.failures == []
    (sensor,) = built.sensors

    def advance(now: int) -> None:
        clock.advance(now - clock.mono_ms())
        hw.advance(clock.wall_ms() / 1000, clock.mono_ms())

    if kind == "dht22":
        def break_below() -> None:
            hw.dht_module().faults = DHTFaults(0, 0, 1.0)
        reason = "not_found"
    elif kind == "cpu_temp":
        def break_below() -> None:
            hw.cpu_temp_file().unlink()
        reason = "io_error"
    else:
        break_below, reason = _failing_pin(hw.pin_factory().pin(PINS[kind])), "io_error"

    def release() -> None:
        built.close()
        hw.close()

    return Rig(sensor, advance, break_below, reason, release)


# --- the real drivers over fakes below our code -------------------------------------------


class FakeChipLibrary:
    """Answers like adafruit_dht: ``DHT22(pin)`` gives a chip with temperature/humidity."""

    def __init__(self) -> None:
        self.error: BaseException | None = None

    def DHT22(self, pin: object, use_pulseio: bool = True) -> FakeChipLibrary:
        return self

    @property
    def temperature(self) -> float:
        if self.error is not None:
            raise self.error
        return 21.4

    @property
    def humidity(self) -> float:
        return 40.5

    def exit(self) -> None:
        pass


def hardware(tmp_path: Path, kind: str) -> Rig:
    factory = MockFactory()

    def close_factory() -> None:
        factory.reset()  # MockFactory keeps pins and reservations for its lifetime
        factory.close()

    if kind == "dht22":
        chip = FakeChipLibrary()
        dht = DHT22Sensor(f"s-{kind}", 30, PINS[kind], dht_module=chip)

        def chip_gone() -> None:
            chip.error = RuntimeError("DHT sensor not found, check wiring")

        def release_dht() -> None:
            dht.close()
            close_factory()

        return Rig(dht, lambda now: None, chip_gone, "not_found", release_dht)
    if kind == "cpu_temp":
        zone = tmp_path / "thermal_zone0_temp"
        zone.write_text("47234\n")
        config = _config(kind, sensor_file=str(zone))
        break_below: Callable[[], None] = zone.unlink
    else:
        config = _config(kind)
        break_below = _failing_pin(factory.pin(PINS[kind]))
    built = build_sensors([config], "hardware", pin_factory_loader=lambda name: factory)
    assert built.failures == []
    (sensor,) = built.sensors

    def release() -> None:
        built.close()
        close_factory()

    return Rig(sensor, lambda now: None, break_below, "io_error", release)


KINDS = ["dht22", "cpu_temp", "power_sense", "motion", "button"]
# One line per backend: a function (tmp_path, kind) -> Rig.
BACKENDS: dict[str, Callable[[Path, str], Rig]] = {
    "simulated": simulated,
    "hardware": hardware,
}
RIGS = [pytest.param((build, kind), id=f"{name}-{kind}")
        for name, build in BACKENDS.items() for kind in KINDS]


@pytest.fixture(params=RIGS)
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    build, kind = request.param
    made = build(tmp_path, kind)
    try:
        yield made
    finally:
        made.release()


def read_at(rig: Rig, now: int) -> Any:
    rig.advance(now)
    return rig.sensor.read(now)


# --- the contract -------------------------------------------------------------------------


def test_reading_is_stamped_when_asked_and_names_its_stream(rig: Rig) -> None:
    reading = read_at(rig, STEP_MS)
    assert reading.stream == rig.sensor.name
    assert reading.mono_ms == STEP_MS
    assert reading.values
    assert all(isinstance(v, Measurement) for v in reading.values)
    assert all(type(v.mantissa) is int for v in reading.values)  # exact, never a float


def test_every_successful_read_is_counted(rig: Rig) -> None:
    for n in range(1, 4):
        read_at(rig, n * STEP_MS)
    assert rig.sensor.reads_ok == 3
    assert not rig.sensor.errors
    status = rig.sensor.status()
    assert status["reads_ok"] == 3
    assert status["errors"] == {}
    assert status["stream"] == rig.sensor.name
    assert status["kind"] == rig.sensor.kind
    assert status["interval_s"] == rig.sensor.interval_s


def test_failure_below_the_driver_is_a_typed_counted_error_not_a_library_exception(
        rig: Rig) -> None:
    read_at(rig, STEP_MS)
    rig.advance(2 * STEP_MS)
    rig.break_below()  # after the world moved: nothing below repairs it before the read
    with pytest.raises(SensorReadError) as err:
        rig.sensor.read(2 * STEP_MS)
    assert err.value.reason == rig.broken_reason
    assert rig.sensor.errors == {rig.broken_reason: 1}
    assert rig.sensor.reads_ok == 1
    assert rig.sensor.status()["errors"] == {rig.broken_reason: 1}


def test_read_after_close_fails_closed_and_is_counted(rig: Rig) -> None:
    read_at(rig, STEP_MS)
    rig.sensor.close()
    assert rig.sensor.closed
    with pytest.raises(SensorReadError) as err:
        read_at(rig, 2 * STEP_MS)
    assert err.value.reason == "closed"
    assert rig.sensor.errors == {"closed": 1}


def test_closing_twice_is_harmless(rig: Rig) -> None:
    rig.sensor.close()
    rig.sensor.close()
    assert rig.sensor.closed
    assert "close_failed" not in rig.sensor.errors
