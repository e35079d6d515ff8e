"""An equivocating device is reported in the gateway's log once per interval, however many
equivocations it sends; a group without any reports nothing (gateway.sequencer)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gateway.anchor import LocalAnchor
from gateway.checkpoints import Checkpointer
from gateway.config import CheckpointConfig, Limits
from gateway.gatewaykey import GatewayKey
from gateway.metrics import GatewayMetrics
from gateway.sequencer import Sequencer
from gateway.sqlite_store import SQLiteLogStore
from gateway.verify import PreparedBatch, prepare_batch
from protocol import reasons
from protocol.batch import records_topic
from tests.gateway.gwkit import RATE, START_WALL_MS, TestDevice, batch_bytes

NOW_MS = START_WALL_MS + 86_400_000


def _prepared(store: SQLiteLogStore, dev: TestDevice, records: list[bytes],
              batch_id: int) -> PreparedBatch:
    snapshot = store.device(dev.device_id)
    return prepare_batch(records_topic(dev.device_id), batch_bytes(records, batch_id), 0.0,
                         Limits(), lambda kid: snapshot if kid == dev.device_id else None)


def test_equivocations_are_logged_once_per_device_and_clean_groups_log_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = SQLiteLogStore(tmp_path / "log.sqlite")
    key = GatewayKey.generate("gateway.test/edgeproof")
    metrics = GatewayMetrics()
    checkpointer = Checkpointer(store, key, LocalAnchor(lambda: NOW_MS),
                                config=CheckpointConfig(), metrics=metrics,
                                wall_ms=lambda: NOW_MS, monotonic=lambda: 0.0)
    sequencer = Sequencer(store, checkpointer, key, limits=Limits(), metrics=metrics,
                          wall_ms=lambda: NOW_MS, monotonic=lambda: 0.0)
    try:
        dev = TestDevice.create("two-faced", 3)
        store.register_device(dev.name, dev.enrolled_key, "alice", RATE, NOW_MS)
        with caplog.at_level(logging.WARNING, logger="gateway.sequencer"):
            sequencer.commit(_prepared(store, dev, dev.records(5), 1))
            assert caplog.records == []
            twin = TestDevice.create("two-faced", 3)  # same key, same seqs, other readings
            twin.mono_ms += 7
            receipts = sequencer.commit_group([_prepared(store, twin, twin.records(3), 2),
                                               _prepared(store, twin, twin.records(2), 3)])
        outcomes = [o for r in receipts if r is not None for o in r.receipt.outcomes]
        assert [o.reason for o in outcomes] == [reasons.EQUIVOCATION] * 5
        assert len(caplog.records) == 1
        assert dev.device_id.hex() in caplog.records[0].getMessage()
        # The first batch's 3 at once; the next 2 wait for the interval's summary.
        assert "signed 3 record(s)" in caplog.records[0].getMessage()
    finally:
        store.close()
