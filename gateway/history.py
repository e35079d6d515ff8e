"""A bounded in-memory history of the gateway's counters, for the dashboard's charts.

The sequencer thread calls :meth:`History.sample_if_due` on every turn of its loop (at
least once a second); a sample is taken every ``interval_s`` seconds of the monotonic
clock and the newest ``capacity`` samples are kept (a :class:`collections.deque` with a
``maxlen``), so the memory it holds is fixed however long the gateway runs: about
``capacity`` × (a few integers + one per rejection reason seen).

The history starts empty at every start, like the Prometheus counters it reads: rates are
differences between neighbouring samples of one process's life. Long-term history is
Prometheus's job (``/metrics``); this only feeds the live page (docs/GATEWAY.md,
"Dashboard").
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import pairwise

DEFAULT_INTERVAL_S = 2.0
DEFAULT_CAPACITY = 900  # 30 minutes at one sample every 2 s


@dataclass(frozen=True)
class Sample:
    """The counters at one moment (cumulative since the gateway started)."""

    wall_ms: int
    log_size: int
    checkpoint_size: int
    accepted: int
    duplicates: int
    rejections: Mapping[str, int]  # reason code -> records rejected so far (non-zero only)


class History:
    """The newest ``capacity`` samples, one every ``interval_s`` seconds."""

    def __init__(self, read: Callable[[], Sample], monotonic: Callable[[], float], *,
                 interval_s: float = DEFAULT_INTERVAL_S,
                 capacity: int = DEFAULT_CAPACITY) -> None:
        self._read = read
        self._monotonic = monotonic
        self.interval_s = interval_s
        self._samples: deque[tuple[float, Sample]] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._next_due: float | None = None

    def sample_if_due(self) -> bool:
        """Take a sample if ``interval_s`` has passed since the last; return whether it did.

        Raises what ``read`` raises (StorageError): the caller's loop decides.
        """
        now = self._monotonic()
        if self._next_due is not None and now < self._next_due:
            return False
        sample = self._read()
        with self._lock:
            self._samples.append((now, sample))
        self._next_due = now + self.interval_s
        return True

    def samples(self) -> list[Sample]:
        """A copy of the kept samples, oldest first."""
        with self._lock:
            return [s for _, s in self._samples]

    def series(self) -> dict[str, object]:
        """The samples as columns for a chart (uPlot's shape: one x array, y arrays).

        ``t`` is wall time in seconds; ``records_per_s`` and ``rejections_per_s`` are rates
        between a sample and the one before it (``None`` for the first, which has none).
        ``rejections_per_s`` has one column per reason that occurs in the window.
        """
        with self._lock:
            kept = list(self._samples)
        reasons = sorted({r for _, s in kept for r in s.rejections})
        rates: list[float | None] = [None]
        rejected: dict[str, list[float | None]] = {r: [None] for r in reasons}
        for (t0, a), (t1, b) in pairwise(kept):
            dt = max(t1 - t0, 1e-3)
            rates.append(round((b.accepted - a.accepted) / dt, 3))
            for r in reasons:
                delta = b.rejections.get(r, 0) - a.rejections.get(r, 0)
                rejected[r].append(round(delta / dt, 3))
        return {
            "interval_s": self.interval_s,
            "t": [s.wall_ms / 1000 for _, s in kept],
            "log_size": [s.log_size for _, s in kept],
            "checkpoint_size": [s.checkpoint_size for _, s in kept],
            "records_per_s": rates if kept else [],
            "rejections_per_s": rejected if kept else {},
        }
