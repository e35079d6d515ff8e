"""The fault detectors: what makes one sensor's window bad.

- :func:`window_reasons`: bias, excess noise and spikes, from the window's residuals
  against the consensus (thresholds scale with the sensor's stated accuracy); stuck
  values are a run of identical readings (:func:`validator.window.same_run`);
- :class:`DriftTracker`: the slope of a sensor's window residuals over the last day
  (running least-squares sums, O(1) per window);
- :class:`ReplayDetector`: a sensor whose values equal another's at a fixed lag, in two
  windows running (exact match of lagged sequences).

docs/QUALITY.md §3 says why each test is shaped the way it is.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, deque
from collections.abc import Mapping

from validator.model import Reason, Thresholds
from validator.window import Buckets, WindowStats

DAY_S = 86_400


def window_reasons(stats: WindowStats, accuracy: float, th: Thresholds) -> list[Reason]:
    """Why this window of a sensor is bad (empty: good). Needs ``th.min_readings``."""
    reasons: list[Reason] = []
    if stats.residuals >= th.min_readings:
        if abs(stats.mean_residual) > th.bias_k * accuracy:
            reasons.append("bias")
        if stats.spread > th.noise_k * accuracy:
            reasons.append("noise")
        if stats.peak > th.spike_k * accuracy and stats.spread <= th.noise_k * accuracy:
            reasons.append("spike")
    return reasons


class DriftTracker:
    """Least-squares slope of one sensor's window residuals over a trailing day."""

    def __init__(self, th: Thresholds) -> None:
        self._th = th
        self._points: deque[tuple[float, float]] = deque()
        self._sx = self._sy = self._sxx = self._sxy = self._syy = 0.0

    def reset(self) -> None:
        """Forget the history (the consensus's make-up changed: a step is not a drift)."""
        self._points.clear()
        self._sx = self._sy = self._sxx = self._sxy = self._syy = 0.0

    def add(self, day: float, residual: float) -> None:
        """Add the window at ``day`` (days since any fixed origin) with mean ``residual``."""
        self._points.append((day, residual))
        self._sums(day, residual, 1.0)
        while self._points and self._points[0][0] <= day - 1.0:
            old_day, old_residual = self._points.popleft()
            self._sums(old_day, old_residual, -1.0)

    def _sums(self, x: float, y: float, sign: float) -> None:
        self._sx += sign * x
        self._sy += sign * y
        self._sxx += sign * x * x
        self._sxy += sign * x * y
        self._syy += sign * y * y

    def slope(self) -> tuple[float, float] | None:
        """(slope per day, its t statistic), or None with less than the minimum history."""
        n = len(self._points)
        if n < self._th.drift_min_windows:
            return None
        sxx = self._sxx - self._sx * self._sx / n
        if sxx <= 0:
            return None
        slope = (self._sxy - self._sx * self._sy / n) / sxx
        syy = self._syy - self._sy * self._sy / n
        rss = max(syy - slope * slope * sxx, 0.0)
        se = math.sqrt(rss / (n - 2) / sxx)
        return slope, (math.inf if se == 0 else abs(slope) / se)

    def drifting(self, accuracy: float) -> bool:
        """Whether the slope is large (``drift_k_per_day`` x accuracy), significant, and
        steady: the day's four quarters step the same way, each by at least half what the
        slope predicts (a single step in the consensus is not a drift)."""
        fit = self.slope()
        if fit is None or abs(fit[0]) < self._th.drift_k_per_day * accuracy \
                or fit[1] < self._th.drift_t:
            return False
        quarters = self._quarter_means()
        step = 0.5 * fit[0] / len(quarters)
        return all((b - a) / step >= 1.0 for a, b in itertools.pairwise(quarters))

    def _quarter_means(self) -> list[float]:
        points = list(self._points)
        size = max(len(points) // 4, 1)
        return [sum(y for _, y in points[i:i + size]) / len(points[i:i + size])
                for i in range(0, size * 4, size)]


class ReplayDetector:
    """Finds sensors that report another sensor's values from ``lag`` buckets earlier.

    Keeps every sensor's bucketed values for the longest lag plus one window (bounded).
    A window of sensor A is a replay of B at lag L when at least ``replay_match`` of A's
    values equal B's values L buckets earlier (of those buckets where B has a value: a
    reading of B that went missing cannot be compared), A's window holds at least
    ``replay_min_distinct`` distinct values (a flat signal matches anything), and the same
    (B, L) matched in A's previous window too.
    """

    def __init__(self, th: Thresholds) -> None:
        self._th = th
        self._history: dict[str, dict[int, float]] = {}
        self._last: dict[str, set[tuple[str, int]]] = {}

    def judge(self, buckets: Buckets, first: int, count: int) -> dict[str, str]:
        """Record this window's buckets; return ``{copier: source}`` for replays found."""
        max_lag = self._th.replay_max_lag_buckets
        for sensor, slots in buckets.items():
            kept = self._history.setdefault(sensor, {})
            kept.update(slots)
            for bucket in [b for b in kept if b < first + count - max_lag - count]:
                del kept[bucket]
        index = self._index(first - max_lag, first + count)
        found: dict[str, str] = {}
        for sensor, slots in buckets.items():
            matches = self._matches(sensor, slots, index)
            previous = self._last.get(sensor, set())
            self._last[sensor] = matches
            for source, _lag in sorted(matches & previous):
                found.setdefault(sensor, source)
        return found

    def _index(self, low: int, high: int) -> dict[float, list[tuple[str, int]]]:
        index: dict[float, list[tuple[str, int]]] = {}
        for sensor, kept in self._history.items():
            for bucket, value in kept.items():
                if low <= bucket < high:
                    index.setdefault(value, []).append((sensor, bucket))
        return index

    def _matches(self, sensor: str, slots: Mapping[int, float],
                 index: Mapping[float, list[tuple[str, int]]]) -> set[tuple[str, int]]:
        th = self._th
        if len(slots) < th.min_readings or len(set(slots.values())) < th.replay_min_distinct:
            return set()
        counts: Counter[tuple[str, int]] = Counter()
        for bucket, value in slots.items():
            for other, other_bucket in index.get(value, ()):
                lag = bucket - other_bucket
                if other != sensor and 1 <= lag <= th.replay_max_lag_buckets:
                    counts[other, lag] += 1
        found = set()
        for (other, lag), n in counts.items():
            if n < th.min_readings or n < th.replay_match * len(slots) / 2:
                continue  # cheap bound first: most candidate lags match a handful of values
            kept = self._history.get(other, {})
            pairs = sum(1 for b in slots if b - lag in kept)  # both present: comparable
            if n >= th.replay_match * pairs:
                found.add((other, lag))
        return found
