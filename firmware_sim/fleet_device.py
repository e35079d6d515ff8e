"""One lightweight simulated device of ``edgeproof-sim fleet``.

It does what an agent does on the wire, without an outbox database: builds real records
(``protocol.record``: boot, sequence number, chain hash, wall and monotonic time, values),
signs them with its own Ed25519 key, sends them in batches (``protocol.batch``) as QoS 1
messages on its own topic over its own MQTT connection and credential, and keeps every
record until a receipt that verifies under the gateway key says what became of it
(``protocol.receipt``). A batch without a receipt after ``receipt_timeout_s`` is sent
again; the gateway answers records it already holds as duplicates. Like the agent it only
publishes once its receipts subscription is acknowledged, so no receipt can be missed.

Its chain (boot, next sequence number, hash of the last record) is handed in and read back
by :mod:`firmware_sim.fleet`, which keeps it between runs so a sequence number is never
reused.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from osutil.mqtt import (
    AckTimeout,
    Connected,
    ConnectionLost,
    MqttClient,
    PubAck,
    Received,
    Refused,
    SubAck,
)
from protocol.batch import Batch, receipts_topic, records_topic
from protocol.errors import EdgeproofError, TransportError
from protocol.keys import SigningKey
from protocol.note import NoteVerifier
from protocol.receipt import HASH_PREFIX_BYTES, Receipt, Status
from protocol.record import Measurement, Record, Values
from protocol.signed import record_hash, sign_record

BACKOFF_MIN_S, BACKOFF_MAX_S = 0.5, 10.0


@dataclass
class Chain:
    """Where a device's record chain stands: its boot, next seq, and last record's hash."""

    boot: int
    next_seq: int
    prev: bytes


@dataclass(frozen=True)
class DeviceSettings:
    """How a simulated device behaves."""

    rate_hz: float = 1.0
    batch_interval_s: float = 1.0
    batch_max_records: int = 256
    receipt_timeout_s: float = 15.0
    refused_grace_s: float = 10.0  # a refused login is retried this long (broker reloading)


@dataclass
class _Pending:
    raw: bytes
    hash16: bytes
    created_s: float
    sent: bool = False


@dataclass
class _Inflight:
    seqs: tuple[int, ...]
    deadline_s: float


@dataclass
class DeviceCounters:
    """Everything that happened to one device's records, counted."""

    created: int = 0
    sent: int = 0
    resent: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    receipts: int = 0
    bad_receipts: int = 0
    puback_failures: int = 0
    puback_timeouts: int = 0
    connects: int = 0
    connection_losses: int = 0


