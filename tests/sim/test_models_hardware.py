"""The simulated world: models are seeded and plausible, pins follow them, and the DHT
stand-in caches and fails like the real library."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.clock import ManualClock
from firmware_sim.hardware import (
    ClimateModel,
    DHTFaults,
    PresenceModel,
    SimulatedHardware,
    TvSchedule,
)
from firmware_sim.hardware.models import DAY_S

DAY = 19_700  # 2023-12-09, days since the epoch


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(wall_ms=(DAY * DAY_S + 18 * 3600) * 1000, mono_ms=0)


@pytest.fixture
def world(tmp_path: Path, clock: ManualClock) -> Iterator[SimulatedHardware]:
    hw = SimulatedHardware(42, tmp_path, clock, dht_faults=DHTFaults(0, 0, 0))
    yield hw
    hw.close()


def test_tv_sessions_are_evening_only_ordered_and_long_enough() -> None:
    tv = TvSchedule(seed=1)
    for day in range(DAY, DAY + 60):
        sessions = tv.sessions_on_day(day)
        assert 1 <= len(sessions) <= 3
        for (a, b), nxt in zip(sessions, [*sessions[1:], None], strict=True):
            assert day * DAY_S + 19 * 3600 <= a < b <= day * DAY_S + 23 * 3600
            assert b - a >= 600
            if nxt is not None:
                assert b <= nxt[0]


def test_tv_schedule_is_a_function_of_its_seed() -> None:
    assert TvSchedule(3).sessions_on_day(DAY) == TvSchedule(3).sessions_on_day(DAY)
    days = range(DAY, DAY + 10)
    assert [TvSchedule(3).sessions_on_day(d) for d in days] != [
        TvSchedule(4).sessions_on_day(d) for d in days]


def test_tv_on_seconds_matches_is_on_sampled_every_second() -> None:
    tv = TvSchedule(seed=9)
    start = DAY * DAY_S + 18 * 3600
    sampled = sum(tv.is_on(t) for t in range(start, start + 6 * 3600))
    assert sampled == tv.on_seconds(start, start + 6 * 3600) > 0


def test_presence_is_far_likelier_while_the_tv_is_on() -> None:
    tv = TvSchedule(seed=2)
    presence = PresenceModel(2, tv)
    on = off = on_hits = off_hits = 0
    for slot in range(DAY * 1440, (DAY + 30) * 1440):
        hit = presence.pulse_in_slot(slot) is not None
        if tv.is_on(slot * 60):
            on, on_hits = on + 1, on_hits + hit
        else:
            off, off_hits = off + 1, off_hits + hit
    assert on_hits / on > 0.5 > 0.05 > off_hits / off


def test_climate_curve_peaks_in_the_afternoon_within_its_band() -> None:
    climate = ClimateModel()
    temps = [climate.true_values(DAY * DAY_S + h * 3600)[0] for h in range(24)]
    assert max(temps) == pytest.approx(24.0)
    assert min(temps) == pytest.approx(18.0)
    assert temps.index(max(temps)) == 15
    assert temps.index(min(temps)) == 3
    hums = [climate.true_values(DAY * DAY_S + h * 3600)[1] for h in range(24)]
    assert hums.index(min(hums)) == 15  # humidity moves opposite to temperature


def test_advance_drives_the_power_sense_pin_from_the_tv_schedule(
        world: SimulatedHardware, clock: ManualClock) -> None:
    start = clock.wall_ms() / 1000
    for second in range(0, 5 * 3600, 30):
        world.advance(start + second, second * 1000)
        assert world.pin_level(17) == world.tv.is_on(start + second)
        assert world.pin_level(27) == world.presence.is_active(start + second)
        assert world.pin_level(22)  # button released: line pulled high


def test_button_press_pulls_the_line_low_for_its_duration(
        world: SimulatedHardware, clock: ManualClock) -> None:
    t = clock.wall_ms() / 1000
    world.button.press(t + 10, 0.5)
    world.advance(t + 10.2, 10_200)
    assert not world.pin_level(22)
    world.advance(t + 10.6, 10_600)
    assert world.pin_level(22)


def test_cpu_temperature_file_holds_integer_millidegrees(world: SimulatedHardware) -> None:
    text = world.cpu_temp_file().read_text()
    assert text.endswith("\n")
    assert 35_000 < int(text) < 60_000


def test_world_time_runs_on_with_the_monotonic_clock_between_advances(
        world: SimulatedHardware, clock: ManualClock) -> None:
    world.advance(1_000_000.0, clock.mono_ms())
    clock.advance(2_500)
    clock.jump_wall(-3_600_000)  # the device's wall clock jumps back; the world does not
    assert math.isclose(world.world_wall_s(), 1_000_002.5)


def test_stand_in_returns_its_cache_within_2s_like_the_real_library(
        world: SimulatedHardware, clock: ManualClock) -> None:
    chip = world.dht_module().DHT22(world.dht_pin(4), use_pulseio=False)
    first = (chip.temperature, chip.humidity)
    clock.advance(2_000)  # not "more than 2.0 s"
    assert (chip.temperature, chip.humidity) == first
    assert chip.attempts == 1
    clock.advance(1)
    _ = chip.temperature
    assert chip.attempts == 2


def test_stand_in_keeps_stale_values_after_a_failed_attempt(
        world: SimulatedHardware, clock: ManualClock) -> None:
    module = world.dht_module()
    chip = module.DHT22(4, use_pulseio=False)
    before = chip.temperature
    clock.advance(2_001)
    module.faults = DHTFaults(checksum=1.0, full_buffer=0, not_found=0)
    with pytest.raises(RuntimeError, match=r"Checksum did not validate\. Try again\."):
        _ = chip.temperature
    clock.advance(500)
    assert chip.temperature == before  # no error, an old value: the trap the driver avoids


def test_stand_in_before_any_success_returns_none_from_its_cache(
        world: SimulatedHardware) -> None:
    module = world.dht_module()
    module.faults = DHTFaults(checksum=0, full_buffer=0, not_found=1.0)
    chip = module.DHT22(4)
    with pytest.raises(RuntimeError, match="DHT sensor not found, check wiring"):
        _ = chip.humidity
    assert chip.temperature is None


def test_fault_rates_must_be_probabilities() -> None:
    with pytest.raises(ValueError, match="fault rates"):
        DHTFaults(checksum=0.7, full_buffer=0.5)


def test_close_releases_every_mock_pin(tmp_path: Path, clock: ManualClock) -> None:
    hw = SimulatedHardware(1, tmp_path, clock)
    hw.advance(clock.wall_ms() / 1000, 0)
    assert hw.pin_factory().pins
    hw.close()
    assert hw.pin_factory().pins == {}
