"""Building sensors for a named backend: isolation of failures, no silent mock fallback,
config validation, and the one-way import of the simulated hardware."""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

import agent
from agent.clock import ManualClock
from agent.sensors import (
    DHT22Sensor,
    DigitalInputSensor,
    SensorConfig,
    SimulatedHardware,
    build_sensors,
    load_simulated_hardware,
)
from agent.sensors.pin_factory import PinFactoryUnavailable
from protocol.errors import ConfigError

ALL_KINDS = [
    SensorConfig("dht22", "climate", 30, pin=4),
    SensorConfig("cpu_temp", "cpu", 60),
    SensorConfig("power_sense", "tv", 1, pin=17),
    SensorConfig("motion", "presence", 1, pin=27),
    SensorConfig("button", "button", 1, pin=22),
]


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimulatedHardware]:
    hw = load_simulated_hardware(5, tmp_path, ManualClock())
    yield hw
    hw.close()


def test_simulated_backend_builds_every_kind_in_config_order_and_closes_them_all(
        sim: Any) -> None:
    # That each kind reads, fails and closes as a sensor must, on every backend, is in
    # tests/contracts/test_sensor_contract.py.
    built = build_sensors(ALL_KINDS, "simulated", sim=sim)
    assert built.failures == []
    assert [s.name for s in built.sensors] == [c.stream for c in ALL_KINDS]
    built.close()
    assert all(s.closed for s in built.sensors)


def test_hardware_backend_on_a_machine_without_gpio_fails_clearly_and_never_uses_mock(
        tmp_path: Path) -> None:
    if importlib.util.find_spec("lgpio") is not None:
        pytest.skip("this machine has lgpio: the hardware path is real here")
    built = build_sensors(ALL_KINDS, "hardware", pin_factory="lgpio",
                          thermal_dir=tmp_path / "no-thermal-zones")
    assert built.sensors == []
    reasons = {f.config.stream: (f.reason, f.detail) for f in built.failures}
    assert {r for r, _ in reasons.values()} == {"hardware_missing"}
    # Without the `pi` extra the chip library is missing; with it (a laptop with `.[dev]`)
    # the library loads but the board has no such pin. Either way: that sensor only.
    assert ("adafruit_dht" in reasons["climate"][1]
            or "board pin D4 unavailable" in reasons["climate"][1])
    for stream in ("tv", "presence", "button"):
        assert "pin factory 'lgpio' unavailable" in reasons[stream][1]
    assert "no thermal zone" in reasons["cpu"][1]  # the CPU thermometer needs no GPIO


def test_mock_pin_factory_cannot_be_chosen_for_real_hardware() -> None:
    with pytest.raises(ConfigError, match="pin_factory: 'mock'"):
        build_sensors(ALL_KINDS, "hardware", pin_factory="mock")
    with pytest.raises(ConfigError, match="pin_factory: unknown"):
        build_sensors(ALL_KINDS, "hardware", pin_factory="auto")


def test_backend_must_be_named_and_match_what_is_given(sim: Any) -> None:
    with pytest.raises(ConfigError, match="backend: unknown"):
        build_sensors(ALL_KINDS, "auto")
    with pytest.raises(ConfigError, match="needs the simulated hardware"):
        build_sensors(ALL_KINDS, "simulated")
    with pytest.raises(ConfigError, match="given to the 'hardware' backend"):
        build_sensors(ALL_KINDS, "hardware", sim=sim)


def test_one_sensor_failing_does_not_stop_the_others(sim: Any, tmp_path: Path) -> None:
    configs = [*ALL_KINDS[:1],
               SensorConfig("cpu_temp", "cpu", 60, sensor_file=str(tmp_path / "missing")),
               *ALL_KINDS[2:]]
    built = build_sensors(configs, "simulated", sim=sim)
    assert [(f.config.stream, f.reason) for f in built.failures] == [("cpu", "hardware_missing")]
    assert [s.name for s in built.sensors] == ["climate", "tv", "presence", "button"]
    sim.advance(1_700_000_000.0, 1_000)
    assert built.by_stream("tv").read(1_000).values[0].mantissa in (0, 1)
    built.close()


def test_hardware_path_isolates_a_missing_chip_library_from_working_gpio() -> None:
    # A Pi whose pin factory loads but which lacks the `pi` extra (adafruit_dht): the pin
    # factory is replaced below our code by gpiozero's MockFactory for this test only.
    factory = MockFactory()
    built = build_sensors([ALL_KINDS[0], *ALL_KINDS[2:]], "hardware",
                          pin_factory_loader=lambda name: factory)
    assert [(f.config.stream, f.reason) for f in built.failures] == [
        ("climate", "hardware_missing")]
    assert all(isinstance(s, DigitalInputSensor) for s in built.sensors)
    built.close()
    assert factory.pins == {}  # the set closed the factory it loaded


def test_a_failing_pin_factory_is_tried_once_and_reported_for_each_sensor() -> None:
    calls: list[str] = []

    def loader(name: str) -> Any:
        calls.append(name)
        raise PinFactoryUnavailable(name, "no /dev/gpiochip0")

    built = build_sensors(ALL_KINDS[2:], "hardware", pin_factory="native",
                          pin_factory_loader=loader)
    assert calls == ["native"]
    assert [f.detail for f in built.failures] == [
        "pin factory 'native' unavailable: no /dev/gpiochip0"] * 3


