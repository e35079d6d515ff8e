"""Fixtures of the agent tests (the outbox+uplink rig itself is in uplinkkit.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from firmware_sim.broker import MosquittoBroker
from tests.agent.responder import Responder


@pytest.fixture
def responder(broker: MosquittoBroker) -> Iterator[Responder]:
    """A receipt responder (built from protocol/, standing in for the gateway) on the
    test's broker."""
    r = Responder(broker.url).start()
    yield r
    r.stop()
