"""The running gateway: wires store, verification, sequencer, MQTT, HTTP and systemd.

Threads:

- paho's network thread calls :meth:`GatewayService._on_message`, which only submits the
  stateless checks (:func:`gateway.verify.prepare_batch`) to a small pool (signature
  checks run in parallel; PyNaCl releases the GIL) and queues the future in arrival order;
- the *sequencer thread* (the caller of :meth:`GatewayService.run`) takes the futures in
  order, commits the batches (those already queued together, in one group commit;
  :class:`gateway.sequencer.Sequencer`), publishes each receipt, then acknowledges each
  MQTT message; it also issues interval checkpoints and pings the systemd watchdog when
  it made progress;
- uvicorn serves the API on its own thread.

The number of batches in flight is bounded by the broker: with manual acknowledgements it
sends at most its in-flight limit (Mosquitto ``max_inflight_messages``) of unacknowledged
messages. Stopping (:meth:`request_stop`, wired to SIGTERM by the CLI) finishes the batch
in progress, disconnects (queued but unprocessed messages stay unacknowledged and are
redelivered to the next run), signs a final checkpoint and closes the store.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import uvicorn

from gateway.anchor import open_anchor
from gateway.api import ApiContext, create_app
from gateway.checkpoints import Checkpointer
from gateway.config import GatewayConfig, HttpLimits
from gateway.gatewaykey import load_gateway_key
from gateway.http_guard import server_config
from gateway.ingest import Message, MqttIngest
from gateway.metrics import GatewayMetrics
from gateway.sequencer import Sequencer
from gateway.sqlite_store import SQLiteLogStore
from gateway.verify import PreparedBatch, prepare_batch
from osutil.sdnotify import Notifier
from protocol.errors import ConfigError, RejectedByPeer, StorageError
from protocol.keys import Secret, read_secret_file

log = logging.getLogger(__name__)
MIN_ADMIN_TOKEN_CHARS = 16
STORAGE_RETRIES = 3
MAX_GROUP_BATCHES = 16  # batches committed together when they queue up (one fsync)
_Pending = tuple[Message, Future[PreparedBatch]]


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
        # None is the wake-up sentinel put by request_stop.
        self._pending: queue.Queue[_Pending | None] = queue.Queue()
        self.key = load_gateway_key(config.key_file)
        admin_token = load_admin_token(config)
        self.metrics = GatewayMetrics()
        self.store = SQLiteLogStore(config.db_path)
        self.anchor = open_anchor(config, clock_ms, monotonic, self.metrics.registry)
        self.checkpointer = Checkpointer(self.store, self.key, self.anchor,
                                         config=config.checkpoints, metrics=self.metrics,
                                         wall_ms=clock_ms, monotonic=monotonic)
        self.sequencer = Sequencer(self.store, self.checkpointer, self.key,
                                   limits=config.limits, metrics=self.metrics,
                                   wall_ms=clock_ms, monotonic=monotonic)
        self._pool = ThreadPoolExecutor(max_workers=config.verify_threads,
                                        thread_name_prefix="gateway-verify")
        self.ingest = MqttIngest(config.broker, self._on_message, monotonic)
        self.ingest.on_publish_failure = self.metrics.receipt_failures.inc
        api = ApiContext(self.store, self.metrics, self.key.verifier_text(), admin_token,
                         clock_ms, self._health, self.anchor.lookup)
        self.http = HttpServer(
            create_app(api, config.http), config.http_host, config.http_port, config.http,
            self.metrics.http_rejected)
        self._last_progress = monotonic()

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Sign the first checkpoint if needed, serve HTTP, connect MQTT, tell systemd.

        Raises TransportError/RejectedByPeer if the broker is unreachable or refuses.
        """
        self.checkpointer.latest_note()
        self.checkpointer.issue()  # a crash may have left leaves after the last checkpoint
        self.anchor.start()  # ConfigError if an ethereum node is on another chain
        self.http.start()
        self.ingest.start()
        self._notifier.ready(self._status())
        log.info("gateway %s ready: log size %d, API on %s:%d", self.key.name,
                 self.store.size(), self.config.http_host, self.http.port)

    def request_stop(self) -> None:
        """Ask :meth:`run` to return after the batch in progress (not from a signal handler)."""
        self._stop.set()
        self._pending.put(None)

    def run(self) -> None:
        """Process batches until :meth:`request_stop`; raise if the broker or store fails."""
        while not self._stop.is_set():
            if self.ingest.fatal:
                raise RejectedByPeer(self.ingest.fatal)
            try:
                item = self._pending.get(timeout=self._idle_timeout())
            except queue.Empty:
                self.sequencer.checkpoint_if_due()
            else:
                group = self._group(item)
                if group:
                    self._process(group)
            self._last_progress = self._monotonic()
            if self._notifier.watchdog(round(self._last_progress * 1000), progressed=True):
                self._notifier.status(self._status())

    def close(self) -> None:
        """Stop ingest, sign a final checkpoint, stop HTTP, close the store."""
        self._notifier.stopping()
        self.ingest.stop()
        self._pool.shutdown(wait=True, cancel_futures=True)
        try:
            self.checkpointer.issue()
        finally:
            self.anchor.close()  # anchors still queued are persisted for the next run
            self.http.stop()
            self.store.close()

    # --- the pipeline ----------------------------------------------------------------------

    def _on_message(self, message: Message) -> None:
        future = self._pool.submit(prepare_batch, message.topic, message.payload,
                                   message.arrived, self.config.limits, self.store.device)
        self._pending.put((message, future))

    def _group(self, first: _Pending | None) -> list[_Pending]:
        """The first batch plus those already waiting behind it (one group commit)."""
        group = [] if first is None else [first]
        while len(group) < MAX_GROUP_BATCHES:
            try:
                item = self._pending.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                group.append(item)
        return group

    def _process(self, group: list[_Pending]) -> None:
        prepared = [future.result() for _, future in group]
        for attempt in range(1, STORAGE_RETRIES + 1):
            try:
                receipts = self.sequencer.commit_group(prepared)
                break
            except StorageError as exc:
                self.metrics.storage_errors.inc(len(group))
                log.error("store failed on %d batches (attempt %d): %s", len(group), attempt,
                          exc)
                if attempt == STORAGE_RETRIES:
                    raise
                time.sleep(0.2 * attempt)
        # Receipts only after the commit; the MQTT ack only after the receipt is queued.
        for (message, _), signed in zip(group, receipts, strict=True):
            if signed is not None and self.ingest.publish(signed.topic, signed.payload):
                self.metrics.receipts.inc()
            self.ingest.ack(message)

    def _idle_timeout(self) -> float:
        return min(1.0, max(0.01, self.checkpointer.seconds_until_due()))

    def _status(self) -> str:
        latest = self.checkpointer.latest
        return (f"log size {self.store.size()}, checkpoint {latest.size if latest else 0}, "
                f"mqtt {'up' if self.ingest.connected else 'down'}")

    def _health(self) -> dict[str, object]:
        stalled = self._monotonic() - self._last_progress > 30.0
        return {"ok": self.ingest.connected and not stalled and not self.ingest.fatal,
                "mqtt_connected": self.ingest.connected, "log_size": self.store.size(),
                "sequencer_stalled": stalled}
