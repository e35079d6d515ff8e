"""The soak: hundreds of seeded faults (``make soak``; ``SOAK_FAULTS`` faults, default 200).

The same fleet and faults as test_faults.py, many rounds of every fault kind in a seeded
random order. Every ``SOAK_CHECK_EVERY`` faults the invariants are checked while the
system runs (an agent's outbox may still hold records then); at the end everything is
undone, every agent drains and stops, and the invariants must hold with empty outboxes.
``SOAK_SEED`` picks another seed.
"""

from __future__ import annotations

import os
import random
import time

import pytest

from tests.faults.chaos import FAULT_KINDS, Chaos, check_all, settle
from tests.harness.invariants import WireObserver
from tests.harness.testbed import Testbed

DEFAULT_FAULTS = 200
CHECK_EVERY = 25


@pytest.mark.soak
def test_soak_hundreds_of_faults_lose_nothing_reuse_no_seq_and_never_fork(
        testbed: Testbed, observer: WireObserver) -> None:
    count = int(os.environ.get("SOAK_FAULTS") or DEFAULT_FAULTS)
    seed = int(os.environ.get("SOAK_SEED") or 2024)
    every = int(os.environ.get("SOAK_CHECK_EVERY") or CHECK_EVERY)
    t0 = time.monotonic()

    def log(line: str) -> None:
        print(f"t={time.monotonic() - t0:6.1f} {line}", flush=True)

    chaos = Chaos(testbed, random.Random(seed), log=log)
    checks: list[dict[str, int]] = []

    def check_while_running() -> None:
        report = check_all(testbed, observer, chaos.notes, drained=False)
        log(f"invariants while running: {report.facts}")
        assert report.violations == [], report.violations[:20]
        checks.append(report.facts)

    log(f"soak: {count} faults, seed {seed}, checks every {every}")
    try:
        chaos.run(count, on_every=(every, check_while_running))
        settle(testbed, log)
    finally:
        chaos.close()
    report = check_all(testbed, observer, chaos.notes, drained=True)
    log(f"faults injected: {dict(sorted(chaos.done.items()))}")
    log(f"final invariants: {report.facts}")
    assert sum(chaos.done.values()) == count
    assert set(chaos.done) == set(FAULT_KINDS) or count < len(FAULT_KINDS)
    assert report.violations == [], report.violations[:20]
