"""Checkpoints: signed tree heads of the gateway's log (C2SP tlog-checkpoint signed notes).

Only the sequencer thread calls :meth:`Checkpointer.issue`, between batches, so a
checkpoint is always computed from one committed state of the append-only log: its size
never shrinks and every checkpoint is consistent with every earlier one. A checkpoint is
persisted (``synchronous=FULL``) before it is anchored, put in a receipt or served.

Each note's text is::

    <origin = the gateway key's name>
    <tree size>
    <base64 root hash>
    prev <base64 SHA-256 of the previous signed note; 32 zero bytes for the first>
    balances <base64 SHA-256 of the canonical balances table>

The canonical balances table is the deterministic CBOR (:mod:`protocol.cbor`) array
``[[owner, balance_micro], ...]`` sorted by the owner's UTF-8 bytes, one entry per owner
with a registered device; it is stored with the checkpoint and served by
``GET /v1/balances``.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Callable

from gateway.anchor import Anchor
from gateway.config import CheckpointConfig
from gateway.gatewaykey import GatewayKey
from gateway.metrics import GatewayMetrics
from gateway.store import Balance, LogStore, NotSequencer, StoredCheckpoint
from protocol import cbor
from protocol.checkpoint import Checkpoint, checkpoint_hash
from protocol.errors import StorageError, TransportError
from protocol.record import GENESIS_PREV

log = logging.getLogger(__name__)


def canonical_balances(balances: list[Balance]) -> bytes:
    """Return the deterministic CBOR of the balances table (the bytes a checkpoint covers)."""
    ordered = sorted(balances, key=lambda b: b.owner.encode("utf-8"))
    return cbor.encode([[b.owner, b.balance_micro] for b in ordered])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# A checkpoint covers the whole balances table, so its cost grows with the owners (254 ms
# of CPU at 100,000 owners: bench/checkpoint_bench.py). Checkpoints by leaf count are
# spaced so that they take at most this share of the sequencer's time; the interval still
# bounds how long any leaf waits for one.
MAX_CHECKPOINT_SHARE = 0.05


class Checkpointer:
    """Issues, persists and anchors checkpoints for one log."""

    def __init__(self, store: LogStore, key: GatewayKey, anchor: Anchor, *,
                 config: CheckpointConfig, metrics: GatewayMetrics,
                 wall_ms: Callable[[], int], monotonic: Callable[[], float]) -> None:
        """Load the latest checkpoint and check it still matches the log.

        Raises StorageError if the stored checkpoint disagrees with the stored tree (the
        gateway must not sign anything on top of a log it cannot vouch for).
        """
        self._store, self._key, self._anchor = store, key, anchor
        self._config, self._metrics = config, metrics
        self._wall_ms, self._monotonic = wall_ms, monotonic
        self._latest: StoredCheckpoint | None = None
        self._cost_s = 0.0  # how long the latest issue() took
        self._deferred = False  # grown by every_leaves, but too soon after the last one
        self.reload()

    def reload(self) -> None:
        """Read the latest checkpoint from the store again (a new sequencer of a shared
        store, gateway.cluster); StorageError if it disagrees with the stored tree."""
        self._latest = self._store.latest_checkpoint()
        self._issued_at = self._monotonic()
        if self._latest is not None:
            self._check_latest(self._latest)
            self._metrics.checkpoint_size.set(self._latest.size)
            # Hand it over again (anchors are idempotent per note): a crash between
            # persisting a checkpoint and anchoring it must not leave it unanchored.
            self._anchor_checkpoint(self._latest)

    def _check_latest(self, latest: StoredCheckpoint) -> None:
        size = self._store.size()
        if latest.size > size or self._store.root(latest.size) != latest.root_hash:
            raise StorageError(f"latest checkpoint (size {latest.size}) does not match the "
                               f"stored log (size {size}); refusing to continue")

    @property
    def latest(self) -> StoredCheckpoint | None:
        """The newest persisted checkpoint."""
        return self._latest

    def latest_note(self) -> str:
        """The newest signed note (issuing the first one if there is none yet)."""
        if self._latest is None:
            self.issue()
        assert self._latest is not None
        return self._latest.note

    def due(self) -> bool:
        """Whether the log grew enough, or long enough ago, to sign a new checkpoint.

        Grown by ``every_leaves`` is enough only once the last checkpoint's own cost was
        repaid (``MAX_CHECKPOINT_SHARE``): a fleet with many owners gets fewer of them.
        """
        if self._latest is None:
            return True
        grown = self._store.size() - self._latest.size
        if grown <= 0:
            return False
        waited = self._monotonic() - self._issued_at
        if waited >= self._config.interval_s:
            return True
        self._deferred = grown >= self._config.every_leaves
        return self._deferred and waited >= self._spacing_s()

    def seconds_until_due(self) -> float:
        """How long the sequencer may sleep before a checkpoint may be due."""
        waited = self._monotonic() - self._issued_at
        until = self._config.interval_s - waited
        if self._deferred:
            until = min(until, self._spacing_s() - waited)
        return max(0.0, until)

    def _spacing_s(self) -> float:
        return self._cost_s / MAX_CHECKPOINT_SHARE

    def issue(self) -> StoredCheckpoint | None:
        """Sign, persist and anchor a checkpoint of the current log.

        Returns it, or None if the log has not grown since the last one. Raises
        StorageError if it cannot be persisted (then it was never published).
        """
        size = self._store.size()
        if self._latest is not None and size <= self._latest.size:
            return None
        started = self._monotonic()
        balances = canonical_balances(self._store.balances())
        prev = GENESIS_PREV if self._latest is None else checkpoint_hash(self._latest.note)
        root = self._store.root(size)
        balances_hash = hashlib.sha256(balances).digest()
        body = Checkpoint(self._key.name, size, root,
                          (f"prev {_b64(prev)}", f"balances {_b64(balances_hash)}"))
        note = body.sign(self._key.note_signer)
        stored = self._store.add_checkpoint(size, root, note, self._wall_ms(), balances)
        self._latest, self._issued_at = stored, self._monotonic()
        self._metrics.checkpoints.inc()
        self._metrics.checkpoint_size.set(size)
        self._anchor_checkpoint(stored)
        self._cost_s, self._deferred = self._monotonic() - started, False
        self._metrics.checkpoint_seconds.set(self._cost_s)
        return stored

    def _anchor_checkpoint(self, stored: StoredCheckpoint) -> None:
        try:
            result = self._anchor.anchor(stored.note)
        except NotSequencer:  # a shared log's queue: the sequencer hands it over (reload)
            log.debug("anchor of checkpoint %d left to the sequencer", stored.number)
            return
        except TransportError as exc:
            # The checkpoint is already persisted and the chain of notes anchors it locally;
            # a chain backend owns its retries (issue 6).
            log.warning("anchor %s failed for checkpoint %d: %s", self._anchor.name,
                        stored.number, exc)
            return
        if result is not None:
            try:
                self._store.add_anchor(stored.number, result.backend, result.reference,
                                       result.anchored_ms)
            except NotSequencer:  # only the sequencer of a shared store writes; it anchors
                log.debug("anchor of checkpoint %d left to the sequencer", stored.number)
