"""Test helpers for the gateway: simulated devices that sign real records with protocol.

A :class:`TestDevice` holds an Ed25519 key and builds a correct chain of signed records
(seq, prev, boot, clocks) exactly as the agent would; tests then tamper with copies to
make attacks. :class:`DeviceClient` publishes batches over a real broker and collects the
gateway's receipts, verifying each under the gateway key.
"""

from __future__ import annotations

import base64
import itertools
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.gatewaykey import GatewayKey, load_gateway_key, save_gateway_key
from protocol import merkle
from protocol.batch import Batch, receipts_topic, records_topic
from protocol.checkpoint import Checkpoint, checkpoint_hash
from protocol.errors import VerificationError
from protocol.keys import Secret, SigningKey, device_id_for, write_secret_file
from protocol.note import NoteVerifier
from protocol.receipt import Receipt
from protocol.record import GENESIS_PREV, Gap, KeyRotation, Measurement, Record, Usage, Values
from protocol.signed import SignedRecord, record_hash, sign_record

ADMIN_TOKEN = "test-admin-token-0123456789"
VERIFY_WORKERS_ENV = "EDGEPROOF_TEST_VERIFY_WORKERS"
RATE = 360_000  # micro-credits per hour: 100 per second of usage
START_WALL_MS = 1_700_000_000_000


def make_key(rng: random.Random) -> SigningKey:
    """A deterministic Ed25519 key from a seeded RNG."""
    return SigningKey(Secret(rng.randbytes(32)))


@dataclass
class TestDevice:
    """A device that signs a chain of records (the way the agent does)."""

    name: str
    key: SigningKey
    boot: int = 1
    seq: int = 0
    prev: bytes = GENESIS_PREV
    mono_ms: int = 10_000
    wall_ms: int = START_WALL_MS
    synced: bool = True
    signed: list[SignedRecord] = field(default_factory=list)
    enrolled_key: bytes = b""

    __test__ = False  # not a pytest class

    def __post_init__(self) -> None:
        self.enrolled_key = self.enrolled_key or self.key.public_key

    @classmethod
    def create(cls, name: str, seed: int) -> TestDevice:
        return cls(name, make_key(random.Random(seed)))

    @property
    def device_id(self) -> bytes:
        return device_id_for(self.enrolled_key)

    def next(self, body: object | None = None, stream: str = "climate", *,
             advance_ms: int = 1000) -> SignedRecord:
        """Sign the next record of the chain (values by default)."""
        self.mono_ms += advance_ms
        self.wall_ms += advance_ms
        if body is None:
            body = Values((Measurement(215 + self.seq % 7, -1, "Cel"),))
        record = Record(self.boot, self.seq, self.prev, self.wall_ms, self.synced,
                        self.mono_ms, stream, body)  # type: ignore[arg-type]
        signed = sign_record(record, self.device_id, self.key)
        self.seq += 1
        self.prev = signed.hash
        self.signed.append(signed)
        return signed

    def records(self, n: int) -> list[bytes]:
        return [self.next().raw for _ in range(n)]

    def usage(self, start: int, end: int, used: int, rate: int = RATE) -> SignedRecord:
        return self.next(Usage(start, end, used, rate), stream="usage", advance_ms=0)

    def gap(self, first: int, last: int) -> SignedRecord:
        return self.next(Gap(first, last, "outbox_full"), stream="gap")

    def rotate(self, new_key: SigningKey) -> SignedRecord:
        signed = self.next(KeyRotation(new_key.public_key), stream="rotation")
        self.key = new_key
        return signed

    def sign_raw(self, record: Record) -> bytes:
        return sign_record(record, self.device_id, self.key).raw


def batch_bytes(records: list[bytes], batch_id: int) -> bytes:
    return Batch(batch_id, tuple(records)).to_cbor()


@dataclass
class GatewayFiles:
    """A gateway's key, token and config on disk."""

    config: Path
    key: GatewayKey
    data_dir: Path


