"""The validator's consensus and per-sensor states, one test per fault kind: each fault
makes its sensor faulty for the right reason, and leaves the honest sensors healthy."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from firmware_sim.hardware import SensorFault
from firmware_sim.sites import SimSensor, SimSite, SiteRun
from validator import SensorSpec, SiteSpec, SiteValidator, Thresholds, WindowVerdict

H = 3600.0
WINDOW_S = Thresholds().window_s


def run(faulty: Sequence[SensorFault], hours: float, *, sensors: int = 3,
        quantity: str = "temperature", seed: int = 1, missed: float = 0.0
        ) -> list[WindowVerdict]:
    """A site of honest DHT22s (small calibration offsets) plus sensor "x" with ``faulty``;
    each reading of each sensor missing with probability ``missed``."""
    lost = random.Random(seed)
    offsets = (0.1, -0.1, 0.05, -0.05)
    honest = tuple(SimSensor(f"h{i}", 0.5, offset=offsets[i]) for i in range(sensors - 1))
    site = SimSite("room", "temperature" if quantity == "temperature" else "humidity",
                   (*honest, SimSensor("x", 0.5, faults=tuple(faulty))))
    sim = SiteRun(site, seed)
    validator = SiteValidator(SiteSpec("room", site.quantity,
                                       tuple(SensorSpec(s.name, 0.5) for s in site.sensors)))
    verdicts = []
    for w in range(int(hours * H) // WINDOW_S):
        readings: dict[str, list[tuple[float, float]]] = {s.name: [] for s in site.sensors}
        for m in range(WINDOW_S // 60):
            t = float(w * WINDOW_S + m * 60)
            for name, value in sim.read(t).items():
                if value is not None and lost.random() >= missed:
                    readings[name].append((t, value))
        verdicts.append(validator.judge(w * WINDOW_S, readings))
    return verdicts


def states(verdicts: list[WindowVerdict], sensor: str) -> list[str]:
    return [v.of(sensor).state for v in verdicts]


def first_faulty_h(verdicts: list[WindowVerdict], sensor: str = "x") -> float:
    return next(v.start_s + v.window_s for v in verdicts if v.of(sensor).state == "faulty") / H


def reasons(verdicts: list[WindowVerdict], sensor: str = "x") -> set[str]:
    return {r for v in verdicts for r in v.of(sensor).reasons}


def honest_never_flagged(verdicts: list[WindowVerdict]) -> bool:
    return all(s.state in ("healthy", "recovered")
               for v in verdicts for s in v.sensors if s.sensor != "x")


def test_healthy_site_stays_healthy_for_a_day() -> None:
    verdicts = run((), 24)
    assert {s.state for v in verdicts for s in v.sensors} == {"healthy"}


def test_consensus_is_the_rooms_value_despite_a_miscalibrated_sensor() -> None:
    verdicts = run((SensorFault("bias", magnitude=3.0),), 2)
    site = SimSite("room", "temperature", ())
    for v in verdicts:
        truth = site.truth(v.start_s + v.window_s / 2)
        assert v.consensus == pytest.approx(truth, abs=0.3)


def test_miscalibrated_sensor_turns_faulty_within_an_hour_and_alone() -> None:
    verdicts = run((SensorFault("bias", magnitude=1.0),), 6)
    assert first_faulty_h(verdicts) <= 1.0
    assert reasons(verdicts) == {"bias"}
    assert honest_never_flagged(verdicts)


def test_missed_readings_do_not_put_an_outliers_error_on_an_honest_sensor() -> None:
    # With a quarter of the readings missing, many minutes have one honest value and the
    # outlier's: their median would be the mean, half the outlier's error on the honest one.
    verdicts = run((SensorFault("bias", magnitude=3.0),), 6, missed=0.25)
    assert first_faulty_h(verdicts) <= 1.0
    assert honest_never_flagged(verdicts)


def test_one_bad_window_makes_a_sensor_suspect_not_faulty() -> None:
    verdicts = run((SensorFault("bias", start_s=H, end_s=H + WINDOW_S, magnitude=3.0),), 4)
    assert "suspect" in states(verdicts, "x")
    assert "faulty" not in states(verdicts, "x")
    assert states(verdicts, "x")[-1] == "healthy"


def test_slow_drift_of_a_tenth_of_a_degree_a_day_is_caught_before_it_is_a_bias() -> None:
    verdicts = run((SensorFault("drift", magnitude=0.1),), 72, seed=3)
    caught = first_faulty_h(verdicts)
    assert caught <= 60
    assert reasons([v for v in verdicts if v.start_s < caught * H]) == {"drift"}
    assert 0.1 * caught / 24 < 0.5  # its error was still within the stated accuracy
    assert honest_never_flagged(verdicts)


def test_drifting_middle_sensor_of_three_does_not_flag_its_neighbour() -> None:
    # x starts between h0 (+0.1) and h1 (-0.1) and drifts up past h0: the median follows x
    # until it passes, which must not read as h0 drifting down.
    verdicts = run((SensorFault("drift", magnitude=0.3),), 48)
    assert honest_never_flagged(verdicts)
    assert "drift" in reasons(verdicts)


def test_stuck_sensor_is_caught() -> None:
    verdicts = run((SensorFault("stuck", start_s=H),), 4)
    assert first_faulty_h(verdicts) <= 2.0
    assert "stuck" in reasons(verdicts)
    assert honest_never_flagged(verdicts)


def test_noisy_sensor_is_caught() -> None:
    verdicts = run((SensorFault("noise", start_s=H, magnitude=1.0),), 4)
    assert first_faulty_h(verdicts) <= 2.0
    assert "noise" in reasons(verdicts)
    assert honest_never_flagged(verdicts)


def test_spiking_sensor_is_caught() -> None:
    verdicts = run((SensorFault("spike", start_s=H, magnitude=1.5, rate=0.2),), 4)
    assert first_faulty_h(verdicts) <= 2.0
    assert "spike" in reasons(verdicts)
    assert honest_never_flagged(verdicts)


def test_long_dropout_is_caught_and_a_short_one_is_not() -> None:
    long = run((SensorFault("dropout", start_s=H, end_s=4 * H),), 5)
    assert first_faulty_h(long) <= 2.0
    assert reasons(long) == {"dropout"}
    short = run((SensorFault("dropout", start_s=H, end_s=H + 1200),), 3)
    assert set(states(short, "x")) == {"healthy"}


def test_device_replaying_another_sensors_values_is_caught_and_its_source_is_not() -> None:
    verdicts = run((SensorFault("replay", start_s=H, source="h0", delay_s=900),), 4,
                   sensors=4)
    assert first_faulty_h(verdicts) <= 2.0
    assert reasons(verdicts) == {"replay"}
    assert honest_never_flagged(verdicts)


def test_sensor_recovers_after_its_fault_ends_then_is_healthy_again() -> None:
    verdicts = run((SensorFault("bias", end_s=2 * H, magnitude=2.0),), 8)
    seen = states(verdicts, "x")
    assert seen.index("faulty") < seen.index("recovered")
    assert seen[-1] == "healthy"


def test_five_sensor_site_judges_a_second_fault_while_one_is_faulty() -> None:
    verdicts = run((SensorFault("bias", magnitude=2.0),), 3, sensors=5)
    assert first_faulty_h(verdicts) <= 1.0
    assert honest_never_flagged(verdicts)


def test_windows_out_of_order_or_off_boundary_are_refused() -> None:
    validator = SiteValidator(SiteSpec("room", "temperature",
                                       tuple(SensorSpec(n, 0.5) for n in "abc")))
    validator.judge(WINDOW_S, {})
    with pytest.raises(ValueError, match="in order"):
        validator.judge(0, {})
    with pytest.raises(ValueError, match="boundary"):
        validator.judge(WINDOW_S * 2 + 1, {})


def test_site_of_two_sensors_is_refused_no_majority() -> None:
    with pytest.raises(ValueError, match="3"):
        SiteSpec("room", "temperature", (SensorSpec("a", 0.5), SensorSpec("b", 0.5)))


def test_readings_of_undeclared_sensors_are_ignored() -> None:
    validator = SiteValidator(SiteSpec("room", "temperature",
                                       tuple(SensorSpec(n, 0.5) for n in "abc")))
    readings = {n: [(m * 60.0, 21.0 + (m % 3) / 10) for m in range(10)] for n in "abc"}
    readings["intruder"] = [(m * 60.0, 99.0) for m in range(10)]
    verdict = validator.judge(0, readings)
    assert [s.sensor for s in verdict.sensors] == ["a", "b", "c"]
    assert verdict.consensus == pytest.approx(21.09, abs=0.01)


def test_honest_sensor_left_suspect_clears_while_the_outlier_is_excluded() -> None:
    # b has one bad window, then c turns faulty: only a and b remain trusted. Two trusted
    # sensors that agree are both good, so b clears instead of staying suspect for as long
    # as c is faulty.
    validator = SiteValidator(SiteSpec("room", "temperature",
                                       tuple(SensorSpec(n, 0.5) for n in "abc")))

    def window(w: int, b_off: float, c_off: float) -> WindowVerdict:
        start = w * WINDOW_S
        base = {"a": 21.0, "b": 21.05 + b_off, "c": 20.95 + c_off}
        return validator.judge(start, {n: [(start + m * 60.0, v + ((m + i) % 3) / 10)
                                           for m in range(10)]
                                       for i, (n, v) in enumerate(base.items())})
    assert window(0, 2.0, 0.0).of("b").state == "suspect"
    states = [window(w, 0.0, 3.0) for w in range(1, 12)]
    assert states[2].of("c").state == "faulty"
    assert states[-1].of("c").state == "faulty"
    assert states[-1].of("b").state == "healthy"
    assert all(v.of("a").state == "healthy" for v in states)


def test_window_with_too_few_comparable_minutes_is_not_counted_good() -> None:
    # c reads 3 °C high; every other window the honest pair read in different minutes
    # (a in the first three, b in the last three), so no minute has the three values a
    # consensus needs. Such a window says nothing: counted as good, it would keep c
    # suspect forever (bad, good, bad, good).
    validator = SiteValidator(SiteSpec("room", "temperature",
                                       tuple(SensorSpec(n, 0.5) for n in "abc")))

    def window(w: int, *, full_pair: bool) -> WindowVerdict:
        start = w * WINDOW_S

        def values(base: float, i: int, minutes: range) -> list[tuple[float, float]]:
            return [(start + m * 60.0, base + ((m + i) % 3) / 10) for m in minutes]
        full = range(10)
        return validator.judge(start, {"a": values(21.0, 0, full if full_pair else range(3)),
                                       "b": values(21.05, 1, full if full_pair else range(7, 10)),
                                       "c": values(23.95, 2, full)})
    verdicts = [window(w, full_pair=w % 2 == 0) for w in range(6)]
    assert verdicts[1].of("c").reasons == ()
    assert verdicts[4].of("c").state == "faulty"


def honest_never_accused_of_copying(verdicts: list[WindowVerdict]) -> bool:
    return all("replay" not in s.reasons for v in verdicts for s in v.sensors if s.sensor != "x")


def test_copy_with_noise_of_its_own_added_is_caught_and_its_source_is_not() -> None:
    # No value matches exactly: x reports h0's value of 15 minutes ago plus 0.1 °C of noise
    # (an honest DHT22's own), then rounded. Its residuals still carry h0's noise.
    verdicts = run((SensorFault("replay", start_s=H, source="h0", delay_s=900,
                                magnitude=0.1),), 10)
    assert first_faulty_h(verdicts) <= 7.0
    assert reasons(verdicts) == {"replay"}
    assert honest_never_flagged(verdicts)


def test_live_copy_with_noise_added_is_caught_and_its_source_is_not() -> None:
    # Lag 0: x copies what h0 reports in the same minute, plus noise; the three-sensor site
    # has a single reference, the hardest case (docs/QUALITY.md §3.3).
    verdicts = run((SensorFault("replay", start_s=H, source="h0", delay_s=0,
                                magnitude=0.07),), 10, seed=2)
    assert first_faulty_h(verdicts) <= 7.0
    assert reasons(verdicts) == {"replay"}
    assert honest_never_flagged(verdicts)


def test_live_copy_in_a_five_sensor_site_is_caught_and_no_honest_sensor_is_accused() -> None:
    verdicts = run((SensorFault("replay", start_s=H, source="h2", delay_s=0,
                                magnitude=0.1),), 10, sensors=5, seed=4)
    assert first_faulty_h(verdicts) <= 7.0
    assert honest_never_accused_of_copying(verdicts)
    assert honest_never_flagged(verdicts)


def test_live_exact_duplicate_flags_both_sensors_as_copies() -> None:
    # Identical values minute for minute: one copies the other, the values cannot say which.
    verdicts = run((SensorFault("replay", start_s=H, source="h0", delay_s=0),), 10,
                   sensors=4)
    assert first_faulty_h(verdicts) <= 7.0
    assert first_faulty_h(verdicts, "h0") <= 7.0
    assert "replay" in reasons(verdicts, "h0")
    assert set(states(verdicts, "h1")) == {"healthy"}


def test_copy_two_and_a_half_hours_late_is_caught_as_a_replay() -> None:
    # Starts at 4 h so the forger has 2.5 h of its source to copy from the start.
    verdicts = run((SensorFault("replay", start_s=4 * H, source="h0", delay_s=9000),), 8,
                   sensors=4)
    caught = first_faulty_h(verdicts)
    assert caught <= 5.0
    assert "replay" in reasons([v for v in verdicts if v.start_s < caught * H])
    assert honest_never_accused_of_copying(verdicts)


def test_honest_sensors_sharing_a_room_are_not_accused_of_copying_over_two_days() -> None:
    # The room's real variations are common to all: residuals from the consensus remove
    # them, and what is left (each unit's own noise) is independent.
    for sensors, seed in ((3, 5), (5, 6)):
        verdicts = run((), 48, sensors=sensors, seed=seed, missed=0.05)
        assert {s.state for v in verdicts for s in v.sensors} == {"healthy"}


def test_step_in_one_sensor_is_not_read_as_two_others_sharing_noise() -> None:
    # A bias starting and ending mid-window puts a step into the consensus the others are
    # compared against; the window is left out of the copy statistics.
    verdicts = run((SensorFault("bias", start_s=H + 420, end_s=5 * H + 300,
                                magnitude=-3.0),), 12)
    assert honest_never_flagged(verdicts)
    assert honest_never_accused_of_copying(verdicts)


def test_value_stuck_for_thirty_readings_is_faulty_without_waiting_for_more_windows() -> None:
    # Stuck from 1 h 05: the run reaches 30 readings in the window ending at 1 h 40 (the
    # run is the evidence of three windows already, as a long dropout's silence is).
    verdicts = run((SensorFault("stuck", start_s=H + 300),), 4)
    assert first_faulty_h(verdicts) < 1.0 + 45 / 60  # was 1 h 50 with three windows
    assert reasons(verdicts) == {"stuck"}
    assert honest_never_flagged(verdicts)
