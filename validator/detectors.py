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
import operator
from collections import deque
from collections.abc import Mapping, Sequence
from statistics import median
from typing import Any

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

    def snapshot(self) -> list[list[float]]:
        """The trailing day's points as JSON values (:meth:`restore` takes them back)."""
        return [[x, y] for x, y in self._points]

    def restore(self, saved: Sequence[Sequence[float]]) -> None:
        self.reset()
        for x, y in saved:
            self._points.append((float(x), float(y)))
            self._sums(float(x), float(y), 1.0)

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
        self._grams: dict[tuple[float, float, float], list[tuple[str, int]]] | None = None
        self._windows = 0  # windows since the index was last rebuilt

    def snapshot(self) -> dict[str, object]:
        """The kept values and last matches as JSON values (:meth:`restore`)."""
        return {"history": {s: sorted(kept.items()) for s, kept in self._history.items()},
                "last": {s: sorted(found) for s, found in self._last.items()}}

    def restore(self, saved: Mapping[str, Any]) -> None:
        self._history = {str(s): {int(b): float(v) for b, v in kept}
                         for s, kept in saved["history"].items()}
        self._last = {str(s): {(str(o), int(lag)) for o, lag in found}
                      for s, found in saved["last"].items()}
        self._grams = None  # rebuilt from the history at the next window

    def judge(self, buckets: Buckets, first: int, count: int) -> dict[str, str]:
        """Record this window's buckets; return ``{copier: source}`` for replays found."""
        max_lag = self._th.replay_max_lag_buckets
        for sensor, slots in buckets.items():
            self._history.setdefault(sensor, {}).update(slots)
        self._windows += 1
        if self._grams is None or self._windows * count >= max_lag + count:
            self._rebuild(first + count - max_lag - count)  # also forgets what is too old
        else:
            self._add_grams(first - 2, first + count)
        found: dict[str, str] = {}
        for sensor, slots in buckets.items():
            matches = self._matches(sensor, slots)
            previous = self._last.get(sensor, set())
            self._last[sensor] = matches
            for source, _lag in sorted(matches & previous):
                found.setdefault(sensor, source)
        return found

    def _rebuild(self, low: int) -> None:
        for kept in self._history.values():
            for bucket in [b for b in kept if b < low]:
                del kept[bucket]
        self._grams, self._windows = {}, 0
        self._add_grams(low, None)

    def _add_grams(self, low: int, high: int | None) -> None:
        """Index every run of three consecutive values starting at ``low`` or after (and
        before ``high``) by its values: a copy repeats its source's runs."""
        assert self._grams is not None
        for sensor, kept in self._history.items():
            starts = [b for b in kept if b >= low] if high is None else range(low, high)
            for bucket in starts:
                value = kept.get(bucket)
                second, third = kept.get(bucket + 1), kept.get(bucket + 2)
                if value is not None and second is not None and third is not None:
                    self._grams.setdefault((value, second, third), []).append((sensor, bucket))

    def _matches(self, sensor: str, slots: Mapping[int, float]) -> set[tuple[str, int]]:
        th = self._th
        if len(slots) < th.min_readings or len(set(slots.values())) < th.replay_min_distinct:
            return set()
        assert self._grams is not None
        candidates: set[tuple[str, int]] = set()
        for bucket, value in slots.items():
            second, third = slots.get(bucket + 1), slots.get(bucket + 2)
            if second is None or third is None:
                continue
            for other, other_bucket in self._grams.get((value, second, third), ()):
                lag = bucket - other_bucket
                if other != sensor and 1 <= lag <= th.replay_max_lag_buckets:
                    candidates.add((other, lag))
        found = set()
        for other, lag in candidates:
            kept = self._history.get(other, {})
            n = pairs = 0
            for bucket, value in slots.items():
                then = kept.get(bucket - lag)
                if then is not None:  # both present: comparable
                    pairs += 1
                    n += then == value
            if n >= th.min_readings and n >= th.replay_match * pairs:
                found.add((other, lag))
        return found


class _Sliding:
    """The element-wise sum of the last ``windows`` vectors of length ``size``."""

    def __init__(self, windows: int, size: int) -> None:
        self.kept: deque[list[float]] = deque()
        self.windows = windows
        self.total = [0.0] * size

    def add(self, vector: list[float]) -> None:
        if len(self.kept) == self.windows:
            old = self.kept.popleft()
            self.total = [t - o for t, o in zip(self.total, old, strict=True)]
        self.kept.append(vector)
        self.total = [t + v for t, v in zip(self.total, vector, strict=True)]

    def clear(self) -> None:
        self.kept.clear()
        self.total = [0.0] * len(self.total)


