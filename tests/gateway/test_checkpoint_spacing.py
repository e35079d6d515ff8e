"""When checkpoints are signed: by leaf count, by interval, and never so often that their
own cost (the whole balances table each time) takes over the sequencer."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.anchor import LocalAnchor
from gateway.checkpoints import MAX_CHECKPOINT_SHARE, Checkpointer
from gateway.config import CheckpointConfig
from gateway.gatewaykey import GatewayKey
from gateway.metrics import GatewayMetrics
from gateway.sqlite_store import SQLiteLogStore
from gateway.store import Balance, NewLeaf

COST_S = 1.0  # what each checkpoint "takes" on the injected clock
EVERY_LEAVES = 10
INTERVAL_S = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def grow(store: SQLiteLogStore, leaves: int) -> None:
    first = store.size()
    with store.transaction() as tx:
        for seq in range(first, first + leaves):
            tx.append(NewLeaf(b"d" * 16, seq, bytes(32), bytes(32), f"r{seq}".encode(), "s", 0))


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[SQLiteLogStore,
                                                                     Checkpointer, Clock,
                                                                     GatewayMetrics]:
    store = SQLiteLogStore(tmp_path / "log.sqlite")
    clock = Clock()
    balances = store.balances

    def slow_balances() -> list[Balance]:  # a fleet of many owners: the table takes time
        clock.now += COST_S
        return balances()
    monkeypatch.setattr(store, "balances", slow_balances)
    metrics = GatewayMetrics()
    checkpointer = Checkpointer(
        store, GatewayKey.generate("gw.test/log"), LocalAnchor(lambda: 0),
        config=CheckpointConfig(interval_s=INTERVAL_S, every_leaves=EVERY_LEAVES),
        metrics=metrics, wall_ms=lambda: 0, monotonic=clock)
    return store, checkpointer, clock, metrics


def test_checkpoints_by_leaf_count_never_take_more_than_their_share_of_the_sequencer(
        setup: tuple[SQLiteLogStore, Checkpointer, Clock, GatewayMetrics]) -> None:
    """Each checkpoint covers the whole balances table: 254 ms of CPU at 100,000 owners
    (bench/checkpoint_bench.py). Signed every 1,000 leaves at a million devices' rate they
    would need 42 cores. A checkpoint due by leaf count waits until the last one's cost is
    repaid (at most MAX_CHECKPOINT_SHARE of the time); the metric shows the cost."""
    store, checkpointer, clock, metrics = setup
    grow(store, 1)
    assert checkpointer.issue() is not None  # takes COST_S
    spacing = COST_S / MAX_CHECKPOINT_SHARE
    assert metrics.registry.get_sample_value("edgeproof_gateway_checkpoint_seconds") == COST_S

    grow(store, EVERY_LEAVES)
    clock.now += spacing / 2
    assert not checkpointer.due()
    assert checkpointer.seconds_until_due() == pytest.approx(spacing / 2)
    clock.now += spacing / 2
    assert checkpointer.due()
    assert checkpointer.issue() is not None


def test_the_interval_still_bounds_the_wait_however_costly_a_checkpoint(
        setup: tuple[SQLiteLogStore, Checkpointer, Clock, GatewayMetrics],
        monkeypatch: pytest.MonkeyPatch) -> None:
    store, checkpointer, clock, _ = setup
    monkeypatch.setattr("gateway.checkpoints.MAX_CHECKPOINT_SHARE", COST_S / (2 * INTERVAL_S))
    grow(store, 1)
    checkpointer.issue()  # spacing now twice the interval
    grow(store, EVERY_LEAVES)
    clock.now += INTERVAL_S - 1
    assert not checkpointer.due()
    assert checkpointer.seconds_until_due() == pytest.approx(1.0)
    clock.now += 1
    assert checkpointer.due()


def test_a_cheap_checkpoint_comes_as_soon_as_the_log_grew_by_every_leaves(
        setup: tuple[SQLiteLogStore, Checkpointer, Clock, GatewayMetrics],
        monkeypatch: pytest.MonkeyPatch) -> None:
    store, checkpointer, _, _ = setup
    monkeypatch.setattr(store, "balances", lambda: [])  # a small fleet: no time at all
    grow(store, 1)
    checkpointer.issue()
    grow(store, EVERY_LEAVES - 1)
    assert not checkpointer.due()
    grow(store, 1)
    assert checkpointer.due()