def fake_thermal_dir(root: Path, zones: list[tuple[str, str]]) -> Path:
    """A stand-in for /sys/class/thermal: one ``thermal_zoneN`` per (type, millidegrees)."""
    for i, (kind, temp) in enumerate(zones):
        zone = root / f"thermal_zone{i}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(temp + "\n")
    return root


def test_laptop_without_gpio_still_reads_cpu_temperature_from_the_thermal_zone(
        tmp_path: Path) -> None:
    # A laptop: no GPIO pin factory, an ACPI zone first and the CPU package second.
    def no_gpio(name: str) -> Any:
        raise PinFactoryUnavailable(name, "no /dev/gpiochip0")

    thermal = fake_thermal_dir(tmp_path / "thermal", [("acpitz", "27800"),
                                                      ("x86_pkg_temp", "51250")])
    built = build_sensors(ALL_KINDS[1:3], "hardware", pin_factory_loader=no_gpio,
                          thermal_dir=thermal)
    assert [s.name for s in built.sensors] == ["cpu"]
    assert [(f.config.stream, f.reason) for f in built.failures] == [("tv", "hardware_missing")]
    assert built.by_stream("cpu").read(1).values[0].mantissa == 513  # x86_pkg_temp, not acpitz
    built.close()


def test_machine_without_thermal_zone_reports_cpu_temp_missing_naming_the_directory(
        tmp_path: Path) -> None:
    built = build_sensors(ALL_KINDS[1:2], "hardware", thermal_dir=tmp_path / "empty")
    assert built.sensors == []
    assert "no thermal zone" in built.failures[0].detail
    assert "pin factory" not in built.failures[0].detail


def test_simulated_dht_runs_the_real_driver(sim: Any) -> None:
    built = build_sensors(ALL_KINDS[:1], "simulated", sim=sim)
    assert type(built.sensors[0]) is DHT22Sensor
    built.close()


def test_missing_simulated_hardware_module_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="simulated hardware unavailable"):
        load_simulated_hardware(1, tmp_path, ManualClock(), module_name="firmware_sim.no_such")
    with pytest.raises(ConfigError, match="has no SimulatedHardware"):
        load_simulated_hardware(1, tmp_path, ManualClock(),
                                module_name="firmware_sim.hardware.models")


def test_agent_never_imports_firmware_sim_statically() -> None:
    root = Path(agent.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names
                          if n.split(".")[0] in ("firmware_sim", "gateway", "provisioning")]
    assert offenders == []


# --- configuration -------------------------------------------------------------------------


def test_sensor_table_with_unknown_key_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"sensors\[2\]\.colour: unknown key"):
        SensorConfig.from_table({"kind": "motion", "stream": "p", "interval_s": 1, "pin": 5,
                                 "colour": "red"}, "sensors[2]")


def test_sensor_table_round_trip_with_recipients() -> None:
    config = SensorConfig.from_table({"kind": "dht22", "stream": "climate", "interval_s": 30,
                                      "pin": 4, "recipients": ["acme", "utility"]})
    assert config.recipients == ("acme", "utility")


@pytest.mark.parametrize(("table", "key"), [
    ({"kind": "dht22", "stream": "climate", "interval_s": 1, "pin": 4}, "interval_s"),
    ({"kind": "dht22", "stream": "climate", "interval_s": 2, "pin": 4}, "interval_s"),
    ({"kind": "dht22", "stream": "climate", "interval_s": 30, "pin": 4,
      "min_spacing_s": 1.0}, "min_spacing_s"),
    ({"kind": "dht22", "stream": "climate", "interval_s": 30}, "pin"),
    ({"kind": "cpu_temp", "stream": "cpu", "interval_s": 30, "pin": 4}, "pin"),
    ({"kind": "motion", "stream": "p", "interval_s": 1, "pin": 40}, "pin"),
    ({"kind": "motion", "stream": "p", "interval_s": 1, "pin": True}, "pin"),
    ({"kind": "motion", "stream": "usage", "interval_s": 1, "pin": 5}, "stream"),
    ({"kind": "motion", "stream": "p", "interval_s": 0, "pin": 5}, "interval_s"),
    ({"kind": "motion", "stream": "p", "interval_s": "1", "pin": 5}, "interval_s"),
    ({"kind": "thermometer", "stream": "p", "interval_s": 1}, "kind"),
    ({"kind": "motion", "stream": "p", "interval_s": 1, "pin": 5, "sensor_file": "/x"},
     "sensor_file"),
    ({"kind": "cpu_temp", "stream": "c", "interval_s": 1, "pull_up": True}, "pull_up"),
    ({"kind": "motion", "stream": "p", "interval_s": 1, "pin": 5, "recipients": "acme"},
     "recipients"),
    ({"kind": "motion", "stream": "p", "pin": 5}, "interval_s"),
])
def test_bad_sensor_setting_is_a_config_error_naming_the_key(
        table: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^sensors\[0\]\.{key}: "):
        SensorConfig.from_table(table, "sensors[0]")


def test_two_sensors_on_one_stream_or_pin_are_refused(sim: Any) -> None:
    with pytest.raises(ConfigError, match="stream 'tv' configured twice"):
        build_sensors([ALL_KINDS[2], SensorConfig("motion", "tv", 1, pin=5)], "simulated",
                      sim=sim)
    with pytest.raises(ConfigError, match="GPIO17 used by 'tv' and 'p'"):
        build_sensors([ALL_KINDS[2], SensorConfig("motion", "p", 1, pin=17)], "simulated",
                      sim=sim)
