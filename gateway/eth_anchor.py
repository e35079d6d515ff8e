"""The ``ethereum`` anchor: checkpoint hashes written to an Ethereum-compatible chain.

Every ``anchor.interval_s`` at most one transaction carries the hash of the LATEST
checkpoint handed to the backend: ``to`` = ``anchor.to_address`` (default: the sender
itself), value 0, input data ``b"EPv1" || checkpoint_hash(note)`` (36 bytes;
:func:`protocol.checkpoint.checkpoint_hash`, SHA-256 of the signed note). Anyone can find
the hash in the transaction's input. Checkpoints that queued in between are not anchored
one by one: each names its predecessor's hash (``prev``), so anchoring the latest commits
to all of them; they are counted as ``superseded``.

Transactions are legacy (type 0, EIP-155 chain id), signed locally with eth-account from
a hex private key in a mode-0600 file; the node never holds the key. The backend talks
JSON-RPC over ``requests`` (:mod:`osutil.jsonrpc`) on its own worker thread, so the
sequencer never waits for the chain: :meth:`EthereumAnchor.anchor` only persists the
checkpoint in the queue (:mod:`gateway.eth_queue`) and returns None. When several gateway
processes share one log, the queue is in their database and only the sequencer runs the
worker: :meth:`~EthereumAnchor.start` when it takes over, :meth:`~EthereumAnchor.stop` when
it loses the lock (gateway.cluster); the next one resumes the same persisted transactions.

Never anchored twice: a transaction is persisted before it is broadcast; one checkpoint is
in flight at a time and all its transactions share one nonce, so at most one of them can
be mined. A transaction is re-sent with the SAME nonce when the node lost it (``dropped``:
not found for ``resend_after_s``) or when it stays pending that long (``stuck``: replaced
with a 12.5% higher gas price). A transaction is only (re)broadcast when the node does not
know it and its nonce is not yet used on chain (ganache 7 re-mines a known raw transaction
it is sent again). A checkpoint gets a NEW nonce only when the old one was used on chain:
by our own reverted transaction (``reverted``, up to ``max_attempts`` times, then a
failure), or by a transaction that is not ours (``nonce_taken``). A node that is down or
answers errors is retried with exponential back-off; nothing is lost meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests
from eth_utils.address import is_checksum_address, to_checksum_address
from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.config import EthereumAnchorConfig
from gateway.eth_queue import CONFIRMED, FAILED, QUEUED, SENDING, AnchorQueue, QueuedAnchor, SentTx
from osutil.jsonrpc import JsonRpc, RpcError, node_address, quantity
from protocol.checkpoint import checkpoint_hash, checkpoint_size
from protocol.errors import ConfigError, StorageError, TransportError
from rewards.ethkey import load_eth_key, sign_transaction

log = logging.getLogger(__name__)
ANCHOR_PREFIX = b"EPv1"  # 4 bytes before the 32-byte checkpoint hash in the input data
QUEUE_FILE = "anchor-ethereum.sqlite"
PREFIX = "edgeproof_gateway"
RETRY_REASONS = ("dropped", "stuck", "reverted", "nonce_taken")


@dataclass(frozen=True)
class EthTiming:
    """How often the worker polls, and its back-off after node errors."""

    poll_s: float = 1.0
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0
    rpc_timeout_s: float = 5.0


def anchor_data(checkpoint_note: str) -> bytes:
    """Return the transaction input that anchors a note: ``b"EPv1" || checkpoint_hash``."""
    return ANCHOR_PREFIX + checkpoint_hash(checkpoint_note)


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.transactions = Counter(f"{PREFIX}_anchor_transactions",
                                    "Anchoring transactions signed and broadcast", registry=r)
        self.confirmed = Counter(f"{PREFIX}_anchors_confirmed",
                                 "Checkpoints whose anchoring transaction succeeded", registry=r)
        self.retries = Counter(f"{PREFIX}_anchor_retries",
                               "Anchoring transactions re-sent, per reason", ["reason"],
                               registry=r)
        for reason in RETRY_REASONS:
            self.retries.labels(reason=reason)
        self.failures = Counter(f"{PREFIX}_anchor_failures",
                                "Checkpoints given up after max_attempts reverted transactions",
                                registry=r)
        self.superseded = Counter(f"{PREFIX}_anchors_superseded",
                                  "Queued checkpoints covered by a later anchored one", registry=r)
        self.rpc_errors = Counter(f"{PREFIX}_anchor_rpc_errors",
                                  "Node calls that failed (unreachable) or were refused",
                                  ["kind"], registry=r)
        for kind in ("unreachable", "refused", "internal"):
            self.rpc_errors.labels(kind=kind)
        self.queue_depth = Gauge(f"{PREFIX}_anchor_queue_depth",
                                 "Checkpoints queued or in flight", registry=r)
        self.anchored_size = Gauge(f"{PREFIX}_anchor_confirmed_size",
                                   "Tree size of the latest anchored checkpoint", registry=r)


class EthereumAnchor:
    """A :class:`gateway.anchor.Anchor` on an Ethereum JSON-RPC node."""

    name = "ethereum"

    def __init__(self, config: EthereumAnchorConfig, queue: AnchorQueue, *,
                 wall_ms: Callable[[], int], monotonic: Callable[[], float],
                 registry: CollectorRegistry | None = None, timing: EthTiming | None = None,
                 session: requests.Session | None = None) -> None:
        """Load the key; nothing is sent before :meth:`start`. The anchor owns ``queue``
        (:meth:`close` closes it).

        Raises KeyFileError for an unusable key file, ConfigError for a bad to_address and
        StorageError if the queue cannot be read.
        """
        self.config = config
        self._key, self.address = load_eth_key(config.key_file)
        self.to_address = _target(config.to_address, self.address)
        self._timing = timing or EthTiming()
        self._wall_ms, self._monotonic = wall_ms, monotonic
        self._rpc = JsonRpc(config.rpc_url, timeout_s=self._timing.rpc_timeout_s,
                            session=session)
        self._queue = queue
        self.metrics = _Metrics(registry or CollectorRegistry())
        self.fatal: str | None = None
        self._chain_ok = False
        self._errors = 0
        self._retry_at = 0.0
        self._last_send: float | None = None
        self._unanswered: set[str] = set()  # broadcasts that got no answer yet
        self._missing_since: dict[str, float] = {}
        self._pending_since: dict[str, float] = {}
        self._stop, self._wake = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        self._resume_in_flight()

    def _resume_in_flight(self) -> None:
        """Start the worker's memory afresh from the queue (at open, and at each start: a
        shared log's queue may have been worked by another process in between)."""
        self._errors, self._retry_at, self._last_send = 0, 0.0, None
        self._unanswered.clear()
        self._missing_since.clear()
        self._pending_since.clear()
        current = self._queue.in_flight()
        if current is not None and current.nonce is not None:
            # After a restart we do not know whether the last broadcast arrived: send it
            # again if the node turns out not to know it (and its nonce is still unused).
            txs = self._queue.txs(current.checkpoint_hash, current.nonce)
            if txs:
                self._unanswered.add(txs[-1].tx_hash)
        self._update_gauges()

    # --- the Anchor interface ----------------------------------------------------------------

    def anchor(self, checkpoint_note: str) -> None:
        """Queue a persisted checkpoint (idempotent); return None: the worker anchors it.

        The empty checkpoint (size 0, signed at first start) is not anchored: it commits to
        no record, and ``GET /v1/anchors?size=N`` (N >= 1) could never name it.
        Raises StorageError if the queue cannot be written.
        """
        size = checkpoint_size(checkpoint_note)
        if size == 0:
            return
        digest = checkpoint_hash(checkpoint_note)
        if self._queue.add(digest, size, checkpoint_note, self._wall_ms()):
            self._update_gauges()
            self._wake.set()

    def start(self) -> None:
        """Check the node's chain id, then start the worker thread (again after :meth:`stop`).

        Raises ConfigError if the node reports another chain id than ``anchor.chain_id``.
        A node that cannot be reached is not an error here: anchors queue until it is back.
        Raises StorageError if the queue cannot be read.
        """
        if self._thread is not None:
            return
        try:
            self._check_chain()
        except (TransportError, RpcError) as exc:
            log.warning("ethereum anchor: cannot check the chain id yet (%s); anchors queue "
                        "until the node answers", exc)
        if self.fatal:
            raise ConfigError(self.fatal)
        self._resume_in_flight()
        log.info("ethereum anchor: sender %s, to %s, chain %d, node %s", self.address,
                 self.to_address, self.config.chain_id, node_address(self.config.rpc_url))
        self._stop = threading.Event()  # the worker's own: one that outlives stop() exits
        self._thread = threading.Thread(target=self._run, args=(self._stop,),
                                        name="gateway-eth-anchor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the worker (within one RPC time-out); the queue stays open for reads.

        A shared log's sequencer calls it when another process takes over
        (gateway.cluster); :meth:`start` resumes from the queue.
        """
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self._timing.rpc_timeout_s * 3)
            if self._thread.is_alive():
                log.error("ethereum anchor: the worker did not stop within %.0f s; it "
                          "exits after its current step", self._timing.rpc_timeout_s * 3)
            self._thread = None

    def close(self) -> None:
        """Stop the worker; queued anchors stay for the next run (or the next sequencer)."""
        self.stop()
        self._rpc.close()
        self._queue.close()

    def lookup(self, min_size: int | None) -> dict[str, object] | None:
        """The latest confirmed anchor, or the earliest covering ``min_size`` leaves, as JSON."""
        found = self._queue.confirmed(min_size)
        return None if found is None else self._as_json(found)

    def listing(self, after_size: int, limit: int) -> list[dict[str, object]]:
        """Confirmed anchors of checkpoints larger than ``after_size``, smallest first."""
        return [self._as_json(found) for found in self._queue.confirmed_after(after_size, limit)]

    def _as_json(self, found: QueuedAnchor) -> dict[str, object]:
        return {"backend": self.name, "chain_id": found.chain_id, "tx_hash": found.tx_hash,
                "block_number": found.block_number, "status": found.status,
                "checkpoint_hash": found.checkpoint_hash.hex(), "size": found.size,
                "note": found.note, "anchored_ms": found.final_ms, "sender": self.address,
                "to": self.to_address, "data_prefix": ANCHOR_PREFIX.decode("ascii")}

    def entry(self, note: str) -> QueuedAnchor | None:
        """The queue entry of a checkpoint note (state, transaction, block), or None."""
        return self._queue.get(checkpoint_hash(note))

    # --- the worker ----------------------------------------------------------------------------

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                delay = self.step()
            except StorageError as exc:
                log.error("ethereum anchor: queue failed: %s", exc)
                delay = self._timing.backoff_cap_s
            except Exception:  # the worker must not die silently; the error is logged
                log.exception("ethereum anchor: unexpected error in the worker")
                self.metrics.rpc_errors.labels(kind="internal").inc()
                delay = self._timing.backoff_cap_s
            self._wake.wait(timeout=delay)
            self._wake.clear()

    def step(self) -> float:
        """Do what is due now (send, track, re-send); return seconds until the next step.

        Node failures are counted and back off exponentially; raises StorageError only.
        """
        now = self._monotonic()
        if self.fatal:
            return self._timing.backoff_cap_s
        if now < self._retry_at:
            return self._retry_at - now
        try:
            self._check_chain()
            current = self._queue.in_flight()
            wait = self._track(current, now) if current else self._send_next(now)
        except (TransportError, RpcError) as exc:
            kind = "refused" if isinstance(exc, RpcError) else "unreachable"
            self.metrics.rpc_errors.labels(kind=kind).inc()
            self._errors += 1
            delay = min(self._timing.backoff_cap_s,
                        self._timing.backoff_base_s * 2.0 ** (self._errors - 1))
            self._retry_at = now + delay
            log.warning("ethereum anchor: %s; retrying in %.1f s", exc, delay)
            return delay
        finally:
            self._update_gauges()
        self._errors = 0
        return min(self._timing.poll_s, wait) if wait is not None else self._timing.poll_s

    def _check_chain(self) -> None:
        if self._chain_ok:
            return
        node_chain = self._rpc.chain_id()
        if node_chain != self.config.chain_id:
            self.fatal = (f"anchor.chain_id is {self.config.chain_id} but the node at "
                          f"{node_address(self.config.rpc_url)} reports chain id {node_chain}")
            log.error("ethereum anchor: %s; not anchoring", self.fatal)
            return
        self._chain_ok = True

    def _send_next(self, now: float) -> float | None:
        candidate = self._queue.newest_queued()
        if candidate is None:
            return None
        if self._last_send is not None and now - self._last_send < self.config.interval_s:
            return self.config.interval_s - (now - self._last_send)
        superseded = self._queue.supersede_older(candidate.size, self._wall_ms())
        if superseded:
            self.metrics.superseded.inc(superseded)
            log.info("ethereum anchor: %d queued checkpoint(s) covered by the one of size %d",
                     superseded, candidate.size)
        data = ANCHOR_PREFIX + candidate.checkpoint_hash
        gas = self.config.gas_limit or self._estimate(candidate, data, now)
        if gas is None:
            return None
        nonce = self._rpc.nonce(self.address, "pending")
        gas_price = self._rpc.gas_price()
        self._last_send = now
        self._sign_and_send(candidate.checkpoint_hash, nonce, gas_price, gas, now)
        return None

    def _estimate(self, candidate: QueuedAnchor, data: bytes, now: float) -> int | None:
        try:
            estimate = self._rpc.estimate_gas(self.address, self.to_address, data)
        except RpcError as exc:
            if not exc.reverted:
                raise
            self._last_send = now  # space the attempts like transactions
            self._reverted(candidate, None, None, f"eth_estimateGas: {exc.message}")
            return None
        return estimate + estimate // 5  # margin: state may change before inclusion

    def _sign_and_send(self, digest: bytes, nonce: int, gas_price: int, gas: int,
                       now: float) -> None:
        tx = {"nonce": nonce, "gasPrice": gas_price, "gas": gas, "to": self.to_address,
              "value": 0, "data": ANCHOR_PREFIX + digest, "chainId": self.config.chain_id}
        signed = sign_transaction(tx, self._key.value)
        sent = SentTx(signed.tx_hash, digest, nonce, gas_price, gas, signed.raw,
                      self._wall_ms())
        self._queue.record_tx(sent)  # write-ahead: persisted before the node sees it
        self._unanswered.add(sent.tx_hash)
        self._pending_since[sent.tx_hash] = now
        self._broadcast(sent)

    def _broadcast(self, sent: SentTx) -> None:
        self.metrics.transactions.inc()
        reported = self._rpc.send_raw(sent.raw)
        self._unanswered.discard(sent.tx_hash)
        if reported != sent.tx_hash:
            log.warning("ethereum anchor: node reported tx %s for our %s", reported, sent.tx_hash)
        log.info("ethereum anchor: sent tx %s (nonce %d, gas price %d)", sent.tx_hash,
                 sent.nonce, sent.gas_price)

    def _track(self, current: QueuedAnchor, now: float) -> float | None:
        assert current.nonce is not None
        txs = self._queue.txs(current.checkpoint_hash, current.nonce)
        # The nonce first, the receipts after: a transaction of ours mined in between
        # then shows up as a receipt, never as "someone else used our nonce".
        used = self._rpc.nonce(self.address, "latest") > current.nonce
        for tx in reversed(txs):
            receipt = self._rpc.receipt(tx.tx_hash)
            if receipt is not None and receipt.get("blockNumber") is not None:
                self._on_receipt(current, tx, receipt)
                return None
        if used:
            self._forget(txs)
            self.metrics.retries.labels(reason="nonce_taken").inc()
            log.warning("ethereum anchor: nonce %d was used by a transaction that is not ours; "
                        "re-sending checkpoint of size %d", current.nonce, current.size)
            self._queue.requeue(current.checkpoint_hash, current.attempts, "nonce_taken")
            return None
        self._follow_pending(current, txs, now)
        return None

    def _follow_pending(self, current: QueuedAnchor, txs: list[SentTx], now: float) -> None:
        newest = txs[-1]
        for tx in reversed(txs):
            if self._rpc.transaction(tx.tx_hash) is not None:  # the node holds it: pending
                self._unanswered.discard(newest.tx_hash)
                self._missing_since.pop(newest.tx_hash, None)
                since = self._pending_since.setdefault(tx.tx_hash, now)
                if now - since >= self.config.resend_after_s:
                    self._resend(current, txs, "stuck", now)
                return
        if newest.tx_hash in self._unanswered:
            self._broadcast(newest)  # the broadcast never got an answer: the same bytes again
            return
        since = self._missing_since.setdefault(newest.tx_hash, now)
        if now - since >= self.config.resend_after_s:
            self._resend(current, txs, "dropped", now)

    def _resend(self, current: QueuedAnchor, txs: list[SentTx], reason: str,
                now: float) -> None:
        assert current.nonce is not None
        self._forget(txs)
        self.metrics.retries.labels(reason=reason).inc()
        highest = max(tx.gas_price for tx in txs)
        floor = highest + highest // 8 + 1 if reason == "stuck" else highest
        price = max(self._rpc.gas_price(), floor)
        log.warning("ethereum anchor: tx %s %s; re-sending with the same nonce %d",
                    txs[-1].tx_hash, reason, current.nonce)
        self._sign_and_send(current.checkpoint_hash, current.nonce, price, txs[-1].gas, now)

    def _on_receipt(self, current: QueuedAnchor, tx: SentTx, receipt: dict[str, Any]) -> None:
        block = quantity(receipt.get("blockNumber"), "receipt block number")
        status = quantity(receipt.get("status"), "receipt status")
        if self._rpc.block_number() - block + 1 < self.config.confirmations:
            return
        self._forget(self._queue.txs(current.checkpoint_hash, tx.nonce))
        if status != 1:
            self._reverted(current, tx.tx_hash, block, "reverted on chain (receipt status 0)")
            return
        self._queue.finish(current.checkpoint_hash, CONFIRMED, tx_hash=tx.tx_hash,
                           block_number=block, status=1, chain_id=self.config.chain_id,
                           now_ms=self._wall_ms(), attempts=current.attempts)
        self.metrics.confirmed.inc()
        log.info("ethereum anchor: checkpoint of size %d anchored in tx %s, block %d",
                 current.size, tx.tx_hash, block)

    def _reverted(self, current: QueuedAnchor, tx_hash: str | None, block: int | None,
                  detail: str) -> None:
        attempts = current.attempts + 1
        if attempts < self.config.max_attempts:
            self.metrics.retries.labels(reason="reverted").inc()
            log.warning("ethereum anchor: checkpoint of size %d: %s (attempt %d of %d); "
                        "retrying", current.size, detail, attempts, self.config.max_attempts)
            self._queue.requeue(current.checkpoint_hash, attempts, detail, tx_hash)
            return
        self.metrics.failures.inc()
        log.error("ethereum anchor: checkpoint of size %d NOT anchored: %s (attempt %d of %d)",
                  current.size, detail, attempts, self.config.max_attempts)
        self._queue.finish(current.checkpoint_hash, FAILED, tx_hash=tx_hash, block_number=block,
                           status=0 if tx_hash else None, chain_id=self.config.chain_id,
                           now_ms=self._wall_ms(), attempts=attempts, detail=detail)

    def _forget(self, txs: list[SentTx]) -> None:
        for tx in txs:
            self._unanswered.discard(tx.tx_hash)
            self._missing_since.pop(tx.tx_hash, None)
            self._pending_since.pop(tx.tx_hash, None)

    def _update_gauges(self) -> None:
        counts = self._queue.counts()
        self.metrics.queue_depth.set(counts[QUEUED] + counts[SENDING])
        latest = self._queue.confirmed(None)
        if latest is not None:
            self.metrics.anchored_size.set(latest.size)


def _target(configured: str | None, sender: str) -> str:
    """The checksum ``to`` address; raise ConfigError if a mixed-case one fails EIP-55."""
    if configured is None:
        return sender
    mixed = configured[2:] != configured[2:].lower() and configured[2:] != configured[2:].upper()
    if mixed and not is_checksum_address(configured):
        raise ConfigError("anchor.to_address: mixed-case address fails its EIP-55 checksum")
    return str(to_checksum_address(configured))

