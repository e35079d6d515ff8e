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
An ``ethereum`` backend (issue 6) implements the same interface.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from protocol.checkpoint import checkpoint_hash


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

        Raises :class:`protocol.errors.TransportError` for a transient failure the caller
        may retry; never blocks for long.
        """
        ...


class LocalAnchor:
    """The signed-checkpoint chain itself (each note names its predecessor's hash)."""

    name = "local"

    def __init__(self, wall_ms: Callable[[], int]) -> None:
        """``wall_ms`` is the clock that stamps results."""
        self._wall_ms = wall_ms

    def anchor(self, checkpoint_note: str) -> AnchorResult:
        """Return the note's hash as its reference; the chain needs nothing else."""
        reference = base64.b64encode(checkpoint_hash(checkpoint_note)).decode("ascii")
        return AnchorResult(self.name, reference, self._wall_ms())
