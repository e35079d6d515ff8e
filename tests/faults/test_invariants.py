"""The outside checker itself: each broken guarantee is reported, an honest log is not."""

from __future__ import annotations

import hashlib
import random

from protocol.keys import Secret, SigningKey, device_id_for
from protocol.record import GENESIS_PREV, Gap, Measurement, Record, Usage, Values
from protocol.signed import sign_record
from tests.harness.invariants import LogView, OutboxView, check_device, check_log

KEY = SigningKey(Secret(random.Random(3).randbytes(32)))
DEV = device_id_for(KEY.public_key)


def chain(n: int, *, value: int = 200, prev: bytes = GENESIS_PREV, start: int = 0,
          body: object = None) -> list[tuple[int, bytes, bytes]]:
    """``n`` signed records from seq ``start``: (seq, prev, raw)."""
    out = []
    for seq in range(start, start + n):
        record = Record(1, seq, prev, 1_700_000_000_000 + seq, False, 1000 + seq, "cpu",
                        body or Values((Measurement(value + seq, -1, "Cel"),)))  # type: ignore[arg-type]
        raw = sign_record(record, DEV, KEY).raw
        out.append((seq, prev, raw))
        prev = hashlib.sha256(raw).digest()
    return out


def log_of(records: list[tuple[int, bytes, bytes]], **kw: object) -> LogView:
    leaves = [(i, DEV, seq, prev, raw) for i, (seq, prev, raw) in enumerate(records)]
    return LogView(leaves, kw.get("gaps", {}), kw.get("usage", set()), 0)  # type: ignore[arg-type]


def empty_outbox(head: int, **kw: object) -> OutboxView:
    return OutboxView(DEV, kw.get("pending", {}), kw.get("dead", {}), head)  # type: ignore[arg-type]


def test_honest_log_has_no_violation() -> None:
    records = chain(10)
    assert check_log(log_of(records)).violations == []
    assert check_device(log_of(records), empty_outbox(9), drained=True).violations == []


def test_lost_record_is_reported() -> None:
    records = chain(10)
    del records[5]
    report = check_device(log_of(records), empty_outbox(9), drained=True)
    assert any("seq 5 was used" in v for v in report.violations)


def test_declared_drop_is_not_a_loss() -> None:
    records = chain(10)
    del records[5]
    report = check_device(log_of(records, gaps={DEV: [(5, 5)]}), empty_outbox(9), drained=True)
    assert report.violations == []
    assert report.facts["declared_dropped"] == 1


def test_reused_sequence_number_is_reported() -> None:
    records = chain(10)
    other = chain(1, value=900, start=5, prev=records[4][1])[0][2]
    report = check_device(log_of(records), empty_outbox(9, pending={5: other}))
    assert any("seq 5 holds two different records" in v for v in report.violations)


def test_other_bytes_on_the_wire_are_reported() -> None:
    records = chain(10)
    wire = {3: {hashlib.sha256(b"something else").digest()}}
    report = check_device(log_of(records), empty_outbox(9), wire, drained=True)
    assert any("seq 3 travelled with different bytes" in v for v in report.violations)


def test_broken_chain_is_reported() -> None:
    records = chain(10)
    records[6] = chain(1, start=6, prev=bytes(32))[0]
    report = check_device(log_of(records), empty_outbox(9), drained=True)
    assert any("chain broken between seq 5 and 6" in v for v in report.violations)


def test_record_left_in_a_drained_outbox_is_reported() -> None:
    records = chain(10)
    report = check_device(log_of(records[:9]), empty_outbox(9, pending={9: records[9][2]}),
                          drained=True)
    assert any("never receipted" in v for v in report.violations)


def test_dead_letter_is_reported_unless_it_repeats_credited_usage() -> None:
    records = chain(10)
    claim = chain(1, start=10, prev=records[9][1], body=Usage(100, 200, 50, 3_600_000))[0][2]
    dead = {10: ("usage", "usage_overlap", claim)}
    credited = log_of(records, usage={(DEV, 1, 100, 200)})
    assert check_device(credited, empty_outbox(10, dead=dead), drained=True).violations == []
    report = check_device(log_of(records), empty_outbox(10, dead=dead), drained=True)
    assert any("dead-lettered: usage_overlap" in v for v in report.violations)
    bad = {10: ("cpu", "bad_signature", records[0][2])}
    report = check_device(log_of(records), empty_outbox(10, dead=bad), drained=True)
    assert any("dead-lettered: bad_signature" in v for v in report.violations)


def test_duplicate_leaf_and_hole_in_the_log_are_reported() -> None:
    records = chain(3)
    log = log_of(records)
    log.leaves.append((5, DEV, 2, records[2][1], records[2][2]))
    violations = check_log(log).violations
    assert any("hole" in v for v in violations)
    assert any("more than once" in v for v in violations)
    assert any("share a (device, seq)" in v for v in violations)


def test_gap_record_still_in_the_outbox_declares_its_range() -> None:
    records = chain(10)
    gap = chain(1, start=10, prev=records[9][1], body=Gap(4, 5, "outbox_full"))[0][2]
    kept = records[:4] + records[6:]
    report = check_device(log_of(kept), empty_outbox(10, pending={10: gap}))
    assert report.violations == []
