"""The running gateway: wires store, verification, sequencer, MQTT, HTTP and systemd.

Threads:

- paho's network thread calls :meth:`GatewayService._on_message`, which only applies the
  cheap checks (topic, size cap, registration, quarantine) and puts the message into the
  device's queue of the :class:`gateway.fairness.FairQueue` (bounded per device and in
  total; what does not fit is dropped, counted and acknowledged);
- the *sequencer thread* (the caller of :meth:`GatewayService.run`) takes messages from
  the queue in deficit-round-robin order across devices and submits the stateless checks
  (:func:`gateway.verify.prepare_batch`) to the verify pool (worker processes, one per
  core, :mod:`gateway.verify_pool`; or threads with ``verify_workers = 0``), keeping at
  most ``MAX_GROUP_BATCHES`` messages or ``MAX_INFLIGHT_BYTES`` in flight, so a device
  that floods waits behind everyone else's next message, not the other way round; it
  commits the verified batches in order (those ready together, in one group commit;
  :class:`gateway.sequencer.Sequencer`; the next messages go to the pool before that
  commit, so a group being committed is held besides what is in flight), publishes each
  receipt, then acknowledges each
  MQTT message; it also issues interval checkpoints and pings the systemd watchdog when
  it made progress;
- uvicorn serves the API on its own thread.

With ``[store] shared = true`` (several processes over one PostgreSQL database,
:mod:`gateway.cluster`) the sequencer thread also takes part in the election; when this
process is not the sequencer it commits its verified batches to the database's hand-over
queue instead of the log (and publishes no receipt), and when it is, it also sequences the
batches the others queued and publishes their receipts, and runs the chain duties (the
Ethereum anchor's worker and the payout worker, whose state is in the shared database),
which the role starts on taking over and stops on losing the lock.

The broker sends unacknowledged QoS 1 messages up to the Receive Maximum the gateway
announces (MQTT v5; Mosquitto's ``max_inflight_messages`` does not limit it) and QoS 0
messages without any limit, which is why the queue has bounds of its own.
Stopping (:meth:`request_stop`, wired to SIGTERM by the CLI) finishes the batch
in progress, disconnects (queued but unprocessed messages stay unacknowledged and are
redelivered to the next run), signs a final checkpoint and closes the store.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TypeVar

import uvicorn

from gateway.anchor import open_anchor
from gateway.api import create_app
from gateway.api_context import ApiContext
from gateway.checkpoints import Checkpointer
from gateway.cluster import POLL_S, Role
from gateway.config import GatewayConfig, HttpLimits
from gateway.contracts import DocumentDesk
from gateway.courier import PolicyCourier
from gateway.dashboard import record_rejections, refused_messages
from gateway.fairness import (
    OVER_SHARE,
    QUARANTINED,
    SEQUENCER_BACKLOG,
    UNREGISTERED,
    FairQueue,
    IngestBudget,
    IngestDrop,
    SignatureBreaker,
    ThrottledLog,
    device_label,
)
from gateway.gatewaykey import load_gateway_key
from gateway.history import History, Sample
from gateway.http_guard import server_config
from gateway.ingest import Message, MqttIngest
from gateway.metrics import GatewayMetrics
from gateway.payout import PayoutWorker, open_book
from gateway.sequencer import Sequencer, SignedReceipt
from gateway.sqlite_store import SQLiteLogStore
from gateway.store import STATUS_REVOKED, Device, LogStore, NotSequencer
from gateway.verify import PreparedBatch, oversize_batch
from gateway.verify_pool import VerifyPool, settle_heap
from osutil.sdnotify import Notifier
from protocol import reasons
from protocol.batch import device_id_from_topic
from protocol.delivery import SYNC_SUFFIX, PolicySync, device_id_from_sync_topic
from protocol.errors import ConfigError, MalformedRecord, RejectedByPeer, StorageError
from protocol.keys import Secret, read_secret_file
from protocol.receipt import Outcome

log = logging.getLogger(__name__)
_R = TypeVar("_R")
MIN_ADMIN_TOKEN_CHARS = 16
STORAGE_RETRIES = 3
MAX_GROUP_BATCHES = 16  # batches committed together when they queue up (one fsync)
# Bytes handed to the verify pool ahead of the sequencer: enough that the workers still have
# batches to verify while the sequencer commits a group (about 14 batches of 100 records:
# at 128 KiB a backlog of 60,000 records from 100 devices drained 0.93-0.98x bare verify on
# two cores, at 256 KiB 0.99x, docs/GATEWAY.md "Performance"), little enough that a message
# taken from the fair queue now waits behind at most about a quarter second of work.
MAX_INFLIGHT_BYTES = 256 * 1024
BACKLOG_MAX_AGE_S = 10.0  # /healthz: a queued message older than this is a backlog
BACKLOG_MAX_FILL = 0.75   # /healthz: so is a queue fuller than this share of its bounds


@dataclass(frozen=True)
class _Work:
    """A message admitted to the queue; ``ready`` when the cheap checks already decided."""

    message: Message
    ready: PreparedBatch | None = None


@dataclass(frozen=True)
class _InFlight:
    device: bytes
    message: Message
    future: Future[PreparedBatch]
    cost: int


def wall_ms() -> int:
    """The system wall clock in ms (the default clock)."""
    return time.time_ns() // 1_000_000


def load_admin_token(config: GatewayConfig) -> Secret:
    """Read the admin token (mode 0600 file); raise KeyFileError/ConfigError if unusable."""
    token = read_secret_file(config.admin_token_file).strip()
    if len(token) < MIN_ADMIN_TOKEN_CHARS:
        raise ConfigError(f"gateway.admin_token_file: token must have at least "
                          f"{MIN_ADMIN_TOKEN_CHARS} characters")
    return Secret(token)


def open_store(config: GatewayConfig) -> LogStore:
    """Open the configured log store ([store]); raise StorageError/KeyFileError/ConfigError.

    psycopg is imported only for ``backend = "postgresql"``, so a SQLite gateway does not
    need it (nor libpq).
    """
    if config.store.backend != "postgresql":
        return SQLiteLogStore(config.db_path)
    from gateway.pg_store import PostgresLogStore  # noqa: PLC0415

    assert config.store.dsn is not None
    password = None
    if config.store.password_file is not None:
        try:
            password = read_secret_file(config.store.password_file).decode().rstrip("\r\n")
        except UnicodeDecodeError:
            raise ConfigError(f"store.password_file {config.store.password_file} "
                              "is not UTF-8 text") from None
        if not password:
            raise ConfigError(f"store.password_file {config.store.password_file} is empty")
    return PostgresLogStore(config.store.dsn, password, shared=config.store.shared)


class HttpServer:
    """uvicorn on a background thread."""

    def __init__(self, app: object, host: str, port: int, limits: HttpLimits,
                 on_reject: Callable[[str], None]) -> None:
        self._server = uvicorn.Server(server_config(app, host, port, limits, on_reject))
        self._thread = threading.Thread(target=self._server.run, name="gateway-http",
                                        daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        """Start serving; raise ConfigError if the address cannot be bound in time."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError("http.bind: the API could not listen on the address")
            time.sleep(0.01)

    @property
    def port(self) -> int:
        """The bound TCP port (useful with ``bind = "127.0.0.1:0"``)."""
        return int(self._server.servers[0].sockets[0].getsockname()[1])

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10)


