"""Anchors: where the gateway's checkpoints are committed beyond its own database.

An :class:`Anchor` receives every checkpoint after it is persisted and before the next one
is issued. ``anchor()`` returns an :class:`AnchorResult` once the checkpoint is anchored,
or ``None`` when a backend accepted it for later (a chain transaction still pending); a
backend that queues owns its retries, and the gateway records each result it gets in the
store's ``anchors`` table.

The default backend, :class:`LocalAnchor`, is the chain of signed checkpoints itself: each
checkpoint carries ``prev <base64(SHA-256 of the previous signed note)>``
(:func:`protocol.checkpoint.checkpoint_hash`), so rewriting any earlier checkpoint breaks
every later one. Its "anchoring" is therefore immediate, and its reference is that hash.
:class:`gateway.eth_anchor.EthereumAnchor` (``anchor.backend = "ethereum"``) queues each
checkpoint and anchors the latest one per interval on its own thread; it keeps the
transaction hash, block number and status in its own queue (a file, or the shared
PostgreSQL database of a shared log) and serves them through ``lookup``
(``GET /v1/anchors``). ``start``/``close`` bracket a backend's background work; a shared
log's sequencer also calls ``stop`` when it loses the lock and ``start`` when it takes over.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry

from gateway.config import GatewayConfig
from gateway.duty_tables import shared_store
from gateway.store import LogStore
from protocol.checkpoint import checkpoint_hash, checkpoint_size


@dataclass(frozen=True)
class AnchorResult:
    """Where a checkpoint was anchored."""

    backend: str  # "local", "ethereum", ...
    reference: str  # backend-specific: the note hash (local), a transaction hash (chain)
    anchored_ms: int


class Anchor(Protocol):
    """A place that commits to checkpoints."""

    name: str

    def anchor(self, checkpoint_note: str) -> AnchorResult | None:
        """Anchor one persisted checkpoint note; return the result, or None if queued.

        No backend anchors the empty checkpoint (size 0, signed at first start): it commits
        to no record; ``anchor`` returns None for it and records nothing.

        Raises :class:`protocol.errors.TransportError` for a transient failure the caller
        may retry; never blocks for long.
        """
        ...

    def start(self) -> None:
        """Begin background work (resuming anchors queued by an earlier run).

        Raises :class:`protocol.errors.ConfigError` if the target is misconfigured (for
        example a chain whose id differs from the configured one).
        """
        ...

    def stop(self) -> None:
        """Stop background work for now; :meth:`start` resumes it (a shared log's sequencer
        that lost the lock, gateway.cluster). Queued work stays persisted."""
        ...

    def close(self) -> None:
        """Stop background work; whatever is still queued stays persisted for the next run."""
        ...

    def lookup(self, min_size: int | None) -> dict[str, object] | None:
        """Where a checkpoint was anchored (``GET /v1/anchors``), as JSON, or None.

        ``min_size=None``: the latest anchored checkpoint; otherwise the earliest anchored
        checkpoint whose tree size is at least ``min_size`` (it covers those leaves).
        """
        ...

    def listing(self, after_size: int, limit: int) -> list[dict[str, object]] | None:
        """Up to ``limit`` anchors (as in ``lookup``) of checkpoints with tree size greater
        than ``after_size``, smallest first (``GET /v1/anchors/list``); None if the backend
        keeps no chain anchors (``local``)."""
        ...


class LocalAnchor:
    """The signed-checkpoint chain itself (each note names its predecessor's hash)."""

    name = "local"

    def __init__(self, wall_ms: Callable[[], int]) -> None:
        """``wall_ms`` is the clock that stamps results."""
        self._wall_ms = wall_ms

    def anchor(self, checkpoint_note: str) -> AnchorResult | None:
        """Return the note's hash as its reference; the chain needs nothing else.

        None for the empty checkpoint (size 0): it is the chain's start, not an anchor.
        """
        if checkpoint_size(checkpoint_note) == 0:
            return None
        reference = base64.b64encode(checkpoint_hash(checkpoint_note)).decode("ascii")
        return AnchorResult(self.name, reference, self._wall_ms())

    def start(self) -> None:
        """Nothing runs in the background."""

    def stop(self) -> None:
        """Nothing to stop."""

    def close(self) -> None:
        """Nothing to stop."""

    def lookup(self, min_size: int | None) -> None:
        """None: the local chain is served by ``GET /v1/checkpoints``."""
        return None

    def listing(self, after_size: int, limit: int) -> None:
        """None: the local chain is served by ``GET /v1/checkpoints``."""
        return None


def open_anchor(config: GatewayConfig, store: LogStore, wall_ms: Callable[[], int],
                monotonic: Callable[[], float], registry: CollectorRegistry) -> Anchor:
    """Build the configured backend (``anchor.backend``); ``start()`` is the caller's.

    The ethereum backend's queue is a file in the data directory, or tables of ``store``
    when the log is shared (``store.shared``: every process serves it, the sequencer works
    it). Raises KeyFileError/ConfigError/StorageError when the backend cannot be set up.
    """
    if config.ethereum is None:
        return LocalAnchor(wall_ms)
    # Imported here so a local-anchor gateway never loads eth-account.
    from gateway.eth_anchor import QUEUE_FILE, EthereumAnchor  # noqa: PLC0415
    from gateway.eth_queue import AnchorQueue  # noqa: PLC0415

    queue = AnchorQueue.in_store(shared_store(store)) if config.store.shared else \
        AnchorQueue.in_file(config.data_dir / QUEUE_FILE)
    try:
        return EthereumAnchor(config.ethereum, queue, wall_ms=wall_ms, monotonic=monotonic,
                              registry=registry)
    except BaseException:
        queue.close()
        raise
