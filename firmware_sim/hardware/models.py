"""Physical models of the simulated world: a TV's viewing schedule, a person's presence,
a room's climate, a SoC's temperature, a button.

Every model is a pure function of (seed, time) or draws from a ``random.Random`` it is
given, so a run replays exactly from its seed. Times are the world's wall time in seconds
since the Unix epoch (UTC days; the simulated household lives on UTC).
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass, field

DAY_S = 86_400


@dataclass(frozen=True)
class TvSchedule:
    """Evening TV sessions, seeded per day.

    Each evening window (default 19:00-23:00) is cut into ``sessions`` equal slots
    (1..3 drawn per day); each slot holds one session that starts in the slot's first half
    and lasts ``min_session_s``..(rest of the slot). Times are whole seconds, so usage
    measured by sampling every second is exact.
    """

    seed: int
    evening_start_s: int = 19 * 3600
    evening_end_s: int = 23 * 3600
    max_sessions: int = 3
    min_session_s: int = 600

    def __post_init__(self) -> None:
        slot = (self.evening_end_s - self.evening_start_s) // self.max_sessions
        if not 0 < self.min_session_s <= slot // 2:
            raise ValueError("min_session_s must fit in half of the shortest slot")

    def sessions_on_day(self, day: int) -> list[tuple[int, int]]:
        """The (start, end) wall seconds of day ``day``'s sessions (days since the epoch)."""
        return list(_sessions_on_day(self, day))

    def sessions_between(self, start_s: float, end_s: float) -> list[tuple[float, float]]:
        """Every session that overlaps [start_s, end_s), clipped to it."""
        out: list[tuple[float, float]] = []
        for day in range(int(start_s // DAY_S), int(end_s // DAY_S) + 1):
            for a, b in self.sessions_on_day(day):
                lo, hi = max(a, start_s), min(b, end_s)
                if lo < hi:
                    out.append((lo, hi))
        return out

    def on_seconds(self, start_s: float, end_s: float) -> float:
        """Total on-time in [start_s, end_s)."""
        return sum(b - a for a, b in self.sessions_between(start_s, end_s))

    def is_on(self, wall_s: float) -> bool:
        """Whether the TV is on at ``wall_s`` (sessions are half-open: [start, end))."""
        day = int(wall_s // DAY_S)
        return any(a <= wall_s < b for a, b in _sessions_on_day(self, day))


@functools.lru_cache(maxsize=64)
def _sessions_on_day(tv: TvSchedule, day: int) -> tuple[tuple[int, int], ...]:
    rng = random.Random(f"tv:{tv.seed}:{day}")  # noqa: S311 - seeded replayable simulation
    count = rng.randint(1, tv.max_sessions)
    slot = (tv.evening_end_s - tv.evening_start_s) // count
    sessions = []
    for i in range(count):
        slot_start = day * DAY_S + tv.evening_start_s + i * slot
        start = slot_start + rng.randint(0, slot // 2)
        end = rng.randint(start + tv.min_session_s, slot_start + slot)
        sessions.append((start, end))
    return tuple(sessions)


@dataclass
class PresenceModel:
    """PIR pulses: in each ``slot_s`` slot a pulse of ``hold_s`` occurs with probability
    ``p_tv_on`` while the TV is on (someone is watching) and ``p_tv_off`` otherwise."""

    seed: int
    tv: TvSchedule
    slot_s: int = 60
    hold_s: int = 5
    p_tv_on: float = 0.6
    p_tv_off: float = 0.02
    _cache: tuple[int, tuple[float, float] | None] = field(default=(-1, None), repr=False)

    def pulse_in_slot(self, slot: int) -> tuple[float, float] | None:
        """The (start, end) of the pulse in ``slot``, or None."""
        if self._cache[0] == slot:
            return self._cache[1]
        start = slot * self.slot_s
        rng = random.Random(f"pir:{self.seed}:{slot}")  # noqa: S311 - seeded replayable simulation
        p = self.p_tv_on if self.tv.is_on(start) else self.p_tv_off
        pulse = None
        if rng.random() < p:
            at = start + rng.uniform(0, self.slot_s - self.hold_s)
            pulse = (at, at + self.hold_s)
        self._cache = (slot, pulse)
        return pulse

    def is_active(self, wall_s: float) -> bool:
        pulse = self.pulse_in_slot(int(wall_s // self.slot_s))
        return pulse is not None and pulse[0] <= wall_s < pulse[1]


@dataclass(frozen=True)
class ClimateModel:
    """Room temperature and humidity: daily sinusoids plus Gaussian noise, and a sensor
    calibration offset with a linear drift per day since ``epoch_s``.

    Temperature peaks at ``peak_hour`` (default 15:00) between mean ± amplitude (18-24 °C by
    default); relative humidity moves opposite. Values are rounded to 0.1 like a DHT22.
    """

    mean_c: float = 21.0
    amplitude_c: float = 3.0
    humidity_mean: float = 45.0
    humidity_amplitude: float = 8.0
    peak_hour: float = 15.0
    noise_c: float = 0.15
    noise_rh: float = 0.8
    offset_c: float = 0.0
    offset_rh: float = 0.0
    drift_c_per_day: float = 0.0
    drift_rh_per_day: float = 0.0
    epoch_s: float = 0.0

    def true_values(self, wall_s: float) -> tuple[float, float]:
        """The room's temperature (°C) and relative humidity (%) with no sensor error."""
        phase = 2 * math.pi * ((wall_s % DAY_S) / 3600 - self.peak_hour) / 24
        return (self.mean_c + self.amplitude_c * math.cos(phase),
                self.humidity_mean - self.humidity_amplitude * math.cos(phase))

    def sample(self, wall_s: float, rng: random.Random) -> tuple[float, float]:
        """What the sensor reports at ``wall_s``: true values + calibration, drift, noise."""
        t, rh = self.true_values(wall_s)
        days = (wall_s - self.epoch_s) / DAY_S
        t += self.offset_c + self.drift_c_per_day * days + rng.gauss(0, self.noise_c)
        rh += self.offset_rh + self.drift_rh_per_day * days + rng.gauss(0, self.noise_rh)
        return round(t, 1), round(min(max(rh, 0.0), 100.0), 1)


@dataclass(frozen=True)
class CpuThermalModel:
    """SoC temperature: idle level, warmer while the TV (a household busy hour) is on,
    a daily swing with the room, and noise; in millidegrees like sysfs."""

    idle_c: float = 45.0
    busy_extra_c: float = 6.0
    daily_swing_c: float = 2.0
    noise_c: float = 0.4

    def millidegrees(self, wall_s: float, busy: bool, rng: random.Random) -> int:
        phase = 2 * math.pi * ((wall_s % DAY_S) / 3600 - 15) / 24
        c = self.idle_c + self.daily_swing_c * math.cos(phase) + rng.gauss(0, self.noise_c)
        if busy:
            c += self.busy_extra_c
        return round(c * 1000)


@dataclass
class ButtonModel:
    """A push button; presses are scheduled explicitly (by a test or the demo)."""

    presses: list[tuple[float, float]] = field(default_factory=list)

    def press(self, at_s: float, duration_s: float = 0.2) -> None:
        self.presses.append((at_s, at_s + duration_s))

    def is_pressed(self, wall_s: float) -> bool:
        return any(a <= wall_s < b for a, b in self.presses)
