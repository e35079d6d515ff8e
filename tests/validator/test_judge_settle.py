"""A validator judges a window once and for all, so it must not judge one whose readings
may still be in a device's outbox or in flight: the settle allowance (docs/QUALITY.md)."""

from __future__ import annotations

from validator import SensorSpec, SiteSpec, Thresholds
from validator.run import Readings, judge
from validator.sites import SiteFile

WINDOW = Thresholds().window_s
BUCKET = Thresholds().bucket_s


def _site() -> SiteFile:
    sensors = tuple(SensorSpec(f"{i:02x}" * 16, 0.5) for i in range(1, 4))
    return SiteFile(SiteSpec("room", "temperature", sensors), "climate", "Cel", "hub")


def _readings(site: SiteFile, start: int, end: int) -> Readings:
    return {s.name: [(float(t), 21.0 + 0.1 * n, t // BUCKET * 3 + n)
                     for t in range(start, end, BUCKET)]
            for n, s in enumerate(site.spec.sensors)}


def test_a_window_that_ended_inside_the_settle_allowance_is_not_judged_yet() -> None:
    site = _site()
    readings = _readings(site, 0, WINDOW + 30)  # the next window has begun
    just_ended = WINDOW + 30
    assert judge(site, readings, just_ended, settle_s=120) == []
    assert [v.start_s for v, _ in judge(site, readings, WINDOW + 120, settle_s=120)] == [0]


def test_without_a_settle_allowance_a_window_is_judged_once_the_next_one_begins() -> None:
    site = _site()
    readings = _readings(site, 0, WINDOW + 30)
    assert [v.start_s for v, _ in judge(site, readings, WINDOW + 30)] == [0]
