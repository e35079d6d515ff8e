"""DHT22 driver over the simulated chip library: failures, the library's cache, spacing,
back-off, replay."""

from __future__ import annotations

import contextlib
import itertools
import random
from collections.abc import Iterator
from pathlib import Path
from statistics import mean

import pytest

from agent.clock import ManualClock
from agent.sensors.base import SensorUnavailable
from agent.sensors.dht22 import DHT22Sensor
from firmware_sim.hardware import ClimateModel, DHTFaults, SimulatedHardware
from firmware_sim.hardware.dht22 import (
    CHECKSUM_MESSAGE,
    FULL_BUFFER_MESSAGE,
    NOT_FOUND_MESSAGE,
    SimDHT22,
)
from protocol.errors import ConfigError, SensorReadError

START_WALL_MS = 1_700_000_000_000  # 2023-11-14 22:13 UTC


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(wall_ms=START_WALL_MS, mono_ms=5_000)


def make_world(tmp_path: Path, clock: ManualClock, seed: int = 7,
               faults: DHTFaults | None = None) -> SimulatedHardware:
    return SimulatedHardware(seed, tmp_path / f"world-{seed}", clock,
                             dht_faults=faults or DHTFaults(0, 0, 0))


@pytest.fixture
def world(tmp_path: Path, clock: ManualClock) -> Iterator[SimulatedHardware]:
    hw = make_world(tmp_path, clock)
    yield hw
    hw.close()


def open_sensor(hw: SimulatedHardware, interval_s: float = 30.0) -> DHT22Sensor:
    return DHT22Sensor("climate", interval_s, hw.dht_pin(4), dht_module=hw.dht_module())


def chip(hw: SimulatedHardware) -> SimDHT22:
    return hw.dht_module().devices[-1]


def test_routine_failures_are_counted_per_reason_and_yield_no_reading(
        tmp_path: Path, clock: ManualClock) -> None:
    hw = make_world(tmp_path, clock, faults=DHTFaults(checksum=0.2, full_buffer=0.2,
                                                     not_found=0.1))
    sensor = open_sensor(hw)
    readings = []
    failed_sensors = set()
    for _ in range(400):
        due = sensor.next_attempt_mono_ms
        if due is not None:
            clock.advance(max(0, due - clock.mono_ms()))
        try:
            readings.append(sensor.read(clock.mono_ms()))
        except SensorReadError as exc:
            failed_sensors.add(exc.sensor)
    assert failed_sensors <= {"climate"}
    failures = chip(hw).failures
    assert sensor.errors == {
        "checksum": failures[CHECKSUM_MESSAGE],
        "timeout": failures[FULL_BUFFER_MESSAGE],
        "not_found": failures[NOT_FOUND_MESSAGE],
    }
    assert min(sensor.errors.values()) > 0
    assert sensor.reads_ok == len(readings) == 400 - sum(failures.values())
    hw.close()


def test_cached_value_within_2s_is_never_stamped_as_new(
        world: SimulatedHardware, clock: ManualClock) -> None:
    sensor = open_sensor(world)
    first = sensor.read(clock.mono_ms())
    clock.advance(1_000)
    with pytest.raises(SensorReadError) as err:
        sensor.read(clock.mono_ms())
    assert err.value.reason == "too_soon"
    assert chip(world).attempts == 1
    # The trap is real: the library itself would have answered with its cached value.
    cached_temperature = chip(world).temperature
    assert cached_temperature is not None
    assert round(cached_temperature * 10) == first.values[0].mantissa
    assert chip(world).attempts == 1
    assert sensor.reads_ok == 1
    assert sensor.errors["too_soon"] == 1


def test_failed_read_followed_by_early_call_does_not_return_stale_value(
        world: SimulatedHardware, clock: ManualClock) -> None:
    sensor = open_sensor(world)
    sensor.read(clock.mono_ms())
    clock.advance(2_100)
    world.dht_module().faults = DHTFaults(checksum=1.0, full_buffer=0, not_found=0)
    with pytest.raises(SensorReadError, match="checksum"):
        sensor.read(clock.mono_ms())
    clock.advance(1_000)
    # The library would now hand back the pre-failure value without an error ...
    assert chip(world).humidity is not None
    # ... but the driver refuses to touch the chip, so no stale value is stamped.
    with pytest.raises(SensorReadError, match="too_soon"):
        sensor.read(clock.mono_ms())
    assert sensor.reads_ok == 1


def test_chip_is_never_touched_twice_within_2s_whatever_the_sampler_does(
        tmp_path: Path, clock: ManualClock) -> None:
    hw = make_world(tmp_path, clock, faults=DHTFaults(checksum=0.3, full_buffer=0.1))
    sensor = open_sensor(hw, interval_s=10.0)
    rng = random.Random(3)
    for _ in range(1_000):
        clock.advance(rng.choice([0, 1, 500, 1_999, 2_000, 2_099, 2_100, 2_500, 4_000]))
        with contextlib.suppress(SensorReadError):
            sensor.read(clock.mono_ms())
    touches = chip(hw).attempt_times_ms
    gaps = [b - a for a, b in itertools.pairwise(touches)]
    assert len(touches) > 100
    assert min(gaps) >= 2_100
    assert sensor.errors["too_soon"] > 0
    hw.close()


