"""The crash-safe outbox (SQLite, WAL, group commit) and the device's durable counters."""

from agent.outbox.model import (
    FULL_POLICIES,
    HeldOutcome,
    OutboxSettings,
    OutboxStats,
    ReceiptResult,
)
from agent.outbox.rows import read_stats, within_bytes
from agent.outbox.state import DeviceState
from agent.outbox.store import Build, GapSigner, Outbox
from osutil.sqlite import DatabaseCorrupt

__all__ = [
    "FULL_POLICIES",
    "Build",
    "DatabaseCorrupt",
    "DeviceState",
    "GapSigner",
    "HeldOutcome",
    "Outbox",
    "OutboxSettings",
    "OutboxStats",
    "ReceiptResult",
    "read_stats",
    "within_bytes",
]
