"""Test helpers for contract documents: an owner, a recipient, a registered device with
records, and the HTTP calls that submit and read documents."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from protocol.contract import Consent, DataRequest, Revocation, Terms
from protocol.delivery import PolicyDelivery, policy_topic
from protocol.documents import Document, sign_document
from protocol.keys import OwnerKey, RecipientKey, Secret, SigningKey
from protocol.record import Measurement, Record, Values
from protocol.sealing import EpochKeys, new_key_epoch, seal_values
from protocol.signed import SignedRecord
from tests.gateway.gwkit import ADMIN_TOKEN, RATE, DeviceClient, TestDevice

HOUR_MS = 3_600_000
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Parties:
    """An owner with one enrolled device that has logged climate records, and a recipient
    registered at the gateway."""

    base_url: str
    owner: OwnerKey
    device: TestDevice
    buyer_signing: SigningKey
    buyer_sealing: RecipientKey
    counter: int = 0

    @classmethod
    def enrol(cls, base_url: str, devices: DeviceClient, seed: int = 7, *,
              owner_by_id: bool = False) -> Parties:
        """``owner_by_id``: the balances table names the owner by its owner id (hex), as the
        provisioning tool does for a device with an owner key, so a wallet binding applies."""
        rng = random.Random(seed)
        owner = OwnerKey(SigningKey(Secret(rng.randbytes(32))),
                         RecipientKey(Secret(rng.randbytes(32))))
        device = TestDevice.create(f"dev-{seed}", seed)
        response = httpx.post(f"{base_url}/v1/devices", headers=ADMIN, json={
            "name": device.name, "public_key": device.enrolled_key.hex(),
            "owner": owner.owner_id.hex() if owner_by_id else "olga",
            "rate_micro_per_hour": RATE, "owner_key": owner.public_key.hex(),
            "owner_sealing_key": owner.sealing_public_key.hex()})
        assert response.status_code == 201, response.text
        devices.send(device, device.records(2), batch_id=1)
        devices.wait_for(device.device_id, 1)
        buyer_signing = SigningKey(Secret(rng.randbytes(32)))
        buyer_sealing = RecipientKey(Secret(rng.randbytes(32)))
        response = httpx.post(f"{base_url}/v1/recipients", headers=ADMIN, json={
            "name": f"acme-{seed}", "signing_key": buyer_signing.public_key.hex(),
            "sealing_key": buyer_sealing.public_key.hex()})
        assert response.status_code == 201, response.text
        return cls(base_url, owner, device, buyer_signing, buyer_sealing)

    def request(self, streams: tuple[tuple[str, tuple[str, ...]], ...] = (
            ("climate", ("%RH", "Cel")),), hours: int = 24) -> Document:
        start = now_ms() - HOUR_MS
        return sign_document(DataRequest(
            self.buyer_sealing.public_key, (self.device.device_id,), (),
            Terms(streams, 60, start, start + hours * HOUR_MS), "study", 1000),
            self.buyer_signing, now_ms())

    def consent(self, request: Document, key: SigningKey | None = None,
                fields: tuple[str, ...] = ("Cel",), stream: str = "climate", *,
                lapses: bool = False) -> Document:
        body = request.body
        assert isinstance(body, DataRequest)
        terms = Terms(((stream, fields),), 60, body.terms.not_before_ms,
                      body.terms.not_after_ms)
        return sign_document(Consent(request.id, self.buyer_sealing.public_key,
                                     (self.device.device_id,), terms, lapses),
                             key or self.owner.signing, now_ms())

    def revocation(self, consent: Document, counter: int | None = None) -> Document:
        if counter is None:
            self.counter += 1
            counter = self.counter
        return sign_document(Revocation(consent.id, counter, "owner"), self.owner.signing,
                             now_ms())


def submit(base_url: str, doc: Document | bytes) -> httpx.Response:
    raw = doc.raw if isinstance(doc, Document) else doc
    return httpx.post(f"{base_url}/v1/documents", content=raw,
                      headers={"Content-Type": "application/cose"})


def submitted(base_url: str, doc: Document) -> int:
    response = submit(base_url, doc)
    assert response.status_code == 201, response.text
    index: int = response.json()["index"]
    return index


def rejections(base_url: str) -> dict[str, int]:
    stats = httpx.get(f"{base_url}/v1/stats").json()
    counted: dict[str, int] = stats["documents_rejected"]
    return counted


@dataclass
class PolicyListener:
    """Subscribes to devices' policy topics, as a device would, and keeps what arrives."""

    port: int
    received: list[tuple[str, PolicyDelivery]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-policy",
                                   protocol=mqtt.MQTTv5)
        self._client.on_message = self._on_message
        subscribed = threading.Event()
        self._client.on_subscribe = lambda *a: subscribed.set()
        self._client.connect("127.0.0.1", self.port)
        self._client.subscribe("edgeproof/v1/devices/+/policy", qos=1)
        self._client.loop_start()
        assert subscribed.wait(10), "policy subscription not acknowledged"

    def _on_message(self, client: object, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.received.append((msg.topic, PolicyDelivery.from_cbor(bytes(msg.payload))))
            self._cond.notify_all()

    def publish(self, topic: str, payload: bytes) -> None:
        info = self._client.publish(topic, payload, qos=1)
        info.wait_for_publish(10)
        assert info.is_published()

    def wait(self, device_id: bytes, complete: bool, timeout: float = 30.0) -> PolicyDelivery:
        """The first delivery to the device with this ``complete`` flag."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for topic, delivery in self.received:
                    if topic == policy_topic(device_id) and delivery.complete is complete:
                        return delivery
                left = deadline - time.monotonic()
                assert left > 0, f"no delivery (complete={complete}) to {device_id.hex()}"
                self._cond.wait(left)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def sealed_reading(device: TestDevice, epoch_keys: EpochKeys,
                   values: tuple[Measurement, ...]) -> SignedRecord:
    """The device's next climate record, its values sealed under ``epoch_keys``."""
    header = Record(device.boot, device.seq, device.prev, device.wall_ms + 1000, device.synced,
                    device.mono_ms + 1000, "climate", Values(values))
    return device.next(seal_values(device.device_id, header, epoch_keys, values))


def key_epoch(device: TestDevice, recipients: dict[str, list[bytes]],
              consents: dict[str, bytes] | None = None) -> tuple[SignedRecord, EpochKeys]:
    """The device's next record: a key epoch sealing ``recipients`` (stream -> X25519 keys),
    naming the ``consents`` its derived streams apply."""
    body, keys = new_key_epoch(device.device_id, device.seq, recipients,
                               random.Random(device.seq).randbytes, consents)
    return device.next(body, stream="keys"), keys