def test_backoff_grows_to_the_interval_and_resets_after_success(
        world: SimulatedHardware, clock: ManualClock) -> None:
    sensor = open_sensor(world, interval_s=30.0)
    world.dht_module().faults = DHTFaults(checksum=1.0, full_buffer=0, not_found=0)
    waits = []
    for _ in range(7):
        with pytest.raises(SensorReadError):
            sensor.read(clock.mono_ms())
        waits.append(sensor.retry_after_s)
        assert sensor.next_attempt_mono_ms == clock.mono_ms() + round(sensor.retry_after_s * 1000)
        clock.advance(sensor.next_attempt_mono_ms - clock.mono_ms())
    assert waits == [2.1, 4.2, 8.4, 16.8, 30.0, 30.0, 30.0]
    assert sensor.consecutive_failures == 7
    world.dht_module().faults = DHTFaults(0, 0, 0)
    reading = sensor.read(clock.mono_ms())
    assert reading.mono_ms == clock.mono_ms()
    assert sensor.consecutive_failures == 0
    assert sensor.retry_after_s == 2.1


def read_series(tmp_path: Path, seed: int, n: int = 60) -> list[object]:
    clock = ManualClock(wall_ms=START_WALL_MS, mono_ms=5_000)
    hw = make_world(tmp_path, clock, seed=seed, faults=DHTFaults(0.1, 0.1, 0.05))
    sensor = open_sensor(hw)
    out: list[object] = []
    for _ in range(n):
        clock.advance(30_000)
        try:
            out.append(sensor.read(clock.mono_ms()).values)
        except SensorReadError as exc:
            out.append(exc.reason)
    hw.close()
    return out


def test_simulated_dht_replays_exactly_with_the_same_seed(tmp_path: Path) -> None:
    first = read_series(tmp_path / "a", seed=11)
    again = read_series(tmp_path / "b", seed=11)
    other = read_series(tmp_path / "c", seed=12)
    assert first == again
    assert first != other
    assert any(isinstance(x, str) for x in first)  # failures are part of the replay


def test_driver_over_simulated_chip_reports_plausible_room_climate(
        tmp_path: Path, clock: ManualClock) -> None:
    hw = SimulatedHardware(1, tmp_path, clock, climate=ClimateModel(epoch_s=0),
                           dht_faults=DHTFaults(0.05, 0.05, 0))
    sensor = open_sensor(hw, interval_s=60.0)
    temperatures, humidities = [], []
    for _ in range(24 * 60):  # one simulated day, a read a minute
        clock.advance(60_000)
        try:
            t, h = sensor.read(clock.mono_ms()).values
        except SensorReadError:
            continue
        assert (t.unit, t.exponent, h.unit, h.exponent) == ("Cel", -1, "%RH", -1)
        temperatures.append(float(t.value))
        humidities.append(float(h.value))
    assert len(temperatures) > 0.8 * 24 * 60
    assert 17.0 < min(temperatures) < 18.5
    assert 23.5 < max(temperatures) < 25.0
    assert 20.5 < mean(temperatures) < 21.5
    assert min(humidities) > 30.0
    assert max(humidities) < 60.0
    hw.close()


def test_calibration_offset_and_drift_show_in_readings(tmp_path: Path, clock: ManualClock) -> None:
    climate = ClimateModel(noise_c=0, noise_rh=0, offset_c=0.5, drift_c_per_day=0.1,
                           epoch_s=clock.wall_ms() / 1000)
    hw = SimulatedHardware(1, tmp_path, clock, climate=climate, dht_faults=DHTFaults(0, 0, 0))
    sensor = open_sensor(hw)
    clock.advance(10 * 86_400_000)  # ten days later, same time of day
    t, _ = sensor.read(clock.mono_ms()).values
    true_t, _ = climate.true_values(clock.wall_ms() / 1000)
    assert float(t.value) == pytest.approx(true_t + 0.5 + 1.0, abs=0.051)
    hw.close()


def test_spacing_under_the_datasheet_minimum_is_a_config_error(
        world: SimulatedHardware) -> None:
    with pytest.raises(ConfigError, match="min_spacing_s"):
        DHT22Sensor("climate", 30, 4, dht_module=world.dht_module(), min_spacing_s=1.5)


class _OddChipLibrary:
    """A chip library that fails in ways adafruit_dht does not document."""

    def __init__(self, error: BaseException | None = None, value: object = 21.5) -> None:
        self.error, self.value = error, value

    def DHT22(self, pin: object, use_pulseio: bool = True) -> _OddChipLibrary:
        if self.error is not None and isinstance(self.error, PermissionError):
            raise self.error
        return self

    @property
    def temperature(self) -> object:
        if self.error is not None:
            raise self.error
        return self.value

    @property
    def humidity(self) -> object:
        return 40.0

    def exit(self) -> None:
        pass


@pytest.mark.parametrize(("error", "value", "reason"), [
    (ValueError("bad bits"), None, "driver_error"),
    (OSError(5, "EIO"), None, "io_error"),
    (RuntimeError("Received unplausible data. Try again."), None, "implausible"),
    (None, None, "no_fresh_value"),
    (None, 180.0, "implausible"),
    (None, float("nan"), "implausible"),
])
def test_unexpected_library_behaviour_becomes_a_typed_counted_error(
        error: BaseException | None, value: object, reason: str) -> None:
    sensor = DHT22Sensor("climate", 30, 4, dht_module=_OddChipLibrary(error, value))
    with pytest.raises(SensorReadError) as err:
        sensor.read(10_000)
    assert err.value.reason == reason
    assert sensor.errors == {reason: 1}


def test_chip_that_cannot_be_opened_is_hardware_missing() -> None:
    library = _OddChipLibrary(PermissionError("/dev/gpiochip0"))
    with pytest.raises(SensorUnavailable) as err:
        DHT22Sensor("climate", 30, 4, dht_module=library)
    assert err.value.reason == "hardware_missing"
    assert "gpiochip0" in str(err.value)


def test_close_releases_the_chip(world: SimulatedHardware) -> None:
    # Reads after close fail closed on every driver: tests/contracts/test_sensor_contract.py.
    open_sensor(world).close()
    assert chip(world).exited
