"""The bytes Mosquitto queues for a session that is away are bounded (``max_queued_bytes``),
so one device's credential cannot make the broker hold what it likes while the gateway
(or any other session) is offline. Real broker with the generated config, real gateway.

The fleet here has a small bound (``broker-config --max-queued-bytes``) so the test moves
a few MiB, not the default's 64 MiB; the default is checked in test_provision_passwd.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from protocol.batch import records_topic
from provisioning.mosquitto import ListenerSettings
from tests.provisioning.provision_live import LiveFleet, gateway_probe, live_fleet_fixture
from tests.provisioning.provision_probe import connect
from tests.provisioning.test_provision_broker_security import add_device, connect_when_accepted

MESSAGE_BYTES = 64 * 1024
QUEUED_BYTES = 16 * MESSAGE_BYTES
SENT = 100  # 6.4 MiB, far past the bound
QUIET_S = 2.0
# Mosquitto counts only what waits behind the in-flight window against max_queued_bytes.
IN_FLIGHT = ListenerSettings.max_inflight_messages


@pytest.fixture(scope="module")
def small_queue_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveFleet]:
    yield from live_fleet_fixture(
        tmp_path_factory, lambda base: ["--max-queued-bytes", str(QUEUED_BYTES)])


def test_queued_bytes_for_an_offline_session_are_bounded(small_queue_fleet: LiveFleet) -> None:
    live = small_queue_fleet
    user, password = add_device(live, "flooder")
    topic = records_topic(bytes.fromhex(user))
    # A second gateway worker subscribes on a persistent session, then goes away.
    gateway_probe(live).close()  # makes the worker's user and waits until the broker has it
    worker_user, worker_password = live.watcher_login()
    worker = connect(live.broker.port, worker_user, worker_password, client_id=worker_user,
                     session_expiry_s=300)
    assert worker.subscribe(topic).value == 1
    worker.close()
    device = connect_when_accepted(live, user, password)
    try:
        for i in range(SENT):
            assert not device.publish(topic, bytes([i]) * MESSAGE_BYTES).is_failure
    finally:
        device.close()
    worker = connect(live.broker.port, worker_user, worker_password, client_id=worker_user,
                     session_expiry_s=300)
    try:
        assert worker.session_present
        while worker.wait_message(QUIET_S):  # take everything the session kept
            worker.arrived.clear()
        got = len(worker.messages)
        assert 0 < got < SENT
        assert got * MESSAGE_BYTES <= QUEUED_BYTES + IN_FLIGHT * MESSAGE_BYTES
    finally:
        worker.close()
