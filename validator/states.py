"""A sensor's state over windows: healthy, suspect, faulty, recovered.

One bad window makes a sensor *suspect*, never *faulty*: it turns faulty when
``faulty_bad`` of its last ``faulty_of`` judged windows were bad. A faulty sensor is
*recovered* after ``faulty_clear`` good windows running, and healthy again after a further
``recovered_clear``; a bad window while recovered makes it suspect, with its earlier bad
windows still counted. Windows that could not be judged (too few readings, too few
trusted peers, or too few minutes with a consensus) change nothing, except that
``dropout_windows`` windows running without enough readings make the sensor faulty at once
("dropout": the silence is the evidence), and so does one value repeated
``stuck_faulty_readings`` times running (:meth:`SensorState.proven`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

from validator.model import STATES, Reason, State, Thresholds


class SensorState:
    """The state machine of one sensor (docs/QUALITY.md §2)."""

    def __init__(self, th: Thresholds) -> None:
        self._th = th
        self.state: State = "healthy"
        self._recent: deque[bool] = deque(maxlen=th.faulty_of)
        self._good_run = 0
        self._missing_run = 0
        self._on_probation = False

    def snapshot(self) -> dict[str, object]:
        """The machine's state as JSON values (:meth:`restore` takes it back)."""
        return {
            "state": self.state,
            "recent": list(self._recent),
            "good_run": self._good_run,
            "missing_run": self._missing_run,
            "on_probation": self._on_probation,
        }

    def restore(self, saved: Mapping[str, Any]) -> None:
        """Take back a :meth:`snapshot`; ValueError if it is not one."""
        state = saved["state"]
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        self.state = state
        self._recent.clear()
        self._recent.extend(bool(x) for x in saved["recent"])
        self._good_run, self._missing_run = int(saved["good_run"]), int(saved["missing_run"])
        self._on_probation = bool(saved["on_probation"])

    def missing(self) -> list[Reason]:
        """A window without enough readings; returns ["dropout"] once it has lasted."""
        self._missing_run += 1
        if self._missing_run >= self._th.dropout_windows:
            # The silence itself is the evidence, over dropout_windows windows already.
            self._judged(bad=True)
            self.state = "faulty"
            self._on_probation = True
            return ["dropout"]
        return []

    def proven(self, reasons: list[Reason]) -> None:
        """A bad window whose evidence already spans ``faulty_bad`` windows (a value stuck
        for ``stuck_faulty_readings`` readings): faulty at once, like a long dropout."""
        self.judged(reasons)
        self.state = "faulty"
        self._on_probation = True

    def unjudged(self) -> None:
        """A window with readings but no quorum of trusted peers to judge them against."""
        self._missing_run = 0

    def judged(self, reasons: list[Reason]) -> None:
        """A window judged against the consensus; bad if it has any reason."""
        self._missing_run = 0
        self._judged(bad=bool(reasons))

    def _judged(self, *, bad: bool) -> None:
        th = self._th
        self._recent.append(bad)
        self._good_run = 0 if bad else self._good_run + 1
        if bad:
            if sum(self._recent) >= th.faulty_bad:
                self.state = "faulty"
                self._on_probation = True
            elif self.state != "faulty":
                self.state = "suspect"
            return
        if self.state == "faulty" and self._good_run >= th.faulty_clear:
            self.state = "recovered"
            self._good_run = 0
        elif self.state == "suspect" and self._good_run >= th.suspect_clear:
            self.state = "recovered" if self._on_probation else "healthy"
            self._good_run = 0
        elif self.state == "recovered" and self._good_run >= th.recovered_clear:
            self.state = "healthy"
            self._on_probation = False
