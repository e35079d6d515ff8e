"""Fixtures of the fault-injection suite: a provisioned testbed and a wire observer.

Soak tests (``@pytest.mark.soak``) run only when ``SOAK_FAULTS`` is set (``make soak``);
``make test`` runs the small fault counts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.chaos import fault_agents
from tests.harness.invariants import WireObserver
from tests.harness.testbed import Testbed

# The soak's length grows with SOAK_FAULTS, so its time-out does too (pyproject's default of
# 600 s is for one test of the normal suite): a generous bound per fault, far above what one
# fault with its recovery takes, so only a hang hits it.
SOAK_TIMEOUT_BASE_S = 600
SOAK_TIMEOUT_PER_FAULT_S = 30


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    faults = os.environ.get("SOAK_FAULTS")
    if faults:
        timeout = SOAK_TIMEOUT_BASE_S + SOAK_TIMEOUT_PER_FAULT_S * int(faults)
        for item in items:
            if "soak" in item.keywords:
                item.add_marker(pytest.mark.timeout(timeout))
        return
    skip = pytest.mark.skip(reason="soak test: run `make soak` (sets SOAK_FAULTS)")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def testbed(tmp_path: Path) -> Iterator[Testbed]:
    """Broker, gateway and the four fault agents of one provisioned fleet."""
    tb = Testbed(tmp_path / "tb", fault_agents())
    try:
        yield tb.start()
    finally:
        tb.close()


@pytest.fixture
def observer(testbed: Testbed) -> Iterator[WireObserver]:
    """Sees every batch on every records topic (QoS 0, its own client id)."""
    user, password = testbed.observer_broker_login()
    obs = WireObserver(testbed.broker_port, user, password)
    try:
        yield obs
    finally:
        obs.close()
