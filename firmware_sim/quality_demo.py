"""``edgeproof-sim quality``: the example sites' sensors through the validator, offline.

Simulates each site of a sites file (``examples/quality-sites.toml``: a living room whose
third DHT22 reads 1.5 °C high, a hall whose humidity sensors take every other fault in
turn) at one reading a minute, judges every 10-minute window with
:class:`validator.SiteValidator`, and reports each change of a sensor's state with the
reasons, and which sensors were faulty at some point: the miscalibrated one is caught
within the hour and its honest neighbours never are.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from firmware_sim.sites import SimSite, SiteRun
from validator import SensorSpec, SiteSpec, SiteValidator, Thresholds


@dataclass(frozen=True)
class Change:
    """A sensor's state changed at the end of the window starting ``start_s``."""

    site: str
    sensor: str
    start_s: int
    before: str
    after: str
    reasons: tuple[str, ...]


def changes(site: SimSite, hours: float, seed: int) -> Iterator[Change]:
    """Every state change of the site's sensors over ``hours`` simulated hours."""
    th = Thresholds()
    run = SiteRun(site, seed)
    validator = SiteValidator(SiteSpec(site.name, site.quantity, tuple(
        SensorSpec(s.name, s.accuracy) for s in site.sensors)), th)
    states = {s.name: "healthy" for s in site.sensors}
    for w in range(int(hours * 3600) // th.window_s):
        readings: dict[str, list[tuple[float, float]]] = {s.name: [] for s in site.sensors}
        for m in range(th.window_s // 60):
            t = float(w * th.window_s + m * 60)
            for name, value in run.read(t).items():
                if value is not None:
                    readings[name].append((t, value))
        for verdict in validator.judge(w * th.window_s, readings).sensors:
            if verdict.state != states[verdict.sensor]:
                yield Change(site.name, verdict.sensor, w * th.window_s,
                             states[verdict.sensor], verdict.state, verdict.reasons)
                states[verdict.sensor] = verdict.state
