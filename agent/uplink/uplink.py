"""The uplink: sends outbox records in batches and applies verified receipts.

It runs in its own thread and owns the MQTT transport. Rules (docs/AGENT.md, "Uplink"):

- Batches (:class:`protocol.batch.Batch`) go out as QoS 1 on the device's records topic when
  ``batch_max_records`` are waiting or the batch interval (with ± jitter) has passed.
- A PUBACK removes nothing; a failed PUBACK reason code is counted and the batch retried.
  Only a receipt that verifies under the configured gateway key removes records.
- A record may go as soon as the outbox has handed it to the kernel (its journal) and its
  number is within the durable send limit; the group commit (fsync) is not waited for.
  Records behind a held one (a key rotation awaiting its receipt) are not sent before that
  receipt arrived (:attr:`Outbox.sendable_through`).
- Receipts only change the outbox's open group; their deletions reach the disk with the
  next group commit (no fsync of their own). A crash before it causes a resend, which the
  gateway answers ``duplicate``.
- A batch without a receipt after ``receipt_timeout_ms`` is sent again (the gateway
  deduplicates on device and sequence number). A time-out also drops the number of batches
  allowed in flight to one, and each receipt raises it by one (up to
  ``max_inflight_batches``), as TCP does after a retransmission time-out: a broker that
  drops what it cannot queue is not flooded again at full rate.
- Reconnects back off exponentially with jitter; credentials refused or "not authorised"
  stop the uplink with a clear, permanent error instead of hammering the broker.
- ``heartbeat_ms`` advances on every loop iteration so the service's watchdog can tell a
  stuck network thread from an idle one.
- With a policy inbox (a device that pins an owner key) it also subscribes to the device's
  ``policy`` topic and, after every connect, asks the gateway for the documents it has not
  applied (a ``policy-sync``, PROTOCOL.md §17). While grants are in force it sends NOTHING
  until the gateway's complete answer is applied (state ``syncing``; the sync is repeated
  every receipt time-out): a revocation logged while the device was offline is applied,
  and the records sealed to the revoked recipient withdrawn, before any record leaves.
  Deliveries are applied in this thread, in the order they arrive.
- :meth:`Uplink.receipt_health` says how long sent records have waited for a verified
  receipt and the likeliest reason (the last receipt that failed to verify, or none
  arriving at all); the service turns that into one warning, ``status`` and the systemd
  status line (docs/AGENT.md, "When receipts stop"). A receipt that does not verify is
  logged once per reason, then counted only, until a verified one arrives.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum, unique

from agent.clock import Clock
from agent.outbox import Outbox, within_bytes
from agent.policy import PolicyInbox
from agent.uplink.settings import GatewayKey, UplinkSettings
from agent.uplink.transport import BrokerSettings, MqttTransport
from osutil.brokerurl import describe_broker_url
from osutil.mqtt import (
    NOT_AUTHORISED,
    AckTimeout,
    Connected,
    ConnectionLost,
    Event,
    PubAck,
    Received,
    Refused,
    SubAck,
)
from protocol.batch import Batch, receipts_topic, records_topic
from protocol.delivery import PolicySync, policy_topic, sync_topic
from protocol.errors import EdgeproofError, RejectedByPeer, TransportError, VerificationError
from protocol.reasons import Reason
from protocol.receipt import Receipt, hash_prefix

log = logging.getLogger(__name__)

TransportFactory = Callable[[BrokerSettings, str], MqttTransport]


# Bounds on what receipts can make the uplink remember: the refusal texts logged once (each
# names sizes and offsets of what arrived, so junk on the receipts topic varies it without
# end), and the counters of whole-batch refusals (the reason is the gateway's text: a
# known Reason code keeps its own counter, anything else is counted as "other").
MAX_REFUSALS_LOGGED = 32
_REASON_CODES = frozenset(str(r) for r in Reason)


@dataclass
class _Batch:
    batch_id: int
    seqs: tuple[int, ...]
    deadline_ms: int
    payload_prefix: bytes
    mid: int | None = None
    pubacked: bool = False


@unique
class UplinkState(StrEnum):
    """Where the uplink's connection stands; the value is what ``status --json`` shows."""

    DISCONNECTED = "disconnected"  # no connection; the next attempt is scheduled (backoff)
    CONNECTING = "connecting"      # CONNECT sent, waiting for the CONNACK
    SUBSCRIBING = "subscribing"    # connected, waiting for the receipts subscription
    SYNCING = "syncing"            # waiting for the gateway's complete policy answer
    READY = "ready"                # sending batches and applying receipts
    FAILED = "failed"              # a permanent error (bad credentials): stopped for good
    STOPPED = "stopped"            # stopped on request


