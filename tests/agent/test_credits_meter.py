"""Usage meter: usage equals the TV's scheduled on-time, the wall clock cannot change it,
claims are contiguous and two-phase, crashes lose at most a checkpoint interval and never
count twice, and credit is integer micro-credits per record."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from agent.clock import ManualClock
from agent.credits import UsageMeter
from agent.sensors import DigitalInputSensor, SensorConfig, build_sensors
from firmware_sim.hardware import SimulatedHardware
from firmware_sim.hardware.models import DAY_S
from protocol.errors import ConfigError, StorageError
from protocol.record import Usage, credit_micro

RATE = 1_000_000  # micro-credits per hour of use
DAY = 19_700


def meter_at(tmp_path: Path, boot: int = 1, interval_s: float = 60.0) -> UsageMeter:
    return UsageMeter(tmp_path / "usage.sqlite", "usage", RATE, interval_s, boot)


def run_evening(tmp_path: Path, seed: int, *, wall_jump_ms: int = 0, poll: bool = False
                ) -> tuple[int, float]:
    """Meter one simulated evening (18:30-23:30) through the power-sense driver.

    Returns (metered usage ms, the schedule's on-time in s computed from the model).
    """
    start = DAY * DAY_S + 18 * 3600 + 1800
    clock = ManualClock(wall_ms=round(start * 1000), mono_ms=10_000)
    hw = SimulatedHardware(seed, tmp_path / "world", clock)
    sensors = build_sensors([SensorConfig("power_sense", "tv", 1, pin=17)], "simulated", sim=hw)
    tv = sensors.by_stream("tv")
    assert isinstance(tv, DigitalInputSensor)
    meter = meter_at(tmp_path)
    if not poll:
        tv.watch(lambda on: meter.observe(on, clock.mono_ms()))
    true_s = start
    for second in range(5 * 3600):
        if second == 2 * 3600 + 1234:
            clock.jump_wall(wall_jump_ms)  # the device's wall clock steps; the world does not
        hw.advance(true_s, clock.mono_ms())
        if poll:
            meter.observe(tv.is_active(), clock.mono_ms())
        meter.tick(clock.mono_ms())
        clock.advance(1_000)
        true_s += 1
    usage = meter.take_usage(clock.mono_ms())
    assert usage is not None
    meter.commit_emitted(usage)
    sensors.close()
    hw.close()
    meter.close()
    return usage.usage_ms, hw.tv.on_seconds(start, start + 5 * 3600)


def test_usage_equals_the_scheduled_tv_on_time_from_edges(tmp_path: Path) -> None:
    usage_ms, scheduled_s = run_evening(tmp_path, seed=3)
    assert scheduled_s > 0
    assert usage_ms == scheduled_s * 1000


def test_usage_equals_the_scheduled_tv_on_time_when_polled(tmp_path: Path) -> None:
    usage_ms, scheduled_s = run_evening(tmp_path, seed=4, poll=True)
    assert usage_ms == scheduled_s * 1000


def test_wall_clock_jumping_back_an_hour_does_not_change_usage(tmp_path: Path) -> None:
    steady, _ = run_evening(tmp_path / "steady", seed=5)
    jumped, scheduled_s = run_evening(tmp_path / "jumped", seed=5, wall_jump_ms=-3_600_000)
    assert jumped == steady == scheduled_s * 1000


def test_claims_are_contiguous_within_a_boot_and_never_exceed_elapsed_time(
        tmp_path: Path) -> None:
    meter = meter_at(tmp_path)
    now, claims = 0, []
    for step in range(50):
        meter.observe(step % 3 != 0, now)
        now += 7_000
        if step % 5 == 4:
            usage = meter.take_usage(now)
            assert usage is not None
            assert meter.commit_emitted(usage)
            claims.append(usage)
    for before, after in itertools.pairwise(claims):
        assert after.start_mono_ms == before.end_mono_ms
    for usage in claims:
        assert 0 < usage.usage_ms <= usage.end_mono_ms - usage.start_mono_ms
    assert meter.emitted_ms == sum(u.usage_ms for u in claims)


def test_a_pending_claim_is_handed_out_again_never_a_second_one(tmp_path: Path) -> None:
    meter = meter_at(tmp_path)
    meter.observe(True, 0)
    first = meter.take_usage(60_000)
    again = meter.take_usage(120_000)
    assert first == again == Usage(0, 60_000, 60_000, RATE)
    assert meter.commit_emitted(first)
    later = meter.take_usage(120_000)
    assert later == Usage(60_000, 120_000, 60_000, RATE)


def test_commit_is_idempotent_and_refuses_an_invented_claim(tmp_path: Path) -> None:
    meter = meter_at(tmp_path)
    meter.observe(True, 0)
    usage = meter.take_usage(30_000)
    assert usage is not None
    assert meter.commit_emitted(usage) is True
    assert meter.commit_emitted(usage) is False
    assert meter.emitted_ms == 30_000
    with pytest.raises(ValueError, match="not a claim"):
        meter.commit_emitted(Usage(30_000, 99_000, 69_000, RATE))


def test_no_usage_no_claim(tmp_path: Path) -> None:
    meter = meter_at(tmp_path)
    meter.observe(False, 0)
    assert meter.take_usage(100_000) is None
    assert meter.pending_claims() == []


def test_crash_loses_at_most_the_usage_since_the_last_checkpoint(tmp_path: Path) -> None:
    meter = meter_at(tmp_path, boot=1, interval_s=60)
    meter.observe(True, 0)
    for t in range(0, 200_001, 1_000):
        meter.tick(t)
    assert meter.last_checkpoint_mono_ms == 180_000
    del meter  # the process dies: no close, no final checkpoint
    reopened = meter_at(tmp_path, boot=2, interval_s=60)
    (claim,) = reopened.pending_claims()
    assert claim.boot == 1
    assert claim.usage == Usage(0, 180_000, 180_000, RATE)  # 20 s of 200 s lost (< 60 s)
    assert reopened.recoveries == 1
    assert reopened.take_usage(5_000) is None  # the new boot has its own, empty window


def test_crash_after_outbox_commit_but_before_meter_commit_never_counts_twice(
        tmp_path: Path) -> None:
    outbox: list[tuple[int, Usage]] = []
    meter = meter_at(tmp_path, boot=1)
    meter.observe(True, 0)
    usage = meter.take_usage(90_000)
    assert usage is not None
    outbox.append((1, usage))  # the record is durable in the outbox ...
    del meter  # ... and the agent dies before commit_emitted
    meter = meter_at(tmp_path, boot=2)
    for claim in meter.pending_claims():
        if (claim.boot, claim.usage) not in outbox:
            outbox.append((claim.boot, claim.usage))
        meter.commit_emitted(claim.usage, claim.boot)
    assert outbox == [(1, Usage(0, 90_000, 90_000, RATE))]
    assert meter.emitted_ms == 90_000
    assert meter.pending_claims() == []


def test_clean_shutdown_checkpoint_loses_nothing(tmp_path: Path) -> None:
    meter = meter_at(tmp_path, boot=1, interval_s=3_600)
    meter.observe(True, 0)
    meter.observe(False, 45_500)
    meter.close(50_000)
    reopened = meter_at(tmp_path, boot=2)
    assert [c.usage for c in reopened.pending_claims()] == [Usage(0, 50_000, 45_500, RATE)]


def test_reopening_in_the_same_boot_resumes_without_double_counting(tmp_path: Path) -> None:
    meter = meter_at(tmp_path, boot=1, interval_s=10)
    meter.observe(True, 0)
    meter.tick(20_000)
    meter.close()
    again = meter_at(tmp_path, boot=1, interval_s=10)
    again.observe(False, 30_000)  # unknown state between 20 s and 30 s is not counted
    assert again.take_usage(30_000) == Usage(0, 30_000, 20_000, RATE)


def test_meter_state_from_a_later_boot_is_refused(tmp_path: Path) -> None:
    meter_at(tmp_path, boot=5).close()
    with pytest.raises(StorageError, match="later than this boot 4"):
        meter_at(tmp_path, boot=4)


def test_observation_stamped_before_an_earlier_one_is_clamped_and_counted(tmp_path: Path) -> None:
    meter = meter_at(tmp_path)
    meter.observe(True, 10_000)
    meter.observe(False, 4_000)  # arrives late: treated as "at 10 s", never negative
    assert meter.late_observations == 1
    assert meter.take_usage(20_000) is None


def test_credit_is_integer_micro_credits_floored_per_record(tmp_path: Path) -> None:
    meter = UsageMeter(tmp_path / "u.sqlite", "usage", 7, 60, 1)  # 7 micro-credits per hour
    meter.observe(True, 0)
    emitted = []
    for end in range(1_000_000, 10_000_001, 1_000_000):  # ten records of 1000 s
        usage = meter.take_usage(end)
        assert usage is not None
        meter.commit_emitted(usage)
        emitted.append(usage)
    per_record = [credit_micro(u.usage_ms, 7) for u in emitted]
    assert per_record == [1] * 10  # 1000 s × 7/h = 1.94 → 1 each
    assert meter.emitted_micro == sum(per_record) == 10
    assert credit_micro(sum(u.usage_ms for u in emitted), 7) == 19  # the sum is not the rule
    assert isinstance(meter.emitted_micro, int)


def test_accrued_counts_emitted_pending_and_open_window(tmp_path: Path) -> None:
    meter = meter_at(tmp_path)
    meter.observe(True, 0)
    first = meter.take_usage(3_600_000)
    assert first is not None
    meter.commit_emitted(first)
    meter.take_usage(5_400_000)  # pending: half an hour
    meter.tick(5_400_000 + 900_000)  # a quarter of an hour open
    assert meter.emitted_micro == 1_000_000
    assert meter.pending_micro == 500_000
    assert meter.accrued_micro == 1_750_000


@pytest.mark.parametrize(("rate", "interval", "boot", "key"), [
    (-1, 60, 1, "rate_micro_per_hour"),
    (1.5, 60, 1, "rate_micro_per_hour"),
    (1, 0, 1, "checkpoint_interval_s"),
    (1, 60, -1, "boot"),
])
def test_bad_meter_settings_are_config_errors(
        tmp_path: Path, rate: object, interval: object, boot: object, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        UsageMeter(tmp_path / "u.sqlite", "usage", rate, interval, boot)  # type: ignore[arg-type]


def test_unusable_state_file_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        UsageMeter(tmp_path / "no-such-dir" / "u.sqlite", "usage", RATE, 60, 1)


def test_damaged_meter_file_is_moved_aside_reported_and_replaced(tmp_path: Path) -> None:
    path = tmp_path / "u.sqlite"
    path.write_bytes(b"not a database" * 500)
    reported: list[tuple[Path, str]] = []
    meter = UsageMeter(path, "usage", RATE, 60, 1, wall_ms=lambda: 0,
                       on_damaged=lambda moved, why: reported.append((moved, why)))
    (moved, why), = reported
    assert moved == tmp_path / "u.sqlite.corrupt-19700101T000000Z"
    assert moved.read_bytes().startswith(b"not a database")
    assert "not a database" in why
    assert meter.status()["damaged_files"] == 1
    meter.observe(True, 0)
    assert meter.take_usage(60_000) == Usage(0, 60_000, 60_000, RATE)  # measures afresh
