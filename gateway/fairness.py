"""Fair, bounded ingest: one device can only ever delay itself.

Between paho's network thread and the verify pool sits a :class:`FairQueue`: one queue per
registered device (plus ONE shared queue for topics that name no registered device), served
by deficit round robin over payload bytes (Shreedhar and Varghese, 1995), so a device that
floods gets the same share of verification as any other active device and no more.

Memory is bounded by design (:class:`IngestBudget`): a device may hold at most
``device_messages`` messages and ``device_bytes`` bytes; the whole queue at most
``max_messages`` and ``max_bytes``. A message over its device's share is dropped at once;
when the whole queue is full, the newest message of the LONGEST queue is pushed out to make
room for a device that holds less (longest-queue drop), so a flood can never crowd out a
quiet device. Every drop is counted per reason and device; the caller acknowledges a
dropped QoS 1 message (an unacknowledged one would block the broker's in-flight window for
every device), and the device, which has no receipt for it, sends it again on its own timer.

:class:`SignatureBreaker` makes rejections cheap: after ``threshold`` bad signatures from a
device without one good signature in between, its messages are dropped without parsing or
verifying them for a cool-off that doubles with every trip, until a message it sends after
the cool-off carries a signature that verifies.

All state is keyed by registered device ids (the shared queue takes everything else), so it
is bounded by the number of enrolled devices, not by what an attacker sends.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum, unique
from typing import Generic, TypeVar

from protocol import reasons
from protocol.receipt import Outcome, Status

log = logging.getLogger(__name__)

T = TypeVar("T")
UNREGISTERED = b""  # the key of the one queue shared by topics naming no registered device


@unique
class IngestDrop(StrEnum):
    """Why a message was dropped before it was logged (before verification, except
    ``sequencer_backlog``).

    The value is the metrics label ``reason`` of ``ingest_dropped_total``; never on the
    wire: a dropped message gets no receipt, and the device sends it again.
    """

    OVER_SHARE = "over_share"                # the device holds its whole share of the queue
    QUARANTINED = "signature_quarantine"     # too many bad signatures in a row
    SEQUENCER_BACKLOG = "sequencer_backlog"  # shared store: the sequencer's queue is full


OVER_SHARE = IngestDrop.OVER_SHARE
QUARANTINED = IngestDrop.QUARANTINED
SEQUENCER_BACKLOG = IngestDrop.SEQUENCER_BACKLOG
DROP_REASONS = tuple(IngestDrop)

# Rejections that prove the record's signature verified (the rules after the signature).
_SIGNED_REJECTIONS = frozenset({
    reasons.EQUIVOCATION, reasons.CHAIN_MISMATCH, reasons.FUTURE_TIMESTAMP,
    reasons.USAGE_OVERLAP, reasons.USAGE_TOO_LONG, reasons.USAGE_FUTURE,
    reasons.RATE_MISMATCH, reasons.BAD_ROTATION,
})


@dataclass(frozen=True)
class IngestBudget:
    """Bounds of the ingest queue (docs/GATEWAY.md, "Fair share and bounded ingest").

    An agent stays far below the per-device bounds (``max_inflight_batches`` 8 batches of
    at most 64 KiB without a receipt); a device that floods, over QoS 0 or QoS 1, reaches
    them.
    """

    max_messages: int = 1024
    max_bytes: int = 64 * 1024 * 1024
    device_messages: int = 32
    device_bytes: int = 16 * 1024 * 1024
    quantum_bytes: int = 64 * 1024  # bytes a device may send per round
    message_overhead: int = 1024    # charged per message: an empty one is not free

    def cost(self, payload_bytes: int) -> int:
        return payload_bytes + self.message_overhead


@dataclass
class _Entry(Generic[T]):
    item: T
    cost: int
    arrived: float


@dataclass
class _DeviceQueue(Generic[T]):
    entries: deque[_Entry[T]] = field(default_factory=deque)
    bytes: int = 0
    deficit: int = 0


@dataclass(frozen=True)
class Backlog:
    """What is waiting (for /healthz)."""

    messages: int
    bytes: int
    oldest_arrived: float | None  # monotonic seconds, None when empty


class FairQueue(Generic[T]):
    """Per-device queues served by deficit round robin, bounded in messages and bytes.

    Thread-safe: paho's network thread offers, the sequencer thread pops.
    """

    def __init__(self, budget: IngestBudget) -> None:
        self.budget = budget
        self._cond = threading.Condition()
        self._queues: dict[bytes, _DeviceQueue[T]] = {}
        self._active: deque[bytes] = deque()  # devices with messages, in round-robin order
        self._granted = False  # the front device got its quantum for this visit
        self._woken = False
        self.messages = self.bytes = 0
        self.peak_messages = self.peak_bytes = 0

    def offer(self, device: bytes, item: T, payload_bytes: int,
              arrived: float) -> list[tuple[bytes, T]]:
        """Queue ``item`` for ``device``; return what was dropped to respect the budget.

        The result is empty, or holds the offered item itself (its device is over its
        share, or holds the most already), or items pushed out of the longest queue.
        """
        b, cost = self.budget, self.budget.cost(payload_bytes)
        with self._cond:
            queue = self._queues.get(device)
            held = (len(queue.entries), queue.bytes) if queue is not None else (0, 0)
            if held[0] >= b.device_messages or held[1] + cost > b.device_bytes:
                return [(device, item)]
            dropped: list[tuple[bytes, T]] = []
            while self.messages >= b.max_messages or self.bytes + cost > b.max_bytes:
                victim = self._longest()
                if victim is None or victim == device or \
                        self._queues[victim].bytes <= held[1] + cost:
                    return [*dropped, (device, item)]
                dropped.append((victim, self._pop_tail(victim)))
            if queue is None:
                queue = self._queues[device] = _DeviceQueue()
                self._active.append(device)
            queue.entries.append(_Entry(item, cost, arrived))
            queue.bytes += cost
            self.messages += 1
            self.bytes += cost
            self.peak_messages = max(self.peak_messages, self.messages)
            self.peak_bytes = max(self.peak_bytes, self.bytes)
            self._cond.notify_all()
            return dropped

    def pop(self) -> tuple[bytes, T] | None:
        """Return the next (device, item) in deficit-round-robin order, or None if empty."""
        with self._cond:
            while self._active:
                device = self._active[0]
                queue = self._queues[device]
                if not self._granted:
                    queue.deficit += self.budget.quantum_bytes
                    self._granted = True
                head = queue.entries[0]
                if queue.deficit >= head.cost:
                    queue.deficit -= head.cost
                    queue.entries.popleft()
                    self._took(device, queue, head.cost)
                    return device, head.item
                self._active.rotate(-1)
                self._granted = False
            return None

    def drain(self, device: bytes) -> list[T]:
        """Remove and return everything queued for ``device``."""
        with self._cond:
            queue = self._queues.get(device)
            if queue is None:
                return []
            items = [e.item for e in queue.entries]
            self.messages -= len(queue.entries)
            self.bytes -= queue.bytes
            queue.entries.clear()
            queue.bytes = 0
            self._forget(device)
            return items

    def wait(self, timeout: float) -> None:
        """Block until something is queued, :meth:`wake` is called, or ``timeout`` passes."""
        with self._cond:
            if not self.messages and not self._woken:
                self._cond.wait(timeout)
            self._woken = False

    def wake(self) -> None:
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def backlog(self) -> Backlog:
        with self._cond:
            heads = [q.entries[0].arrived for q in self._queues.values() if q.entries]
            return Backlog(self.messages, self.bytes, min(heads) if heads else None)

    def held_by(self, device: bytes) -> int:
        """Messages queued for ``device``."""
        with self._cond:
            queue = self._queues.get(device)
            return len(queue.entries) if queue is not None else 0

    # --- internals (lock held) ------------------------------------------------------------

    def _longest(self) -> bytes | None:
        if not self._queues:
            return None
        return max(self._queues, key=lambda d: self._queues[d].bytes)

    def _pop_tail(self, device: bytes) -> T:
        queue = self._queues[device]
        entry = queue.entries.pop()
        self._took(device, queue, entry.cost)
        return entry.item

    def _took(self, device: bytes, queue: _DeviceQueue[T], cost: int) -> None:
        queue.bytes -= cost
        self.messages -= 1
        self.bytes -= cost
        if not queue.entries:
            self._forget(device)

    def _forget(self, device: bytes) -> None:
        del self._queues[device]
        if self._active and self._active[0] == device:
            self._granted = False
        self._active.remove(device)


@dataclass
class _Suspicion:
    bad_in_a_row: int = 0
    trips: int = 0
    until: float = 0.0


class SignatureBreaker:
    """Per-device count of bad signatures in a row; trips into a growing quarantine."""

    def __init__(self, monotonic: Callable[[], float], *, threshold: int = 256,
                 cooloff_s: float = 10.0, max_cooloff_s: float = 600.0) -> None:
        self._monotonic = monotonic
        self.threshold, self.cooloff_s, self.max_cooloff_s = threshold, cooloff_s, max_cooloff_s
        self._lock = threading.Lock()
        self._devices: dict[bytes, _Suspicion] = {}  # only devices that sent bad signatures

    def blocked(self, device: bytes) -> bool:
        """Whether ``device`` is in quarantine now."""
        with self._lock:
            s = self._devices.get(device)
            return s is not None and s.until > self._monotonic()

    def quarantined(self) -> int:
        """How many devices are in quarantine now."""
        now = self._monotonic()
        with self._lock:
            return sum(1 for s in self._devices.values() if s.until > now)

    def observe(self, device: bytes, outcomes: Iterable[Outcome]) -> float | None:
        """Account one processed batch of ``device``; return the cool-off if it tripped now.

        Only called for registered devices: a ``bad_signature`` needs a registered signer
        equal to the topic's device, so this state is bounded by the enrolled devices.
        """
        with self._lock:
            s = self._devices.get(device)
            for outcome in outcomes:
                if outcome.reason == reasons.BAD_SIGNATURE:
                    s = s or self._devices.setdefault(device, _Suspicion())
                    s.bad_in_a_row += 1
                elif s is not None and _signature_verified(outcome):
                    del self._devices[device]  # it behaves again: forget everything
                    s = None
            if s is None or s.bad_in_a_row < self.threshold:
                return None
            s.bad_in_a_row = 0
            s.trips += 1
            cooloff = min(self.max_cooloff_s, self.cooloff_s * float(1 << min(s.trips - 1, 30)))
            s.until = self._monotonic() + cooloff
            return cooloff


def _signature_verified(outcome: Outcome) -> bool:
    if outcome.status in (Status.ACCEPTED, Status.DUPLICATE):
        return True
    return outcome.reason in _SIGNED_REJECTIONS


class ThrottledLog:
    """Logs one line per key per interval, with the number of events it stands for."""

    def __init__(self, monotonic: Callable[[], float], interval_s: float = 60.0) -> None:
        self._monotonic, self._interval = monotonic, interval_s
        self._lock = threading.Lock()
        self._last: dict[tuple[bytes, str], float] = {}
        self._pending: dict[tuple[bytes, str], int] = {}

    def event(self, device: bytes, what: str, count: int = 1) -> int | None:
        """Count ``count`` events; return how many to report now, or None to stay quiet.

        Keys are (registered device or UNREGISTERED, a fixed word), so this is bounded.
        """
        key = (device, what)
        now = self._monotonic()
        with self._lock:
            total = self._pending.pop(key, 0) + count
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._pending[key] = total
                return None
            self._last[key] = now
            return total


def device_label(device: bytes) -> str:
    """The metrics label of a queue key."""
    return device.hex() if device else "unregistered"
