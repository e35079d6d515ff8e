"""A small receipt responder built from protocol/, answering batches as the gateway would.

It subscribes to every device's records topic on a real broker, verifies each record's
signature under the registered device key, deduplicates on (device, seq), gives accepted
records leaf indexes, and publishes a gateway-signed receipt on the device's receipts
topic. Tests can pause it (no receipts), slow it down (a slow subscriber), reject streams,
and inspect what it logged. Tests that need this control use it; the end-to-end tests
use the real gateway (:class:`RealGateway`, also here).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from firmware_sim.broker import MosquittoBroker
from gateway.config import load_config as load_gateway_config
from gateway.service import GatewayService
from protocol import reasons
from protocol.batch import TOPIC_PREFIX, Batch, device_id_from_topic, receipts_topic
from protocol.errors import VerificationError
from protocol.keys import Secret, SigningKey, device_id_for
from protocol.note import NoteSigner
from protocol.receipt import Outcome, Receipt, Status, hash_prefix
from protocol.record import Usage
from protocol.signed import SignedRecord, parse_signed_record, verify_signed_record
from tests.gateway.gwkit import ADMIN_TOKEN, write_gateway_files
from tests.harness.waiting import within

GATEWAY_SEED = bytes(range(32))


@dataclass
class Logged:
    """What the responder logged for one device."""

    records: dict[int, SignedRecord] = field(default_factory=dict)  # seq -> first accepted
    duplicates: int = 0
    equivocations: list[int] = field(default_factory=list)  # seqs seen with another hash
    rejected: dict[int, str] = field(default_factory=dict)
    settled_micro: int = 0


class Responder:
    """Answers batches on a broker with protocol receipts (see the module docstring)."""

    def __init__(self, broker_url: str, *, name: str = "test-gateway",
                 seed: bytes = GATEWAY_SEED) -> None:
        host_port = broker_url.split("://", 1)[1]
        self.host, port = host_port.rsplit(":", 1)
        self.port = int(port)
        self.signer = NoteSigner(name, seed)
        self._key = SigningKey(Secret(seed))
        self.devices: dict[bytes, bytes] = {}  # device id -> public key
        self.logged: dict[bytes, Logged] = {}
        self.reject_streams: dict[str, str] = {}
        self.refuse_batches_over: int | None = None  # refuse larger batches whole (too_large)
        self.paused = False
        self.delay_s = 0.0  # per message: a slow subscriber
        self.batches_seen = 0
        self.receipts_sent = 0
        self._leaves = 0
        self._lock = threading.Lock()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-responder",
                                   protocol=mqtt.MQTTv5)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(0.1, 1)

    @property
    def verifier_key(self) -> str:
        return self.signer.verifier_text()

    @property
    def key(self) -> SigningKey:
        """The gateway key the agent pins (receipts, lapse and payout notices)."""
        return self._key

    def register(self, public_key: bytes) -> bytes:
        device_id = device_id_for(public_key)
        self.devices[device_id] = public_key
        return device_id

    def start(self) -> Responder:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self._client.connect(self.host, self.port, keepalive=10, clean_start=False,
                             properties=props)
        self._client.loop_start()
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, rc: object,
                    _p: object) -> None:
        client.subscribe(f"{TOPIC_PREFIX}+/records", qos=1)

    def _on_message(self, client: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.paused:
            return
        device_id = device_id_from_topic(message.topic)
        batch = Batch.from_cbor(message.payload)
        limit = self.refuse_batches_over
        if limit is not None and len(batch.records) > limit:
            # As the gateway answers a batch it cannot take: one outcome, no seq, the
            # payload's hash, batch id 0.
            prefix = hash_prefix(message.payload)
            outcome = Outcome(None, prefix, Status.REJECTED, reason=reasons.TOO_LARGE)
            refusal = Receipt(device_id, 0, (outcome,), "test-checkpoint\n",
                              int(time.time() * 1000), 0)
            client.publish(receipts_topic(device_id),
                           refusal.sign(self._key, self.signer.key_id), qos=1)
            return
        with self._lock:
            self.batches_seen += 1
            outcomes = tuple(self._judge(device_id, raw) for raw in batch.records)
            log = self.logged.setdefault(device_id, Logged())
            receipt = Receipt(device_id, batch.batch_id, outcomes, "test-checkpoint\n",
                              int(time.time() * 1000), log.settled_micro)
        client.publish(receipts_topic(device_id), receipt.sign(self._key, self.signer.key_id),
                       qos=1)
        self.receipts_sent += 1

    def _judge(self, device_id: bytes, raw: bytes) -> Outcome:
        prefix = hash_prefix(raw)
        log = self.logged.setdefault(device_id, Logged())
        try:
            _msg, record = parse_signed_record(raw)
        except VerificationError:
            return Outcome(None, prefix, Status.REJECTED, reason=reasons.MALFORMED)
        if device_id not in self.devices:
            return Outcome(record.seq, prefix, Status.REJECTED, reason=reasons.UNKNOWN_DEVICE)
        try:
            signed = verify_signed_record(raw, self.devices[device_id], device_id)
        except VerificationError:
            return Outcome(record.seq, prefix, Status.REJECTED, reason=reasons.BAD_SIGNATURE)
        seq = record.seq
        if record.stream in self.reject_streams:
            log.rejected[seq] = self.reject_streams[record.stream]
            return Outcome(seq, prefix, Status.REJECTED, reason=self.reject_streams[record.stream])
        known = log.records.get(seq)
        if known is not None:
            if known.raw != raw:
                log.equivocations.append(seq)
                return Outcome(seq, prefix, Status.REJECTED, reason=reasons.EQUIVOCATION)
            log.duplicates += 1
            return Outcome(seq, prefix, Status.DUPLICATE, leaf_index=self._leaf_of(log, seq))
        log.records[seq] = signed
        if isinstance(record.body, Usage):
            log.settled_micro += record.body.credit_micro
        self._leaves += 1
        return Outcome(seq, prefix, Status.ACCEPTED, leaf_index=self._leaves - 1)

    @staticmethod
    def _leaf_of(log: Logged, seq: int) -> int:
        return sorted(log.records).index(seq)

    def wait_for(self, predicate: object, timeout_s: float = 60.0) -> bool:
        """Poll ``predicate()`` until true or the time-out; return its last value."""
        assert callable(predicate)
        return within(predicate, timeout_s, every_s=0.05)


RATE = 3_600_000  # micro-credits per hour registered for test devices


class RealGateway:
    """The real gateway (gateway/) in this process, on its own threads."""

    def __init__(self, tmp: Path, broker: MosquittoBroker) -> None:
        files = write_gateway_files(tmp, broker.port)
        self.service = GatewayService(load_gateway_config(files.config))
        self.service.start()
        self.thread = threading.Thread(target=self.service.run, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.service.http.port}"
        self.verifier = self.service.key.verifier_text()

    def register(self, name: str, public_key: bytes) -> str:
        reply = httpx.post(f"{self.url}/v1/devices", json={
            "name": name, "public_key": public_key.hex(), "owner": "alice",
            "rate_micro_per_hour": RATE}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert reply.status_code == 201, reply.text
        return str(reply.json()["device_id"])

    def device(self, device_id: str) -> dict[str, Any]:
        """The registry entry (status, settled_micro, equivocated, ...)."""
        reply = httpx.get(f"{self.url}/v1/devices",
                          headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        return next(d for d in reply.json() if d["device_id"] == device_id)

    def records(self, device_id: str) -> list[dict[str, Any]]:
        """Every record the gateway logged for the device, in sequence order."""
        out: list[dict[str, Any]] = []
        while True:
            after = out[-1]["seq"] if out else -1
            page = httpx.get(f"{self.url}/v1/devices/{device_id}/records",
                             params={"after_seq": after, "limit": 1000}).json()["records"]
            if not page:
                return out
            out.extend(page)

    def stop(self) -> None:
        self.service.request_stop()
        self.thread.join(20)
        self.service.close()
