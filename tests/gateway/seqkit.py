"""A sequencer in the test's own process over a real store, and batches prepared for it
(gateway.verify, as a worker would), for tests of the sequencer's rules and reports."""

from __future__ import annotations

from gateway.anchor import LocalAnchor
from gateway.checkpoints import Checkpointer
from gateway.config import CheckpointConfig, Limits
from gateway.gatewaykey import GatewayKey
from gateway.metrics import GatewayMetrics
from gateway.sequencer import Sequencer
from gateway.sqlite_store import SQLiteLogStore
from gateway.verify import PreparedBatch, prepare_batch
from protocol.batch import records_topic
from tests.gateway.gwkit import START_WALL_MS, TestDevice, batch_bytes

NOW_MS = START_WALL_MS + 86_400_000


def sequencer_for(store: SQLiteLogStore) -> Sequencer:
    """A sequencer of ``store`` with a new gateway key and a clock stopped at NOW_MS."""
    key = GatewayKey.generate("gateway.test/edgeproof")
    metrics = GatewayMetrics()
    checkpointer = Checkpointer(store, key, LocalAnchor(lambda: NOW_MS),
                                config=CheckpointConfig(), metrics=metrics,
                                wall_ms=lambda: NOW_MS, monotonic=lambda: 0.0)
    return Sequencer(store, checkpointer, key, limits=Limits(), metrics=metrics,
                     wall_ms=lambda: NOW_MS, monotonic=lambda: 0.0)


def prepared(store: SQLiteLogStore, dev: TestDevice, records: list[bytes],
             batch_id: int) -> PreparedBatch:
    """``records`` as batch ``batch_id`` of ``dev``, checked against the registry's entry."""
    snapshot = store.device(dev.device_id)
    return prepare_batch(records_topic(dev.device_id), batch_bytes(records, batch_id), 0.0,
                         Limits(), lambda kid: snapshot if kid == dev.device_id else None)
