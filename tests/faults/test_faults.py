"""Every fault once, at seeded random moments, then the delivery guarantee from outside.

The fleet (tests/faults/chaos.py): one agent through ``edgeproof-agent run``, one whose wall
clock is stepped, two with a 64 KiB outbox (drop-oldest and reject-new). After the faults
everything is undone, each agent stops after its final flush, and the invariants of
tests.harness.invariants are checked against the gateway's log and the agents' outboxes.
The large count is the soak test (test_soak.py, ``make soak``).
"""

from __future__ import annotations

import random
import sqlite3
import time

from protocol.signed import parse_signed_record
from tests.faults.chaos import FAULT_KINDS, Chaos, check_all, settle
from tests.harness.invariants import WireObserver
from tests.harness.testbed import Testbed

SEED = 7


def test_each_fault_once_loses_nothing_reuses_no_seq_and_never_forks(
        testbed: Testbed, observer: WireObserver) -> None:
    t0 = time.monotonic()
    chaos = Chaos(testbed, random.Random(SEED),
                  log=lambda line: print(f"t={time.monotonic() - t0:5.1f} {line}"))
    try:
        chaos.run(len(FAULT_KINDS))
        settle(testbed, chaos.log)
    finally:
        chaos.close()
    report = check_all(testbed, observer, chaos.notes, drained=True)
    print(f"t={time.monotonic() - t0:5.1f} {report.facts}")
    assert set(chaos.done) == set(FAULT_KINDS)
    assert report.violations == []
    # The faults really happened: records were dropped and declared, clocks were unsynced.
    assert report.facts["declared_dropped"] > 0
    assert report.facts["checkpoints"] > 1
    for device_id, offset in chaos.jumps:
        assert _logged_with_offset(testbed, device_id, offset), (device_id, offset)


def _logged_with_offset(tb: Testbed, device_id: str, offset_ms: int) -> bool:
    """Whether the log holds a record of the device whose wall time was off by about
    ``offset_ms``, flagged as made with an unsynced clock."""
    conn = sqlite3.connect(f"file:{tb.gateway_db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT raw, received_ms, flags FROM leaves WHERE device_id = ?",
                            (bytes.fromhex(device_id),)).fetchall()
    finally:
        conn.close()
    for raw, received_ms, flags in rows:
        record = parse_signed_record(bytes(raw))[1]
        if abs(record.wall_ms - received_ms - offset_ms) < 20_000 and flags & 1:
            return not record.clock_synced
    return False
