"""Signed checkpoint notes of a growing log, for the anchor tests (one copy for both suites)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from gateway.gatewaykey import GatewayKey
from protocol.checkpoint import Checkpoint


@dataclass
class Notes:
    """Signed checkpoint notes of a growing log, the way the checkpointer makes them."""

    key: GatewayKey
    rng: random.Random
    size: int = 0

    def next(self, grow: int = 3) -> str:
        """The next checkpoint, ``grow`` leaves larger (0 at first: the empty checkpoint)."""
        self.size += grow
        return Checkpoint(self.key.name, self.size, self.rng.randbytes(32),
                          (f"prev {'A' * 43}=",)).sign(self.key.note_signer)


def make_notes() -> Notes:
    """A fresh, seeded series under a new gateway key."""
    return Notes(GatewayKey.generate("gateway.test/edgeproof"), random.Random(6))