class GatewayService:
    """One gateway process."""

    def __init__(self, config: GatewayConfig, *, clock_ms: Callable[[], int] = wall_ms,
                 monotonic: Callable[[], float] = time.monotonic,
                 notifier: Notifier | None = None) -> None:
        """Open the store and load keys; raise ConfigError/KeyFileError/StorageError."""
        self.config = config
        self._wall_ms, self._monotonic = clock_ms, monotonic
        self._notifier = notifier or Notifier()
        self._stop = threading.Event()
        self.budget = IngestBudget()
        self._queue: FairQueue[_Work] = FairQueue(self.budget)
        self._inflight: deque[_InFlight] = deque()
        self.breaker = SignatureBreaker(monotonic)
        self._drop_log = ThrottledLog(monotonic)
        self.key = load_gateway_key(config.key_file)
        admin_token = load_admin_token(config)
        self.metrics = GatewayMetrics()
        self._watch_queue()
        self.store = open_store(config)
        self.anchor = open_anchor(config, self.store, clock_ms, monotonic,
                                  self.metrics.registry)
        self.checkpointer = Checkpointer(self.store, self.key, self.anchor,
                                         config=config.checkpoints, metrics=self.metrics,
                                         wall_ms=clock_ms, monotonic=monotonic)
        self.sequencer = Sequencer(self.store, self.checkpointer, self.key,
                                   limits=config.limits, metrics=self.metrics,
                                   wall_ms=clock_ms, monotonic=monotonic)
        self.payout = None if config.payout is None else PayoutWorker(
            config.payout, self.store,
            open_book(self.store, config.data_dir, shared=config.store.shared),
            self.key.signing_key, wall_ms=clock_ms, monotonic=monotonic,
            registry=self.metrics.registry)
        # Several processes over one database (gateway.cluster); None: this one alone.
        # The chain duties run only in the sequencer: the role starts and stops them.
        self.role = None if not config.store.shared else Role(
            self.store, self.checkpointer, self.sequencer, limits=config.limits,
            metrics=self.metrics, wall_ms=clock_ms, monotonic=monotonic,
            duties=[self.anchor, *([] if self.payout is None else [self.payout])])
        if self.role is None:
            self.metrics.sequencer_leading.set(1)
        self._pool = VerifyPool(config.verify_workers, config.verify_threads, config.limits,
                                self.metrics.registry)
        self.ingest = MqttIngest(config.broker, self._on_message, monotonic)
        self.ingest.on_publish_failure = self.metrics.receipt_failures.inc
        self.history = History(self._sample, monotonic)
        self.courier = PolicyCourier(self.store, self.ingest.publish, self.metrics, monotonic)
        self.desk = DocumentDesk(self.store, self.metrics, clock_ms, self.courier.push)
        if self.payout is not None:
            self.payout.on_logged = self.courier.push  # lapse notices reach their devices
        api = ApiContext(self.store, self.metrics, self.key.verifier_text(), admin_token,
                         clock_ms, self._health, self.anchor.lookup,
                         self.anchor.listing, self.desk, self.payout,
                         history=self.history, quarantined=self.breaker.blocked)
        self.http = HttpServer(
            create_app(api, config.http), config.http_host, config.http_port, config.http,
            self.metrics.http_rejected)
        self._last_progress = monotonic()

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Sign the first checkpoint if needed, serve HTTP, connect MQTT, tell systemd.

        Raises TransportError/RejectedByPeer if the broker is unreachable or refuses.
        """
        if self.role is not None:
            # The sequencer signs its takeover checkpoint and starts the chain duties.
            self.role.elect(now=True)
        else:
            self.checkpointer.latest_note()
            self.checkpointer.issue()  # a crash may have left leaves after the last checkpoint
            self.anchor.start()  # ConfigError if an ethereum node is on another chain
            if self.payout is not None:
                self.payout.start()
        self._pool.start()
        self.http.start()
        self.courier.start()
        self.ingest.start()
        settle_heap()
        self._notifier.ready(self._status())
        log.info("gateway %s ready: log size %d, API on %s:%d", self.key.name,
                 self.store.size(), self.config.http_host, self.http.port)

    def request_stop(self) -> None:
        """Ask :meth:`run` to return after the batch in progress (not from a signal handler)."""
        self._stop.set()
        self._queue.wake()

    def run(self) -> None:
        """Process batches until :meth:`request_stop`; raise if the broker or store fails."""
        while not self._stop.is_set():
            if self.ingest.fatal:
                raise RejectedByPeer(self.ingest.fatal)
            self._dispatch()
            drained = self._serve_role()
            if self._inflight:
                group = self._group()
                self._dispatch()  # keep the workers busy while this group commits
                self._process(group)
            elif not drained:
                self._queue.wait(self._idle_timeout())
                if self.role is None or self.role.leading:
                    self.sequencer.checkpoint_if_due()
            self._last_progress = self._monotonic()
            self._sample_history()
            if self._notifier.watchdog(round(self._last_progress * 1000), progressed=True):
                self._notifier.status(self._status())

    def close(self) -> None:
        """Stop ingest, sign a final checkpoint, stop HTTP, close the store."""
        self._notifier.stopping()
        self.ingest.stop()
        self.courier.stop()
        self._pool.close()
        try:
            if self.role is None or self.role.leading:
                self.checkpointer.issue()
        finally:
            # Anchors still queued are persisted for the next run (or the next sequencer).
            self.anchor.close()
            self.http.stop()
            if self.payout is not None:  # after HTTP: the API reads its book
                self.payout.close()  # a pending epoch is persisted for the next run
            self.store.close()

    # --- the pipeline ----------------------------------------------------------------------

    def _on_message(self, message: Message) -> None:
        """Admit one message (paho's network thread): cheap checks only, then queue it."""
        if message.topic.endswith("/" + SYNC_SUFFIX):
            self._on_sync(message)
            return
        try:
            device_id = device_id_from_topic(message.topic)
        except MalformedRecord:  # nowhere to answer: count it and let it go
            self.metrics.batches.inc()
            self.metrics.batches_unreadable.labels(reason=reasons.WRONG_TOPIC.value).inc()
            self.ingest.ack(message)
            return
        try:
            device = self.store.device(device_id)
        except StorageError:  # never let an exception end paho's network thread
            device = None  # the sequencer decides with the store's real answer later
        key = device_id if device is not None else UNREGISTERED
        if device is not None and device.status is not STATUS_REVOKED \
                and self.breaker.blocked(device_id):
            self._drop(key, message, QUARANTINED)
            return
        work = _Work(message)
        if len(message.payload) > self.config.limits.max_batch_bytes:
            # Decided already (too_large): keep only its hash, not the payload.
            ready = oversize_batch(message.topic, message.payload, message.arrived)
            work = _Work(dataclasses.replace(message, payload=b""), ready)
        for victim, dropped in self._queue.offer(key, work, len(work.message.payload),
                                                 message.arrived):
            self._drop(victim, dropped.message, OVER_SHARE)

    def _on_sync(self, message: Message) -> None:
        """A device asks for its consents and revocations (PROTOCOL.md §17)."""
        self.ingest.ack(message)
        try:
            device_id = device_id_from_sync_topic(message.topic)
            from_index = PolicySync.from_cbor(message.payload).from_index
            device = self.store.device(device_id)
        except (MalformedRecord, StorageError):
            self.metrics.policy_syncs_dropped.labels(reason="malformed").inc()
            return
        if device is None or device.status is STATUS_REVOKED:
            self.metrics.policy_syncs_dropped.labels(reason="unregistered").inc()
            return
        self.courier.sync(device_id, from_index)

    def _drop(self, key: bytes, message: Message, reason: IngestDrop) -> None:
        """Count a message dropped before verification and acknowledge it.

        An unacknowledged QoS 1 message would hold a slot of the broker's in-flight window
        (shared by every device) until the next reconnect; the device has no receipt for
        it and sends it again on its own timer.
        """
        label = device_label(key)
        self.metrics.ingest_dropped.labels(reason=reason.value, device=label).inc()
        self.ingest.ack(message)
        count = self._drop_log.event(key, reason)
        if count is not None:
            log.warning("ingest: dropped %d message(s) of device %s (%s); it will resend",
                        count, label, reason)

    def _dispatch(self) -> None:
        """Move messages from the fair queue to the verify pool while there is room."""
        while len(self._inflight) < MAX_GROUP_BATCHES and (
                not self._inflight or self._inflight_bytes() < MAX_INFLIGHT_BYTES):
            taken = self._queue.pop()
            if taken is None:
                return
            device, work = taken
            message = work.message
            if device != UNREGISTERED and self.breaker.blocked(device):
                self._drop(device, message, QUARANTINED)
                continue
            future: Future[PreparedBatch]
            if work.ready is not None:
                future = Future()
                future.set_result(work.ready)
            else:
                future = self._pool.submit(message.topic, message.payload, message.arrived,
                                           self._registry_entry(message.topic))
            self._inflight.append(_InFlight(device, message, future,
                                            self.budget.cost(len(message.payload))))

    def _registry_entry(self, topic: str) -> Device | None:
        """The topic's device as the registry holds it now (the sequencer re-checks its key)."""
        try:
            return self.store.device(device_id_from_topic(topic))
        except (MalformedRecord, StorageError):
            return None  # the worker rejects the topic, or the commit meets the store's error

    def _inflight_bytes(self) -> int:
        return sum(item.cost for item in self._inflight)

    def _group(self) -> list[_InFlight]:
        """The oldest batch in flight plus those verified behind it (one group commit)."""
        group = [self._inflight.popleft()]
        group[0].future.result()
        while self._inflight and len(group) < MAX_GROUP_BATCHES \
                and self._inflight[0].future.done():
            group.append(self._inflight.popleft())
        return group

    def _process(self, group: list[_InFlight]) -> None:
        prepared = [item.future.result() for item in group]
        receipts: list[SignedReceipt | None] = [None] * len(group)
        try:
            if self.role is not None and not self.role.leading:
                raise NotSequencer("another process sequences")  # noqa: TRY301
            receipts = self._retrying(len(group), lambda: self.sequencer.commit_group(prepared))
        except NotSequencer:
            if self.role is None:
                raise
            role = self.role
            if self._retrying(len(group), role.backlogged):
                for item in group:  # the device resends when no receipt comes
                    self._drop(item.device, item.message, SEQUENCER_BACKLOG)
                return
            payloads = [item.message.payload for item in group]
            self._retrying(len(group), lambda: role.hand_over(prepared, payloads))
        # Receipts only after the commit; the MQTT ack only after the receipt is queued.
        for item, signed in zip(group, receipts, strict=True):
            if signed is not None and self.ingest.publish(signed.topic, signed.payload):
                self.metrics.receipts.inc()
            self.ingest.ack(item.message)
            if signed is not None and item.device != UNREGISTERED:
                self._watch_signatures(item.device, signed.receipt.outcomes)

    def _retrying(self, batches: int, write: Callable[[], _R]) -> _R:
        """Run a store write, retrying STORAGE_RETRIES times; NotSequencer is not retried."""
        for attempt in range(1, STORAGE_RETRIES + 1):
            try:
                return write()
            except NotSequencer:
                raise
            except StorageError as exc:
                self.metrics.storage_errors.inc(batches)
                log.error("store failed on %d batches (attempt %d): %s", batches, attempt, exc)
                if attempt == STORAGE_RETRIES:
                    raise
                time.sleep(0.2 * attempt)
        raise AssertionError("unreachable")

    def _serve_role(self) -> bool:
        """Shared store: elect, and as the sequencer take handed-over batches (one group).

        Returns whether it sequenced any. Their receipts are published here; the MQTT
        messages were acknowledged by the processes that verified them.
        """
        if self.role is None or not self.role.elect():
            return False
        try:
            receipts = self.role.drain()
        except NotSequencer:
            return False
        except StorageError as exc:  # the batches stay queued; the next round takes them
            self.metrics.storage_errors.inc()
            log.error("store failed sequencing handed-over batches: %s", exc)
            return False
        for signed in receipts:
            if signed is not None and self.ingest.publish(signed.topic, signed.payload):
                self.metrics.receipts.inc()
        return bool(receipts)

    def _watch_signatures(self, device: bytes, outcomes: tuple[Outcome, ...]) -> None:
        cooloff = self.breaker.observe(device, outcomes)
        if cooloff is None:
            return
        self.metrics.quarantines.inc()
        log.warning("ingest: device %s sent %d bad signatures in a row; its messages are "
                    "dropped for %.0f s", device.hex(), self.breaker.threshold, cooloff)
        for work in self._queue.drain(device):
            self._drop(device, work.message, QUARANTINED)

    def _sample(self) -> Sample:
        """The counters the dashboard charts (gateway.history), read from the metrics."""
        snap = self.metrics.snapshot()
        latest = self.store.latest_checkpoint()  # the shared log's, also on a follower
        return Sample(self._wall_ms(), self.store.size(), latest.size if latest else 0,
                      int(str(snap["records_accepted"])), int(str(snap["records_duplicate"])),
                      {**record_rejections(snap), **refused_messages(snap)})

    def _sample_history(self) -> None:
        try:
            self.history.sample_if_due()
        except StorageError as exc:  # a chart misses a point; the log goes on
            log.warning("dashboard history: no sample: %s", exc)

    def _watch_queue(self) -> None:
        m, q = self.metrics, self._queue
        m.ingest_queue_messages.set_function(lambda: q.messages)
        m.ingest_queue_bytes.set_function(lambda: q.bytes)
        m.ingest_queue_peak_messages.set_function(lambda: q.peak_messages)
        m.ingest_queue_peak_bytes.set_function(lambda: q.peak_bytes)
        m.ingest_oldest_age.set_function(self._backlog_age)
        m.devices_quarantined.set_function(self.breaker.quarantined)

    def _backlog_age(self) -> float:
        oldest = self._queue.backlog().oldest_arrived
        return 0.0 if oldest is None else max(0.0, self._monotonic() - oldest)

    def _idle_timeout(self) -> float:
        longest = 1.0 if self.role is None else POLL_S
        return min(longest, max(0.01, self.checkpointer.seconds_until_due()))

    def _status(self) -> str:
        latest = self.checkpointer.latest
        return (f"log size {self.store.size()}, checkpoint {latest.size if latest else 0}, "
                f"mqtt {'up' if self.ingest.connected else 'down'}")

    def _health(self) -> dict[str, object]:
        """/healthz: not ok (503) when MQTT is down, the sequencer stalls, or a backlog grows."""
        now = self._monotonic()
        stalled = now - self._last_progress > 30.0
        backlog = self._queue.backlog()
        age = 0.0 if backlog.oldest_arrived is None else max(0.0, now - backlog.oldest_arrived)
        b = self.budget
        backlogged = (age > BACKLOG_MAX_AGE_S
                      or backlog.messages > BACKLOG_MAX_FILL * b.max_messages
                      or backlog.bytes > BACKLOG_MAX_FILL * b.max_bytes)
        backlogged = backlogged or (self.role is not None and self.role.queue_full)
        ok = self.ingest.connected and not stalled and not self.ingest.fatal and not backlogged
        return {"ok": ok, "status": "ok" if ok else "backlog" if backlogged else "down",
                "mqtt_connected": self.ingest.connected, "log_size": self.store.size(),
                "sequencer_stalled": stalled,
                "role": "single" if self.role is None else
                        "sequencer" if self.role.leading else "verifier",
                "backlog": {"messages": backlog.messages, "bytes": backlog.bytes,
                            "oldest_age_s": round(age, 3), "in_flight": len(self._inflight),
                            "max_messages": b.max_messages, "max_bytes": b.max_bytes,
                            "max_age_s": BACKLOG_MAX_AGE_S},
                "devices_quarantined": self.breaker.quarantined(),
                # a payout worker that refuses to work until restarted (None: none or fine)
                "payout_fatal": None if self.payout is None else self.payout.fatal}