@dataclass(frozen=True)
class ReceiptHealth:
    """How long sent records have waited for a verified receipt, and the likely reason."""

    waiting_ms: int | None  # None: nothing sent is waiting for a receipt
    problem: str
    last_verified_mono_ms: int | None  # the last verified receipt (this uplink's lifetime)


@dataclass(frozen=True)
class UplinkStatus:
    """A snapshot for ``status`` and logs."""

    state: UplinkState
    error: str | None
    inflight_batches: int
    counters: dict[str, int] = field(default_factory=dict)


class Uplink:
    """Moves records from the outbox to the gateway and receipts back (one thread)."""

    def __init__(self, settings: UplinkSettings, broker: BrokerSettings, gateway: GatewayKey,
                 *, device_id: bytes, boot: int, outbox: Outbox, clock: Clock,
                 rng: random.Random | None = None,
                 transport_factory: TransportFactory = MqttTransport,
                 policy: PolicyInbox | None = None) -> None:
        self.settings = settings
        self._broker = broker
        self._gateway = gateway
        self._device_id = device_id
        self._outbox = outbox
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._make_transport = transport_factory
        self._records_topic = records_topic(device_id)
        self._receipts_topic = receipts_topic(device_id)
        self._policy = policy
        self._policy_topic = policy_topic(device_id)
        self._sync_topic = sync_topic(device_id)
        self._subacks_due = 0
        self._sync_due_ms = 0
        self._batch_base = (boot & 0xFFFFFFFF) << 32
        self._batch_counter = 0
        self._state = UplinkState.DISCONNECTED
        self._error: str | None = None
        self._attempts = 0
        self._next_attempt = 0
        self._connect_started = 0
        self._inflight: dict[int, _Batch] = {}
        self._window = settings.max_inflight_batches
        self._batch_records = settings.batch_max_records  # shrinks if the gateway refuses
        self._batch_bytes = settings.batch_max_bytes      # a batch as a whole
        self._by_mid: dict[int, int] = {}
        self._resend: set[int] = set()
        self._cursor = -1  # every sendable record up to here was put into a batch
        self._next_flush = 0
        self._flushing = False
        self.counters: Counter[str] = Counter()
        self.heartbeat_ms = clock.mono_ms()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._thread: threading.Thread | None = None
        self._transport: MqttTransport | None = None
        self.broker_text = describe_broker_url(broker.connection.url)
        self._unanswered_since: int | None = None  # first send not followed by a receipt
        self._last_verified_ms: int | None = None
        self._last_refusal: str | None = None
        self._refusals_logged: set[str] = set()

    # --- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the uplink thread."""
        self._thread = threading.Thread(target=self.run, name="edgeproof-uplink", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the thread to stop, disconnect cleanly, and wait up to ``timeout_s``."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def failed(self) -> bool:
        return self._state is UplinkState.FAILED

    def status(self) -> UplinkStatus:
        return UplinkStatus(self._state, self._error, len(self._inflight), dict(self.counters))

    def receipt_health(self, now_ms: int) -> ReceiptHealth:
        """How long records sent have waited for a verified receipt (None: none waiting)."""
        since = self._unanswered_since
        waiting = None if since is None else max(0, now_ms - since)
        if self._last_refusal is not None:
            problem = f"last receipt refused: {self._last_refusal}"
        elif self._state is not UplinkState.READY:
            problem = f"uplink {self._state} ({self.broker_text})"
        else:
            problem = (f"no receipt arrived ({self.counters['pubacks']} PUBACKs from the "
                       f"broker): is {self.broker_text} the fleet's broker, and is the "
                       f"gateway running?")
        return ReceiptHealth(waiting, problem, self._last_verified_ms)

    def flush(self, timeout_s: float) -> bool:
        """Send everything sendable now and wait for receipts, at most ``timeout_s``.

        Returns early when the connection fails meanwhile (the records stay in the
        outbox). Returns whether everything committed was receipted.
        """
        self._idle.clear()
        self._flushing = True
        if self._state not in (UplinkState.DISCONNECTED, UplinkState.FAILED,
                               UplinkState.STOPPED):
            self._idle.wait(timeout_s)
        return self._drained()

    def _drained(self) -> bool:
        return (not self._inflight and not self._resend
                and self._outbox.sendable_through <= self._cursor)

    def run(self) -> None:
        """The thread body: connect, poll, send, expire, until stopped or failed."""
        try:
            self._transport = self._make_transport(self._broker, self._device_id.hex())
        except EdgeproofError as exc:
            self._fail(str(exc))
            return
        while not self._stop.is_set():
            now = self._clock.mono_ms()
            self.heartbeat_ms = now
            try:
                self._step(now)
            except RejectedByPeer as exc:
                self._fail(str(exc))
                break
            except EdgeproofError as exc:  # storage or transport trouble: back off, go on
                self.counters["step_errors"] += 1
                log.warning("uplink: %s", exc)
                self._disconnect(now)
            except Exception:  # a bug must not silently end the uplink thread
                self.counters["step_errors"] += 1
                log.exception("uplink: unexpected error; reconnecting")
                self._disconnect(now)
        if self._transport is not None:
            self._transport.close()
        if self._state is not UplinkState.FAILED:
            self._state = UplinkState.STOPPED

    def _fail(self, message: str) -> None:
        self._state = UplinkState.FAILED
        self._error = message
        self.counters["permanent_errors"] += 1
        log.error("UPLINK STOPPED: %s. Records stay in the outbox; fix the configuration "
                  "and restart the agent.", message)
        if self._transport is not None:
            self._transport.close()

    # --- one iteration ------------------------------------------------------------------

    def _step(self, now: int) -> None:
        transport = self._transport
        assert transport is not None
        poll_s = self.settings.poll_ms / 1000
        if not transport.up:
            if self._state is not UplinkState.DISCONNECTED:
                self._state = UplinkState.DISCONNECTED
            if now >= self._next_attempt:
                self._connect(now)
            else:
                self._stop.wait(min(poll_s, (self._next_attempt - now) / 1000))
            return
        for event in transport.poll(poll_s):
            self._handle(event, now)
        if (self._state is UplinkState.CONNECTING
                and now - self._connect_started > self._broker.connect_timeout_s * 1000):
            raise TransportError("no CONNACK from the broker in time")
        if self._state is UplinkState.SYNCING and now >= self._sync_due_ms:
            self.counters["policy_sync_timeouts"] += 1
            if self.counters["policy_sync_timeouts"] == 1:
                log.warning("uplink: the gateway has not answered the policy sync; with grants "
                            "in force nothing is sent until it does (asking again every "
                            "%.0f s)", self.settings.receipt_timeout_ms / 1000)
            self._send_sync(now)
        if self._state is UplinkState.READY:
            self._expire(now)
            self._send(now)
            self._outbox.maybe_commit()

    def _connect(self, now: int) -> None:
        assert self._transport is not None
        self._state = UplinkState.CONNECTING
        self._connect_started = now
        self.counters["connect_attempts"] += 1
        try:
            self._transport.connect()
        except TransportError as exc:
            self._schedule_retry(now, str(exc))

    def _disconnect(self, now: int) -> None:
        if self._transport is not None:
            self._transport.close()
        self._schedule_retry(now, "disconnected")

    def _schedule_retry(self, now: int, why: str) -> None:
        if self._flushing:  # shutting down and the broker is away: the records wait
            self._idle.set()
        self._state = UplinkState.DISCONNECTED
        delay = min(self.settings.backoff_max_ms,
                    self.settings.backoff_min_ms * (2 ** min(self._attempts, 20)))
        delay = int(delay * self._rng.uniform(0.5, 1.0))  # jitter: devices don't stampede
        self._attempts += 1
        self._next_attempt = now + delay
        log.warning("uplink: %s; retrying in %.1f s", why, delay / 1000)

    # --- events -------------------------------------------------------------------------

    def _handle(self, event: Event, now: int) -> None:
        assert self._transport is not None
        if isinstance(event, Connected):
            self.counters["connects"] += 1
            log.info("uplink: connected to %s (session present: %s)", self.broker_text,
                     event.session_present)
            self._state = UplinkState.SUBSCRIBING
            self._transport.subscribe(self._receipts_topic)
            self._subacks_due = 1
            if self._policy is not None:
                self._transport.subscribe(self._policy_topic)
                self._subacks_due = 2
        elif isinstance(event, Refused):
            self.counters[f"connack_{event.code:#04x}"] += 1
            if event.permanent:
                raise RejectedByPeer(f"broker {self._broker.connection.url} refused the "
                                     f"connection: {event.reason} (CONNACK {event.code:#04x})")
            self._transport.close()
            self._schedule_retry(now, f"broker refused: {event.reason}")
        elif isinstance(event, ConnectionLost):
            self.counters["connection_lost"] += 1
            self._schedule_retry(now, f"connection lost ({event.reason})")
        elif isinstance(event, SubAck):
            self._on_suback(event, now)
        elif isinstance(event, PubAck):
            self._on_puback(event, now)
        elif isinstance(event, AckTimeout):
            # The batch's receipt time-out resends it; this counts a stalled connection.
            self.counters["puback_timeouts"] += 1
        elif isinstance(event, Received):
            if self._policy is not None and event.topic == self._policy_topic:
                self._on_policy(event.payload, now)
            else:
                self._on_message(event)

    def _on_suback(self, event: SubAck, now: int) -> None:
        if event.ok:
            self._subacks_due -= 1
            if self._subacks_due <= 0:
                self._attempts = 0
                self._subscribed(now)
            return
        if event.code == NOT_AUTHORISED:
            raise RejectedByPeer(f"not authorised to subscribe to {self._receipts_topic}")
        assert self._transport is not None
        self._transport.close()
        self._schedule_retry(now, f"subscribe refused: {event.reason}")

    def _subscribed(self, now: int) -> None:
        """Both subscriptions stand: ask for policy documents, then send (or wait)."""
        if self._policy is None:
            self._state = UplinkState.READY
            return
        self._send_sync(now)
        must_wait = self._policy.must_sync
        self._state = UplinkState.SYNCING if must_wait else UplinkState.READY
        if must_wait:
            log.info("uplink: grants in force; waiting for the gateway's policy answer "
                     "before sending")

    def _send_sync(self, now: int) -> None:
        assert self._transport is not None
        assert self._policy is not None
        sync = PolicySync(self._policy.book.next_index)
        self._transport.publish(self._sync_topic, sync.to_cbor())
        self._sync_due_ms = now + self.settings.receipt_timeout_ms
        self.counters["policy_syncs"] += 1

    def _on_policy(self, payload: bytes, now: int) -> None:
        assert self._policy is not None
        self.counters["policy_deliveries"] += 1
        complete = self._policy.deliver(payload)
        if complete and self._state is UplinkState.SYNCING:
            self._state = UplinkState.READY
            log.info("uplink: policy answer applied; sending")

    def _on_puback(self, event: PubAck, now: int) -> None:
        batch_id = self._by_mid.pop(event.mid, None)
        batch = self._inflight.get(batch_id) if batch_id is not None else None
        if event.ok:
            self.counters["pubacks"] += 1
            if batch is not None:
                batch.pubacked = True
            return
        # paho calls this "published" too; the reason code says the broker refused it.
        self.counters[f"puback_failed_{event.code:#04x}"] += 1
        if event.code == NOT_AUTHORISED:
            raise RejectedByPeer(f"not authorised to publish on {self._records_topic}")
        log.warning("uplink: broker refused batch (%s, PUBACK %#04x); will resend",
                    event.reason, event.code)
        if batch is not None:
            batch.deadline_ms = min(batch.deadline_ms, now + self.settings.backoff_min_ms)

    def _on_message(self, event: Received) -> None:
        if event.topic != self._receipts_topic:
            self.counters["unexpected_messages"] += 1
            return
        try:
            receipt = Receipt.verify(event.payload, self._gateway.public_key,
                                     self._gateway.key_id)
        except VerificationError as exc:
            self._bad_receipt(exc)
            return
        if receipt.device_id != self._device_id:
            self.counters["foreign_receipts"] += 1
            return
        self._receipt_verified(receipt.batch_id)
        refused = self._refused_batch(receipt)
        if refused is not None:
            self._on_batch_refused(*refused)
            return
        batch = self._inflight.pop(receipt.batch_id, None)
        result = self._outbox.apply_receipt(receipt, batch.seqs if batch else ())
        self.counters["receipts"] += 1
        self._window = min(self.settings.max_inflight_batches, self._window + 1)
        if batch is not None:
            if batch.mid is not None:
                self._by_mid.pop(batch.mid, None)
            answered = {o.seq for o in receipt.outcomes}
            if None not in answered:  # else the outbox matched them by hash
                self._resend.update(s for s in batch.seqs if s not in answered)
        log.debug("uplink: receipt for batch %d: %s", receipt.batch_id, result)

    def _bad_receipt(self, exc: VerificationError) -> None:
        # Logged once per reason (then counted only) until a receipt verifies again: a
        # wrong gateway key would otherwise log one line per receipt, forever.
        self.counters["bad_receipts"] += 1
        reason = f"{exc} (check gateway.key: it must be this fleet's gateway verifier key)"
        self._last_refusal = reason
        known = reason in self._refusals_logged
        full = len(self._refusals_logged) >= MAX_REFUSALS_LOGGED
        level = logging.DEBUG if known or full else logging.WARNING
        if not full:
            self._refusals_logged.add(reason)
        log.log(level, "uplink: ignored a receipt that does not verify: %s; further ones "
                "are counted (bad_receipts), not logged", reason)

    def _receipt_verified(self, batch_id: int) -> None:
        now = self._clock.mono_ms()
        self._last_verified_ms = now
        self._last_refusal = None
        self._refusals_logged.clear()
        # Other batches in flight wait from now on; none in flight: nothing waits.
        others = any(b != batch_id for b in self._inflight)
        self._unanswered_since = now if others else None

    def _refused_batch(self, receipt: Receipt) -> tuple[_Batch, str] | None:
        """A receipt refusing a whole batch names no seq, only the batch payload's hash."""
        if len(receipt.outcomes) != 1 or receipt.outcomes[0].seq is not None:
            return None
        outcome = receipt.outcomes[0]
        for batch in self._inflight.values():
            if batch.payload_prefix == outcome.hash_prefix:
                return batch, outcome.reason or "unknown"
        return None

    def _on_batch_refused(self, batch: _Batch, reason: str) -> None:
        del self._inflight[batch.batch_id]
        code = reason if reason in _REASON_CODES else "other"
        self.counters[f"batches_refused_{code}"] += 1
        if len(batch.seqs) == 1:
            self._outbox.dead_letter(batch.seqs[0], reason)
            log.error("uplink: gateway refused record %d on its own (%s): dead letter",
                      batch.seqs[0], reason)
            return
        # Most likely too large for this gateway: halve the batches and send again.
        self._batch_records = max(1, len(batch.seqs) // 2)
        self._batch_bytes = max(1, self._batch_bytes // 2)
        self._resend.update(batch.seqs)
        log.error("uplink: gateway refused a batch of %d records (%s); sending smaller "
                  "batches", len(batch.seqs), reason)

    # --- sending ------------------------------------------------------------------------

    def _expire(self, now: int) -> None:
        expired = False
        for batch_id, batch in list(self._inflight.items()):
            if now >= batch.deadline_ms:
                expired = True
                del self._inflight[batch_id]
                if batch.mid is not None:
                    self._by_mid.pop(batch.mid, None)
                self._resend.update(batch.seqs)
                self.counters["receipt_timeouts"] += 1
                log.info("uplink: no receipt for batch %d (%d records) in time; resending",
                         batch_id, len(batch.seqs))
        if expired:
            self._window = 1

    def _send(self, now: int) -> None:
        s = self.settings
        while len(self._inflight) < min(self._window, s.max_inflight_batches):
            if not (self._resend or self._due(now)):
                break
            rows = self._next_rows()
            if not rows:
                break
            self._publish(rows, now)
        if self._flushing and self._drained():
            self._idle.set()

    def _due(self, now: int) -> bool:
        waiting = self._outbox.sendable_through - self._cursor
        if waiting <= 0:
            return False
        return (self._flushing or waiting >= self._batch_records
                or now >= self._next_flush)

    def _next_rows(self) -> list[tuple[int, bytes]]:
        max_records, max_bytes = self._batch_records, self._batch_bytes
        if self._resend:
            wanted = sorted(self._resend)[:max_records]
            rows = within_bytes(self._outbox.fetch(wanted), max_bytes)
            last = rows[-1][0] if rows else wanted[-1]
            self._resend.difference_update(w for w in wanted if w <= last)
            if rows:
                return rows
        # Records behind a held one (a key rotation awaiting its receipt) wait: the gateway
        # must log the rotation before it can check the records signed with the new key.
        sendable = self._outbox.sendable_through
        rows = self._outbox.unsent(self._cursor, max_records, max_bytes)
        # Numbers without a record (burned or already removed) are skipped for good.
        self._cursor = rows[-1][0] if rows else max(self._cursor, sendable)
        return rows

    def _publish(self, rows: list[tuple[int, bytes]], now: int) -> None:
        assert self._transport is not None
        self._batch_counter += 1
        batch_id = self._batch_base | (self._batch_counter & 0xFFFFFFFF)
        payload = Batch(batch_id, tuple(raw for _, raw in rows)).to_cbor()
        mid = self._transport.publish(self._records_topic, payload)
        seqs = tuple(seq for seq, _ in rows)
        prefix = hash_prefix(payload)
        self._inflight[batch_id] = _Batch(batch_id, seqs, now + self.settings.receipt_timeout_ms,
                                          prefix, mid)
        self._by_mid[mid] = batch_id
        if self._unanswered_since is None:
            self._unanswered_since = now
        self.counters["batches_sent"] += 1
        self.counters["records_sent"] += len(seqs)
        jitter = self._rng.uniform(-self.settings.batch_jitter, self.settings.batch_jitter)
        self._next_flush = now + int(self.settings.batch_interval_ms * (1 + jitter))
