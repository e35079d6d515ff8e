"""The uplink holds everything back after a connect until the policy sync is answered.

A device with a grant in its book reconnects (a real Mosquitto; tests.agent.responder
answers batches with receipts, as the gateway would, but not the policy sync). It must
send nothing at all while its sync goes unanswered; when the answer comes with a
revocation, the records sealed to the revoked recipient are withdrawn before the first
batch leaves, and never reach the gateway.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.grants import GrantBook
from agent.policy import PolicyInbox
from agent.records import EpochPolicy, RecordWriter
from agent.uplink import BrokerSettings, MqttConfig
from agent.uplink.uplink import UplinkState
from firmware_sim.broker import MosquittoBroker
from firmware_sim.demo_agent import AssumedSyncedClock
from osutil.brokerurl import parse_broker_url
from protocol.contract import Consent, Revocation, Terms
from protocol.delivery import PolicyDelivery, policy_topic
from protocol.documents import sign_document
from protocol.keys import OwnerKey, RecipientKey
from protocol.record import Gap, Measurement
from tests.agent.responder import Responder
from tests.agent.uplinkkit import FAST, OutboxRig

HOUR_MS = 3_600_000


class OwnedDevice(OutboxRig):
    """Outbox, writer, grant book, policy inbox and uplink of a device with an owner."""

    def __init__(self, tmp: Path, broker_url: str, gateway_key: str) -> None:
        super().__init__(tmp, AssumedSyncedClock())  # grants need a synchronised clock
        self.owner = OwnerKey.generate()
        self.book = GrantBook(tmp / "grants.json")
        self.writer = RecordWriter(self.factory, self.outbox,
                                   {"climate": (self.owner.sealing_public_key,)},
                                   policy=EpochPolicy(), clock=self.clock, grants=self.book)
        self.inbox = PolicyInbox(self.book, self.outbox, device_id=self.device_id,
                                 owner=self.owner.public_key, streams={"climate"},
                                 clock=self.clock)
        host, port, tls = parse_broker_url(broker_url, "broker_url")
        broker = BrokerSettings(MqttConfig(broker_url, host, port, tls), connect_timeout_s=2.0)
        self.uplink = self.make_uplink(FAST, broker, gateway_key, policy=self.inbox)

    def readings(self, n: int) -> None:
        for i in range(n):
            self.writer.write_values("climate", (Measurement(210 + i, -1, "Cel"),
                                                 Measurement(550, -1, "%RH")),
                                     self.clock.mono_ms())
        self.outbox.commit()


@pytest.fixture
def device(tmp_path: Path, broker: MosquittoBroker, responder: Responder
           ) -> Iterator[OwnedDevice]:
    d = OwnedDevice(tmp_path, broker.url, responder.verifier_key)
    responder.register(d.public_key)
    yield d
    d.close()


def deliver(broker: MosquittoBroker, device_id: bytes, delivery: PolicyDelivery) -> None:
    """Publish a delivery as the gateway would (this test broker allows anyone)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-courier",
                         protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        info = client.publish(policy_topic(device_id), delivery.to_cbor(), qos=1)
        info.wait_for_publish(10)
        assert info.is_published()
    finally:
        client.loop_stop()
        client.disconnect()


def test_reconnecting_device_with_grants_sends_nothing_until_the_revocation_is_applied(
        device: OwnedDevice, broker: MosquittoBroker, responder: Responder) -> None:
    now = device.clock.wall_ms()
    consent = sign_document(Consent(bytes(32), RecipientKey.generate().public_key,
                                    (device.device_id,),
                                    Terms((("climate", ("Cel",)),), 0, now - 1000,
                                          now + HOUR_MS)), device.owner.signing, now)
    device.inbox.apply(consent.raw)  # applied during an earlier connection
    device.readings(6)  # sealed, 6 of them to the consent's recipient, while offline
    device.uplink.start()
    assert responder.wait_for(lambda: device.uplink.counters["policy_sync_timeouts"] >= 1)
    assert device.uplink.status().state is UplinkState.SYNCING
    assert device.uplink.counters["records_sent"] == 0  # not a single record
    revocation = sign_document(Revocation(consent.id, 1, "owner"), device.owner.signing,
                               device.clock.wall_ms())
    deliver(broker, device.device_id, PolicyDelivery(((41, revocation.raw),), 42, True))
    assert responder.wait_for(lambda: device.outbox.stats().depth == 0)
    logged = responder.logged[device.device_id].records
    streams = [s.record.stream for s in logged.values()]
    assert not any("~" in s for s in streams)
    assert streams.count("climate") == 6
    revoked = [s.record.body for s in logged.values()
               if isinstance(s.record.body, Gap) and s.record.body.reason == "revoked"]
    assert sum(g.last_seq - g.first_seq + 1 for g in revoked) == 6
    assert device.book.next_index == 42
