"""What the validator judges and what it says: a site's declared sensors, the thresholds
(each derived from a sensor's stated accuracy), and the verdict of one time window.

All values are frozen dataclasses that check themselves when built; nothing here does I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

State = Literal["healthy", "suspect", "faulty", "recovered"]
STATES: tuple[State, ...] = get_args(State)
FLAGGED: frozenset[State] = frozenset({"suspect", "faulty"})

# Why a sensor's window was bad (docs/QUALITY.md §3 says what each detector measures).
Reason = Literal["bias", "drift", "stuck", "noise", "spike", "dropout", "replay"]
REASONS: tuple[Reason, ...] = get_args(Reason)

MAX_SENSORS_PER_SITE = 32


@dataclass(frozen=True)
class SensorSpec:
    """One co-located sensor: its name at the site and its stated accuracy (± in the
    quantity's unit, e.g. 0.5 for a DHT22's temperature)."""

    name: str
    accuracy: float

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 64:
            raise ValueError("sensor name must be 1..64 characters")
        if not (math.isfinite(self.accuracy) and self.accuracy > 0):
            raise ValueError(f"{self.name}: accuracy must be a positive number")


@dataclass(frozen=True)
class SiteSpec:
    """Sensors measuring one quantity in one place; at least three, so a majority exists."""

    name: str
    quantity: str
    sensors: tuple[SensorSpec, ...]

    def __post_init__(self) -> None:
        if not 3 <= len(self.sensors) <= MAX_SENSORS_PER_SITE:
            raise ValueError(f"site {self.name}: needs 3..{MAX_SENSORS_PER_SITE} sensors")
        if len({s.name for s in self.sensors}) != len(self.sensors):
            raise ValueError(f"site {self.name}: sensor names must be unique")

    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sensors)


@dataclass(frozen=True)
class Thresholds:
    """The validator's settings; the ``*_k`` factors multiply a sensor's stated accuracy.

    docs/QUALITY.md §4 argues each value.
    """

    window_s: int = 600
    bucket_s: int = 60
    min_readings: int = 3
    bias_k: float = 1.0
    noise_k: float = 1.0
    spike_k: float = 1.5
    stuck_min_readings: int = 20
    stuck_faulty_readings: int = 30
    drift_k_per_day: float = 0.15
    drift_min_windows: int = 144
    drift_t: float = 6.0
    dropout_windows: int = 4
    replay_max_lag_buckets: int = 240
    replay_match: float = 0.9
    replay_min_distinct: int = 3
    copy_max_lag_buckets: int = 60
    copy_windows: int = 36
    copy_min_n: int = 120
    copy_min_corr: float = 0.35
    copy_z: float = 6.0
    live_windows: int = 24
    live_max_q: float = 0.3
    live_nearer: float = 0.7
    faulty_bad: int = 3
    faulty_of: int = 4
    suspect_clear: int = 4
    faulty_clear: int = 6
    recovered_clear: int = 12

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.bucket_s <= 0 or self.window_s % self.bucket_s:
            raise ValueError("window_s must be a positive multiple of bucket_s")
        if not 0 < self.faulty_bad <= self.faulty_of:
            raise ValueError("faulty_bad must be within 1..faulty_of")


@dataclass(frozen=True)
class SensorVerdict:
    """One sensor in one window: its state after the window, why the window was bad (empty
    if good or not judged), how many readings it gave and its mean deviation from consensus."""

    sensor: str
    state: State
    reasons: tuple[Reason, ...]
    readings: int
    residual: float | None


@dataclass(frozen=True)
class WindowVerdict:
    """A site's window ``[start_s, start_s + window_s)``: the consensus and every sensor."""

    site: str
    quantity: str
    start_s: int
    window_s: int
    consensus: float | None
    sensors: tuple[SensorVerdict, ...]

    def of(self, sensor: str) -> SensorVerdict:
        """The verdict for ``sensor``; KeyError if the site has none by that name."""
        for verdict in self.sensors:
            if verdict.sensor == sensor:
                return verdict
        raise KeyError(sensor)
