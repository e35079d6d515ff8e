"""What the HTTP API reads from (:class:`ApiContext`), shared by its route modules.

:func:`gateway.api.create_app` builds the app from one of these; the dashboard's routes
(:mod:`gateway.dashboard`) read the same one. The gateway service fills it in; it holds no
state of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.contracts import DocumentDesk
from gateway.history import History
from gateway.metrics import GatewayMetrics
from gateway.payout import PayoutWorker
from gateway.store import LogStore
from protocol.keys import Secret


@dataclass(frozen=True)
class ApiContext:
    """What the API reads from: the store, the metrics, the keys, a clock."""

    store: LogStore
    metrics: GatewayMetrics
    verifier_key: str
    admin_token: Secret
    wall_ms: Callable[[], int]
    health: Callable[[], dict[str, object]]
    # gateway.anchor.Anchor.lookup: where a checkpoint was anchored on a chain, or None.
    anchor_lookup: Callable[[int | None], dict[str, object] | None] = lambda size: None
    # gateway.anchor.Anchor.listing: chain anchors after a tree size, or None (local).
    anchor_listing: Callable[[int, int], list[dict[str, object]] | None] = \
        lambda after_size, limit: None
    # gateway.contracts.DocumentDesk: checks and logs submitted documents (None: refused).
    desk: DocumentDesk | None = None
    payout: PayoutWorker | None = None  # [payout] configured: epochs, wallets, proofs
    # The dashboard's time series (gateway.history), and whether a device is quarantined now.
    history: History | None = None
    quarantined: Callable[[bytes], bool] = lambda device_id: False
