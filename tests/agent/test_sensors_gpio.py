"""Digital inputs and CPU temperature over gpiozero's MockFactory pins and a temp file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from agent.sensors.base import SensorUnavailable
from agent.sensors.cpu import CPUTemperatureSensor
from agent.sensors.gpio import DigitalInputSensor, open_input_device
from protocol.errors import SensorReadError
from protocol.record import Measurement


@pytest.fixture
def pins() -> Iterator[MockFactory]:
    factory = MockFactory()
    yield factory
    # MockFactory keeps pins and reservations for its lifetime: release them.
    factory.reset()
    factory.close()


def digital(pins: MockFactory, kind: str, pin: int, pull_up: bool | None = None
            ) -> DigitalInputSensor:
    device = open_input_device(kind, kind, pin, pins, pull_up)
    return DigitalInputSensor(kind, 1.0, kind, device)


def level(sensor: DigitalInputSensor, now: int) -> int:
    (value,) = sensor.read(now).values
    assert (value.exponent, value.unit) == (0, "/")
    return value.mantissa


def test_power_sense_reads_one_while_the_line_is_high(pins: MockFactory) -> None:
    sensor = digital(pins, "power_sense", 17)
    assert level(sensor, 1) == 0
    pins.pin(17).drive_high()
    assert level(sensor, 2) == 1
    pins.pin(17).drive_low()
    assert level(sensor, 3) == 0
    assert sensor.reads_ok == 3
    assert not sensor.errors


def test_button_is_active_low_with_its_pull_up(pins: MockFactory) -> None:
    sensor = digital(pins, "button", 22)
    assert level(sensor, 1) == 0  # the pull-up holds the line high: released
    pins.pin(22).drive_low()
    assert level(sensor, 2) == 1


def test_motion_follows_the_pir_output_at_once(pins: MockFactory) -> None:
    sensor = digital(pins, "motion", 27)
    pins.pin(27).drive_high()
    assert sensor.is_active()  # no smoothing thread between the pin and the reading
    pins.pin(27).drive_low()
    assert not sensor.is_active()


def test_edges_reach_watchers_in_order_and_stop_after_close(pins: MockFactory) -> None:
    sensor = digital(pins, "power_sense", 17)
    edges: list[bool] = []
    sensor.watch(edges.append)
    for high in (True, True, False, True, False):
        pins.pin(17).drive_high() if high else pins.pin(17).drive_low()
    assert edges == [True, False, True, False]
    sensor.close()
    with pytest.raises(SensorReadError, match="closed"):
        sensor.read(5)
    with pytest.raises(SensorReadError, match="closed"):
        sensor.is_active()
    assert sensor.errors == {"closed": 2}


def test_pin_already_in_use_fails_that_sensor_with_hardware_missing(pins: MockFactory) -> None:
    holder = digital(pins, "power_sense", 17)
    with pytest.raises(SensorUnavailable) as err:
        digital(pins, "motion", 17)
    assert err.value.reason == "hardware_missing"
    assert "GPIO17" in err.value.detail
    assert level(holder, 1) == 0  # the first user of the pin is unaffected


def write_millidegrees(path: Path, text: str) -> None:
    path.write_text(text)


def test_cpu_temperature_reads_millidegrees_as_tenths_of_celsius(
        pins: MockFactory, tmp_path: Path) -> None:
    path = tmp_path / "temp"
    write_millidegrees(path, "47234\n")
    sensor = CPUTemperatureSensor("cpu", 10.0, str(path))
    assert sensor.read(1).values == (Measurement(472, -1, "Cel"),)
    write_millidegrees(path, "47250\n")
    assert sensor.read(2).values == (Measurement(473, -1, "Cel"),)  # half rounds up
    write_millidegrees(path, "-5100\n")
    assert sensor.read(3).values == (Measurement(-51, -1, "Cel"),)


def test_cpu_temperature_file_vanishing_or_garbled_is_counted_io_error(
        pins: MockFactory, tmp_path: Path) -> None:
    path = tmp_path / "temp"
    write_millidegrees(path, "50000\n")
    sensor = CPUTemperatureSensor("cpu", 10.0, str(path))
    path.unlink()
    with pytest.raises(SensorReadError, match="io_error"):
        sensor.read(1)
    write_millidegrees(path, "warm\n")
    with pytest.raises(SensorReadError, match="io_error"):
        sensor.read(2)
    write_millidegrees(path, "900000\n")
    with pytest.raises(SensorReadError, match="implausible"):
        sensor.read(3)
    assert sensor.errors == {"io_error": 2, "implausible": 1}
    assert sensor.reads_ok == 0


def test_cpu_temperature_missing_at_start_is_hardware_missing(
        pins: MockFactory, tmp_path: Path) -> None:
    with pytest.raises(SensorUnavailable) as err:
        CPUTemperatureSensor("cpu", 10.0, str(tmp_path / "no-such-zone"))
    assert "no-such-zone" in err.value.detail
