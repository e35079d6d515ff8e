"""Seeded sensor faults on simulated sensors: each kind changes what a sensor reports the
way the validator must later notice, from the same config the demo and bench use."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from statistics import mean, pstdev

import pytest

from agent.clock import ManualClock
from agent.config import parse_config
from agent.sensors import load_simulated_hardware
from agent.sensors.dht22 import DHT22Sensor
from firmware_sim.cli import main as sim_main
from firmware_sim.hardware import ClimateModel, DHTFaults, SensorFault, SimulatedHardware
from firmware_sim.hardware.faults import load_sensor_faults
from firmware_sim.sites import SimSensor, SimSite, SiteRun, load_sites
from protocol.errors import ConfigError, SensorReadError

REPO = Path(__file__).resolve().parents[2]
FLAT = ClimateModel(amplitude_c=0.0, humidity_amplitude=0.0)  # truth: 21.0 °C, 45 %RH


def run_site(faults: tuple[SensorFault, ...], minutes: int = 120, noise: float = 0.1
             ) -> dict[str, list[float | None]]:
    sensors = (SimSensor("a", 0.5, noise=noise), SimSensor("b", 0.5, noise=noise),
               SimSensor("f", 0.5, noise=noise, faults=faults))
    run = SiteRun(SimSite("room", "temperature", sensors, FLAT), seed=5)
    out: dict[str, list[float | None]] = {"a": [], "b": [], "f": []}
    for minute in range(minutes):
        for name, value in run.read(minute * 60.0).items():
            out[name].append(value)
    return out


def present(values: list[float | None]) -> list[float]:
    return [v for v in values if v is not None]


def test_miscalibrated_sensor_reads_its_bias_above_the_truth() -> None:
    values = run_site((SensorFault("bias", magnitude=1.5),))
    assert mean(present(values["f"])) == pytest.approx(22.5, abs=0.05)


def test_drifting_sensor_error_grows_by_its_rate_per_day() -> None:
    values = run_site((SensorFault("drift", magnitude=2.4),), minutes=120, noise=0.0)
    assert values["f"][0] == pytest.approx(21.0)
    assert values["f"][119] == pytest.approx(21.0 + 2.4 * 119 / 1440, abs=0.051)


def test_stuck_sensor_repeats_the_value_it_had_when_it_stuck() -> None:
    values = run_site((SensorFault("stuck", start_s=600, end_s=3600),))
    stuck = values["f"][10:60]
    assert len(set(stuck)) == 1
    assert len(set(values["f"][60:])) > 1  # released when the fault ends


def test_noisy_sensor_scatters_by_its_extra_noise() -> None:
    values = run_site((SensorFault("noise", magnitude=2.0),), minutes=600)
    assert pstdev(present(values["f"])) > 1.5
    assert pstdev(present(values["a"])) < 0.3


def test_spiking_sensor_jumps_by_its_magnitude_at_its_rate() -> None:
    values = run_site((SensorFault("spike", magnitude=5.0, rate=0.1),), minutes=1000)
    spikes = [v for v in present(values["f"]) if abs(v - 21.0) > 4.0]
    assert 50 < len(spikes) < 150


def test_dropped_out_sensor_reports_nothing_during_the_dropout() -> None:
    values = run_site((SensorFault("dropout", start_s=1200, end_s=2400),))
    assert values["f"][20:40] == [None] * 20
    assert None not in values["f"][:20] + values["f"][40:]


def test_forged_sensor_replays_another_sensors_values_with_its_delay() -> None:
    values = run_site((SensorFault("replay", source="a", delay_s=300),))
    assert values["f"][5:] == values["a"][:-5]


def test_forged_sensor_copying_live_reports_its_sources_value_of_the_same_minute() -> None:
    values = run_site((SensorFault("replay", source="a", delay_s=0),))
    assert values["f"] == values["a"]


def test_forged_sensor_adds_noise_of_its_own_to_what_it_copies() -> None:
    values = run_site((SensorFault("replay", source="a", delay_s=300, magnitude=0.1),),
                      minutes=600)
    copied = [f - a for f, a in zip(values["f"][5:], values["a"][:-5], strict=True)
              if f is not None and a is not None]
    assert sum(d == 0 for d in copied) < 0.5 * len(copied)  # no longer an exact copy
    assert pstdev(copied) == pytest.approx(0.1, abs=0.03)


def test_same_seed_replays_the_same_readings() -> None:
    faults = (SensorFault("spike", magnitude=3.0, rate=0.2), SensorFault("noise", magnitude=1))
    assert run_site(faults) == run_site(faults)


def test_example_sites_config_loads_with_every_fault_kind() -> None:
    sites = load_sites(REPO / "examples" / "quality-sites.toml")
    kinds = {f.kind for site in sites for s in site.sensors for f in s.faults}
    assert kinds == {"bias", "drift", "stuck", "noise", "spike", "dropout", "replay"}


@pytest.mark.parametrize(("text", "message"), [
    ('[[site]]\nname="r"\n[[site.sensor]]\nname="a"\n', "at least 3 sensors"),
    ('[[site]]\nname="r"\nquantity="pressure"\n', "quantity"),
    ('[[site]]\nname="r"\n' + '[[site.sensor]]\nname="a"\n[[site.sensor.fault]]\nkind="melt"\n'
     * 3, r"site\[0\]\.sensor\[0\]\.fault\[0\]\.kind"),
    ('[[site]]\nname="r"\n' + '[[site.sensor]]\nname="a"\ncolour="red"\n' * 3, "colour"),
    ('[[site]]\nname="r"\n' + '[[site.sensor]]\nname="a"\n[[site.sensor.fault]]\n'
     'kind="replay"\n' * 3, "source"),
    ('[[site]]\nname="r"\n' + '[[site.sensor]]\nname="a"\n[[site.sensor.fault]]\n'
     'kind="replay"\nsource="b"\nmagnitude=-0.1\n' * 3, "magnitude"),
])
def test_bad_sites_config_is_one_error_naming_the_key(tmp_path: Path, text: str,
                                                      message: str) -> None:
    path = tmp_path / "sites.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_sites(path)


def test_simulated_dht22_reports_a_configured_bias(tmp_path: Path) -> None:
    clock = ManualClock(wall_ms=1_700_000_000_000, mono_ms=5_000)
    climate = ClimateModel(noise_c=0, noise_rh=0, epoch_s=clock.wall_ms() / 1000)
    hw = SimulatedHardware(1, tmp_path, clock, climate=climate, dht_faults=DHTFaults(0, 0, 0),
                           sensor_faults={"temperature": (SensorFault("bias", magnitude=1.5),)})
    sensor = DHT22Sensor("climate", 30, hw.dht_pin(4), dht_module=hw.dht_module())
    t, _ = sensor.read(clock.mono_ms()).values
    true_t, _ = climate.true_values(clock.wall_ms() / 1000)
    assert float(t.value) == pytest.approx(true_t + 1.5, abs=0.051)
    hw.close()


@pytest.mark.parametrize("world_ahead_h", [-3.0, 5.0])
def test_a_bias_from_the_start_acts_though_the_world_runs_behind_or_ahead_of_real_time(
        tmp_path: Path, world_ahead_h: float) -> None:
    """The demo sets each device's world to an evening: hours behind real time when it
    starts after that evening's first TV session (UTC). Faults counted from the real start
    time, so a world running behind began before their epoch and the demo's miscalibrated
    sensor read true whenever the demo started after about 19:30 UTC."""
    clock = ManualClock(wall_ms=1_700_000_000_000, mono_ms=5_000)
    hw = SimulatedHardware(1, tmp_path, clock, dht_faults=DHTFaults(0, 0, 0),
                           sensor_faults={"temperature": (SensorFault("bias", magnitude=1.5),
                                                          SensorFault("stuck", start_s=3600))})
    world_s = clock.wall_ms() / 1000 + world_ahead_h * 3600
    hw.advance(world_s, clock.mono_ms())
    sensor = DHT22Sensor("climate", 30, hw.dht_pin(4), dht_module=hw.dht_module())
    t, _ = sensor.read(clock.mono_ms()).values
    true_t, _ = hw.climate.true_values(world_s)
    assert float(t.value) - true_t == pytest.approx(1.5, abs=0.6)  # noise: 0.15 °C
    assert hw.climate.epoch_s == world_s  # the stuck fault waits an hour of the world
    hw.close()


def test_simulated_dht22_dropout_fails_like_a_missing_chip(tmp_path: Path) -> None:
    clock = ManualClock(wall_ms=1_700_000_000_000, mono_ms=5_000)
    hw = SimulatedHardware(1, tmp_path, clock, dht_faults=DHTFaults(0, 0, 0),
                           sensor_faults={"humidity": (SensorFault("dropout"),)})
    sensor = DHT22Sensor("climate", 30, hw.dht_pin(4), dht_module=hw.dht_module())
    with pytest.raises(SensorReadError, match="not_found"):
        sensor.read(clock.mono_ms())
    hw.close()


def test_sim_quality_demo_catches_the_miscalibrated_sensor_and_only_it(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert sim_main(["quality", "--sites", str(REPO / "examples" / "quality-sites.toml"),
                     "--hours", "72", "--json"]) == 0
    faulty = json.loads(capsys.readouterr().out)["faulty"]
    assert faulty["living-room/dht-c"][0].endswith("bias")
    assert float(faulty["living-room/dht-c"][0].split("h")[0]) <= 1.0
    assert "living-room/dht-a" not in faulty
    assert "living-room/dht-b" not in faulty
    assert faulty["hall/rh-forged"][0].endswith("replay")
    assert faulty["office/desk-3"][0].endswith("replay")  # a live copy with noise added
    assert faulty["office/desk-4"][0].endswith("replay")  # an exact copy 2.5 hours late
    assert not {f"office/desk-{i}" for i in range(3)} & set(faulty)


def test_agent_config_names_the_simulated_sensors_faults_file(tmp_path: Path) -> None:
    faults = tmp_path / "faults.toml"
    faults.write_text('[[temperature]]\nkind = "bias"\nmagnitude = 1.5\n')
    text = (REPO / "examples" / "agent.toml").read_text().replace(
        '# sim_faults = "faults.toml"', 'sim_faults = "faults.toml"')
    config = parse_config(tomllib.loads(text), tmp_path)
    assert config.sim_faults == faults
    clock = ManualClock(wall_ms=1_700_000_000_000, mono_ms=5_000)
    hw = load_simulated_hardware(1, tmp_path, clock, sensor_faults_file=config.sim_faults)
    assert isinstance(hw, SimulatedHardware)
    assert hw.dht_module().sensor_faults == {"temperature": (SensorFault("bias", magnitude=1.5),)}
    hw.close()


def test_bad_sensor_faults_file_is_one_error_naming_the_key(tmp_path: Path) -> None:
    faults = tmp_path / "faults.toml"
    faults.write_text('[[pressure]]\nkind = "bias"\n')
    with pytest.raises(ConfigError, match="pressure"):
        load_sensor_faults(faults)
    faults.write_text('[[humidity]]\nkind = "bias"\nmagnitude = "high"\n')
    with pytest.raises(ConfigError, match=r"humidity\[0\]\.magnitude"):
        load_sensor_faults(faults)