class FleetDevice:
    """A simulated device; :meth:`step` is called from the fleet's one thread."""

    def __init__(self, name: str, device_id: bytes, key: SigningKey, *, chain: Chain,
                 link: MqttClient, gateway: NoteVerifier, settings: DeviceSettings,
                 rng: random.Random, wall_ms: Callable[[], int]) -> None:
        self.name, self.device_id, self.key, self.chain = name, device_id, key, chain
        self.link, self.gateway, self.settings = link, gateway, settings
        self.rng, self.wall_ms = rng, wall_ms
        self.state = "idle"  # idle -> connecting -> subscribing -> ready; failed is final
        self.error = ""
        self.ever_ready = False
        self.counters = DeviceCounters()
        self.latencies_ms: list[float] = []
        self._pending: dict[int, _Pending] = {}
        self._unsent: deque[int] = deque()
        self._inflight: dict[int, _Inflight] = {}
        self._batch_id = 0
        self._next_reading_s = 0.0
        self._next_batch_s = 0.0
        self._retry_at_s = 0.0
        self._backoff_s = BACKOFF_MIN_S
        self._started_s = 0.0
        self._producing = True
        self._topic, self._receipts = records_topic(device_id), receipts_topic(device_id)

    @property
    def outstanding(self) -> int:
        """Records not yet answered by a receipt."""
        return len(self._pending)

    def start(self, now_s: float) -> None:
        """Begin: readings and batches start at a random phase so devices do not align."""
        self._started_s = now_s
        self._next_reading_s = now_s + self.rng.uniform(0, 1 / self.settings.rate_hz)
        self._next_batch_s = now_s + self.rng.uniform(0, self.settings.batch_interval_s)

    def stop_producing(self) -> None:
        """No more readings; what is pending is still sent and receipted."""
        self._producing = False
        self._next_batch_s = 0.0

    # --- one step ------------------------------------------------------------------------

    def step(self, now_s: float) -> float:
        """Handle network events, take due readings, send due batches; return the next wake."""
        for event in self.link.take_events():
            self._on_event(event, now_s)
        if self.state == "failed":
            return now_s + 3600
        if self.state == "idle" and now_s >= self._retry_at_s:
            self._connect(now_s)
        while self._producing and now_s >= self._next_reading_s:
            self._take_reading(self._next_reading_s)
            self._next_reading_s += 1 / self.settings.rate_hz
        if self.state == "ready":
            self._expire(now_s)
            if now_s >= self._next_batch_s or len(self._unsent) >= self.settings.batch_max_records:
                self._send_batch(now_s)
                self._next_batch_s = now_s + self.settings.batch_interval_s
        wake = self._next_batch_s if self._unsent else now_s + 1.0
        if self._producing:
            wake = min(wake, self._next_reading_s)
        return wake

    def _connect(self, now_s: float) -> None:
        try:
            self.link.connect()
            self.state = "connecting"
            self.counters.connects += 1
        except TransportError as exc:
            self._retry(now_s, str(exc))

    def _retry(self, now_s: float, why: str) -> None:
        self.state, self.error = "idle", why
        self._retry_at_s = now_s + self._backoff_s * self.rng.uniform(0.8, 1.2)
        self._backoff_s = min(self._backoff_s * 2, BACKOFF_MAX_S)

    def _on_event(self, event: object, now_s: float) -> None:
        if isinstance(event, Connected):
            self.state, self._backoff_s = "subscribing", BACKOFF_MIN_S
            self.link.subscribe(self._receipts)
        elif isinstance(event, SubAck):
            if event.ok:
                # After a reconnect paho resends what the broker had not acknowledged, and
                # the persistent session keeps receipts queued; anything else lost is sent
                # again when its batch's receipt time-out passes.
                self.state, self.ever_ready = "ready", True
            else:
                self._fail(f"receipts subscription refused: {event.reason}")
        elif isinstance(event, Refused):
            if event.permanent and now_s - self._started_s > self.settings.refused_grace_s:
                self._fail(f"broker refused the login: {event.reason}")
            else:
                self._retry(now_s, event.reason)
        elif isinstance(event, ConnectionLost):
            self.counters.connection_losses += 1
            self._retry(now_s, event.reason)
        elif isinstance(event, PubAck) and not event.ok:
            self.counters.puback_failures += 1  # the receipt time-out resends the batch
        elif isinstance(event, AckTimeout):
            self.counters.puback_timeouts += 1  # likewise; counts a stalled connection
        elif isinstance(event, Received) and event.topic == self._receipts:
            self._on_receipt(event.payload, now_s)

    def _fail(self, why: str) -> None:
        self.state, self.error = "failed", why
        self.link.close()

    # --- records and batches ---------------------------------------------------------------

    def _take_reading(self, at_s: float) -> None:
        chain = self.chain
        temperature = round(210 + 30 * self.rng.random())  # 21.0 .. 24.0 °C
        humidity = round(400 + 100 * self.rng.random())  # 40.0 .. 50.0 %RH
        record = Record(boot=chain.boot, seq=chain.next_seq, prev=chain.prev,
                        wall_ms=self.wall_ms(), clock_synced=True, mono_ms=round(at_s * 1000),
                        stream="climate", body=Values((Measurement(temperature, -1, "Cel"),
                                                       Measurement(humidity, -1, "%RH"))))
        signed = sign_record(record, self.device_id, self.key)
        digest = record_hash(signed.raw)
        self._pending[chain.next_seq] = _Pending(signed.raw, digest[:HASH_PREFIX_BYTES], at_s)
        self._unsent.append(chain.next_seq)
        chain.next_seq, chain.prev = chain.next_seq + 1, digest
        self.counters.created += 1

    def _send_batch(self, now_s: float) -> None:
        seqs: list[int] = []
        while self._unsent and len(seqs) < self.settings.batch_max_records:
            seq = self._unsent.popleft()
            if seq in self._pending:  # a receipt may have answered it meanwhile
                seqs.append(seq)
        if not seqs:
            return
        self._batch_id += 1
        records = [self._pending[s] for s in seqs]
        try:
            self.link.publish(self._topic, Batch(self._batch_id,
                                                 tuple(r.raw for r in records)).to_cbor())
        except TransportError as exc:
            self._unsent.extendleft(reversed(seqs))
            self._retry(now_s, str(exc))
            return
        self._inflight[self._batch_id] = _Inflight(tuple(seqs),
                                                   now_s + self.settings.receipt_timeout_s)
        self.counters.batches += 1
        for r in records:
            if not r.sent:
                r.sent = True
                self.counters.sent += 1

    def _expire(self, now_s: float) -> None:
        for batch_id, inflight in list(self._inflight.items()):
            if now_s >= inflight.deadline_s:
                del self._inflight[batch_id]
                self._requeue(inflight.seqs)

    def _requeue(self, seqs: tuple[int, ...]) -> None:
        again = [s for s in seqs if s in self._pending]
        self.counters.resent += len(again)
        self._unsent.extendleft(reversed(again))

    def _on_receipt(self, payload: bytes, now_s: float) -> None:
        try:
            receipt = Receipt.verify(payload, self.gateway.public_key, self.gateway.key_id)
        except EdgeproofError:
            self.counters.bad_receipts += 1  # never acted on: records stay until a good one
            return
        if receipt.device_id != self.device_id:
            self.counters.bad_receipts += 1
            return
        self.counters.receipts += 1
        self._inflight.pop(receipt.batch_id, None)
        for outcome in receipt.outcomes:
            pending = self._pending.get(outcome.seq) if outcome.seq is not None else None
            if outcome.seq is None or pending is None or pending.hash16 != outcome.hash_prefix:
                continue  # answered already (a resend), or not ours
            del self._pending[outcome.seq]
            if outcome.status is Status.ACCEPTED:
                self.counters.accepted += 1
                self.latencies_ms.append((now_s - pending.created_s) * 1000)
            elif outcome.status is Status.DUPLICATE:
                self.counters.duplicates += 1
            else:
                self.counters.rejected[outcome.reason or "unknown"] += 1
