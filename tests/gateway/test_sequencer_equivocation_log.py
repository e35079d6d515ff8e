"""An equivocating device is reported in the gateway's log once per interval, however many
equivocations it sends; a group without any reports nothing (gateway.sequencer)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gateway.sqlite_store import SQLiteLogStore
from protocol import reasons
from tests.gateway.gwkit import RATE, TestDevice
from tests.gateway.seqkit import NOW_MS, prepared, sequencer_for


def test_equivocations_are_logged_once_per_device_and_clean_groups_log_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = SQLiteLogStore(tmp_path / "log.sqlite")
    sequencer = sequencer_for(store)
    try:
        dev = TestDevice.create("two-faced", 3)
        store.register_device(dev.name, dev.enrolled_key, "alice", RATE, NOW_MS)
        with caplog.at_level(logging.WARNING, logger="gateway.sequencer"):
            sequencer.commit(prepared(store, dev, dev.records(5), 1))
            assert caplog.records == []
            twin = TestDevice.create("two-faced", 3)  # same key, same seqs, other readings
            twin.mono_ms += 7
            receipts = sequencer.commit_group([prepared(store, twin, twin.records(3), 2),
                                               prepared(store, twin, twin.records(2), 3)])
        outcomes = [o for r in receipts if r is not None for o in r.receipt.outcomes]
        assert [o.reason for o in outcomes] == [reasons.EQUIVOCATION] * 5
        assert len(caplog.records) == 1
        assert dev.device_id.hex() in caplog.records[0].getMessage()
        # The first batch's 3 at once; the next 2 wait for the interval's summary.
        assert "signed 3 record(s)" in caplog.records[0].getMessage()
    finally:
        store.close()
