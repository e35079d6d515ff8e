"""Bad input at scale: over 10,000 hostile messages from a provisioned device's own login.

Mallory is provisioned like any device (``device add``: registered at the gateway, a broker
password, an ACL that lets it write only its own records topic). It first sends a few
honest batches, then random bytes, truncated and deeply nested CBOR, oversized payloads,
records signed with a wrong key or naming a wrong kid, bit-flipped records, replays, and
records signed with its real key that break the rules (equivocation, chain, time, usage,
rotation). Meanwhile an honest agent runs. The gateway must keep serving, account for every
message (answered with a receipt carrying a right reason code, or dropped unread because
Mallory went over her fair share or into quarantine, counted per reason and device), count
each rejection exactly once per reason, keep logging the honest agent's records while the
flood goes on, and log every one of them exactly once.

Nothing here counts per wall-clock window: the flood goes out in tenths, and after each
tenth (while the gateway still works through it) the honest device's log must grow, within
a bound generous enough for a machine twice as slow.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from firmware_sim.stack import SimDevice
from protocol.batch import Batch, receipts_topic, records_topic
from protocol.errors import VerificationError
from protocol.keys import load_device_key
from protocol.note import NoteVerifier
from protocol.receipt import Receipt, Status
from tests.faults.badinput import DUPLICATE, Hostile, HostileFactory, Mallory
from tests.harness.invariants import LogView, OutboxView, check_device
from tests.harness.testbed import AgentSpec, Testbed

COUNTS = {"random_bytes": 1500, "truncated": 1500, "nested": 1000, "oversize": 40,
          "wrong_key": 1500, "bit_flip": 1500, "wrong_kid": 1000, "replay": 1000,
          "forged": 1200}
HONEST_RECORDS = 20
FLOOD_PARTS = 10
PROGRESS_TIMEOUT_S = 60.0  # per tenth of the flood: a bound, not an expected time
RECEIPTS_TIMEOUT_S = 300.0


class Attacker:
    """Mallory's MQTT client: publishes, and collects its verified receipts."""

    def __init__(self, tb: Testbed, creds: SimDevice, verifier_key: str) -> None:
        verifier = NoteVerifier.from_text(verifier_key)
        self._public, self._kid = verifier.public_key, verifier.key_id
        self.device_id = bytes.fromhex(creds.device_id)
        self.receipts: list[Receipt] = []
        self.unverified = 0
        self._cond = threading.Condition()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{creds.device_id}-x",
                             protocol=mqtt.MQTTv5)
        client.username_pw_set(creds.username, creds.password)
        client.max_queued_messages_set(0)
        client.on_message = self._on_message
        subscribed = threading.Event()
        client.on_subscribe = lambda *_: subscribed.set()
        client.connect("127.0.0.1", tb.broker_port)
        client.subscribe(receipts_topic(self.device_id), qos=1)
        client.loop_start()
        assert subscribed.wait(10)
        self.client = client

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            receipt = Receipt.verify(bytes(msg.payload), self._public, self._kid)
        except VerificationError:
            self.unverified += 1
            return
        with self._cond:
            self.receipts.append(receipt)
            self._cond.notify_all()

    def publish(self, payloads: list[bytes]) -> int:
        """Publish (QoS 1); return how many the broker refused in its PUBACK."""
        infos = [self.client.publish(records_topic(self.device_id), p, qos=1) for p in payloads]
        refused = 0
        for info in infos:
            info.wait_for_publish(60)
            refused += not info.is_published()
        return refused

    def wait_receipts(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.receipts) < count and time.monotonic() < deadline:
                self._cond.wait(0.5)

    def wait_accounted(self, tb: Testbed, count: int, timeout: float) -> int:
        """Wait until receipts plus the gateway's drops of this device reach ``count``;
        return the drops (a dropped message gets no receipt: its sender must resend)."""
        deadline = time.monotonic() + timeout
        while True:
            dropped = _dropped(tb, self.device_id)
            with self._cond:
                if len(self.receipts) + dropped >= count or time.monotonic() > deadline:
                    return dropped
                self._cond.wait(0.5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _rejections(tb: Testbed) -> Counter[str]:
    rejections = tb.stats()["rejections"]
    assert isinstance(rejections, dict)
    return Counter({str(k): int(v) for k, v in rejections.items()})


def _dropped(tb: Testbed, device_id: bytes) -> int:
    """How many of the device's messages the gateway dropped unread (all reasons)."""
    dropped = tb.stats().get("ingest_dropped", {})
    assert isinstance(dropped, dict)
    return sum(int(per_device.get(device_id.hex(), 0)) for per_device in dropped.values())


def _wait_healthy(url: str) -> int:
    """Poll /healthz until it answers 200 (the backlog drained); return the last code."""
    deadline = time.monotonic() + RECEIPTS_TIMEOUT_S
    code = 0
    while time.monotonic() < deadline:
        try:
            code = httpx.get(f"{url}/healthz", timeout=30).status_code
        except httpx.HTTPError:
            code = 0
        if code == 200:
            break
        time.sleep(0.2)
    return code


def _honest_history(tb: Testbed, attacker: Attacker, key_file: Path) -> Mallory:
    """Mallory's first life: HONEST_RECORDS good records in four batches, all accepted."""
    m = Mallory(load_device_key(key_file), attacker.device_id, tb.rate, [], [], [], b"",
                int(time.time() * 1000))
    prev = bytes(32)
    for seq in range(HONEST_RECORDS):
        raw = m.record(seq, prev, mono_ms=10_000 + seq)
        m.history.append(raw)
        prev = m.head_prev
    m.honest_batches = [Batch(n, tuple(m.history[n * 5:(n + 1) * 5])).to_cbor()
                        for n in range(4)]
    attacker.publish(m.honest_batches)
    attacker.wait_receipts(4, RECEIPTS_TIMEOUT_S)
    assert [o.status for r in attacker.receipts for o in r.outcomes] == \
        [Status.ACCEPTED] * HONEST_RECORDS
    attacker.receipts.clear()
    return m


def _honest_logged(tb: Testbed, device_id: bytes) -> int:
    return len(LogView.read(tb.gateway_db).of_device(device_id))


def _wait_honest_beyond(tb: Testbed, device_id: bytes, count: int) -> int:
    """Wait until the gateway logged more than ``count`` of the device's records; return
    how many it logged (``count`` if none more came within PROGRESS_TIMEOUT_S)."""
    deadline = time.monotonic() + PROGRESS_TIMEOUT_S
    while True:
        now = _honest_logged(tb, device_id)
        if now > count or time.monotonic() > deadline:
            return now
        time.sleep(0.1)


def _flood(tb: Testbed, attacker: Attacker, hostile: list[Hostile],
           honest: bytes) -> tuple[int, list[int]]:
    """Publish the flood in FLOOD_PARTS parts; after each, wait for honest progress.

    Returns how many messages the broker refused and, per part, how many honest records
    the gateway logged meanwhile (each must be > 0: receipts keep flowing).
    """
    refused = 0
    progress = []
    seen = _honest_logged(tb, honest)
    size = -(-len(hostile) // FLOOD_PARTS)
    for start in range(0, len(hostile), size):
        refused += attacker.publish([h.payload for h in hostile[start:start + size]])
        now = _wait_honest_beyond(tb, honest, seen)
        progress.append(now - seen)
        seen = now
    return refused, progress


def test_ten_thousand_hostile_messages_each_rejected_with_a_reason_honest_records_flow(
        tmp_path: Path) -> None:
    t0 = time.monotonic()
    with Testbed(tmp_path / "tb", [AgentSpec("honest", shiftable_clock=False)]) as tb:
        honest = tb.agents["honest"]
        creds = tb.add_device("mallory")
        attacker = Attacker(tb, creds, tb.verifier_key())
        mallory = _honest_history(tb, attacker, creds.key_file)
        assert _wait_honest_beyond(tb, bytes.fromhex(honest.device_id), 9) >= 10
        logged = httpx.get(f"{tb.gateway_url}/v1/devices/{honest.device_id}/records",
                           params={"limit": 50}, timeout=10).json()["records"]
        mallory.foreign = [bytes.fromhex(r["record"]) for r in logged]
        mallory.other_device = bytes.fromhex(honest.device_id)
        hostile = HostileFactory(mallory, random.Random(11)).make(COUNTS)
        honest_before = len(LogView.read(tb.gateway_db).of_device(mallory.other_device))
        before = _rejections(tb)
        print(f"t={time.monotonic() - t0:.1f} sending {len(hostile)} hostile messages")

        health = _HealthWatch(tb.gateway_url)
        dropped_before = _dropped(tb, attacker.device_id)
        refused_by_broker, progress = _flood(tb, attacker, hostile, mallory.other_device)
        dropped = attacker.wait_accounted(tb, len(hostile) - refused_by_broker + dropped_before,
                                          RECEIPTS_TIMEOUT_S) - dropped_before
        health.stop()
        honest_during = len(LogView.read(tb.gateway_db).of_device(mallory.other_device)) \
            - honest_before
        print(f"t={time.monotonic() - t0:.1f} {len(attacker.receipts)} receipts, {dropped} "
              f"dropped over share or quarantined, broker refused {refused_by_broker}, "
              f"health {dict(health.codes)}, honest records logged meanwhile {honest_during} "
              f"(per tenth of the flood: {progress})")
        after = _rejections(tb)

        answers = _match(hostile, attacker.receipts)
        wrong = [(h.kind, got, sorted(h.allowed)) for h, got in answers if got not in h.allowed]
        sent = Counter(h.kind for h in hostile)
        answered_dup = sum(1 for _, got in answers if got == DUPLICATE)
        counted = sum((after - before).values())
        print(f"t={time.monotonic() - t0:.1f} sent {dict(sent)}; rejections by reason "
              f"{dict(after - before)}")

        assert tb.gateway.running
        assert tb.gateway.starts == 1
        # /healthz tells the truth: 503 "backlog" while Mallory's flood is queued, never a
        # 5xx of another kind; a poll that timed out on a loaded machine (code 0) is
        # tolerated. Once the backlog drained it says ok again.
        assert set(health.codes) <= {200, 503, 0}, health.codes
        assert health.codes[200] + health.codes[503] > 0, health.codes
        assert _wait_healthy(tb.gateway_url) == 200
        assert attacker.unverified == 0
        assert sum(sent.values()) >= 10_000
        # Every message accounted for once: answered, or dropped unread and counted.
        assert len(answers) + dropped == len(hostile) - refused_by_broker
        assert wrong == [], Counter(map(str, wrong))
        assert counted == len(answers) - answered_dup
        # The honest device's records kept flowing under attack: after every tenth of the
        # flood, more of them were logged (each exactly once: check_device below).
        assert all(n > 0 for n in progress), progress

        code = honest.stop(timeout_s=60)
        view = OutboxView.read(honest.outbox, bytes.fromhex(honest.device_id))
        report = check_device(LogView.read(tb.gateway_db), view, drained=True)
        print(f"t={time.monotonic() - t0:.1f} honest agent exit {code}: {report.facts}")
        assert code == 0
        assert report.violations == []
        attacker.close()


def _match(hostile: list[Hostile], receipts: list[Receipt]) -> list[tuple[Hostile, str]]:
    """Pair each receipt with the message it answers; return (message, answer) pairs."""
    by_batch = {h.batch_id: h for h in hostile if h.batch_id is not None and h.batch_id >= 0}
    by_hash: dict[bytes, list[Hostile]] = {}  # identical payloads (two empty ones) repeat
    for h in hostile:
        if h.batch_id is None:
            by_hash.setdefault(h.hash16, []).append(h)
    out = []
    for receipt in receipts:
        first = receipt.outcomes[0]
        if receipt.batch_id in by_batch and len(receipt.outcomes) == 1:
            h = by_batch.pop(receipt.batch_id)
        elif len(receipt.outcomes) == 1 and first.seq is None and by_hash.get(first.hash_prefix):
            h = by_hash[first.hash_prefix].pop()  # refused whole: named by the payload's hash
        elif all(o.status is Status.DUPLICATE for o in receipt.outcomes):
            out.append((next(x for x in hostile if DUPLICATE in x.allowed), DUPLICATE))
            continue
        else:
            which = [(h.kind, h.batch_id, len(h.payload)) for h in hostile
                     if h.hash16 == first.hash_prefix]
            raise AssertionError(f"a receipt answers no message: {receipt}; {which}")
        got = DUPLICATE if first.status is Status.DUPLICATE else str(first.reason)
        out.append((h, got))
    return out


class _HealthWatch:
    """Polls /healthz every 0.2 s on a thread; counts the status codes seen."""

    def __init__(self, url: str) -> None:
        self.codes: Counter[int] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url,), daemon=True)
        self._thread.start()

    def _run(self, url: str) -> None:
        with httpx.Client(timeout=5) as http:
            while not self._stop.wait(0.2):
                try:
                    self.codes[http.get(f"{url}/healthz").status_code] += 1
                except httpx.HTTPError:
                    self.codes[0] += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
