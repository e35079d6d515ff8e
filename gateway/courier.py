"""Delivering logged consents and revocations to devices over MQTT (PROTOCOL.md §17).

Two ways a document reaches a device:

- *push*: right after a consent or revocation is logged, :meth:`PolicyCourier.push`
  publishes it to each device it concerns (``complete`` false). An offline device with a
  persistent session gets it from the broker when it reconnects;
- *sync*: a device sends ``policy-sync`` with the first leaf index it lacks on every
  connect; :meth:`PolicyCourier.sync` notes it (cheap, on paho's network thread) and the
  courier's thread answers with every document for the device from that index up to the
  log size read before the query, the last part ``complete``.

Bounded by design: pending syncs are one entry per device (a newer request replaces the
older, keeping the lower index), at most ``max_pending`` devices; a device is answered at
most once per ``min_interval_s`` (later requests wait, merged); what does not fit is
counted in ``edgeproof_gateway_policy_syncs_dropped`` and the device asks again on its
next connect.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from gateway.contracts import Logged
from gateway.metrics import GatewayMetrics
from gateway.store import LogStore
from protocol.delivery import PolicyDelivery, pack_deliveries, policy_topic
from protocol.errors import StorageError

log = logging.getLogger(__name__)
PAGE = 256


class PolicyCourier:
    """Pushes new documents and answers devices' syncs, on one thread of its own."""

    def __init__(self, store: LogStore, publish: Callable[[str, bytes], bool],
                 metrics: GatewayMetrics, monotonic: Callable[[], float], *,
                 max_pending: int = 4096, min_interval_s: float = 1.0) -> None:
        self._store, self._publish, self._metrics = store, publish, metrics
        self._monotonic = monotonic
        self._max_pending, self._min_interval = max_pending, min_interval_s
        self._pending: dict[bytes, int] = {}
        self._answered: dict[bytes, float] = {}
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="gateway-courier", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    # --- producers ---------------------------------------------------------------------

    def push(self, logged: Logged) -> None:
        """Publish a just-logged consent or revocation to each device it concerns."""
        doc = logged.document
        delivery = PolicyDelivery(((doc.index, doc.raw),), doc.index + 1, False).to_cbor()
        for device_id in logged.devices:
            if self._publish(policy_topic(device_id), delivery):
                self._metrics.policy_deliveries.labels(kind="push").inc()

    def sync(self, device_id: bytes, from_index: int) -> None:
        """Note a device's sync request (any thread; never blocks on the store)."""
        with self._cond:
            if device_id in self._pending:
                self._pending[device_id] = min(self._pending[device_id], from_index)
            elif len(self._pending) >= self._max_pending:
                self._metrics.policy_syncs_dropped.labels(reason="queue_full").inc()
                return
            else:
                self._pending[device_id] = from_index
            self._cond.notify()

    # --- the courier's thread --------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                due = self._next_due()
                while not self._stop and due is None:
                    self._cond.wait(self._wait_time())
                    due = self._next_due()
                if self._stop or due is None:
                    return
                device_id, from_index = due
                del self._pending[device_id]
                self._answered[device_id] = self._monotonic()
                self._forget_old_answers()
            try:
                self.answer(device_id, from_index)
            except StorageError as exc:
                self._metrics.policy_syncs_dropped.labels(reason="storage").inc()
                log.warning("policy sync for %s failed: %s", device_id.hex(), exc)
            # One thread answers every device: a fault in one answer must not end it.
            except Exception:
                self._metrics.policy_syncs_dropped.labels(reason="error").inc()
                log.exception("policy sync for %s failed", device_id.hex())

    def _next_due(self) -> tuple[bytes, int] | None:
        now = self._monotonic()
        for device_id, from_index in self._pending.items():
            last = self._answered.get(device_id)
            if last is None or now - last >= self._min_interval:
                return device_id, from_index
        return None

    def _wait_time(self) -> float | None:
        if not self._pending:
            return None
        return max(0.01, self._min_interval / 4)

    def _forget_old_answers(self) -> None:
        if len(self._answered) > 2 * self._max_pending:
            cutoff = self._monotonic() - self._min_interval
            self._answered = {d: t for d, t in self._answered.items() if t >= cutoff}

    def answer(self, device_id: bytes, from_index: int) -> None:
        """Publish every document for ``device_id`` from ``from_index`` up to the log size."""
        size = self._store.size()  # read first: later documents are pushed on their own
        found: list[tuple[int, bytes]] = []
        start = from_index
        while start < size:  # a from_index past the log (up to 2^64 - 1) asks for nothing
            page = [d for d in self._store.device_documents(device_id, start, PAGE)
                    if d.index < size]
            found += [(d.index, d.raw) for d in page]
            if len(page) < PAGE:
                break
            start = page[-1].index + 1
        for part in pack_deliveries(found, max(size, from_index)):
            if self._publish(policy_topic(device_id), part.to_cbor()):
                self._metrics.policy_deliveries.labels(kind="sync").inc()
