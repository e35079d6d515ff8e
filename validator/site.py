"""One site's validator: feed it each window's readings, get the window's verdict.

Per window (``Thresholds.window_s``, fed in increasing order, empty windows included):

1. readings go into one-minute buckets; sensors not declared at the site are ignored;
2. the consensus per bucket is the median of the *trusted* sensors (not faulty) that
   gave enough readings in the window (the quorum);
3. each sensor's residuals against it feed the detectors; the drift detector follows the
   differences between pairs of sensors and the replay detector raw values;
4. each sensor's state machine takes the window as good, bad, missing or unjudged (a
   trusted sensor needs two trusted peers to be found bad: with a quorum under three, a
   disagreement cannot say who is wrong; two that agree are both good).

docs/QUALITY.md describes the algorithm and argues its thresholds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from statistics import median
from typing import Any

from validator.detectors import (
    DAY_S,
    CopyDetector,
    DriftTracker,
    ReplayDetector,
    window_reasons,
)
from validator.model import Reason, SensorVerdict, SiteSpec, State, Thresholds, WindowVerdict
from validator.states import SensorState
from validator.window import (
    Buckets,
    WindowStats,
    bucket_consensus,
    bucketize,
    same_run,
    window_stats,
)


class SiteValidator:
    """The consensus and per-sensor states of one site, window after window."""

    def __init__(self, spec: SiteSpec, thresholds: Thresholds | None = None) -> None:
        self.spec = spec
        self.th = thresholds or Thresholds()
        self._accuracy = {s.name: s.accuracy for s in spec.sensors}
        self._states = {name: SensorState(self.th) for name in spec.names()}
        names = spec.names()
        self._drift = {(a, b): DriftTracker(self.th)
                       for i, a in enumerate(names) for b in names[i + 1:]}
        self._replay = ReplayDetector(self.th)
        self._copy = CopyDetector(self.th, names)
        self._runs = {name: (math.nan, 0) for name in names}  # (last value, times in a row)
        self._last_start: int | None = None

    @property
    def last_start(self) -> int | None:
        """The start of the last window judged (None: none yet)."""
        return self._last_start

    def snapshot(self) -> dict[str, object]:
        """Everything the validator keeps between windows, as JSON values, with the site
        and settings it belongs to (:meth:`restore` refuses another's)."""
        return {"site": self.spec.name, "sensors": list(self.spec.names()),
                "accuracy": [s.accuracy for s in self.spec.sensors],
                "thresholds": dataclasses.asdict(self.th), "last_start": self._last_start,
                "states": {n: s.snapshot() for n, s in self._states.items()},
                "drift": [[a, b, t.snapshot()] for (a, b), t in self._drift.items()],
                "replay": self._replay.snapshot(), "copy": self._copy.snapshot(),
                "runs": {n: [None if math.isnan(v) else v, k]
                         for n, (v, k) in self._runs.items()}}

    @classmethod
    def restore(cls, spec: SiteSpec, th: Thresholds, saved: Mapping[str, Any]
                ) -> SiteValidator:
        """A validator continuing from ``saved`` (a :meth:`snapshot`).

        Raises ValueError if it is of another site, other sensors or other settings, or
        not a snapshot at all.
        """
        validator = cls(spec, th)
        try:
            if (saved["site"], saved["sensors"], saved["accuracy"], saved["thresholds"]) != (
                    spec.name, list(spec.names()), [s.accuracy for s in spec.sensors],
                    dataclasses.asdict(th)):
                raise ValueError("it is of another site, other sensors or other settings")
            last = saved["last_start"]
            validator._last_start = None if last is None else int(last)
            for name, state in validator._states.items():
                state.restore(saved["states"][name])
            for a, b, points in saved["drift"]:
                validator._drift[a, b].restore(points)
            validator._replay.restore(saved["replay"])
            validator._copy.restore(saved["copy"])
            validator._runs = {n: (math.nan if v is None else float(v), int(k))
                               for n, (v, k) in saved["runs"].items()}
            if set(validator._runs) != set(spec.names()):
                raise ValueError("sensors differ")
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a validator snapshot ({exc!r})") from None
        return validator

    def state(self, sensor: str) -> State:
        """The current state of ``sensor``; KeyError if the site has no such sensor."""
        return self._states[sensor].state

    def judge(self, start_s: int, readings: Mapping[str, Iterable[tuple[float, float]]]
              ) -> WindowVerdict:
        """Judge the window starting at ``start_s`` from ``{sensor: [(time_s, value)]}``.

        Raises ValueError if ``start_s`` is not on a window boundary or not after the last.
        """
        th = self.th
        if start_s % th.window_s or (self._last_start is not None
                                     and start_s <= self._last_start):
            raise ValueError("windows must start on a boundary and come in order")
        self._last_start = start_s
        first, count = start_s // th.bucket_s, th.window_s // th.bucket_s
        known = {name: readings.get(name, ()) for name in self.spec.names()}
        buckets = bucketize(known, th.bucket_s, first, count)
        trusted_before = self._trusted()
        quorum = [s for s in trusted_before if len(buckets[s]) >= th.min_readings]
        consensus = bucket_consensus(buckets, quorum, first, count)
        stats = {s: window_stats(buckets[s], consensus) for s in self.spec.names()}
        replays = self._replay.judge(buckets, first, count)
        # Copies are looked for in clean windows only: a step, spike or noise burst shared
        # through the consensus would read as shared noise (docs/QUALITY.md §3.3).
        clean = {s for s in self.spec.names() if stats[s].readings >= th.min_readings
                 and not window_reasons(stats[s], self._accuracy[s], th)}
        references = [s for s in quorum if s in clean]
        for copier, source in self._copy.judge(buckets, first, count, references,
                                               clean).items():
            replays.setdefault(copier, source)
        for name in self.spec.names():
            self._runs[name] = same_run(self._runs[name], buckets[name])
        drifting = self._track_drift(buckets, start_s / DAY_S)
        verdicts = tuple(self._judge_sensor(s, stats, quorum, replays, drifting)
                         for s in self.spec.names())
        means = [m for s in quorum if (m := stats[s].mean_value) is not None]
        return WindowVerdict(self.spec.name, self.spec.quantity, start_s, th.window_s,
                             median(means) if means else None, verdicts)

    def _trusted(self) -> list[str]:
        return [s for s in self.spec.names() if self._states[s].state != "faulty"]

    def _track_drift(self, buckets: Buckets, day: float) -> set[str]:
        """Feed each pair's mean difference; return the sensors drifting against most others.

        Pairs, not residuals against the consensus: with three sensors the median *is* a
        drifting sensor until it passes a neighbour, and its drift would show on the
        neighbour. A sensor drifts when its difference drifts against more than half of the
        sensors it could be compared with (and at least two); a healthy sensor drifts
        against the drifting one only.
        """
        th = self.th
        for (a, b), tracker in self._drift.items():
            common = [buckets[a][k] - buckets[b][k] for k in buckets[a] if k in buckets[b]]
            if len(common) >= th.min_readings:
                tracker.add(day, sum(common) / len(common))
        out: set[str] = set()
        for name in self.spec.names():
            pairs = [(pair, t) for pair, t in self._drift.items() if name in pair]
            fitted = [t for _, t in pairs if t.slope() is not None]
            against = sum(t.drifting(self._accuracy[name]) for t in fitted)
            if against >= 2 and 2 * against > len(fitted):
                out.add(name)
        return out

    def _reset_drift(self, sensor: str) -> None:
        for pair, tracker in self._drift.items():
            if sensor in pair:
                tracker.reset()

    def _judge_sensor(self, sensor: str, stats: Mapping[str, WindowStats], quorum: list[str],
                      replays: Mapping[str, str], drifting: set[str]) -> SensorVerdict:
        th, state, own = self.th, self._states[sensor], stats[sensor]
        before = state.state
        reasons: list[Reason] = []
        peers = [s for s in quorum if s != sensor]
        if own.readings < th.min_readings:
            reasons = state.missing()
        elif len(peers) < 2:
            if sensor in replays:
                reasons = ["replay"]
                state.judged(reasons)
            elif peers and own.residuals >= th.min_readings and \
                    not window_reasons(own, self._accuracy[sensor], th):
                state.judged([])  # agrees with its one trusted peer: good for both
            else:
                state.unjudged()  # alone, or two that disagree: who is wrong is unknown
        else:
            reasons = window_reasons(own, self._accuracy[sensor], th)
            if self._runs[sensor][1] >= th.stuck_min_readings and \
                    any(stats[p].distinct > 1 for p in peers):
                reasons.append("stuck")
            if sensor in drifting:
                reasons.append("drift")
            if sensor in replays:
                reasons.append("replay")
            if "stuck" in reasons and self._runs[sensor][1] >= th.stuck_faulty_readings:
                state.proven(reasons)  # the run itself spans the windows a verdict needs
            elif reasons or own.residuals >= th.min_readings:
                state.judged(reasons)
            else:
                state.unjudged()  # too few minutes with a consensus to call the window good
        entered = state.state != before and (
            state.state == "recovered" or (state.state == "faulty" and "drift" not in reasons))
        if entered:
            self._reset_drift(sensor)  # the fault's step must not read as a drift
        residual = own.mean_residual if own.residuals else None
        return SensorVerdict(sensor, state.state, tuple(reasons), own.readings, residual)
