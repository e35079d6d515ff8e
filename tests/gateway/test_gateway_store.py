"""What only the SQLite log store does: tampering below the interface is caught.

What every log store must do is in tests/contracts/test_log_store_contract.py."""

from __future__ import annotations

import sqlite3
import time

import pytest

from gateway.anchor import LocalAnchor
from gateway.checkpoints import Checkpointer
from gateway.config import CheckpointConfig
from gateway.gatewaykey import GatewayKey
from gateway.metrics import GatewayMetrics
from gateway.sqlite_store import SQLiteLogStore
from gateway.store import NewLeaf
from protocol.errors import StorageError


def leaf(i: int, device: bytes = b"d" * 16) -> NewLeaf:
    raw = f"record {i}".encode()
    return NewLeaf(device, i, bytes(32), bytes(32), raw, "s", 0)


def test_gateway_refuses_a_log_that_disagrees_with_its_checkpoint(tmp_path) -> None:
    path = tmp_path / "log.sqlite"
    store = SQLiteLogStore(path)
    key = GatewayKey.generate("gw.test/log")

    def checkpointer(s: SQLiteLogStore) -> Checkpointer:
        return Checkpointer(s, key, LocalAnchor(lambda: 0), config=CheckpointConfig(),
                            metrics=GatewayMetrics(), wall_ms=lambda: 0,
                            monotonic=time.monotonic)

    with store.transaction() as tx:
        for i in range(4):
            tx.append(leaf(i))
    assert checkpointer(store).issue().size == 4
    store.close()
    with sqlite3.connect(path) as conn:  # someone rewrites history under the gateway
        conn.execute("UPDATE nodes SET hash = ? WHERE level = 2 AND idx = 0", (bytes(32),))
    store = SQLiteLogStore(path)
    with pytest.raises(StorageError, match="does not match"):
        checkpointer(store)
    store.close()
