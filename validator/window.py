"""One window's arithmetic: readings into per-bucket values, the per-bucket consensus
(median of the trusted sensors) and each sensor's residual statistics.

Pure functions over plain numbers; :mod:`validator.site` calls them once per window.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from statistics import median

# sensor -> bucket index -> value (the last reading in the bucket counts)
Buckets = dict[str, dict[int, float]]


def bucketize(readings: Mapping[str, Iterable[tuple[float, float]]], bucket_s: int,
              first: int, count: int) -> Buckets:
    """Each sensor's readings ``(time_s, value)`` in buckets ``first..first+count-1``.

    Readings outside the window or not finite are ignored (the caller counts them).
    """
    out: Buckets = {}
    for sensor, items in readings.items():
        slots: dict[int, float] = {}
        for time_s, value in items:
            bucket = int(time_s // bucket_s)
            if first <= bucket < first + count and math.isfinite(value):
                slots[bucket] = value
        out[sensor] = slots
    return out


def bucket_consensus(buckets: Buckets, trusted: Sequence[str], first: int, count: int
                     ) -> dict[int, float]:
    """Per bucket, the median of the trusted sensors' values.

    A bucket needs three of them when three or more are trusted (two otherwise): the median
    of two is their mean, and a missed reading of one honest sensor would then put an
    outlier's error half on the other honest one.
    """
    need = min(3, max(2, len(trusted)))
    out: dict[int, float] = {}
    for bucket in range(first, first + count):
        values = [buckets[s][bucket] for s in trusted if bucket in buckets.get(s, {})]
        if len(values) >= need:
            out[bucket] = median(values)
    return out


@dataclass(frozen=True)
class WindowStats:
    """A sensor's window against the consensus."""

    readings: int
    residuals: int
    mean_residual: float
    spread: float  # standard deviation of the residuals about their mean
    peak: float  # largest |residual - mean_residual|
    distinct: int  # distinct reported values
    mean_value: float | None


def window_stats(slots: Mapping[int, float], consensus: Mapping[int, float]) -> WindowStats:
    """The residual statistics of one sensor's ``slots`` against ``consensus``."""
    residuals = [value - consensus[b] for b, value in slots.items() if b in consensus]
    n = len(residuals)
    mean_r = sum(residuals) / n if n else 0.0
    spread = math.sqrt(sum((r - mean_r) ** 2 for r in residuals) / n) if n else 0.0
    peak = max((abs(r - mean_r) for r in residuals), default=0.0)
    values = list(slots.values())
    mean_value = sum(values) / len(values) if values else None
    return WindowStats(len(values), n, mean_r, spread, peak, len(set(values)), mean_value)


def same_run(run: tuple[float, int], slots: Mapping[int, float]) -> tuple[float, int]:
    """Continue ``run`` (last value, how many readings in a row had it) over ``slots``."""
    value, length = run
    for bucket in sorted(slots):
        if slots[bucket] == value:
            length += 1
        else:
            value, length = slots[bucket], 1
    return value, length
