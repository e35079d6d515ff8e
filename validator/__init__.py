"""Quality of co-located sensors: a robust consensus per time window and a state per
sensor (healthy, suspect, faulty, recovered), with detectors for bias, drift, stuck
values, excess noise, spikes, long dropouts and replayed (copied) values.

Pure code over plain numbers: :class:`~validator.site.SiteValidator` takes a window's
readings and returns a :class:`~validator.model.WindowVerdict`. Imports ``protocol`` (and
``osutil`` for its I/O parts) only. docs/QUALITY.md describes and argues the algorithm.
"""

from validator.model import (
    FLAGGED,
    REASONS,
    STATES,
    SensorSpec,
    SensorVerdict,
    SiteSpec,
    Thresholds,
    WindowVerdict,
)
from validator.site import SiteValidator

__all__ = ["FLAGGED", "REASONS", "STATES", "SensorSpec", "SensorVerdict", "SiteSpec",
           "SiteValidator", "Thresholds", "WindowVerdict"]