def _demeaned(values: list[float | None]) -> tuple[list[float], float, int]:
    """``values`` less their mean (missing ones 0.0), their sum of squares and count."""
    present = [v for v in values if v is not None]
    if not present:
        return [0.0] * len(values), 0.0, 0
    mean = sum(present) / len(present)
    out = [0.0 if v is None else v - mean for v in values]
    return out, sum(x * x for x in out), len(present)


class CopyDetector:
    """Finds a sensor whose *noise* is another's: a copy with noise of its own added, at any
    lag from 0 (a live copy) to ``copy_max_lag_buckets`` (docs/QUALITY.md §3.3).

    Two statistics, each summed over the last ``copy_windows`` windows (within-window
    demeaned, so offsets, biases and slow changes cancel) and kept as per-window terms in
    bounded deques:

    - lags >= 1: the correlation of B's leave-one-out residual (its value less the median of
      the other trusted sensors) with A's, ``lag`` buckets earlier. Independent sensors'
      residuals at different minutes are uncorrelated; a copy's residual carries its
      source's noise of ``lag`` minutes before. Flagged at ``copy_min_corr`` and a z score
      (``corr * sqrt(n)``) of ``copy_z``.
    - lag 0: each sensor's *independent* noise relative to another. For a pair (A, B) and
      a third sensor C, ``cov(A - B, A - C)`` is A's own noise variance for independent
      sensors, and 0 when B copies A live (B - A is then the copier's added noise only);
      normalised by half of ``var(A - B)``, ``q(A|B) + q(B|A) = 2``: 1 each for an honest
      pair, about 0 for the source and 2 for its copier. Flagged below ``live_max_q``.
      Two sensors reporting the same values minute for minute are flagged both: which one
      copies cannot be told from the values.
    """

    def __init__(self, th: Thresholds, names: tuple[str, ...]) -> None:
        self._th = th
        self._names = names
        keep = th.copy_max_lag_buckets
        self._resid: dict[str, deque[float]] = {n: deque(maxlen=keep) for n in names}
        # each window's (sum of squares, count) of each sensor's residuals, kept for as
        # many windows as a lagged product can reach back
        self._ss: dict[str, deque[tuple[float, int]]] = {
            n: deque(maxlen=th.copy_windows + -(-keep // (th.window_s // th.bucket_s)))
            for n in names}
        self._cross: dict[tuple[str, str], _Sliding] = {
            (b, a): _Sliding(th.copy_windows, keep) for b in names for a in names if a != b}
        self._tri: dict[tuple[str, str, str], deque[tuple[float, float, float, int]]] = {
            (a, b, c): deque(maxlen=th.live_windows)
            for a in names for b in names for c in names if len({a, b, c}) == 3}
        self._next: int | None = None

    def judge(self, buckets: Buckets, first: int, count: int, trusted: list[str],
              usable: set[str]) -> dict[str, str]:
        """Add this window; return ``{copier: source}``. ``usable``: the sensors whose window
        is fit to compare (enough readings, no other fault this window)."""
        if self._next is not None and first != self._next:
            self.reset()  # a gap in the windows: lagged products would pair wrong minutes
        self._next = first + count
        slots = range(first, first + count)
        current: dict[str, list[float]] = {}
        for name in self._names:
            others = [s for s in trusted if s != name]
            raw: list[float | None] = []
            for b in slots:
                near = [buckets[s][b] for s in others if b in buckets[s]]
                own = buckets[name].get(b)
                raw.append(None if own is None or len(near) < 2 else own - median(near))
            series, ss, n = _demeaned(raw if name in usable else [None] * count)
            self._ss[name].append((ss, n))
            current[name] = series
        found = self._lagged(current, count)
        found.update(self._live(buckets, slots, usable))
        for name, series in current.items():
            self._resid[name].extend(series)
        return found

    def snapshot(self) -> dict[str, object]:
        """Everything kept, as JSON values (:meth:`restore` takes it back)."""
        return {"next": self._next,
                "resid": {n: list(kept) for n, kept in self._resid.items()},
                "ss": {n: [list(x) for x in kept] for n, kept in self._ss.items()},
                "cross": [[b, a, list(s.kept)] for (b, a), s in self._cross.items()],
                "tri": [[a, b, c, [list(x) for x in kept]]
                        for (a, b, c), kept in self._tri.items()]}

    def restore(self, saved: Mapping[str, Any]) -> None:
        """Take back a :meth:`snapshot` of a detector of the same sensors and settings."""
        self.reset()
        self._next = None if saved["next"] is None else int(saved["next"])
        for n in self._names:
            self._resid[n].extend(float(x) for x in saved["resid"][n])
            self._ss[n].extend((float(ss), int(k)) for ss, k in saved["ss"][n])
        for b, a, kept in saved["cross"]:
            for vector in kept:
                if len(vector) != self._th.copy_max_lag_buckets:
                    raise ValueError("copy detector: lag vector of another length")
                self._cross[b, a].add([float(x) for x in vector])
        for a, b, c, kept in saved["tri"]:
            self._tri[a, b, c].extend(
                (float(cov), float(v1), float(v2), int(k)) for cov, v1, v2, k in kept)

    def reset(self) -> None:
        """Forget everything (windows skipped)."""
        for store in (self._resid, self._ss, self._tri):
            for kept in store.values():
                kept.clear()
        for sliding in self._cross.values():
            sliding.clear()

    def _lagged(self, current: Mapping[str, list[float]], count: int) -> dict[str, str]:
        th = self._th
        max_lag = th.copy_max_lag_buckets
        if not max_lag:
            return {}
        history = {n: list(self._resid[n]) for n in self._names}
        recent = {n: list(self._ss[n])[-th.copy_windows:] for n in self._names}
        energy = {n: [sum(x) for x in zip(*recent[n], strict=True)] for n in self._names}
        # A source's energy over every window its lagged residuals come from: an upper
        # bound on its energy at any one lag, so the correlation is never overstated.
        reach = {n: [sum(x) for x in zip(*self._ss[n], strict=True)] for n in self._names}
        found: dict[str, str] = {}
        for (b, a), kept in self._cross.items():
            mine, past = current[b], history[a] + current[a]
            end = len(past) - count  # index of this window's first bucket in ``past``
            sums = [0.0] * max_lag
            if any(mine) and any(past):
                for lag in range(1, min(max_lag, end) + 1):
                    sums[lag - 1] = sum(map(operator.mul, mine,
                                            past[end - lag:end - lag + count]))
            kept.add(sums)
            (ss_b, n_b), (ss_a, n_a) = energy[b], reach[a]
            if min(n_a, n_b) < th.copy_min_n or ss_a <= 0 or ss_b <= 0:
                continue
            corr = max(kept.total) / math.sqrt(ss_a * ss_b)
            if corr >= th.copy_min_corr and corr * math.sqrt(n_b) >= th.copy_z:
                found.setdefault(b, a)
        return found

    def _live(self, buckets: Buckets, slots: range, usable: set[str]) -> dict[str, str]:
        th = self._th
        sums: dict[tuple[str, str, str], tuple[float, float, float, int]] = {}
        for (a, b, c), kept in self._tri.items():
            term = (0.0, 0.0, 0.0, 0)
            if {a, b, c} <= usable and len(set(buckets[a].values())) >= th.replay_min_distinct:
                both = [k for k in slots if k in buckets[a] and k in buckets[b]
                        and k in buckets[c]]
                ab, var, n = _demeaned([buckets[a][k] - buckets[b][k] for k in both])
                ac, var_ac, _ = _demeaned([buckets[a][k] - buckets[c][k] for k in both])
                term = (sum(map(operator.mul, ab, ac)), var, var_ac, n)
            kept.append(term)
            cov, var, var_ac, n = (sum(x) for x in zip(*kept, strict=True))
            if n >= th.copy_min_n:
                sums[a, b, c] = cov, var, var_ac, n
        # q(a|b): a's own noise (the median over the references c) in units of a quarter of
        # var(a - b) + var(a - c): 1 for independent sensors of equal noise, 0 for a source
        copies: dict[str, list[tuple[float, str]]] = {}
        for a in self._names:
            for b in self._names:
                refs = [v for (x, y, _), v in sums.items() if (x, y) == (a, b)]
                if a == b or not refs:
                    continue
                var = refs[0][1]
                if var <= 0:
                    copies.setdefault(a, []).append((0.0, b))  # the same values: a copy
                elif median(4 * cov / (v_ab + v_ac) for cov, v_ab, v_ac, _ in refs
                            if v_ab + v_ac > 0) < th.live_max_q:
                    copies.setdefault(a, []).append((var, b))
        found: dict[str, str] = {}
        for source, candidates in copies.items():
            # With one reference, the copy and the reference both show the source's noise
            # as shared: the copy is the one clearly nearer to the source (QUALITY.md §3.3).
            candidates.sort()
            if len(candidates) == 1 or candidates[0][0] < th.live_nearer * candidates[1][0]:
                found.setdefault(candidates[0][1], source)
            elif candidates[0][0] == candidates[1][0] == 0.0:
                for _, copier in candidates:
                    found.setdefault(copier, source)
        return found
