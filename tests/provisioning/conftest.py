"""Fixtures of the provisioning tests (helpers in provision_live.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.provisioning.provision_live import LiveFleet, live_fleet_fixture


@pytest.fixture(scope="module")
def live_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveFleet]:
    """A fleet with its broker (reloaded through a pid file) and its gateway running."""
    yield from live_fleet_fixture(tmp_path_factory)