def write_gateway_files(tmp: Path, broker_port: int, *, http_port: int = 0,
                        every_leaves: int = 1000, interval_s: float = 0.5,
                        extra: str = "", client_id: str = "edgeproof-gateway-test",
                        broker_extra: str = "", http_extra: str = "",
                        verify_workers: int | None = None) -> GatewayFiles:
    """Write key, admin token and a config TOML for a gateway under ``tmp``.

    ``verify_workers`` None leaves the gateway's default (one worker process per core),
    unless ``EDGEPROOF_TEST_VERIFY_WORKERS`` is set (to run the suite with in-process
    verification: ``EDGEPROOF_TEST_VERIFY_WORKERS=0 pytest tests/gateway``).
    """
    if verify_workers is None and os.environ.get(VERIFY_WORKERS_ENV):
        verify_workers = int(os.environ[VERIFY_WORKERS_ENV])
    workers = "" if verify_workers is None else f"verify_workers = {verify_workers}"
    tmp.mkdir(parents=True, exist_ok=True)
    key_path = tmp / "gateway.key"
    if key_path.exists():
        key = load_gateway_key(key_path)
    else:
        key = GatewayKey.generate("gateway.test/edgeproof")
        save_gateway_key(key_path, key)
    token_path = tmp / "admin-token"
    if not token_path.exists():
        write_secret_file(token_path, ADMIN_TOKEN.encode())
    config = tmp / "gateway.toml"
    config.write_text(f"""
[gateway]
data_dir = "data"
key_file = "gateway.key"
admin_token_file = "admin-token"
{workers}

[broker]
url = "mqtt://127.0.0.1:{broker_port}"
client_id = "{client_id}"
{broker_extra}

[http]
bind = "127.0.0.1:{http_port}"
{http_extra}

[checkpoints]
interval_s = {interval_s}
every_leaves = {every_leaves}
{extra}
""")
    return GatewayFiles(config, key, tmp / "data")


class DeviceClient:
    """Publishes batches as devices and collects verified receipts."""

    def __init__(self, port: int, gateway_verifier: str, client_id: str = "test-devices") -> None:
        verifier = NoteVerifier.from_text(gateway_verifier)
        self._public, self._kid = verifier.public_key, verifier.key_id
        self.receipts: list[Receipt] = []
        self.bad_receipts = 0
        self._cond = threading.Condition()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                   protocol=mqtt.MQTTv5)
        self._client.on_message = self._on_message
        subscribed = threading.Event()
        self._client.on_subscribe = lambda *a: subscribed.set()
        self._client.connect("127.0.0.1", port)
        self._client.subscribe("edgeproof/v1/devices/+/receipts", qos=1)
        self._client.loop_start()
        assert subscribed.wait(10), "receipt subscription not acknowledged"

    def _on_message(self, client: object, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            receipt = Receipt.verify(bytes(msg.payload), self._public, self._kid)
        except VerificationError:
            self.bad_receipts += 1
            return
        assert receipts_topic(receipt.device_id) == msg.topic
        with self._cond:
            self.receipts.append(receipt)
            self._cond.notify_all()

    def publish(self, device_id: bytes, payload: bytes, topic: str | None = None) -> None:
        info = self._client.publish(topic or records_topic(device_id), payload, qos=1)
        info.wait_for_publish(10)
        assert info.is_published()

    def send(self, device: TestDevice, records: list[bytes], batch_id: int) -> None:
        self.publish(device.device_id, batch_bytes(records, batch_id))

    def wait_for(self, device_id: bytes, batch_id: int, timeout: float = 60.0,
                 count: int = 1) -> Receipt:
        """Return the ``count``-th receipt for (device, batch id)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [r for r in self.receipts
                         if r.device_id == device_id and r.batch_id == batch_id]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                assert left > 0, f"no receipt for batch {batch_id} of {device_id.hex()}"
                self._cond.wait(left)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def register(base_url: str, device: TestDevice, owner: str = "alice",
             rate: int = RATE) -> dict[str, object]:
    response = httpx.post(f"{base_url}/v1/devices", json={
        "name": device.name, "public_key": device.enrolled_key.hex(), "owner": owner,
        "rate_micro_per_hour": rate}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


def chain_hash(raw: bytes) -> bytes:
    return record_hash(raw)


def check_checkpoints(url: str, verifier: NoteVerifier, notes: set[str]) -> None:
    """Every note verifies, no two disagree on a size, each names a known predecessor, and
    the gateway at ``url`` proves each consistent with the next and with the last."""
    parsed = sorted(((Checkpoint.from_note(n, verifier), n) for n in notes),
                    key=lambda pair: pair[0].size)
    by_size: dict[int, bytes] = {}
    for cp, _ in parsed:
        assert by_size.setdefault(cp.size, cp.root_hash) == cp.root_hash  # no fork
    chain = {checkpoint_hash(note): cp for cp, note in parsed}
    for cp, _ in parsed:  # each note names a predecessor that is a known checkpoint
        prev = base64.b64decode(cp.extensions[0].removeprefix("prev "))
        assert prev == bytes(32) or chain[prev].size <= cp.size
    sizes = [s for s in sorted(by_size) if s > 0]
    # Each checkpoint against the next and against the last: with append-only prefixes
    # consistency is transitive, so this covers every pair.
    pairs = set(itertools.pairwise(sizes)) | {(s, sizes[-1]) for s in sizes}
    with httpx.Client() as http:
        for old, new in sorted(pairs):
            proof = http.get(f"{url}/v1/proofs/consistency",
                             params={"old_size": old, "new_size": new}).json()["proof"]
            merkle.verify_consistency(old, new, by_size[old], by_size[new],
                                      [bytes.fromhex(h) for h in proof])
