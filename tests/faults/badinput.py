"""Generated hostile messages for one provisioned device ("mallory"), each with what the
gateway must answer.

Every message is one MQTT payload for mallory's own records topic (the only one its ACL
lets it write). Each yields exactly ONE outcome: either the whole message is refused (its
receipt names no seq, only the payload's hash) or it is a batch of one record. ``allowed``
is the set of reason codes that are a correct answer; replays of mallory's own logged
batches are the only messages whose answer is ``duplicate`` rather than a rejection.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass

from protocol import cbor
from protocol.batch import MAX_BATCH_BYTES, Batch
from protocol.keys import Secret, SigningKey
from protocol.mqtt_sizes import PROPERTIES_ALLOWANCE_BYTES
from protocol.receipt import hash_prefix
from protocol.record import KeyRotation, Measurement, Record, Usage, Values
from protocol.signed import sign_record

DUPLICATE = "duplicate"
ANY_REJECTION = frozenset({"malformed", "too_large", "bad_signature", "unknown_device",
                           "wrong_topic"})


@dataclass(frozen=True)
class Hostile:
    """One message and the answers that are right for it."""

    kind: str
    payload: bytes
    allowed: frozenset[str]
    batch_id: int | None  # None: the gateway cannot read a batch id (refused whole)

    @property
    def hash16(self) -> bytes:
        return hash_prefix(self.payload)


@dataclass
class Mallory:
    """A provisioned device that turned hostile: its key, id, and its logged history."""

    key: SigningKey
    device_id: bytes
    rate: int
    history: list[bytes]  # its own honest records, logged in order (seq 0..n-1)
    honest_batches: list[bytes]  # the batches that carried them
    foreign: list[bytes]  # another device's logged records
    other_device: bytes
    now_ms: int

    def record(self, seq: int, prev: bytes, body: object = None, *, stream: str = "cpu",
               synced: bool = False, wall_ms: int | None = None, mono_ms: int = 10**7,
               key: SigningKey | None = None, kid: bytes | None = None) -> bytes:
        body = body or Values((Measurement(seq, -1, "Cel"),))
        record = Record(1, seq, prev, wall_ms or self.now_ms, synced, mono_ms, stream,
                        body)  # type: ignore[arg-type]
        return sign_record(record, kid or self.device_id, key or self.key).raw

    @property
    def head_prev(self) -> bytes:
        return hashlib.sha256(self.history[-1]).digest()


class HostileFactory:
    """Makes hostile messages of every kind from a seeded RNG."""

    def __init__(self, mallory: Mallory, rng: random.Random) -> None:
        self.m, self.rng = mallory, rng
        self._batch = 1 << 40

    def _one(self, kind: str, raw: bytes, allowed: frozenset[str] | set[str]) -> Hostile:
        self._batch += 1
        return Hostile(kind, Batch(self._batch, (raw,)).to_cbor(), frozenset(allowed),
                       self._batch)

    def _whole(self, kind: str, payload: bytes, allowed: set[str]) -> Hostile:
        return Hostile(kind, payload, frozenset(allowed), None)

    def make(self, counts: dict[str, int]) -> list[Hostile]:
        """``counts[kind]`` messages of each kind, shuffled together."""
        out = [msg for kind, n in counts.items() for msg, _ in zip(
            getattr(self, f"_{kind}")(), range(n), strict=False)]
        self.rng.shuffle(out)
        return out

    # --- kinds (each an endless generator) -------------------------------------------------

    def _random_bytes(self) -> Iterator[Hostile]:
        while True:
            # A random CBOR head may announce a string or array beyond a cap: too_large.
            yield self._whole("random_bytes", self.rng.randbytes(self.rng.randint(0, 3000)),
                              {"malformed", "too_large"})

    def _truncated(self) -> Iterator[Hostile]:
        while True:
            whole = self.rng.choice(self.m.honest_batches)
            yield self._whole("truncated", whole[:self.rng.randrange(len(whole))], {"malformed"})

    def _nested(self) -> Iterator[Hostile]:
        while True:
            deep = b"\x81" * self.rng.randint(3, 20_000) + b"\x00"
            if self.rng.random() < 0.5:
                yield self._whole("nested", deep, {"malformed"})
            else:  # deep CBOR where a signed record should be
                yield self._one("nested", deep[:4000], {"malformed"})

    def _oversize(self) -> Iterator[Hostile]:
        while True:
            if self.rng.random() < 0.5:  # over the batch cap (512 KiB)
                # ...but within the broker's packet cap, so the gateway sees it; a larger
                # packet is refused by the broker (test_provision_broker_attacks.py).
                size = self.rng.randint(MAX_BATCH_BYTES + 1,
                                        MAX_BATCH_BYTES + PROPERTIES_ALLOWANCE_BYTES)
                yield self._whole("oversize", self.rng.randbytes(size), {"too_large"})
            else:  # a batch whose one record is over the record cap
                big = cbor.encode(self.rng.randbytes(self.rng.randint(4400, 60_000)))
                self._batch += 1
                payload = cbor.encode({1: 1, 2: self._batch, 3: [big]})
                yield self._whole("oversize", payload, {"too_large"})

    def _wrong_key(self) -> Iterator[Hostile]:
        while True:
            forger = SigningKey(Secret(self.rng.randbytes(32)))
            seq = self.rng.randrange(0, 5000)
            yield self._one("wrong_key", self.m.record(seq, self.rng.randbytes(32), key=forger),
                            {"bad_signature"})

    def _bit_flip(self) -> Iterator[Hostile]:
        while True:
            raw = bytearray(self.m.record(len(self.m.history), self.m.head_prev))
            bit = self.rng.randrange(len(raw) * 8)
            raw[bit // 8] ^= 1 << (bit % 8)
            yield self._one("bit_flip", bytes(raw), ANY_REJECTION)

    def _wrong_kid(self) -> Iterator[Hostile]:
        while True:
            if self.rng.random() < 0.5:  # another registered device's id
                kid, why = self.m.other_device, "wrong_topic"
            else:
                kid, why = self.rng.randbytes(16), "unknown_device"
            yield self._one("wrong_kid", self.m.record(self.rng.randrange(5000),
                                                       self.rng.randbytes(32), kid=kid), {why})

    def _replay(self) -> Iterator[Hostile]:
        while True:
            if self.rng.random() < 0.5:  # mallory's own logged batches: duplicates
                yield Hostile("replay", self.rng.choice(self.m.honest_batches),
                              frozenset({DUPLICATE}), -1)
            else:  # another device's logged record on mallory's topic
                yield self._one("replay", self.rng.choice(self.m.foreign), {"wrong_topic"})

    def _forged(self) -> Iterator[Hostile]:
        """Signed with mallory's real key, and still against the rules."""
        m, nxt, prev = self.m, len(self.m.history), self.m.head_prev
        day = 86_400_000
        makers = [
            ("equivocation", lambda: m.record(self.rng.randrange(nxt), bytes(32),
                                              Values((Measurement(-self.rng.randrange(10**6),
                                                                  0, "Cel"),)))),
            ("chain_mismatch", lambda: m.record(nxt, self.rng.randbytes(32))),
            ("future_timestamp", lambda: m.record(nxt, prev, synced=True,
                                                  wall_ms=m.now_ms + day)),
            ("rate_mismatch", lambda: m.record(nxt, prev, Usage(0, 1000, 500, m.rate + 1),
                                               stream="usage")),
            ("usage_future", lambda: m.record(nxt, prev, Usage(0, 10**8, 500, m.rate),
                                              stream="usage")),
            ("usage_too_long", lambda: m.record(nxt, prev, Usage(0, 1000, 5000, m.rate),
                                                stream="usage")),
            ("bad_rotation", lambda: m.record(nxt, prev, KeyRotation(m.key.public_key),
                                              stream="rotation")),
        ]
        while True:
            reason, make = self.rng.choice(makers)
            yield self._one("forged", make(), {reason})
