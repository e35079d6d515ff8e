"""Usage metering and credit: on-time on the monotonic clock, claimed in two phases.

See docs/AGENT.md, "Usage and credit", and :mod:`agent.credits.meter`.
"""

from agent.credits.meter import MeterDamaged, UsageClaim, UsageMeter

__all__ = ["MeterDamaged", "UsageClaim", "UsageMeter"]
